"""The SPL ablation's report: seeds averaged per cell, and variants compared at equal identity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ablate_spl.py"


def row(variant: str, seed: int, step: int, identity: float, composition: float) -> dict:
    return {"variant": variant, "seed": seed, "step": step, "identity": identity, "composition_image": composition,
            "composition_video": None, "motion_left": None, "drift_cosine": 0.5, "plain_accuracy": 0.45}  # fmt: skip


def test_report_only_averages_seeds_and_compares_at_equal_identity(tmp_path):
    rows = [
        row("spl0", 0, 150, 0.5, 0.25),
        row("spl0", 1, 150, 1.0, 0.75),  # mean identity 0.75 at 150: reaches the bar
        row("spl0", 0, 300, 1.0, 0.0),
        row("kv+spl1", 0, 150, 0.25, 0.5),
        row("kv+spl1", 0, 300, 0.5, 0.5),  # never reaches it
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"composition_image": 1.0, "composition_video": None, "motion_left": None, "headphones_image": 1.0,
            "plain_accuracy": 0.9}  # fmt: skip
    (tmp_path / "base.json").write_text(json.dumps(base))
    done = subprocess.run([sys.executable, str(SCRIPT), "--report-only", "--out", str(tmp_path)], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    table = (tmp_path / "table.md").read_text()
    assert "| spl0 | 150 | 2 | 0.75 | 0.50 | n/a | n/a | 0.50 | 0.50 |" in table  # plain kept = 0.45 / 0.9
    assert "| kv+spl1 | 300 | 1 | 0.50 | 0.50 |" in table
    equal = table.split("At equal identity")[1]
    assert "| spl0 | 150 | 0.75 | 0.50 | 0.50 | 0.50 |" in equal and "kv+spl1" not in equal
    assert (tmp_path / "curves.png").stat().st_size > 10_000
