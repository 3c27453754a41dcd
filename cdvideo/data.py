"""Load the user's subject photos robustly: skip junk, fix orientation and colour, crop to squares."""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from cdvideo.errors import UserError

IMAGE_SUFFIXES: set[str] = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}

# Formats phones and cameras produce that Pillow cannot read out of the box: a precise hint
# saves the user from wondering why their photo is "not an image".
_UNSUPPORTED_SUFFIXES: dict[str, str] = {
    ".heic": "HEIC",
    ".heif": "HEIF",
    ".avif": "AVIF",
    ".gif": "GIF",
    ".dng": "raw DNG",
    ".cr2": "raw CR2",
    ".cr3": "raw CR3",
    ".nef": "raw NEF",
    ".arw": "raw ARW",
}

# Own limit instead of Image.MAX_IMAGE_PIXELS so nothing global is changed: roomy enough for
# 8000x8000, while a full decode of a non-JPEG (no draft mode) stays around 300 MB at most.
MAX_PIXELS = 8192 * 8192

RECOMMENDED = "3-20"


def masks_to_tensor(masks: list[Image.Image | None], flip: bool, size: int) -> torch.Tensor | None:
    """Subject masks as (N, 1, size, size) coverage in [0, 1], in `photos_to_tensor`'s order (flips
    appended); None unless every photo has one (a loss masked on some photos only would teach the
    others' backgrounds)."""
    if not masks or any(m is None for m in masks):
        return None
    array = np.stack([np.asarray(m, dtype=np.float32) / 255.0 for m in masks])
    tensor = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(array)[:, None], size)
    if flip:
        tensor = torch.cat([tensor, torch.flip(tensor, dims=[3])])
    return tensor.contiguous()


_MAX_LISTED_SKIPS = 5
_WHITE = (255, 255, 255)
# Modes where box-averaging in Image.reduce is meaningful (palette indices, bilevel and
# 16-bit modes are not supported or would be garbled).
_REDUCIBLE_MODES = {"L", "RGB", "CMYK"}


@dataclass
class PhotoSet:
    """Photos ready for training plus everything the user should hear about."""

    images: list[Image.Image] = field(default_factory=list)
    # The subject's mask from each photo's alpha channel (kohya's `alpha_mask`), None where it has none.
    masks: list[Image.Image | None] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    # The per-photo notes again, as {note: photo labels}, so the same note on many photos reads once.
    photo_notes: dict[str, list[str]] = field(default_factory=dict)

    def grouped_notes(self) -> list[str]:
        """The notes, with a note that several photos share folded into one line."""
        shared = {text: labels for text, labels in self.photo_notes.items() if len(labels) > 1}
        lines = [n for n in self.notes if not any(n.endswith(f": {text}") and n.split(": ")[0] in labels
                                                   for text, labels in shared.items())]  # fmt: skip
        for text, labels in shared.items():
            shown = ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")
            lines.append(f"{len(labels)} photos ({shown}): {text}")
        return lines


COMPOSITED_NOTE = "transparent pixels composited on white"


class _Skip(Exception):
    """Internal: this file cannot be used; the message is the reason shown to the user."""


