"""`cdvideo demo` as a user runs it: offline, no arguments but an output folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cdvideo.videofiles import video_info


@pytest.mark.slow
def test_demo_runs_offline_and_prints_a_scorecard(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "cdvideo.cli", "demo", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "scorecard" in result.stdout and "concept-class cosine" in result.stdout
    assert "prompt: a <new1> circle wearing headphones moving right" in result.stdout
    # "moving right" applies the shipped Shapes motion LoRA, and the render says so.
    assert "| motion right (camera pan-left; from the prompt): " in result.stdout
    for folder in ("with-concept", "without-concept"):
        info = video_info(out / folder / "a-circle-wearing-headphones-moving-right-0.mp4")
        assert (info["frames"], info["width"], info["height"]) == (16, 64, 64)
    assert len(list((out / "photos").glob("*.png"))) == 5
