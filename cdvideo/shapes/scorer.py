"""Read Shapes-world frames and clips (typically generated ones) back into attributes.

A generated frame is a blurry, slightly noisy, slightly off-colour version of a render, so every
decision below is made from robust counts rather than single pixels:

* each pixel is labelled with the nearest palette colour, or left unlabelled when it is far from
  all of them or ambiguous between two (anti-aliased and blurred edges are mixtures);
* the background is the palette background most frequent on the image border;
* the class is the best IoU of the object mask against the world's own silhouettes over a grid of
  positions and radii, with accessory pixels and unlabelled pixels as don't-care;
* the motion of a clip comes from the object centroid's trajectory.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cdvideo.shapes import world

_BG_NAMES = list(world.BACKGROUNDS)
_COLOUR_NAMES = list(world.COLOURS)
_ACC_NAMES = [name for name, rgb in world.ACCESSORIES.items() if rgb is not None]
_BG = torch.tensor(list(world.BACKGROUNDS.values()))
_OBJ = torch.tensor(list(world.COLOURS.values()))
_ACC = torch.tensor([world.ACCESSORIES[name] for name in _ACC_NAMES])

# Pixel labels: 0 = the image's background, then the object colours, then the accessory colours.
_OTHER = -1
_FIRST_OBJ = 1
_FIRST_ACC = _FIRST_OBJ + len(_OBJ)
_N_LABELS = _FIRST_ACC + len(_ACC)
_BLUE, _YELLOW = (_FIRST_OBJ + _COLOUR_NAMES.index(c) for c in world.PATTERN_COLOURS)
_GREY = _FIRST_ACC + _ACC_NAMES.index("wearing headphones")

# The closest palette pair (night sky vs the black hat) is 0.33 apart; 0.3 still accepts pixels
# with std-0.05 noise while the ratio test rejects 50/50 mixtures of two palette colours.
_MAX_DIST = 0.3
_RATIO = 0.6
# Blends nearer either end than this are just that colour, not a blend to reject.
_SEGMENT_INTERIOR = 0.15
_BORDER = 2
# Real objects cover >= ~130 px and accessories >= ~80 px; these floors only reject specks.
_MIN_OBJECT_PIXELS = 20
_MIN_ACCESSORY_PIXELS = 20
# Headphones need this many grey pixels more than _NEAR_BODY px from the body (a clean render has ~40).
_NEAR_BODY = 2
_MIN_FAR_GREY = 12
# Subject stripes: each of blue and yellow is ~half the body, with ~3 boundaries on every row.
_PATTERN_MIN_FRACTION = 0.2
_PATTERN_MIN_PAIRS = 30
# Shape fit: a crop around the centroid, searched over centre offsets and radii.
_CROP = 36
# Offsets are around the rounded centroid, so they cover its rounding (0.5 px) plus its error.
_OFFSETS_X = torch.arange(-1.0, 1.01, 0.5)
_OFFSETS_Y = torch.arange(-1.5, 2.01, 0.5)
# A scarf hides the lower body and pulls the visible centroid ~1.5 px (up to 2.7) above the centre.
_SCARF_SHIFT = 1.5
_RADII = torch.arange(8.5, 13.51, 0.5)  # the world draws 10..12; generated objects drift a little
_CHUNK = 256

_BOUNCE_HEIGHT = 14.0


@dataclass
class FrameScore:
    """What the scorer sees in one frame. `accessory` and `background` are world phrase keys."""

    cls: str | None
    colour: str | None
    accessory: str
    background: str
    pattern: bool
    x: float | None
    y: float | None
    object_pixels: int
    shape_iou: float = 0.0  # IoU of the best silhouette fit: low values flag a malformed object


@dataclass
class ClipScore:
    """Per-frame scores plus clip-level majorities and the motion read from the trajectory."""

    frames: list[FrameScore]
    cls: str | None
    colour: str | None
    accessory: str
    background: str
    pattern: bool
    motion: str
    class_kept: float


def _to_nchw(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Any supported layout/dtype/size -> float (N, 3, 64, 64) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    x = x.detach().cpu()
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise ValueError(f"expected (N, 3, H, W) or (N, H, W, 3) images, got shape {tuple(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] != 3:
        raise ValueError(f"expected 3 colour channels, got shape {tuple(x.shape)}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    h, w = x.shape[-2:]
    if (h, w) != (world.SIZE, world.SIZE):
        # Area averaging when shrinking keeps thin parts (hat brim, headphone band) visible.
        mode = "area" if h >= world.SIZE and w >= world.SIZE else "bilinear"
        kwargs = {} if mode == "area" else {"align_corners": False}
        x = F.interpolate(x, size=(world.SIZE, world.SIZE), mode=mode, **kwargs)
    return x.clamp(0, 1).contiguous()


def _sq_dist(pixels: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Squared distances (N, P, L) of pixels (N, P, 3) to per-image palettes (N, L, 3)."""
    # The expanded form turns the work into one batched matmul; cdist is far slower for 3-D points.
    cross = torch.bmm(pixels, palette.transpose(1, 2))
    return ((pixels**2).sum(-1, keepdim=True) - 2 * cross + (palette**2).sum(-1)[:, None]).clamp_min(0)


