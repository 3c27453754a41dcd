"""Memory and speed controls of `cdvideo animate`: each one is real, and the exact ones change no pixel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import cli_animate_args

import cdvideo
from cdvideo.cli import main as cli_main
from cdvideo.videofiles import video_info

# Bit-exactness is not promised across kernels: chunked or re-laid-out work may sum in another order.
EXACT = 1e-5


def render(base: Path, adapter: Path, out: Path, **overrides) -> tuple[np.ndarray, list[str]]:
    notes: list[str] = []
    values = {
        "prompts": ["a dog running"],
        "use_concept": False,
        "base": str(base),
        "motion_adapter": str(adapter),
        "frames": 8,
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance": 3.0,
        "seeds": [7],
        "output": str(out),
        **overrides,
    }
    videos = cdvideo.animate(cdvideo.AnimateConfig(**values), say=notes.append, progress=False)
    return np.asarray(videos[0].frames), notes


@pytest.fixture(scope="module")
def baseline(tiny_base, tiny_adapter, tmp_path_factory) -> np.ndarray:
    return render(tiny_base, tiny_adapter, tmp_path_factory.mktemp("base"))[0]


@pytest.mark.parametrize(
    "control",
    [
        {"decode_chunk_size": 1},  # = VAE slicing: one frame per decode
        {"decode_chunk_size": 3},  # chunks that do not divide the clip
        {"forward_chunk": 2},
        {"channels_last": True},
        {"cpu_offload": True},  # a no-op with a note on the CPU
    ],
    ids=lambda c: next(iter(c)),
)
def test_exact_controls_leave_the_video_unchanged(control, baseline, tiny_base, tiny_adapter, tmp_path):
    frames, notes = render(tiny_base, tiny_adapter, tmp_path, **control)
    assert frames.shape == baseline.shape == (8, 64, 64, 3)
    assert np.abs(frames - baseline).max() <= EXACT
    if "cpu_offload" in control:
        assert any("--cpu-offload" in n and "ignored on cpu" in n for n in notes), notes


@pytest.mark.slow
def test_compiled_unet_renders_the_same_video(baseline, tiny_base, tiny_adapter, tmp_path):
    frames, _ = render(tiny_base, tiny_adapter, tmp_path, compile=True)
    assert np.abs(frames - baseline).max() <= 1e-4


def test_forward_chunking_is_really_on(tiny_base, tiny_adapter, tmp_path, monkeypatch):
    """Chunked feed-forward runs the FF layers on slices: count the calls to prove the control took effect."""
    import diffusers.models.attention as attention

    calls = []
    real = attention._chunked_feed_forward
    monkeypatch.setattr(attention, "_chunked_feed_forward", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    render(tiny_base, tiny_adapter, tmp_path, forward_chunk=4, steps=1)
    assert calls and set(calls) == {4}


def test_forward_chunk_that_does_not_divide_the_batch_is_one_clear_line(tiny_base, tiny_adapter, tmp_path, capsys):
    args = cli_animate_args(tiny_base, tiny_adapter, tmp_path, "--steps", "1", "--forward-chunk", "3", frames=8)
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--forward-chunk 3 must divide 16" in err[0], err


def test_bad_decode_chunk_size_is_refused(tiny_base, tiny_adapter, tmp_path):
    with pytest.raises(cdvideo.UserError, match="--decode-chunk-size must be positive"):
        render(tiny_base, tiny_adapter, tmp_path, decode_chunk_size=0)


def test_one_window_covering_the_clip_is_the_plain_render(baseline, tiny_base, tiny_adapter, tmp_path):
    """FreeNoise wiring check: a single window over all frames must not change the maths."""
    frames, _ = render(tiny_base, tiny_adapter, tmp_path, context_length=8)
    assert np.abs(frames - baseline).max() <= EXACT


def test_clip_longer_than_the_adapter_renders_in_sliding_windows(tiny_base, tiny_adapter, tmp_path):
    frames, notes = render(tiny_base, tiny_adapter, tmp_path, frames=24, steps=1)
    assert frames.shape == (24, 64, 64, 3) and np.isfinite(frames).all()
    assert any("more than the motion adapter's 16" in n and "windows of 16 frames, stride 4" in n for n in notes)
    assert video_info(tmp_path / "a-dog-running-7.mp4")["frames"] == 24
    # Windows differ from each other: the clip is not one window repeated.
    assert np.abs(frames[:8] - frames[16:]).mean() > 1e-3


@pytest.mark.parametrize(
    "windows, message",
    [
        ({"context_length": 17}, "--context-length 17 is more than the motion adapter's 16 frames"),
        ({"context_length": 8, "context_stride": 9}, "--context-stride 9 is longer than the window (8)"),
        ({"context_length": 0}, "must be positive"),
    ],
)
def test_bad_windows_are_refused_naming_the_limit(windows, message, tiny_base, tiny_adapter, tmp_path):
    with pytest.raises(cdvideo.UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        render(tiny_base, tiny_adapter, tmp_path, frames=24, **windows)


def test_shapes_adapter_renders_past_its_32_frames(tmp_path, capsys):
    args = ["animate", "a red circle", "--no-concept", "--base", "shapes", "--frames", "40", "--width", "32",
            "--height", "32", "--steps", "1", "--output", str(tmp_path), "--seed", "0"]  # fmt: skip
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "40 frames is more than the motion adapter's 32" in out
    assert video_info(tmp_path / "a-red-circle-0.mp4")["frames"] == 40