def load_photos(
    inputs: Sequence[str | Path],
    resolution: int,
    *,
    min_size: int = 64,
    max_photos: int = 100,
) -> PhotoSet:
    """Load photos from folders (non-recursive) and/or files as RGB squares of `resolution` px."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs:
        raise UserError("no photo paths given; give 3-20 JPEG/PNG photos of one subject")
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")

    result = PhotoSet()
    candidates = _collect_candidates(inputs, result.skipped)
    labels = _labels(candidates + [p for p, _ in result.skipped])
    first_by_hash: dict[str, Path] = {}

    for path in candidates:
        try:
            digest = _file_hash(path)
        except OSError as e:
            result.skipped.append((path, f"cannot read file: {_short(e, path)}"))
            continue
        if digest in first_by_hash:
            result.notes.append(f"{labels[first_by_hash[digest]]} and {labels[path]} are identical: using one")
            continue
        try:
            image, mask, notes = _load_one(path, resolution, min_size)
        except _Skip as e:
            result.skipped.append((path, str(e)))
            continue
        first_by_hash[digest] = path
        result.images.append(image)
        result.masks.append(mask)
        result.paths.append(path)
        result.notes.extend(f"{labels[path]}: {n}" for n in notes)
        for note in notes:
            result.photo_notes.setdefault(note, []).append(labels[path])
        # Fail early rather than decode thousands of files pointed at by mistake.
        if len(result.images) > max_photos:
            raise UserError(
                f"too many photos in {_where(inputs)}: more than {max_photos} usable; "
                f"pick {RECOMMENDED} good photos of one subject"
            )

    if not result.images:
        raise UserError(
            f"no usable photos in {_where(inputs)} ({_skip_summary(result.skipped, labels)}); "
            f"give {RECOMMENDED} JPEG/PNG photos of one subject"
        )
    if len(result.images) < 3:
        result.notes.append(
            f"only {len(result.images)} usable photo(s); {RECOMMENDED} photos of the subject are recommended"
        )
    return result


def photos_to_tensor(images: list[Image.Image], flip: bool) -> torch.Tensor:
    """Stack RGB images into a float tensor (N, 3, H, W) in [-1, 1]; flip=True appends mirrored copies."""
    if not images:
        raise ValueError("no images to convert")
    sizes = {img.size for img in images}
    if len(sizes) != 1:
        raise ValueError(f"images must all have the same size, got {sorted(sizes)}")
    array = np.stack([np.asarray(img.convert("RGB"), dtype=np.uint8) for img in images])
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    if flip:
        tensor = torch.cat([tensor, torch.flip(tensor, dims=[3])])
    return tensor.contiguous()


def _collect_candidates(inputs: Sequence[str | Path], skipped: list[tuple[Path, str]]) -> list[Path]:
    candidates: list[Path] = []
    seen: set[Path] = set()
    for raw in inputs:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(f"photo path does not exist: {path}")
        entries = sorted(path.iterdir(), key=lambda p: p.name) if path.is_dir() else [path]
        for entry in entries:
            # The same file reached twice (folder and file both given) is not a duplicate photo.
            key = entry.resolve()
            if key in seen:
                continue
            seen.add(key)
            reason = _reject_reason(entry)
            if reason:
                skipped.append((entry, reason))
            else:
                candidates.append(entry)
    return candidates


def _reject_reason(path: Path) -> str | None:
    if path.is_dir():
        return "folder (subfolders are not searched)"
    if path.name.startswith("."):
        # Includes macOS "._IMG_1.jpg" resource forks, which carry an image suffix.
        return "not an image (hidden file)"
    suffix = path.suffix.lower()
    if suffix in _UNSUPPORTED_SUFFIXES:
        return f"unsupported format {_UNSUPPORTED_SUFFIXES[suffix]} (convert to JPEG or PNG)"
    if suffix not in IMAGE_SUFFIXES:
        return "not an image"
    if not path.is_file():
        return "not a regular file"
    return None


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_one(path: Path, resolution: int, min_size: int) -> tuple[Image.Image, Image.Image | None, list[str]]:
    if path.stat().st_size == 0:
        raise _Skip("unreadable image: empty file (0 bytes)")
    # Save/restore because this is a process-wide switch another library may have flipped;
    # with it on, half a PNG would silently load as a grey-bottomed image.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return _process(im, resolution, min_size)
    except _Skip:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _Skip(f"too large to decode safely (over {MAX_PIXELS // 1_000_000} megapixels)") from None
    except UnidentifiedImageError:
        raise _Skip("unreadable image: not a recognised image format") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this file", never a crash
        raise _Skip(f"unreadable image: {_short(e, path)}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _process(im: Image.Image, resolution: int, min_size: int) -> tuple[Image.Image, Image.Image | None, list[str]]:
    notes: list[str] = []
    width, height = im.size
    if width * height > MAX_PIXELS:
        raise _Skip(f"too large ({width}x{height} > {MAX_PIXELS // 1_000_000} megapixels)")
    if min(width, height) < min_size:
        raise _Skip(f"too small ({width}x{height} < {min_size} px)")
    source_format = im.format
    # JPEG only: decode at 1/2, 1/4 or 1/8 scale, so an 8000 px photo never exists at full size.
    # Twice the target keeps enough detail for a good LANCZOS resize afterwards.
    im.draft(None, (2 * resolution, 2 * resolution))
    im.load()
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:  # noqa: BLE001 - broken EXIF should not cost the user a photo
        notes.append("could not read EXIF orientation; used as stored")
    icc_profile = im.info.get("icc_profile")

    if im.mode in _REDUCIBLE_MODES and "transparency" not in im.info:
        im = _reduce(im, resolution)
    rgb, alpha = _to_rgb(im, source_format, icc_profile)
    rgb = _reduce(rgb, resolution)
    composited = alpha is not None
    if composited:
        notes.append(COMPOSITED_NOTE)
    if min(width, height) < resolution:
        notes.append(f"only {width}x{height}, upscaled to {resolution} px (may look soft)")
    if max(width, height) > 2 * min(width, height):
        shape = "wide" if width > height else "tall"
        notes.append(f"very {shape} ({width}x{height}); the centre crop may cut off the subject")
    mask = _square(_reduce(alpha, resolution), resolution) if alpha is not None else None
    return _square(rgb, resolution), mask, notes


def _reduce(im: Image.Image, resolution: int) -> Image.Image:
    # Cheap box downscale to about twice the target before the expensive LANCZOS pass.
    factor = min(im.size) // (2 * resolution)
    return im.reduce(factor) if factor >= 2 else im


def _square(im: Image.Image, resolution: int) -> Image.Image:
    width, height = im.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = im.crop((left, top, left + side, top + side))
    if side != resolution:
        square = square.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return square


def _to_rgb(
    im: Image.Image, source_format: str | None, icc_profile: bytes | None
) -> tuple[Image.Image, Image.Image | None]:
    """Return (8-bit RGB image, its alpha channel where transparent pixels were composited on white)."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth_to_l(im, source_format).convert("RGB"), None

    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        # convert("RGBA") also applies palette / tRNS transparency.
        rgba = im.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] < 255:
            flat = Image.new("RGB", rgba.size, _WHITE)
            flat.paste(rgba, mask=alpha)
            return _apply_icc(flat, icc_profile, "RGB"), alpha
        return _apply_icc(rgba.convert("RGB"), icc_profile, "RGB"), None

    if mode == "CMYK":
        # The embedded profile matters a lot for CMYK; the naive formula is only a fallback.
        converted = _icc_to_srgb(im, icc_profile, "CMYK")
        return (converted or im.convert("RGB")), None

    try:
        rgb = im.convert("RGB")
    except ValueError:
        raise _Skip(f"unsupported colour mode {mode}") from None
    return (_apply_icc(rgb, icc_profile, "RGB") if mode == "RGB" else rgb), None


