"""`cdvideo demo` as a user runs it: offline, no arguments but an output folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cdvideo.videofiles import video_info


@pytest.mark.slow
def test_demo_at_the_family_defaults_runs_offline_and_prints_a_scorecard(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "cdvideo.cli", "demo", "--output", str(out), "--recipe", "none"],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "scorecard" in result.stdout and "concept-class cosine" in result.stdout
    assert "prompt: a <new1> circle wearing headphones moving right" in result.stdout
    assert "150 steps" in result.stdout and not (out / "concept" / "clip-composites").exists()
    # "moving right" applies the shipped Shapes motion LoRA, and the render says so.
    assert "| motion right (camera pan-left; from the prompt): " in result.stdout
    for folder in ("with-concept", "without-concept"):
        info = video_info(out / folder / "a-circle-wearing-headphones-moving-right-0.mp4")
        assert (info["frames"], info["width"], info["height"]) == (16, 64, 64)
    assert len(list((out / "photos").glob("*.png"))) == 5


@pytest.mark.slow
def test_the_demo_draws_the_subject_with_its_headphones(tmp_path):
    """No arguments but the output folder: the demo trains with the composites recipe."""
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "cdvideo.cli", "demo", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "300 steps" in result.stdout
    assert list((out / "concept" / "composites").glob("*.png"))
    assert list((out / "concept" / "clip-composites").glob("clip-composite-*.png"))  # taught through the motion modules
    card = {line[:28].strip(): line[28:].split() for line in result.stdout.splitlines() if line.startswith("  ")}
    with_concept, without = (int(v.rstrip("%")) for v in card["subject pattern (frames)"])
    # Seed 0 at the family's plain defaults shows the stripes in 6% of frames; the recipe in 81% at weight 1,
    # and in 100% at the weights its concepts now render at (docs/demo_seeds.md). The composition issue's
    # demo bar is 75%, with the headphones, moving right.
    assert with_concept >= 75 and without == 0
    assert card["accessory"][:2] == ["wearing", "headphones"]
    assert card["motion correct"][0] == "True"
    assert "LoRA weight 1.25 (0.8 in the first 50% of the steps)" in result.stdout


def test_demo_seeds_table_reads_walls_as_minutes_and_seconds() -> None:
    import demo_seeds

    assert [demo_seeds.clock(s) for s in (539.65, 543.25, 59.4, 3600.0)] == ["9:00", "9:03", "0:59", "60:00"]
