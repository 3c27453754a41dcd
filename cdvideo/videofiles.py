"""Write generated frames as MP4 (H.264) and GIF, and read videos back for tests/evaluation.

Both formats are encoded by the ffmpeg binary shipped with imageio-ffmpeg, driven
directly through a pipe so that a failing ffmpeg (which imageio-ffmpeg's writer
ignores, leaving a 0-byte file) raises instead. Every file is written to a temp
sibling and renamed into place (cdvideo.atomic).
"""

from __future__ import annotations

import errno
import itertools
import math
import numbers
import os
import re
import signal
import subprocess
import sys
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cdvideo.atomic import DEST_FULL, atomic_path, ensure_writable_dir

# Anything `to_uint8_frames` accepts: ndarray / torch.Tensor / iterable of frames.
FramesLike = Any

NAN_MESSAGE = "frames contain NaN (black frames?): decode the VAE in float32"

# x264 CRF 18 is visually lossless for typical content; clips are short so size is small.
MP4_CRF = 18
# One global palette over the whole clip plus ordered (Bayer) dithering: error diffusion
# dithers differently in every frame and makes flat areas shimmer when animated.
GIF_FILTER = "split[a][b];[a]palettegen=stats_mode=full[p];[b][p]paletteuse=dither=bayer:bayer_scale=5"

FORMATS = ("mp4", "gif")


# ---------------------------------------------------------------------------
# frame conversion


def _torch_tensor_to_numpy(x: Any) -> np.ndarray | None:
    # Only look at torch if the caller already imported it: a tensor cannot exist otherwise,
    # and importing torch here would cost seconds for numpy-only callers.
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(x, torch.Tensor):
        return None
    t = x.detach()
    if t.is_floating_point():
        t = t.float()  # bf16/fp16 have no (or lossy) numpy equivalents
    return t.cpu().numpy()


def _array_to_uint8(arr: np.ndarray, prefer_channels_first: bool) -> np.ndarray:
    """(F,H,W,3) or (F,3,H,W) [or (1,F,...)] array of any supported dtype -> uint8 (F,H,W,3)."""
    if arr.ndim == 5 and arr.shape[0] == 1:
        arr = arr[0]  # pipeline output with batch size 1
    if arr.ndim != 4:
        raise ValueError(f"expected frames shaped (F,H,W,3) or (F,3,H,W), got {tuple(arr.shape)}")
    last, first = arr.shape[-1] == 3, arr.shape[1] == 3
    if not (last or first):
        raise ValueError(f"expected 3 RGB channels, got frames shaped {tuple(arr.shape)}")
    if first and (prefer_channels_first or not last):
        arr = arr.transpose(0, 2, 3, 1)
    if 0 in arr.shape:
        raise ValueError(f"no frames / empty frames: shape {tuple(arr.shape)}")

    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind == "f":
        arr32 = arr.astype(np.float32, copy=False)
        if np.isnan(arr32).any():
            raise ValueError(NAN_MESSAGE)
        scaled = np.clip(arr32, 0.0, 1.0) * np.float32(255.0)
        scaled += np.float32(0.5)  # round half up, not numpy's half-to-even
        return np.floor(scaled, out=scaled).astype(np.uint8)
    if arr.dtype.kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"integer frames must be in 0..255, got range {lo}..{hi}")
        return np.ascontiguousarray(arr.astype(np.uint8))
    raise ValueError(f"unsupported frame dtype {arr.dtype}; use float in [0,1] or uint8")


def _frame_to_uint8(frame: Any) -> np.ndarray:
    """One frame (PIL image, (H,W,3)/(3,H,W) array or tensor) -> uint8 (H,W,3)."""
    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB"))
    t = _torch_tensor_to_numpy(frame)
    if t is not None:
        return _array_to_uint8(t[None], prefer_channels_first=True)[0]
    if isinstance(frame, np.ndarray):
        return _array_to_uint8(frame[None], prefer_channels_first=False)[0]
    raise TypeError(f"unsupported frame type {type(frame).__name__}; expected PIL image, ndarray or tensor")