def _high_bit_depth_to_l(im: Image.Image, source_format: str | None) -> Image.Image:
    # Pillow's own convert("L") clips 16-bit values at 255, turning a normal 16-bit PNG white;
    # scale by the real bit depth instead.
    values = np.asarray(im).astype(np.float64)
    if im.mode.startswith("I;16") or (im.mode == "I" and source_format == "PNG"):
        scaled = values / 257.0
    else:
        low, high = float(values.min()), float(values.max())
        if im.mode == "F" and low >= 0.0 and high <= 1.0:
            scaled = values * 255.0
        elif low >= 0.0 and high <= 255.0:
            scaled = values
        elif low >= 0.0 and high <= 65535.0:
            scaled = values / 257.0
        elif high > low:
            scaled = (values - low) * (255.0 / (high - low))
        else:
            scaled = np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _apply_icc(rgb: Image.Image, icc_profile: bytes | None, space: str) -> Image.Image:
    return _icc_to_srgb(rgb, icc_profile, space) or rgb


def _icc_to_srgb(im: Image.Image, icc_profile: bytes | None, space: str) -> Image.Image | None:
    """Convert from the embedded profile to sRGB; None if there is nothing (useful) to do."""
    if not icc_profile:
        return None
    try:
        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(BytesIO(icc_profile))
        if source.profile.xcolor_space.strip() != space:
            return None
        if space == "RGB" and "srgb" in ImageCms.getProfileDescription(source).lower():
            return None
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        return ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
    except Exception:  # noqa: BLE001 - a broken profile falls back to plain conversion
        return None


def _labels(paths: list[Path]) -> dict[Path, str]:
    # Bare file names read best; fall back to full paths only when names clash across folders.
    counts = Counter(p.name for p in paths)
    return {p: p.name if counts[p.name] == 1 else str(p) for p in paths}


def _where(inputs: Sequence[str | Path]) -> str:
    return ", ".join(str(Path(p).expanduser()) for p in inputs)


def _skip_summary(skipped: list[tuple[Path, str]], labels: dict[Path, str]) -> str:
    if not skipped:
        return "no files found"
    listed = ", ".join(f"{labels.get(path, path.name)} {reason}" for path, reason in skipped[:_MAX_LISTED_SKIPS])
    more = len(skipped) - _MAX_LISTED_SKIPS
    return f"skipped {len(skipped)}: {listed}" + (f", and {more} more" if more > 0 else "")


def _short(error: BaseException, path: Path, limit: int = 80) -> str:
    # PIL messages can embed the full path and newlines; the user already sees the file name.
    text = " ".join(str(error).replace(str(path), "").split()).strip(" :'\"")
    if not text:
        text = type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
