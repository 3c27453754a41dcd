"""Contact sheets: every prompt x seed of a render in one grid, as a still (PNG) and animated (GIF)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cdvideo.atomic import atomic_path
from cdvideo.videofiles import FramesLike, to_uint8_frames, write_gif

SHEET = "contact-sheet"
GAP = 2  # white pixels between cells
GAP_COLOUR = 255


def tile(cells: Sequence[Sequence[np.ndarray]], gap: int = GAP) -> np.ndarray:
    """Lay uint8 (H, W, 3) images out as rows x columns with `gap` white pixels between them."""
    rows, cols = len(cells), max(len(row) for row in cells)
    h, w = cells[0][0].shape[:2]
    sheet = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), GAP_COLOUR, np.uint8)
    for r, row in enumerate(cells):
        for c, image in enumerate(row):
            if image.shape[:2] != (h, w):
                raise ValueError(f"cell ({r}, {c}) is {image.shape[:2]}, expected {(h, w)} like the first")
            y, x = r * (h + gap), c * (w + gap)
            sheet[y : y + h, x : x + w] = image
    return sheet


def write_contact_sheets(
    videos: Sequence[FramesLike], columns: int, out_dir: str | os.PathLike[str], fps: int = 8, stem: str = SHEET
) -> dict[str, Path]:
    """Videos in reading order, `columns` to a row (animate: a row per prompt, a column per seed),
    as `<stem>.png` (each clip's middle frame) and `<stem>.gif` (all frames)."""
    clips = [to_uint8_frames(frames) for frames in videos]
    grid = [clips[i : i + columns] for i in range(0, len(clips), columns)]
    counts = {len(clip) for row in grid for clip in row}
    if len(counts) != 1:
        raise ValueError(f"videos have different frame counts {sorted(counts)}; a contact sheet needs one")
    (n,) = counts
    out = Path(out_dir)
    png = out / f"{stem}.png"
    with atomic_path(png) as tmp:
        Image.fromarray(tile([[clip[n // 2] for clip in row] for row in grid])).save(tmp, format="PNG")
    frames = np.stack([tile([[clip[t] for clip in row] for row in grid]) for t in range(n)])
    return {"png": png, "gif": write_gif(frames, out / f"{stem}.gif", fps)}