def _iter_uint8_frames(frames: FramesLike) -> Iterator[np.ndarray]:
    """Yield uint8 (H,W,3) frames, converting iterables lazily so writers can stream."""
    t = _torch_tensor_to_numpy(frames)
    if t is not None:
        yield from _array_to_uint8(t, prefer_channels_first=True)
        return
    if isinstance(frames, np.ndarray):
        yield from _array_to_uint8(frames, prefer_channels_first=False)
        return
    if isinstance(frames, (Image.Image, str, bytes)) or not isinstance(frames, Iterable):
        raise TypeError(
            f"expected a sequence of frames (list of PIL images, array or tensor), got {type(frames).__name__}"
        )
    shape = None
    for i, frame in enumerate(frames):
        u8 = _frame_to_uint8(frame)
        if shape is None:
            shape = u8.shape
        elif u8.shape != shape:
            raise ValueError(f"frame {i} has shape {u8.shape}, expected {shape} like frame 0")
        yield u8


def to_uint8_frames(frames: FramesLike) -> np.ndarray:
    """Convert frames to a uint8 array (F,H,W,3).

    Accepts a list of PIL images, a numpy array (F,H,W,3) float in [0,1] or uint8, or a
    torch tensor (F,3,H,W) / (F,H,W,3) float in [0,1]; a leading batch dim of 1 is dropped.
    Floats are clipped to [0,1] and rounded; NaN raises ValueError.
    """
    out = list(_iter_uint8_frames(frames))
    if not out:
        raise ValueError("no frames")
    return np.stack(out)


# ---------------------------------------------------------------------------
# encoding


def _check_fps(fps: float) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if isinstance(fps, numbers.Rational):  # ints (numpy too) and Fractions stay exact
        return Fraction(int(fps.numerator), int(fps.denominator))
    return Fraction(float(fps)).limit_denominator(100_000)


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    # Edge replication keeps the border colour instead of adding a black line.
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _encode(
    frames: Iterable[np.ndarray],
    size: tuple[int, int],
    fps: Fraction,
    out: Path,
    args: list[str],
) -> None:
    """Pipe uint8 RGB frames of `size` (w, h) into ffmpeg; raise RuntimeError if it fails."""
    w, h = size
    cmd = [
        _ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:0",
        "-an", *args, str(out),
    ]  # fmt: skip
    # stderr goes to a file, not a pipe: an unread pipe could fill up and deadlock ffmpeg.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        assert proc.stdin is not None
        try:
            try:
                for frame in frames:
                    proc.stdin.write(frame.tobytes())
                proc.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg exited early; its log below says why
            rc = proc.wait()
        except BaseException:
            proc.kill()
            raise
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass  # flushing into a dead pipe
            proc.wait()
        if rc != 0:
            log.seek(0)
            text = log.read().decode("utf-8", "replace")
            if rc == -signal.SIGXFSZ:  # a file-size limit on the process; Python restores SIGXFSZ for children
                raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(out))
            for code in DEST_FULL:  # ffmpeg's own report of a full disk: the caller's atomic_path says it plainly
                if os.strerror(code) in text:
                    raise OSError(code, os.strerror(code), str(out))
            msg = text.strip().splitlines()[-5:]
            raise RuntimeError(f"ffmpeg failed (exit {rc}) writing {out.name}: " + " | ".join(msg))


def _check_nonempty(path: Path) -> None:
    if os.path.getsize(path) == 0:
        raise RuntimeError(f"ffmpeg wrote an empty file for {path.name}")


