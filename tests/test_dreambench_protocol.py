"""benchmarks/dreambench_protocol.py end to end on the tiny models: 1 subject, 2 prompts, a few steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dreambench_protocol as protocol
import pytest
from test_evaluation import build_tiny_backbones

LISTING = """Classes

subject_name,class
rex,dog
mug,cup

Prompts

Object Prompts
"""


@pytest.fixture
def dataset(dog_photos, tmp_path) -> Path:
    folder = tmp_path / "dataset"
    shutil.copytree(dog_photos, folder / "rex")
    shutil.copytree(dog_photos, folder / "mug")
    (folder / "prompts_and_classes.txt").write_text(LISTING)
    return folder


def test_dry_run_prints_the_estimate_only(dataset, tmp_path, capsys):
    assert protocol.main(["--dataset", str(dataset), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    # 2 subjects x 3 variants x 500 steps; 6 concepts x 25 prompts + 2 classes x 25 base renders.
    assert "6 concepts (2 subjects x 3 variants x 1 seeds): 3000 training steps" in out
    assert "200 renders (50 of the base model)" in out and "[h200 costs]" in out
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_not_dreambench_is_one_clear_line(tmp_path, capsys):
    assert protocol.main(["--dataset", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "prompts_and_classes.txt not found" in err and "\n" not in err


@pytest.mark.slow
def test_protocol_runs_end_to_end_and_writes_the_table(dataset, tiny_base, tiny_adapter, tmp_path, capsys):
    backbones = build_tiny_backbones(tmp_path / "backbones")
    out = tmp_path / "out"
    args = ["--dataset", str(dataset), "--subjects", "rex", "--prompts", "2", "--steps", "2",
            "--resolution", "64", "--frames", "2", "--sample-steps", "2", "--base", str(tiny_base),
            "--motion-adapter", str(tiny_adapter), "--clip", backbones["clip"], "--dino", backbones["dino"],
            "--blip", backbones["blip"], "--out", str(out)]  # fmt: skip
    assert protocol.main(args) == 0
    assert "estimate:" in capsys.readouterr().out.splitlines()[0]  # printed before anything starts
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["variant"], r["subject"], r["step"]) for r in rows] == [
        ("spl1", "rex", 2),
        ("spl0", "rex", 2),
        ("classdiffusion", "rex", 2),
    ]
    for r in rows:
        assert all(isinstance(r[k], float) and -1 <= r[k] <= 1 for k in ("clip_i", "dino_i", "clip_t", "blip_t"))
        assert 0 < r["drift"] <= 1
    # Live subject (a dog): its first two prompts; the base videos are rendered once and reused.
    assert len(list((out / "evals").rglob("base-videos/*.mp4"))) == 2
    table = (out / "table.md").read_text()
    for variant in ("spl1", "spl0", "classdiffusion"):
        assert f"| {variant} | 2 | 1 |" in table
    assert "| variant | steps | n | clip_i | dino_i | clip_t | blip_t | drift | motion_ratio | flagged |" in table
    assert protocol.main(args) == 0  # a rerun skips what is done
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
