"""Tests for cdvideo.videofiles and cdvideo.atomic: round trips through real encoders/decoders."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cdvideo.atomic import (
    atomic_path,
    ensure_writable_dir,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from cdvideo.errors import UserError
from cdvideo.videofiles import (
    NAN_MESSAGE,
    read_video,
    slugify,
    to_uint8_frames,
    video_info,
    video_stem,
    write_gif,
    write_mp4,
    write_video,
)

# Measured on the clip below (gradient background + sharp moving square):
# mp4 (x264 crf 18, yuv420p) mean abs error 2.26/255, worst frame 2.74;
# gif (global palette, Bayer dither) mean 3.11/255, worst frame 3.14.
# Single pixels differ a lot (chroma subsampling / dithering at the square's edges),
# so tolerances are on means, with ~1.5x headroom for other ffmpeg/x264 builds.
MP4_MEAN_TOL, MP4_FRAME_TOL = 4.0, 5.0
GIF_MEAN_TOL, GIF_FRAME_TOL = 5.0, 6.0

F, H, W, SQ = 16, 64, 64, 16


def moving_square(f: int = F, h: int = H, w: int = W) -> np.ndarray:
    """Float32 (F,H,W,3) in [0,1]: smooth gradient with a yellow square moving right."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((f, h, w, 3), np.float32)
    frames[..., 0] = xx / (w - 1)
    frames[..., 1] = yy / (h - 1)
    frames[..., 2] = 0.5
    for i in range(f):
        x0 = (3 * i) % (w - SQ)
        frames[i, 20 : 20 + SQ, x0 : x0 + SQ] = (1.0, 0.9, 0.1)
    return frames


def square_x(frames: np.ndarray) -> np.ndarray:
    """Per-frame x centroid of the square (the only low-blue region)."""
    mask = frames[..., 2] < 80
    xs = np.arange(frames.shape[2])
    return (mask.sum(axis=1) * xs).sum(axis=1) / mask.sum(axis=(1, 2))


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return moving_square()


