"""Tests for cdvideo.data: real image files written to tmp_path, no mocks of PIL."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageFile

from cdvideo import data
from cdvideo.data import IMAGE_SUFFIXES, PhotoSet, load_photos, photos_to_tensor
from cdvideo.errors import UserError

RES = 64


def _photo(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (96, 96)) -> Path:
    """Write a distinct RGB photo (solid colour plus a faint ramp, so files never collide)."""
    w, h = size
    arr = np.empty((h, w, 3), dtype=np.uint8)
    arr[:] = color
    arr[:, :, 0] = np.clip(arr[:, :, 0].astype(int) + (np.arange(w) % 8), 0, 255)
    Image.fromarray(arr).save(path)
    return path


def _mean(img: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    return np.asarray(img.crop(box), dtype=float).reshape(-1, 3).mean(axis=0)


def _near(actual: np.ndarray, expected: tuple[int, int, int], tol: float = 20) -> bool:
    return bool(np.all(np.abs(actual - np.array(expected)) <= tol))


def test_image_suffixes() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"} == IMAGE_SUFFIXES


def test_empty_folder_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no usable photos in .*no files found"):
        load_photos([tmp_path], RES)


def test_only_non_images_is_user_error_naming_them(tmp_path: Path) -> None:
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "notes.txt").write_text("a photo of sks dog")
    with pytest.raises(UserError) as info:
        load_photos([tmp_path], RES)
    message = str(info.value)
    assert "\n" not in message
    assert ".DS_Store not an image" in message
    assert "notes.txt not an image" in message
    assert "give 3-20 JPEG/PNG photos" in message


def test_mixed_folder_keeps_photos_and_lists_junk(tmp_path: Path) -> None:
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (tmp_path / "b.txt").write_text("a photo of sks dog")
    _photo(tmp_path / "c.png", (0, 200, 0))
    _photo(tmp_path / "a.jpg", (200, 0, 0))
    _photo(tmp_path / "b.JPEG", (0, 0, 200))

    photos = load_photos([tmp_path], RES)

    assert isinstance(photos, PhotoSet)
    assert [p.name for p in photos.paths] == ["a.jpg", "b.JPEG", "c.png"]
    assert all(img.mode == "RGB" and img.size == (RES, RES) for img in photos.images)
    assert sorted(p.name for p, _ in photos.skipped) == [
        ".DS_Store",
        "Thumbs.db",
        "b.txt",
    ]
    assert all(reason.startswith("not an image") for _, reason in photos.skipped)
    assert photos.notes == []


def test_files_and_folders_can_be_mixed(tmp_path: Path) -> None:
    folder = tmp_path / "rex"
    folder.mkdir()
    _photo(folder / "1.png", (10, 10, 10))
    single = _photo(tmp_path / "extra.png", (50, 50, 50))
    # Naming a file that is also inside a given folder must not count as a duplicate.
    photos = load_photos([folder, single, folder / "1.png"], RES)
    assert [p.name for p in photos.paths] == ["1.png", "extra.png"]
    assert not any("identical" in n for n in photos.notes)


def test_corrupt_jpeg_is_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "bad.jpg").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    _photo(tmp_path / "good.jpg", (100, 100, 100))

    photos = load_photos([tmp_path], RES)

    assert [p.name for p in photos.paths] == ["good.jpg"]
    [(path, reason)] = photos.skipped
    assert path.name == "bad.jpg"
    assert reason.startswith("unreadable image:")
    assert str(tmp_path) not in reason
    assert any("3-20" in n for n in photos.notes)


def test_corrupt_only_error_names_file_and_reason(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(UserError, match=r"skipped 1: bad\.jpg unreadable image"):
        load_photos([tmp_path], RES)


def test_truncated_png_is_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    full = tmp_path / "full.png"
    Image.fromarray(noise).save(full)
    raw = full.read_bytes()
    full.unlink()
    (tmp_path / "half.png").write_bytes(raw[: len(raw) // 2])
    _photo(tmp_path / "ok.png", (1, 2, 3))

    photos = load_photos([tmp_path], RES)

    assert [p.name for p in photos.paths] == ["ok.png"]
    [(path, reason)] = photos.skipped
    assert path.name == "half.png"
    assert reason.startswith("unreadable image:")


def test_truncated_png_skipped_even_if_pil_flag_was_on(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    buf = tmp_path / "full.png"
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(buf)
    raw = buf.read_bytes()
    buf.write_bytes(raw[: len(raw) // 2])
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(UserError, match="unreadable image"):
            load_photos([buf], RES)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    # Pure red ink mix: no cyan, full magenta and yellow, no black.
    Image.new("CMYK", (96, 96), (0, 255, 255, 0)).save(path, quality=95)
    [img] = load_photos([path], RES).images
    assert img.mode == "RGB"
    assert _near(_mean(img, (0, 0, RES, RES)), (255, 0, 0), tol=30)


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 128).round().astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(np.tile(ramp, (128, 1))).save(path)
    assert Image.open(path).mode.startswith("I")

    [img] = load_photos([path], RES).images

    row = np.asarray(img)[RES // 2, :, 0].astype(int)
    assert row[0] < 10 and row[-1] > 245
    assert abs(int(row[RES // 2]) - 128) < 12
    assert np.all(np.diff(row) >= 0)  # monotonic gradient
    assert (row == 255).sum() < 4  # clipping would saturate almost everything


def test_rgba_transparency_composited_on_white(tmp_path: Path) -> None:
    arr = np.zeros((96, 96, 4), dtype=np.uint8)
    # Right half opaque blue, left half fully transparent black.
    arr[:, 48:] = (0, 0, 255, 255)
    path = tmp_path / "IMG_2.png"
    Image.fromarray(arr, "RGBA").save(path)

    photos = load_photos([path], RES)

    [img] = photos.images
    assert img.mode == "RGB"
    assert _near(_mean(img, (0, 0, 24, RES)), (255, 255, 255), tol=2)
    assert _near(_mean(img, (40, 0, RES, RES)), (0, 0, 255), tol=2)
    assert "IMG_2.png: transparent pixels composited on white" in photos.notes


def test_opaque_rgba_has_no_note(tmp_path: Path) -> None:
    path = tmp_path / "opaque.png"
    Image.new("RGBA", (96, 96), (10, 20, 30, 255)).save(path)
    photos = load_photos([path], RES)
    assert not any("transparent" in n for n in photos.notes)
    assert _near(_mean(photos.images[0], (0, 0, RES, RES)), (10, 20, 30), tol=1)


def test_palette_with_transparency_composited(tmp_path: Path) -> None:
    pal = Image.new("P", (96, 96), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.paste(1, (48, 0, 96, 96))
    path = tmp_path / "pal.png"
    pal.save(path, transparency=0)

    photos = load_photos([path], RES)

    img = photos.images[0]
    assert _near(_mean(img, (0, 0, 24, RES)), (255, 255, 255), tol=2)
    assert _near(_mean(img, (40, 0, RES, RES)), (0, 255, 0), tol=2)
    assert any("composited on white" in n for n in photos.notes)


def test_grayscale_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.new("L", (96, 96), 77).save(path)
    [img] = load_photos([path], RES).images
    assert img.mode == "RGB"
    assert np.all(np.asarray(img) == 77)


def test_exif_rotated_jpeg_is_transposed(tmp_path: Path) -> None:
    arr = np.zeros((60, 100, 3), dtype=np.uint8)
    arr[:, :50] = (255, 0, 0)  # left half red as stored
    arr[:, 50:] = (0, 0, 255)  # right half blue as stored
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=95)

    [out] = load_photos([path], RES, min_size=16).images

    # Rotated clockwise, stored-left (red) ends up on top and stored-right (blue) at the bottom.
    assert _near(_mean(out, (0, 4, RES, 24)), (255, 0, 0), tol=40)
    assert _near(_mean(out, (0, 40, RES, 60)), (0, 0, 255), tol=40)


def test_tiny_image_is_skipped_with_reason(tmp_path: Path) -> None:
    _photo(tmp_path / "tiny.png", (9, 9, 9), size=(32, 32))
    _photo(tmp_path / "fine.png", (90, 90, 90))

    photos = load_photos([tmp_path], RES)

    assert [p.name for p in photos.paths] == ["fine.png"]
    assert photos.skipped == [(tmp_path / "tiny.png", "too small (32x32 < 64 px)")]


def test_small_image_is_upscaled_with_note(tmp_path: Path) -> None:
    path = _photo(tmp_path / "small.png", (30, 60, 90), size=(80, 80))
    photos = load_photos([path], 128)
    assert photos.images[0].size == (128, 128)
    assert any(n.startswith("small.png: only 80x80, upscaled") for n in photos.notes)


def test_huge_jpeg_loads_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "huge.jpg"
    # Made in a child process so creating the 8000x6000 source does not inflate our own peak RSS.
    script = (
        "import sys; from PIL import Image; "
        "Image.new('RGB', (8000, 6000), (30, 120, 200)).save(sys.argv[1], quality=80)"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    peak_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    photos = load_photos([path], RES)

    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kb) / 1024
    [img] = photos.images
    assert img.size == (RES, RES)
    assert _near(_mean(img, (0, 0, RES, RES)), (30, 120, 200), tol=6)
    # A full decode would need ~190 MB (Pillow stores RGB as 4 bytes per pixel).
    assert grown_mb < 100


def test_over_pixel_limit_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "MAX_PIXELS", 100 * 100)
    _photo(tmp_path / "big.png", (1, 1, 1), size=(200, 120))
    _photo(tmp_path / "ok.png", (2, 2, 2), size=(96, 96))
    photos = load_photos([tmp_path], RES)
    assert [p.name for p in photos.paths] == ["ok.png"]
    [(path, reason)] = photos.skipped
    assert path.name == "big.png" and reason.startswith("too large (200x120")


def test_duplicates_kept_once_with_note(tmp_path: Path) -> None:
    _photo(tmp_path / "a.jpg", (120, 30, 30))
    (tmp_path / "b.jpg").write_bytes((tmp_path / "a.jpg").read_bytes())
    _photo(tmp_path / "c.jpg", (30, 120, 30))

    photos = load_photos([tmp_path], RES)

    assert [p.name for p in photos.paths] == ["a.jpg", "c.jpg"]
    assert "a.jpg and b.jpg are identical: using one" in photos.notes
    assert photos.skipped == []


def test_missing_path_is_user_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match="photo path does not exist: .*nope"):
        load_photos([missing], RES)


def test_too_many_photos_is_user_error(tmp_path: Path) -> None:
    for i in range(3):
        _photo(tmp_path / f"{i}.png", (i * 40, 0, 0))
    with pytest.raises(UserError, match="more than 2"):
        load_photos([tmp_path], RES, max_photos=2)


def test_heic_gets_a_specific_hint(tmp_path: Path) -> None:
    (tmp_path / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    with pytest.raises(UserError, match=r"IMG_0001\.HEIC unsupported format HEIC \(convert to JPEG"):
        load_photos([tmp_path], RES)


def test_embedded_srgb_profile_is_harmless(tmp_path: Path) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = tmp_path / "icc.png"
    Image.new("RGB", (96, 96), (200, 100, 50)).save(path, icc_profile=icc)
    [img] = load_photos([path], RES).images
    assert _near(_mean(img, (0, 0, RES, RES)), (200, 100, 50), tol=2)


def test_photos_to_tensor_shape_range_and_flip() -> None:
    left_white = np.zeros((RES, RES, 3), dtype=np.uint8)
    left_white[:, : RES // 2] = 255
    images = [Image.fromarray(left_white), Image.new("RGB", (RES, RES), (0, 128, 255))]

    plain = photos_to_tensor(images, flip=False)
    assert plain.shape == (2, 3, RES, RES) and plain.dtype == torch.float32
    assert plain.min() >= -1.0 and plain.max() <= 1.0
    assert plain[0, :, :, 0].eq(1.0).all() and plain[0, :, :, -1].eq(-1.0).all()

    flipped = photos_to_tensor(images, flip=True)
    assert flipped.shape == (4, 3, RES, RES)
    assert torch.equal(flipped[:2], plain)
    assert torch.equal(flipped[2:], plain.flip(-1))
    assert flipped[2, :, :, 0].eq(-1.0).all() and flipped[2, :, :, -1].eq(1.0).all()


def test_photos_to_tensor_rejects_mismatched_sizes() -> None:
    with pytest.raises(ValueError, match=re.escape("images must all have the same size, got [(4, 4), (8, 8)]")):
        photos_to_tensor([Image.new("RGB", (8, 8)), Image.new("RGB", (4, 4))], flip=False)
    with pytest.raises(ValueError, match="^no images to convert$"):
        photos_to_tensor([], flip=True)


def test_a_note_many_photos_share_reads_once(tmp_path: Path) -> None:
    for i in range(5):
        im = Image.new("RGBA", (96, 96), (0, 0, 200 + i, 255))
        im.paste((0, 0, 0, 0), (0, 0, 24, 96))
        im.save(tmp_path / f"cut{i}.png")
    Image.new("RGB", (40, 96), (9, 9, 9)).resize((96, 40)).save(tmp_path / "wide.png")

    photos = load_photos([tmp_path], RES, min_size=32)

    lines = photos.grouped_notes()
    assert "5 photos (cut0.png, cut1.png, cut2.png and 2 more): transparent pixels composited on white" in lines
    assert sum("composited" in line for line in lines) == 1
    assert any(line.startswith("wide.png: ") for line in lines)
    assert len(photos.notes) == len(lines) + 4  # the per-photo notes are all still there
