"""Untrusted files: pickles are never executed, manifests of unknown versions are refused."""

from __future__ import annotations

import json
import pickle
import shutil

from conftest import cli_train_args

from cdvideo.cli import main as cli_main


class _Payload:
    """Unpickling this would create a file: the proof that a loader executed the pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_crafted_pickle_motion_adapter_is_refused_and_never_runs(tiny_base, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "mm_sd_v15_v2.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    code = cli_main(
        [
            "animate",
            "a dog",
            "--no-concept",
            "--base",
            str(tiny_base),
            "--motion-adapter",
            str(evil),
            "--frames",
            "4",
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "1",
            "--output",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "refusing to unpickle" in err and "Traceback" not in err
    assert not marker.exists()


def test_a_crafted_pickle_base_checkpoint_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "dreamy-mix.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    code = cli_main(["animate", "a dog", "--no-concept", "--base", str(evil), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "could not load base model" in err and "Traceback" not in err
    assert not marker.exists()


def test_checkpoint_state_is_loaded_weights_only(tiny_base, dog_photos, tmp_path, capsys):
    args = cli_train_args(tiny_base, dog_photos, tmp_path / "c", "--checkpoint-every", "1", steps=2)
    assert cli_main(args) == 0
    marker = tmp_path / "pwned"
    state = tmp_path / "c" / "checkpoints" / "step-000001" / "state.pt"
    state.write_bytes(pickle.dumps(_Payload(marker)))
    capsys.readouterr()
    assert cli_main([*args, "--resume", str(state.parent)]) == 2
    assert "damaged or not a cdvideo checkpoint" in capsys.readouterr().err
    assert not marker.exists()


def test_unknown_concept_format_version_is_refused_by_name(tiny_base, dog_photos, tmp_path, capsys):
    args = cli_train_args(tiny_base, dog_photos, tmp_path / "c")
    assert cli_main(args) == 0
    future = tmp_path / "future"
    shutil.copytree(tmp_path / "c", future)
    manifest = json.loads((future / "cdvideo.json").read_text())
    manifest["format_version"] = 99
    (future / "cdvideo.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert cli_main(["animate", "a dog", "--concept", str(future)]) == 2
    assert "format version 99" in capsys.readouterr().err
