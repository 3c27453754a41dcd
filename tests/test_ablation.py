"""The SPL ablation's report: seeds averaged per cell, and variants compared at equal identity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ablate_spl.py"


def row(variant: str, seed: int, step: int, identity: float, composition: float, **others) -> dict:
    metrics = {"composition_video": None, "motion_left": None, "drift_cosine": 0.5, "plain_accuracy": 0.45, **others}
    return {"variant": variant, "seed": seed, "step": step, "identity": identity, "composition_image": composition,
            **metrics}  # fmt: skip


def test_report_only_averages_seeds_and_compares_at_equal_identity(tmp_path):
    # Every column gets its own value, so a column written under another's header is caught.
    rows = [
        row("spl0", 0, 150, 0.5, 0.25, composition_video=0.1, motion_left=0.8, drift_cosine=0.6, plain_accuracy=0.27),
        # mean identity 0.75 at 150: reaches the bar
        row("spl0", 1, 150, 1.0, 0.75, composition_video=0.3, motion_left=0.9, drift_cosine=0.7, plain_accuracy=0.45),
        row("spl0", 0, 300, 1.0, 0.0),
        row("kv+spl1", 0, 150, 0.25, 0.5),
        row("kv+spl1", 0, 300, 0.55, 0.35, drift_cosine=0.15, plain_accuracy=0.81),  # never reaches it
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"composition_image": 0.95, "composition_video": 0.6, "motion_left": 0.7, "headphones_image": 0.85,
            "plain_accuracy": 0.9}  # fmt: skip
    (tmp_path / "base.json").write_text(json.dumps(base))
    done = subprocess.run([sys.executable, str(SCRIPT), "--report-only", "--out", str(tmp_path)], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    table = (tmp_path / "table.md").read_text()
    assert (
        "Base model, class word alone (the ceiling): composition image 0.95, video 0.60, moving left 0.70, "
        "headphones 0.85; plain prompts' accuracy 0.90." in table
    )
    # identity, composition_image, composition_video, motion_left, drift_cosine, plain_kept (= mean of 0.27, 0.45 / 0.9)
    header = "| identity | composition_image | composition_video | motion_left | drift_cosine | plain_kept |"
    assert "| variant | steps | seeds " + header in table
    assert "| spl0 | 150 | 2 | 0.75 | 0.50 | 0.20 | 0.85 | 0.65 | 0.40 |" in table
    assert "| kv+spl1 | 300 | 1 | 0.55 | 0.35 | n/a | n/a | 0.15 | 0.90 |" in table
    equal = table.split("At equal identity")[1]
    # identity, composition_image, plain_kept, drift_cosine
    assert "| variant | steps | identity | composition_image | plain_kept | drift_cosine |" in equal
    assert "| spl0 | 150 | 0.75 | 0.50 | 0.40 | 0.65 |" in equal and "kv+spl1" not in equal
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_spl_table_gives_intervals_and_judges_differences_against_the_seed_spread(tmp_path):
    import spl_table

    low, high = spl_table.wilson(16, 32)
    assert round(low, 3) == 0.336 and round(high, 3) == 0.664  # the textbook Wilson interval of 16/32
    rates = dict.fromkeys(spl_table.ROWS, 0.5)
    for weight, headphones in (("0", (0.50, 0.56)), ("1", (0.90, 0.94))):
        folder = tmp_path / weight
        folder.mkdir()
        for seed, value in enumerate(headphones):
            run = {"settings": {"samples": 32}, "rates": rates | {"wearing headphones": value}}
            (folder / f"seed-{seed}.json").write_text(json.dumps(run))
    text = spl_table.table({"0": tmp_path / "0", "1": tmp_path / "1"})
    headphones = next(line for line in text.splitlines() if "headphones" in line)
    assert "0.53 [" in headphones and "0.92 [" in headphones and "outside" in headphones
    identity = next(line for line in text.splitlines() if line.startswith("| identity"))
    assert "0.00 within" in identity


def test_spl_table_pairs_weights_by_training_seed(tmp_path):
    import spl_table

    rates = dict.fromkeys(spl_table.ROWS, 0.5)
    # The sky: lower by about a quarter on every seed, inside a seed spread of 0.6.
    # Identity: lower by one sample in 32 on every seed, which is sampling noise, not an effect.
    columns = {"0": ((0.30, 0.60, 0.90), (1.0, 1.0, 1.0)), "1": ((0.06, 0.34, 0.66), (31 / 32,) * 3)}
    for weight, (sky, identity) in columns.items():
        folder = tmp_path / weight
        folder.mkdir()
        for seed in range(3):
            run = {"settings": {"samples": 32}, "rates": rates | {"in the sky": sky[seed], "identity": identity[seed]}}
            (folder / f"seed-{seed}.json").write_text(json.dumps(run))
    (tmp_path / "0" / "seed-0-video.json").write_text("{}")  # a video file beside them is not a seed
    text = spl_table.table({"0": tmp_path / "0", "1": tmp_path / "1"})
    sky = next(line for line in text.splitlines() if "in the sky" in line)
    assert "within" in sky  # the gap (0.25) is inside the seeds' spread (0.60)...
    assert sky.rstrip(" |").endswith("excludes 0") and "-0.25 [" in sky  # ...but holds seed by seed
    identity = next(line for line in text.splitlines() if line.startswith("| identity"))
    assert "-0.03 [" in identity and identity.rstrip(" |").endswith("includes 0")
    # Any other setting compares the same way, named in the headers.
    header = spl_table.table({"1": tmp_path / "0", "2": tmp_path / "1"}, what="clip_every").splitlines()[0]
    assert "clip_every 2 - clip_every 1, paired by seed" in header and "SPL" not in header