@pytest.fixture(scope="module")
def written(clip: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("videos")
    return write_video(clip, out, "clip", fps=8)


def _pil_frames(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        frames = []
        for k in range(im.n_frames):
            im.seek(k)
            frames.append(np.asarray(im.convert("RGB")))
    return np.stack(frames)


def _check_close(decoded: np.ndarray, ref: np.ndarray, mean_tol: float, frame_tol: float) -> None:
    assert decoded.shape == ref.shape and decoded.dtype == np.uint8
    err = np.abs(decoded.astype(np.int16) - ref.astype(np.int16))
    assert err.mean() < mean_tol
    assert err.mean(axis=(1, 2, 3)).max() < frame_tol
    # Frame order and motion survive: the square is where it should be in every frame.
    np.testing.assert_allclose(square_x(decoded), square_x(ref), atol=1.0)


# --------------------------------------------------------------------------- round trips


def test_write_video_outputs_and_no_temp_files(written: dict[str, Path]) -> None:
    assert set(written) == {"mp4", "gif"}
    out_dir = written["mp4"].parent
    assert sorted(p.name for p in out_dir.iterdir()) == ["clip.gif", "clip.mp4"]
    assert all(p.stat().st_size > 0 for p in written.values())


def test_mp4_roundtrip_decord_and_imageio(written: dict[str, Path], clip: np.ndarray) -> None:
    path = written["mp4"]
    assert video_info(path) == {"frames": F, "width": W, "height": H, "fps": 8.0}
    ref = to_uint8_frames(clip)
    by_decord = read_video(path)
    by_imageio = np.asarray(iio.imread(path, index=None, plugin="FFMPEG"))
    _check_close(by_decord, ref, MP4_MEAN_TOL, MP4_FRAME_TOL)
    _check_close(by_imageio, ref, MP4_MEAN_TOL, MP4_FRAME_TOL)
    # Two decoders of the same stream should agree almost exactly.
    assert np.abs(by_decord.astype(int) - by_imageio.astype(int)).max() <= 2


def test_gif_roundtrip_pil_and_imageio(written: dict[str, Path], clip: np.ndarray) -> None:
    path = written["gif"]
    assert video_info(path) == {"frames": F, "width": W, "height": H, "fps": 8.0}
    with Image.open(path) as im:
        assert im.info.get("loop") == 0  # loop forever
    ref = to_uint8_frames(clip)
    _check_close(read_video(path), ref, GIF_MEAN_TOL, GIF_FRAME_TOL)
    _check_close(_pil_frames(path), ref, GIF_MEAN_TOL, GIF_FRAME_TOL)


def test_gif_keeps_identical_frames(tmp_path: Path) -> None:
    # Pillow would merge these into one frame; the frame count must survive.
    frames = np.full((6, 8, 8, 3), 0.25, np.float32)
    info = video_info(write_gif(frames, tmp_path / "static.gif", fps=4))
    assert info["frames"] == 6 and info["fps"] == pytest.approx(4.0)


def test_odd_size_is_padded_for_mp4(tmp_path: Path) -> None:
    frames = moving_square(4, 65, 63)
    path = write_mp4(frames, tmp_path / "odd.mp4")
    assert path.stat().st_size > 0
    assert video_info(path) == {"frames": 4, "width": 64, "height": 66, "fps": 8.0}
    decoded = read_video(path)
    ref = to_uint8_frames(frames)
    err = np.abs(decoded[:, :65, :63].astype(int) - ref.astype(int))
    assert err.mean() < MP4_MEAN_TOL
    # Padding replicates the edge instead of adding a black border.
    assert np.abs(decoded[:, :, 63].astype(int) - decoded[:, :, 62].astype(int)).mean() < 4
    assert decoded[:, 65].mean() > 40
    # GIF has no even-size constraint: kept as is.
    assert video_info(write_gif(frames, tmp_path / "odd.gif"))["width"] == 63


# --------------------------------------------------------------------------- conversion


def test_float_conversion_clips_and_rounds() -> None:
    x = np.array([-0.5, 0.0, 0.5 / 255, 0.499 / 255, 0.5, 1.0, 7.0], np.float32)
    frames = np.repeat(x[None, None, :, None], 3, axis=3)  # (1,1,7,3)
    assert to_uint8_frames(frames)[0, 0, :, 0].tolist() == [0, 0, 1, 0, 128, 255, 255]


def test_input_types_agree(clip: np.ndarray) -> None:
    ref = to_uint8_frames(clip)
    assert ref.shape == (F, H, W, 3) and ref.dtype == np.uint8
    t = torch.from_numpy(clip)
    same = [
        ref.copy(),  # uint8 passes through
        clip.astype(np.float64),
        t,  # (F,H,W,3)
        t.permute(0, 3, 1, 2),  # (F,3,H,W), diffusers output_type="pt"
        t.permute(0, 3, 1, 2)[None],  # batch of one
        clip[None],
        [Image.fromarray(f) for f in ref],
        list(t.permute(0, 3, 1, 2)),
    ]
    for frames in same:
        np.testing.assert_array_equal(to_uint8_frames(frames), ref)


def test_torch_and_uint8_inputs_write(tmp_path: Path, clip: np.ndarray) -> None:
    ref = to_uint8_frames(clip[:4])
    t = torch.from_numpy(clip[:4]).permute(0, 3, 1, 2).to(torch.float16)
    for name, frames in {"t.mp4": t, "u.mp4": ref}.items():
        decoded = read_video(write_mp4(frames, tmp_path / name))
        assert np.abs(decoded.astype(int) - ref.astype(int)).mean() < MP4_MEAN_TOL


def test_nan_raises_and_writes_nothing(tmp_path: Path, clip: np.ndarray) -> None:
    bad = clip[:4].copy()
    bad[2, 5, 5, 1] = np.nan
    with pytest.raises(ValueError, match=re.escape(NAN_MESSAGE)):
        to_uint8_frames(bad)
    with pytest.raises(ValueError, match="NaN"):
        to_uint8_frames(torch.from_numpy(bad))
    with pytest.raises(ValueError, match="NaN"):
        write_video(bad, tmp_path, "nan")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((4, 8, 8), np.float32), "expected frames shaped (F,H,W,3) or (F,3,H,W), got (4, 8, 8)"),
        (np.zeros((4, 8, 8, 4), np.float32), "expected 3 RGB channels, got frames shaped (4, 8, 8, 4)"),  # RGBA
        (np.zeros((0, 8, 8, 3), np.float32), "no frames / empty frames: shape (0, 8, 8, 3)"),
        (np.full((2, 8, 8, 3), 300, np.int32), "integer frames must be in 0..255, got range 300..300"),
        ([], "no frames"),
        ([np.zeros((8, 8, 3)), np.zeros((8, 6, 3))], "frame 1 has shape (8, 6, 3), expected (8, 8, 3) like frame 0"),
    ],
    ids=["no-channels", "rgba", "no-frames", "out-of-range", "empty-list", "mismatched-sizes"],
)
def test_bad_frames_rejected(frames: object, message: str) -> None:
    # Our message in full: a bare ValueError would also pass on numpy's own errors (np.stack, casting).
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        to_uint8_frames(frames)


