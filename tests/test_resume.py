"""Interrupt and resume: a killed run continues to the same result as an uninterrupted one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_train_args
from safetensors.torch import load_file

from cdvideo.cli import main as cli_main


def concept_tensors(folder: Path) -> dict:
    return {
        **load_file(folder / "pytorch_lora_weights.safetensors"),
        **load_file(folder / "learned_embeds.safetensors"),
    }


def train_args(base: Path, photos: Path, out: Path, *extra: str) -> list[str]:
    return cli_train_args(
        base, photos, out, "--batch-size", "2", "--seed", "5", "--checkpoint-every", "4", *extra, steps=8
    )


def test_killed_run_resumes_to_the_same_concept(tiny_base, dog_photos, tmp_path):
    assert cli_main(train_args(tiny_base, dog_photos, tmp_path / "straight")) == 0
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "cdvideo.cli", *train_args(tiny_base, dog_photos, out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "checkpoints" / "step-000004").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL) if process.poll() is None else None
    # The kill landed mid-run: the process died of it, the run never finished (no manifest), and the
    # one checkpoint is from step 4 of 8, so the resume below really has steps left to do.
    assert process.wait() == -signal.SIGKILL, "the run ended before the kill: nothing to resume"
    assert not (out / "cdvideo.json").exists()
    assert [p.name for p in (out / "checkpoints").glob("step-*")] == ["step-000004"]
    assert torch.load(out / "checkpoints" / "step-000004" / "state.pt", weights_only=True)["step"] == 4
    assert cli_main(train_args(tiny_base, dog_photos, out, "--resume", "latest")) == 0
    straight, resumed = concept_tensors(tmp_path / "straight"), concept_tensors(out)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert (straight[key] - resumed[key]).abs().max() <= 1e-6, key


def test_missing_named_checkpoint_is_an_error_not_a_fresh_start(tiny_base, dog_photos, tmp_path, capsys):
    code = cli_main(train_args(tiny_base, dog_photos, tmp_path / "c", "--resume", str(tmp_path / "nope")))
    assert code == 2
    assert "checkpoint" in capsys.readouterr().err and not (tmp_path / "c" / "cdvideo.json").exists()


def test_resuming_with_other_lora_targets_is_one_clear_line(tiny_base, dog_photos, tmp_path, capsys):
    out = tmp_path / "c"
    assert cli_main(cli_train_args(tiny_base, dog_photos, out, "--checkpoint-every", "1", steps=2)) == 0
    capsys.readouterr()
    code = cli_main(cli_train_args(tiny_base, dog_photos, out, "--resume", "latest", "--lora-targets", "to_k", steps=3))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "LoRA of another shape" in err and "\n" not in err and "Traceback" not in err


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("target", ["diffusers.StableDiffusionPipeline.save_lora_weights", "cdvideo.concept.save_file"])
def test_a_concept_killed_mid_save_is_never_loadable(target, tiny_base, dog_photos, tmp_path, monkeypatch, capsys):
    """The manifest is written last: a crash between files leaves a folder `animate` refuses."""
    monkeypatch.setattr(target, _interrupt)
    out = tmp_path / "c"
    assert cli_main(train_args(tiny_base, dog_photos, out)) == 130
    assert not (out / "cdvideo.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind
    code = cli_main(["animate", "a dog", "--concept", str(out)])
    assert code == 2 and "not a finished concept" in capsys.readouterr().err