def _background(pixels: torch.Tensor) -> torch.Tensor:
    """Index of the palette background most frequent on the border, (N,); pixels (N, HW, 3)."""
    n, s = pixels.shape[0], world.SIZE
    border = torch.ones(s, s, dtype=torch.bool)
    border[_BORDER:-_BORDER, _BORDER:-_BORDER] = False
    edge = pixels[:, border.flatten()]
    nearest = _sq_dist(edge, _BG[None].expand(n, -1, -1)).argmin(-1)
    votes = torch.bincount((nearest + len(_BG) * torch.arange(n)[:, None]).flatten(), minlength=n * len(_BG))
    return votes.view(n, len(_BG)).argmax(-1)


def _shift_any(mask: torch.Tensor, shifts: range) -> torch.Tensor:
    """OR of `mask` shifted along rows: out[..., x] = any(mask[..., x + k] for k in shifts)."""
    w = mask.shape[-1]
    out = torch.zeros_like(mask)
    for k in shifts:
        if k > 0:
            out[..., : w - k] |= mask[..., k:]
        else:
            out[..., -k:] |= mask[..., : w + k]
    return out


def _labels(pixels: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """Per-pixel palette label (N, H, W), or _OTHER for far or ambiguous pixels; pixels (N, HW, 3)."""
    n, s = pixels.shape[0], world.SIZE
    bg_rgb = _BG[bg]
    palette = torch.cat(
        [bg_rgb[:, None], _OBJ[None].expand(n, -1, -1), _ACC[None].expand(n, -1, -1)], dim=1
    )  # (N, L, 3)
    two = _sq_dist(pixels, palette).topk(2, dim=-1, largest=False)
    d0, d1 = two.values.unbind(-1)
    ok = (d0 < _MAX_DIST**2) & (d0 < _RATIO**2 * d1)
    labels = torch.where(ok, two.indices[..., 0], torch.full_like(two.indices[..., 0], _OTHER))

    # An object edge blends the object into the background, and several of those blends land on
    # an accessory colour (yellow over night or green over sand is nearly the headphones' grey).
    # Such a pixel sits on the background-object segment, far closer to it than to the accessory.
    acc = (labels >= _FIRST_ACC).nonzero(as_tuple=True)
    if len(acc[0]):
        p = pixels[acc]  # (M, 3)
        start = bg_rgb[acc[0]][:, None]  # (M, 1, 3)
        direction = _OBJ[None] - start  # (M, C, 3)
        alpha = ((p[:, None] - start) * direction).sum(-1) / (direction**2).sum(-1)
        alpha = alpha.clamp(_SEGMENT_INTERIOR, 1 - _SEGMENT_INTERIOR)
        to_segment = ((p[:, None] - start - alpha[..., None] * direction) ** 2).sum(-1).amin(-1)
        blend = to_segment < d0[acc]
        labels[acc[0][blend], acc[1][blend]] = _OTHER

    labels = labels.view(n, s, s)
    # A blurred blue|yellow stripe boundary averages to the headphones' grey too; it lies inside
    # the body (object colour on both sides along the row) where real headphones never are.
    obj = (labels >= _FIRST_OBJ) & (labels < _FIRST_ACC)
    interior = (labels == _GREY) & _shift_any(obj, range(-3, 0)) & _shift_any(obj, range(1, 4))
    labels = torch.where(interior, torch.full_like(labels, _OTHER), labels)
    # The same blend rims the edge of a blurred striped body. Real headphones reach 2-4 px beyond
    # the body (cups and band); a grey rim hugging the body does not, and is no accessory.
    grey = labels == _GREY
    near_body = F.max_pool2d(obj[:, None].float(), 2 * _NEAR_BODY + 1, stride=1, padding=_NEAR_BODY)[:, 0] > 0
    rim_only = (grey & ~near_body).flatten(1).sum(1) < _MIN_FAR_GREY
    return torch.where(grey & rim_only[:, None, None], torch.full_like(labels, _OTHER), labels)


@functools.lru_cache(maxsize=1)
def _templates() -> torch.Tensor:
    """Silhouette coverage (CROP*CROP, K) for every (class, radius, offset y, offset x).

    Drawn by the world's own geometry, so a clean render matches one template exactly; columns
    are class-major so per-class maxima are a reshape away.
    """
    cls, radius, oy, ox = (
        t.flatten()
        for t in torch.meshgrid(torch.arange(len(world.CLASSES)).float(), _RADII, _OFFSETS_Y, _OFFSETS_X, indexing="ij")
    )
    zeros = torch.zeros(len(cls), dtype=torch.long)
    scene = world.Scene(
        cls=cls.long(),
        colour=zeros,
        accessory=zeros,
        background=zeros,
        x=_CROP / 2 + ox,
        y=_CROP / 2 + oy,
        radius=radius,
        pattern=zeros.bool(),
    )
    coords = torch.arange(_CROP, dtype=torch.float32) + 0.5  # the world's pixel-centre convention
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    cover = world._coverage(world._shape_distance(scene, px, py))  # (K, CROP, CROP)
    return cover.flatten(1).t().contiguous()


def _crop(mask: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, CROP, CROP) uint8 windows at top-left (x0, y0); outside the image is 0."""
    padded = F.pad(mask.to(torch.uint8), (_CROP, _CROP, _CROP, _CROP))
    ar = torch.arange(_CROP)
    rows = (y0 + _CROP)[:, None] + ar
    cols = (x0 + _CROP)[:, None] + ar
    n = torch.arange(mask.shape[0])
    return padded[n[:, None, None], rows[:, :, None], cols[:, None, :]]


def _fit_shapes(
    obj: torch.Tensor, care: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best class index and its IoU per image from the object mask, ignoring don't-care pixels."""
    templates = _templates()
    x0 = torch.round(cx).long() - _CROP // 2
    y0 = torch.round(cy).long() - _CROP // 2
    care_c = _crop(care, x0, y0).flatten(1)
    obj_c = _crop(obj & care, x0, y0).flatten(1)
    # One matmul gives both the intersections and the template areas restricted to care pixels.
    both = torch.cat([obj_c, care_c]).float() @ templates
    inter, template_area = both.split(len(obj))
    union = obj_c.sum(1, keepdim=True).float() + template_area - inter
    iou = inter / union.clamp_min(1e-6)
    best = iou.view(len(obj), len(world.CLASSES), -1).amax(-1)
    value, cls = best.max(-1)
    return cls, value


def _score_chunk(img: torch.Tensor) -> list[FrameScore]:
    n, s = img.shape[0], world.SIZE
    pixels = img.flatten(2).transpose(1, 2).contiguous()  # (N, HW, 3)
    bg = _background(pixels)
    labels = _labels(pixels, bg)
    offsets = (_N_LABELS + 1) * torch.arange(n)[:, None]
    counts = torch.bincount((labels.flatten(1) + 1 + offsets).flatten(), minlength=n * (_N_LABELS + 1))
    counts = counts.view(n, _N_LABELS + 1)[:, 1:]  # drop _OTHER
    obj_counts = counts[:, _FIRST_OBJ:_FIRST_ACC]
    acc_best, acc_idx = counts[:, _FIRST_ACC:].max(-1)
    has_acc = acc_best >= _MIN_ACCESSORY_PIXELS
    obj = (labels >= _FIRST_OBJ) & (labels < _FIRST_ACC)
    care = (labels >= 0) & (labels < _FIRST_ACC)
    n_obj = obj_counts.sum(1)
    present = n_obj >= _MIN_OBJECT_PIXELS

    coords = torch.arange(s, dtype=torch.float32) + 0.5  # the world's pixel-centre convention
    denom = n_obj.clamp_min(1).float()
    cx = (obj.sum(1).float() * coords).sum(1) / denom
    cy = (obj.sum(2).float() * coords).sum(1) / denom
    scarf = has_acc & (acc_idx == _ACC_NAMES.index("with a scarf"))
    cls, iou = _fit_shapes(obj, care, cx, cy + _SCARF_SHIFT * scarf)

    blue, yellow = labels == _BLUE, labels == _YELLOW
    pairs = torch.zeros(n, dtype=torch.long)
    for k in (1, 2, 3):  # a stripe boundary may hide behind a blurred pixel or two
        across = (blue[..., :-k] & yellow[..., k:]) | (yellow[..., :-k] & blue[..., k:])
        pairs += across.flatten(1).sum(1)
    pattern = (
        present
        & (counts[:, _BLUE] >= _PATTERN_MIN_FRACTION * denom)
        & (counts[:, _YELLOW] >= _PATTERN_MIN_FRACTION * denom)
        & (pairs >= _PATTERN_MIN_PAIRS)
    )
    colour_idx = obj_counts.argmax(-1)

    out = []
    for i in range(n):
        seen = bool(present[i])
        if bool(pattern[i]):
            colour = world.PATTERN_COLOURS[0]  # the subject's colour index in world scenes
        else:
            colour = _COLOUR_NAMES[int(colour_idx[i])] if seen else None
        out.append(
            FrameScore(
                cls=world.CLASSES[int(cls[i])] if seen else None,
                colour=colour,
                accessory=_ACC_NAMES[int(acc_idx[i])] if bool(has_acc[i]) else "",
                background=_BG_NAMES[int(bg[i])],
                pattern=bool(pattern[i]),
                x=float(cx[i]) if seen else None,
                y=float(cy[i]) if seen else None,
                object_pixels=int(n_obj[i]),
                shape_iou=float(iou[i]) if seen else 0.0,
            )
        )
    return out


def score_frames(images: torch.Tensor | np.ndarray) -> list[FrameScore]:
    """Score frames: torch (N, 3, H, W) / numpy (N, H, W, 3), float in [0, 1] or uint8, any size."""
    img = _to_nchw(images)
    with torch.no_grad():
        return [score for chunk in img.split(_CHUNK) for score in _score_chunk(chunk)]


def _majority(values: Sequence):
    present = [v for v in values if v is not None]
    return Counter(present).most_common(1)[0][0] if present else None


def _reversals(values: Sequence[float], threshold: float) -> int:
    """Direction changes of a 1-D track, each counted once it retreats `threshold` from its extreme."""
    count, direction, extreme = 0, 0, values[0]
    for v in values[1:]:
        if direction == 0:
            if abs(v - values[0]) >= threshold:
                direction, extreme = (1 if v > values[0] else -1), v
        elif (v - extreme) * direction > 0:
            extreme = v
        elif (extreme - v) * direction >= threshold:
            count, direction, extreme = count + 1, -direction, v
    return count


def motion_from_track(xs: Sequence[float | None], ys: Sequence[float | None]) -> str:
    """A world.MOTIONS key from per-frame object centres (None where the object was not seen)."""
    t = [i for i, (x, y) in enumerate(zip(xs, ys)) if x is not None and y is not None]
    if len(t) < 2:
        return ""
    tt = torch.tensor(t, dtype=torch.float64)
    x = torch.tensor([xs[i] for i in t], dtype=torch.float64)
    y = torch.tensor([ys[i] for i in t], dtype=torch.float64)
    frames = len(xs)
    travel = world._CLIP_SPEED * (frames - 1)

    def net(v: torch.Tensor) -> float:
        # Least-squares slope over the whole clip: one bad frame barely moves it.
        tc = tt - tt.mean()
        return float((tc * (v - v.mean())).sum() / (tc**2).sum().clamp_min(1e-9)) * (frames - 1)

    net_x, net_y = net(x), net(y)
    range_y = float(y.max() - y.min())
    # Hops are a fixed 14 px whatever the frame count; 4 frames see only one up-and-down.
    min_reversals = 2 if len(t) >= 5 else 1
    if (
        range_y >= 0.4 * _BOUNCE_HEIGHT
        and abs(net_y) < 0.4 * range_y
        and abs(net_x) < max(3.0, 0.4 * range_y)
        and _reversals(y.tolist(), 0.3 * range_y) >= min_reversals
    ):
        return "bouncing"
    if max(abs(net_x), abs(net_y)) >= max(2.0, 0.5 * travel):
        if abs(net_x) >= abs(net_y):
            return "moving right" if net_x > 0 else "moving left"
        return "moving down" if net_y > 0 else "moving up"  # image y grows downward
    return ""


def _clip_from_frames(frames: list[FrameScore], expected_cls: str | None) -> ClipScore:
    cls = _majority([f.cls for f in frames])
    target = expected_cls if expected_cls is not None else cls
    return ClipScore(
        frames=frames,
        cls=cls,
        colour=_majority([f.colour for f in frames]),
        accessory=_majority([f.accessory for f in frames]),
        background=_majority([f.background for f in frames]),
        pattern=sum(f.pattern for f in frames) * 2 > len(frames),
        motion=motion_from_track([f.x for f in frames], [f.y for f in frames]),
        class_kept=sum(f.cls == target for f in frames) / max(len(frames), 1),
    )


def score_clip(frames: torch.Tensor | np.ndarray, expected_cls: str | None = None) -> ClipScore:
    """Score one clip, frames (F, 3, H, W) or (F, H, W, 3); class_kept is against `expected_cls`
    when given, else against the clip's majority class."""
    return _clip_from_frames(score_frames(frames), expected_cls)


def clip_motion(frames: torch.Tensor | np.ndarray) -> str:
    """The motion phrase a clip (F, 3, H, W) in [0, 1] shows ("" when still)."""
    return score_clip(frames).motion


def score_clips(clips: torch.Tensor | np.ndarray, expected_cls: Sequence[str | None] | None = None) -> list[ClipScore]:
    """Score a batch of clips (N, F, 3, H, W) or (N, F, H, W, 3) with one batched pass over frames."""
    n, f = clips.shape[:2]
    flat = clips.reshape(n * f, *clips.shape[2:])
    scores = score_frames(flat)
    expected = list(expected_cls) if expected_cls is not None else [None] * n
    return [_clip_from_frames(scores[i * f : (i + 1) * f], expected[i]) for i in range(n)]


def expected_from_scene(scene: world.Scene, motion: torch.Tensor | None = None) -> list[dict]:
    """The attributes a scorer should read from renders of `scene` (and clips with `motion`)."""
    out = []
    for i in range(len(scene)):
        row = {
            "cls": world.CLASSES[int(scene.cls[i])],
            "colour": _COLOUR_NAMES[int(scene.colour[i])],
            "accessory": list(world.ACCESSORIES)[int(scene.accessory[i])],
            "background": _BG_NAMES[int(scene.background[i])],
            "pattern": bool(scene.pattern[i]),
        }
        if motion is not None:
            row["motion"] = world.MOTIONS[int(motion[i])]
        out.append(row)
    return out


def accuracy_table(
    scores: Sequence[FrameScore | ClipScore], expected: Sequence[dict] | world.Scene
) -> dict[str, float]:
    """Fraction of scores matching `expected` for each attribute the expectations name."""
    if isinstance(expected, world.Scene):
        expected = expected_from_scene(expected)
    if len(scores) != len(expected):
        raise ValueError(f"{len(scores)} scores but {len(expected)} expectations")
    keys = [k for k in expected[0] if all(hasattr(s, k) for s in scores)] if expected else []
    return {k: sum(getattr(s, k) == e[k] for s, e in zip(scores, expected)) / len(scores) for k in keys}


def sample_and_score(pipe, prompt: str, n: int, *, steps: int, guidance: float, seed: int) -> list[FrameScore]:
    """Draw `n` 64-px images of `prompt` from a Shapes image pipeline and score each one."""
    images = pipe(
        prompt,
        num_images_per_prompt=n,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        height=64,
        width=64,
    ).images
    return score_frames(np.asarray(images))


# Prompts without the concept's token, with their expected (class, colour, accessory): a concept
# must leave these as the base model draws them.
PLAIN_PROMPTS = [
    ("a red square wearing a hat", "square", "red", "wearing a hat"),
    ("a green triangle", "triangle", "green", ""),
    ("a blue star with a scarf", "star", "blue", "with a scarf"),
    ("a yellow circle wearing headphones", "circle", "yellow", "wearing headphones"),
]


def plain_accuracy(pipe, n: int, *, steps: int, guidance: float, seed: int) -> float:
    """Share of `n` samples per plain prompt with class, colour and accessory all right."""
    hits = []
    for prompt, cls, colour, accessory in PLAIN_PROMPTS:
        scores = sample_and_score(pipe, prompt, n, steps=steps, guidance=guidance, seed=seed)
        hits += [s.cls == cls and s.colour == colour and s.accessory == accessory for s in scores]
    return float(np.mean(hits))


def object_masks(images: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the object's body is, and where an accessory is, in each image: two (N, H, W) bool
    masks read with the scorer's own palette labels (so a hat or a scarf over the body is not body)."""
    img = _to_nchw(images)
    with torch.no_grad():
        pixels = img.flatten(2).transpose(1, 2).contiguous()
        labels = _labels(pixels, _background(pixels))
    return (labels >= _FIRST_OBJ) & (labels < _FIRST_ACC), labels >= _FIRST_ACC