def test_bad_fps_rejected(tmp_path: Path, clip: np.ndarray) -> None:
    for fps in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="fps"):
            write_mp4(clip[:2], tmp_path / "x.mp4", fps=fps)


# --------------------------------------------------------------------------- atomicity


def _failing_frames(clip: np.ndarray, n_ok: int):
    yield from clip[:n_ok]
    raise RuntimeError("generator died")


@pytest.mark.parametrize("writer,name", [(write_mp4, "out.mp4"), (write_gif, "out.gif")])
def test_failure_mid_write_leaves_nothing(tmp_path: Path, clip: np.ndarray, writer, name) -> None:
    with pytest.raises(RuntimeError, match="generator died"):
        writer(_failing_frames(clip, 5), tmp_path / name)
    assert list(tmp_path.iterdir()) == []  # neither final file nor temp


@pytest.mark.parametrize("writer,name", [(write_mp4, "out.mp4"), (write_gif, "out.gif")])
def test_failure_keeps_previous_file(tmp_path: Path, clip: np.ndarray, writer, name) -> None:
    final = tmp_path / name
    final.write_bytes(b"previous good video")
    with pytest.raises(RuntimeError, match="generator died"):
        writer(_failing_frames(clip, 5), final)
    assert final.read_bytes() == b"previous good video"
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_mismatched_frame_mid_stream(tmp_path: Path, clip: np.ndarray) -> None:
    frames = [*clip[:3], clip[3, :32]]
    with pytest.raises(ValueError, match="frame 3"):
        write_mp4(iter(frames), tmp_path / "m.mp4")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_temp_name_and_cleanup(tmp_path: Path) -> None:
    final = tmp_path / "clip.mp4"
    with atomic_path(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".mp4"
        assert tmp.exists() and not final.exists()
        tmp.write_bytes(b"new")
    assert final.read_bytes() == b"new" and os.listdir(tmp_path) == ["clip.mp4"]

    with pytest.raises(KeyError), atomic_path(final) as tmp:
        tmp.write_bytes(b"half")
        raise KeyError("boom")
    assert final.read_bytes() == b"new" and os.listdir(tmp_path) == ["clip.mp4"]

    long_name = "x" * 250 + ".gif"
    with atomic_path(tmp_path / long_name) as tmp:
        assert len(tmp.name) <= 255 and tmp.suffix == ".gif"


def test_write_helpers(tmp_path: Path) -> None:
    p = write_json_atomic(tmp_path / "sub" / "m.json", {"b": 1, "a": [1.5, "é"]})
    text = p.read_text(encoding="utf-8")
    assert text.endswith("}\n") and text.index('"b"') < text.index('"a"')
    assert json.loads(text) == {"b": 1, "a": [1.5, "é"]}
    assert "\n  " in text  # indent 2
    write_text_atomic(p, "x\r\ny")
    assert p.read_bytes() == b"x\r\ny"
    write_bytes_atomic(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(p.parent)) == ["m.json"]


# --------------------------------------------------------------------------- unwritable dirs


def test_ensure_writable_dir_creates_parents(tmp_path: Path) -> None:
    d = ensure_writable_dir(tmp_path / "a" / "b")
    assert d.is_dir() and list(d.iterdir()) == []


def test_unwritable_path_under_a_file(tmp_path: Path, clip: np.ndarray) -> None:
    # Works even as root, where permission bits do not stop writes.
    (tmp_path / "afile").write_text("not a dir")
    for target in (tmp_path / "afile" / "sub", tmp_path / "afile"):
        with pytest.raises(UserError, match=r"cannot write to .*choose another --output"):
            ensure_writable_dir(target)
    with pytest.raises(UserError, match="choose another --output"):
        write_json_atomic(tmp_path / "afile" / "x.json", {})
    with pytest.raises(UserError, match="choose another --output"):
        write_video(clip[:2], tmp_path / "afile" / "out", "clip")


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Make `directory` refuse new files for whoever runs the tests, root included.

    Permission bits stop other users; root ignores them, so as root the directory is made immutable
    (chattr +i: root too gets EPERM on creating files in it). Skips where neither is possible."""
    if os.geteuid() != 0:
        directory.chmod(0o500)
        try:
            yield
        finally:
            directory.chmod(0o700)
        return
    chattr = shutil.which("chattr")
    done = subprocess.run([chattr, "+i", str(directory)], capture_output=True) if chattr else None
    if done is None or done.returncode:
        pytest.skip("running as root without chattr +i (CAP_LINUX_IMMUTABLE): cannot make a read-only directory")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(directory)], check=True)


def test_read_only_dir(tmp_path: Path, clip: np.ndarray) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "old.bin").write_bytes(b"old")
    with read_only(ro):
        with pytest.raises(UserError, match=r"cannot write to .*ro.*choose another --output") as info:
            ensure_writable_dir(ro)
        assert len(str(info.value).splitlines()) == 1
        with pytest.raises(UserError, match=r"^cannot write to .*ro: .*; choose another --output$"):
            write_bytes_atomic(ro / "x.bin", b"x")
        with pytest.raises(UserError, match=r"^cannot write to .*ro: .*; choose another --output$"):
            write_bytes_atomic(ro / "old.bin", b"new")
        with pytest.raises(UserError, match="choose another --output"):
            write_video(clip[:2], ro, "clip")
        # Nothing partial left behind: no temp or probe files, and the file already there is untouched.
        assert sorted(p.name for p in ro.iterdir()) == ["old.bin"]
        assert (ro / "old.bin").read_bytes() == b"old"


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "prompt,slug",
    [
        ("A Cat, on the Moon!", "a-cat-on-the-moon"),
        ("../../etc/passwd", "etc-passwd"),
        ("Crème brûlée", "creme-brulee"),
        ("", "video"),
        ("猫 \x00\n/", "video"),
    ],
)
def test_slugify_examples(prompt: str, slug: str) -> None:
    assert slugify(prompt) == slug


def test_slugify_truncates_at_word_boundary() -> None:
    slug = slugify("word " * 40)
    assert len(slug) <= 60 and slug.endswith("word") and not slug.endswith("-")
    assert slugify("x" * 100) == "x" * 60


@settings(max_examples=200, deadline=None)
@given(st.text(), st.integers(), st.integers())
def test_slugify_fuzz(prompt: str, seed_a: int, seed_b: int) -> None:
    slug = slugify(prompt)
    assert re.fullmatch(r"[a-z0-9-]{1,60}", slug)
    assert ".." not in slug and "/" not in slug
    if seed_a != seed_b:
        assert video_stem(prompt, seed_a) != video_stem(prompt, seed_b)
    assert video_stem(prompt, seed_a).startswith(slug + "-")


def test_write_video_validates_stem_and_formats(tmp_path: Path, clip: np.ndarray) -> None:
    for stem in ("", "..", "a/b", "a\\b"):
        with pytest.raises(ValueError, match="stem"):
            write_video(clip[:2], tmp_path, stem)
    with pytest.raises(ValueError, match="formats"):
        write_video(clip[:2], tmp_path, "x", formats=("webm",))
    out = write_video(clip[:2], tmp_path, "only", formats=("gif",))
    assert list(out) == ["gif"] and sorted(os.listdir(tmp_path)) == ["only.gif"]


def test_ffmpeg_failure_raises_instead_of_empty_file(tmp_path: Path) -> None:
    # libx264 rejects odd sizes and ffmpeg leaves a 0-byte file; that must surface.
    from cdvideo import videofiles

    frames = np.zeros((2, 65, 63, 3), np.uint8)
    args = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
    with (
        pytest.raises(RuntimeError, match="ffmpeg failed"),
        atomic_path(tmp_path / "odd.mp4") as tmp,
    ):
        videofiles._encode(iter(frames), (63, 65), videofiles.Fraction(8), tmp, args)
    assert list(tmp_path.iterdir()) == []