def write_mp4(frames: FramesLike, path: str | os.PathLike[str], fps: int = 8) -> Path:
    """Write an H.264 (yuv420p) MP4 atomically; odd sizes are padded by one edge pixel.

    Iterables of frames are streamed; if one raises, nothing is left at `path`.
    """
    rate = _check_fps(fps)
    path = Path(path)
    it = _iter_uint8_frames(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("no frames")
    padded = _pad_to_even(first)
    h, w = padded.shape[:2]
    args = [
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(MP4_CRF), "-preset", "medium",
        # moov atom first so browsers can start playing before the download ends
        "-movflags", "+faststart", "-f", "mp4",
    ]  # fmt: skip
    with atomic_path(path) as tmp:
        _encode(
            (_pad_to_even(f) for f in itertools.chain([first], it)),
            (w, h),
            rate,
            tmp,
            args,
        )
        _check_nonempty(tmp)
    return path


def write_gif(frames: FramesLike, path: str | os.PathLike[str], fps: int = 8) -> Path:
    """Write an animated GIF (loops forever) atomically.

    Encoded by ffmpeg rather than Pillow because Pillow merges identical consecutive
    frames (changing the frame count) and truncates every delay to 10 ms steps. GIF
    delays are centiseconds, so ffmpeg alternates them (8 fps: 130/120 ms); the final
    delay is chosen so the total duration is exactly frames/fps (to 10 ms).
    """
    rate = _check_fps(fps)
    arr = to_uint8_frames(frames)  # palettegen needs every frame anyway
    n, h, w = arr.shape[:3]
    ends_cs = [math.floor(k * 100 / rate + Fraction(1, 2)) for k in (n - 1, n)]
    final_delay = max(ends_cs[1] - ends_cs[0], 1)
    args = [
        "-vf",
        GIF_FILTER,
        "-loop",
        "0",
        "-final_delay",
        str(final_delay),
        "-f",
        "gif",
    ]
    path = Path(path)
    with atomic_path(path) as tmp:
        _encode(iter(arr), (w, h), rate, tmp, args)
        _check_nonempty(tmp)
    return path


# ---------------------------------------------------------------------------
# naming


def slugify(prompt: str, max_len: int = 60) -> str:
    """Filesystem-safe slug: lowercase ascii words joined by '-', 1..max_len chars of [a-z0-9-].

    Non-ascii letters are transliterated where Unicode allows (é -> e) and dropped
    otherwise; an empty result falls back to 'video'.
    """
    if max_len < 1:
        raise ValueError("max_len must be >= 1")
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii").lower()
    slug = "-".join(re.findall(r"[a-z0-9]+", ascii_text))
    if len(slug) > max_len:
        cut = slug[:max_len]
        # Prefer ending at a word boundary unless that would drop everything.
        if slug[max_len] != "-" and "-" in cut:
            cut = cut.rsplit("-", 1)[0]
        slug = cut.strip("-")
    return slug or "video"[:max_len]


def video_stem(prompt: str, seed: int) -> str:
    """File stem for a generated video: '<slug>-<seed>'."""
    return f"{slugify(prompt)}-{seed}"


_WRITERS = {"mp4": write_mp4, "gif": write_gif}


def write_video(
    frames: FramesLike,
    out_dir: str | os.PathLike[str],
    stem: str,
    fps: int = 8,
    formats: Sequence[str] = FORMATS,
) -> dict[str, Path]:
    """Write `frames` as `<out_dir>/<stem>.<fmt>` for each format; returns {fmt: path}."""
    if not stem or stem in (".", "..") or any(c in stem for c in "/\\\0"):
        raise ValueError(f"stem must be a plain file name, got {stem!r}")
    fmts = list(dict.fromkeys(f.lower() for f in formats))
    unknown = [f for f in fmts if f not in _WRITERS]
    if not fmts or unknown:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {tuple(formats)}")
    directory = ensure_writable_dir(out_dir)
    arr = to_uint8_frames(frames)  # convert once, and a generator can only be read once
    return {f: _WRITERS[f](arr, directory / f"{stem}.{f}", fps) for f in fmts}


# ---------------------------------------------------------------------------
# reading (tests and evaluation)


def _is_gif(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(6) in (b"GIF87a", b"GIF89a")


def read_video(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode all frames as uint8 (F,H,W,3): decord for video, imageio for GIF."""
    path = Path(path)
    if _is_gif(path):
        import imageio.v3 as iio

        arr = iio.imread(path, index=None, mode="RGB")
        return np.ascontiguousarray(arr if arr.ndim == 4 else arr[None])
    try:
        import decord
    except ImportError:  # decord has no wheels for some platforms
        import imageio.v3 as iio

        return np.asarray(iio.imread(path, index=None, plugin="FFMPEG"))
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def video_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """{'frames', 'width', 'height', 'fps'}: decord for video, PIL for GIF (fps from delays)."""
    path = Path(path)
    if _is_gif(path):
        with Image.open(path) as im:
            n = im.n_frames
            width, height = im.size
            total_ms = 0
            for k in range(n):
                im.seek(k)
                total_ms += im.info.get("duration", 0)
        fps = n * 1000.0 / total_ms if total_ms else 0.0
        return {"frames": n, "width": width, "height": height, "fps": fps}
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
    height, width = vr[0].shape[:2]
    return {
        "frames": len(vr),
        "width": int(width),
        "height": int(height),
        "fps": float(vr.get_avg_fps()),
    }
