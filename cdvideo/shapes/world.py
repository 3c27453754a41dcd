"""The Shapes world: a procedural renderer of 64x64 scenes and clips, with captions.

Everything is rendered with batched torch ops from a `Scene` of per-sample attribute tensors,
so the same code feeds training on a GPU at thousands of images per second and writes the
handful of subject photos a user would have. Colours are a fixed palette on purpose: the scorer
(`cdvideo.shapes.scorer`) can then read a generated frame exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

SIZE = 64
CLASSES = ("circle", "square", "triangle", "star")
COLOURS = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.10, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
# Background 0 is the default a caption does not name.
BACKGROUNDS = {
    "": (1.00, 1.00, 1.00),
    "in the sky": (0.60, 0.80, 1.00),
    "on grass": (0.55, 0.85, 0.45),
    "at night": (0.10, 0.10, 0.35),
    "on sand": (0.93, 0.80, 0.62),
}
ACCESSORIES = {
    "": None,
    "wearing a hat": (0.03, 0.03, 0.03),
    "with a scarf": (0.85, 0.20, 0.75),
    "wearing headphones": (0.50, 0.50, 0.50),
}
MOTIONS = ("", "moving left", "moving right", "moving up", "moving down", "bouncing")
# The user's subject: a circle with bold blue/yellow vertical stripes that no caption names.
PATTERN_COLOURS = ("blue", "yellow")
STRIPE_WIDTH = 5.0
# (class, colour, accessory) triples never shown in training: composition is tested on them.
HELD_OUT = (
    ("circle", "green", "wearing a hat"),
    ("square", "blue", "with a scarf"),
    ("triangle", "yellow", "wearing headphones"),
    ("star", "red", "wearing a hat"),
    ("square", "red", "wearing headphones"),
    ("triangle", "blue", "with a scarf"),
)
SUBJECT_CLASS = "circle"

_CLIP_SPEED = 1.4  # pixels per frame
_MARGIN_SIDE = 17.0  # radius 12 + headphone cups
_MARGIN_TOP = 21.0  # room for a hat above the object


@dataclass
class Scene:
    """Attributes of a batch of scenes: index tensors into the tables above, positions in pixels."""

    cls: torch.Tensor
    colour: torch.Tensor
    accessory: torch.Tensor
    background: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    radius: torch.Tensor
    pattern: torch.Tensor  # bool: the striped subject

    def __len__(self) -> int:
        return len(self.cls)

    def to(self, device: torch.device | str) -> Scene:
        return Scene(**{k: v.to(device) for k, v in self.__dict__.items()})


def _held_out_mask(cls: torch.Tensor, colour: torch.Tensor, accessory: torch.Tensor) -> torch.Tensor:
    names_c, names_col, names_acc = list(CLASSES), list(COLOURS), list(ACCESSORIES)
    mask = torch.zeros_like(cls, dtype=torch.bool)
    for c, col, acc in HELD_OUT:
        mask |= (cls == names_c.index(c)) & (colour == names_col.index(col)) & (accessory == names_acc.index(acc))
    return mask


def sample_scenes(
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    allow_held_out: bool = False,
) -> Scene:
    """Random scenes; held-out (class, colour, accessory) triples are resampled unless allowed."""

    def randint(high: int) -> torch.Tensor:
        return torch.randint(high, (n,), generator=generator)

    cls, colour, accessory = randint(len(CLASSES)), randint(len(COLOURS)), randint(len(ACCESSORIES))
    if not allow_held_out:
        for _ in range(20):
            bad = _held_out_mask(cls, colour, accessory)
            if not bad.any():
                break
            colour = torch.where(bad, randint(len(COLOURS)), colour)
    rand = torch.rand(4, n, generator=generator)
    scene = Scene(
        cls=cls,
        colour=colour,
        accessory=accessory,
        background=randint(len(BACKGROUNDS)),
        x=_MARGIN_SIDE + rand[0] * (SIZE - 2 * _MARGIN_SIDE),
        y=_MARGIN_TOP + rand[1] * (SIZE - _MARGIN_TOP - _MARGIN_SIDE),
        radius=10.0 + 2.0 * rand[2],
        pattern=torch.zeros(n, dtype=torch.bool),
    )
    return scene.to(device)


def subject_scenes(n: int, generator: torch.Generator | None = None) -> Scene:
    """The user's subject: the striped circle, plain white background, no accessory."""
    scene = sample_scenes(n, generator)
    zeros = torch.zeros(n, dtype=torch.long)
    return replace(
        scene,
        cls=zeros + CLASSES.index(SUBJECT_CLASS),
        colour=zeros + list(COLOURS).index(PATTERN_COLOURS[0]),
        accessory=zeros,
        background=zeros,
        pattern=torch.ones(n, dtype=torch.bool),
    )


def _palette(table: dict) -> torch.Tensor:
    return torch.tensor([v if v is not None else (0.0, 0.0, 0.0) for v in table.values()])


def _shape_distance(scene: Scene, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels, negative inside) of every pixel to each scene's object."""
    dx = px - scene.x[:, None, None]
    dy = py - scene.y[:, None, None]
    r = scene.radius[:, None, None]
    circle = torch.sqrt(dx**2 + dy**2) - r
    square = torch.maximum(dx.abs(), dy.abs()) - 0.85 * r
    # Equilateral triangle pointing up, circumradius r: the max of three edge half-planes.
    edges = []
    for angle in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3):
        nx, ny = math.cos(angle + math.pi), -math.sin(angle + math.pi)
        edges.append(dx * nx + dy * ny - 0.5 * r)
    triangle = torch.stack(edges).amax(0)
    # Five-pointed star: radius interpolated between the tips and the notches by angle.
    theta = torch.atan2(-dy, dx) - math.pi / 2
    phase = torch.remainder(theta * 5 / (2 * math.pi), 1.0)
    from_tip = 2 * torch.minimum(phase, 1 - phase)  # 0 at a tip (the first points up), 1 at a notch
    star = torch.sqrt(dx**2 + dy**2) - r * (1 - 0.55 * from_tip)
    by_class = torch.stack([circle, square, triangle, star])
    return by_class.gather(0, scene.cls[None, :, None, None].expand(1, *circle.shape))[0]


def object_coverage(scene: Scene) -> torch.Tensor:
    """How much of each pixel the object covers (N, 64, 64) in [0, 1]: a cut-out's alpha channel."""
    coords = torch.arange(SIZE, device=scene.x.device, dtype=torch.float32) + 0.5
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    n = len(scene)
    return _coverage(_shape_distance(scene, px.expand(n, SIZE, SIZE), py.expand(n, SIZE, SIZE)))


def _coverage(distance: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage from a signed distance."""
    return (0.5 - distance).clamp(0, 1)


def _box(dx: torch.Tensor, dy: torch.Tensor, half_w: torch.Tensor, half_h: torch.Tensor) -> torch.Tensor:
    return torch.maximum(dx.abs() - half_w, dy.abs() - half_h)


def render(scene: Scene) -> torch.Tensor:
    """Render scenes to images (N, 3, 64, 64), float in [0, 1]."""
    device = scene.x.device
    n = len(scene)
    coords = torch.arange(SIZE, device=device, dtype=torch.float32) + 0.5
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    px, py = px.expand(n, SIZE, SIZE), py.expand(n, SIZE, SIZE)

    image = _palette(BACKGROUNDS).to(device)[scene.background][:, :, None, None].expand(n, 3, SIZE, SIZE)

    def paint(img: torch.Tensor, cover: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        cover = cover[:, None]
        return img * (1 - cover) + colour * cover

    colours = _palette(COLOURS).to(device)
    body = colours[scene.colour][:, :, None, None].expand(n, 3, SIZE, SIZE)
    stripes = torch.remainder(torch.floor((px - scene.x[:, None, None]) / STRIPE_WIDTH), 2)[:, None]
    a, b = (colours[list(COLOURS).index(c)][None, :, None, None] for c in PATTERN_COLOURS)
    striped = a * (1 - stripes) + b * stripes
    body = torch.where(scene.pattern[:, None, None, None], striped, body)
    image = paint(image, _coverage(_shape_distance(scene, px, py)), body)

    dx = px - scene.x[:, None, None]
    dy = py - scene.y[:, None, None]
    r = scene.radius[:, None, None]
    acc_colours = _palette(ACCESSORIES).to(device)[scene.accessory]
    names = list(ACCESSORIES)
    scarf = _box(dx, dy - 0.45 * r - 2.0, r + 1.5, torch.full_like(r, 2.0))
    hat_brim = _box(dx, dy + r + 1.0, 0.8 * r, torch.full_like(r, 1.0))
    hat_crown = _box(dx, dy + r + 5.0, 0.45 * r, torch.full_like(r, 4.0))
    hat = torch.minimum(hat_brim, hat_crown)
    ring = (torch.sqrt(dx**2 + dy**2) - (r + 3.0)).abs() - 1.2
    band = torch.maximum(ring, dy + 0.2 * r)
    cups = torch.minimum(
        _box(dx - (r + 2.5), dy, torch.full_like(r, 2.0), torch.full_like(r, 3.5)),
        _box(dx + (r + 2.5), dy, torch.full_like(r, 2.0), torch.full_like(r, 3.5)),
    )
    headphones = torch.minimum(band, cups)
    far = torch.full_like(scarf, 1e3)
    acc_distance = torch.where(
        (scene.accessory == names.index("with a scarf"))[:, None, None],
        scarf,
        torch.where(
            (scene.accessory == names.index("wearing a hat"))[:, None, None],
            hat,
            torch.where((scene.accessory == names.index("wearing headphones"))[:, None, None], headphones, far),
        ),
    )
    image = paint(image, _coverage(acc_distance), acc_colours[:, :, None, None])
    return image.clamp(0, 1)


def clip_scenes(scene: Scene, motion: torch.Tensor, frames: int) -> list[Scene]:
    """Per-frame scenes of clips: each sample moves as its `motion` index says, staying in frame.

    Starting points are drawn so the whole path fits, which also makes a still frame's position
    carry a hint of the motion (an object moving left starts on the right), as in real video.
    """
    n = len(scene)
    device = scene.x.device
    lo_x, hi_x = _MARGIN_SIDE, SIZE - _MARGIN_SIDE
    lo_y, hi_y = _MARGIN_TOP, SIZE - _MARGIN_SIDE
    # Long clips move slower so the whole path still fits in the frame.
    speed = min(_CLIP_SPEED, (min(hi_x - lo_x, hi_y - lo_y) - 4.0) / max(frames - 1, 1))
    travel = speed * (frames - 1)
    u = (scene.x - lo_x) / (hi_x - lo_x)
    v = (scene.y - lo_y) / (hi_y - lo_y)
    names = list(MOTIONS)
    vx = torch.zeros(n, device=device)
    vy = torch.zeros(n, device=device)
    start_x, start_y = scene.x.clone(), scene.y.clone()
    for name, ddx, ddy in (("moving left", -1, 0), ("moving right", 1, 0), ("moving up", 0, -1), ("moving down", 0, 1)):
        m = motion == names.index(name)
        vx = torch.where(m, torch.full_like(vx, float(ddx)), vx)
        vy = torch.where(m, torch.full_like(vy, float(ddy)), vy)
    # Rescale start positions into the range that keeps the full path inside the frame.
    span_x = (hi_x - lo_x) - travel
    span_y = (hi_y - lo_y) - travel
    start_x = torch.where(vx > 0, lo_x + u * span_x, torch.where(vx < 0, hi_x - u * span_x, start_x))
    start_y = torch.where(vy > 0, lo_y + v * span_y, torch.where(vy < 0, hi_y - v * span_y, start_y))
    bouncing = motion == names.index("bouncing")
    bounce_floor = hi_y - v * 4.0
    start_y = torch.where(bouncing, bounce_floor, start_y)
    out = []
    for t in range(frames):
        x = start_x + vx * speed * t
        y = start_y + vy * speed * t
        hop = 14.0 * (math.sin(math.pi * 2 * t / max(frames - 1, 1))) ** 2
        y = torch.where(bouncing, bounce_floor - hop, y)
        out.append(replace(scene, x=x, y=y))
    return out


def render_clip(scene: Scene, motion: torch.Tensor, frames: int = 16) -> torch.Tensor:
    """Render clips (N, F, 3, 64, 64) in [0, 1]."""
    return torch.stack([render(s) for s in clip_scenes(scene, motion, frames)], dim=1)


def caption(
    cls: int,
    colour: int | None,
    accessory: int,
    background: int,
    motion: int = 0,
    prefix: str = "a",
    token: str | None = None,
) -> str:
    """The caption grammar: '[a photo of] a [token] [colour] class [accessory] [background] [motion]'.

    An omitted colour means any colour; an omitted accessory means none; an omitted background
    means the plain white one; an omitted motion means still.
    """
    words = [prefix]
    if token:
        words.append(token)
    if colour is not None:
        words.append(list(COLOURS)[colour])
    words.append(CLASSES[cls])
    for phrase in (list(ACCESSORIES)[accessory], list(BACKGROUNDS)[background], MOTIONS[motion]):
        if phrase:
            words.append(phrase)
    return " ".join(words)


def vocabulary_words() -> list[str]:
    """Every word the grammar uses (for building the tokenizer)."""
    text = " ".join(
        ["a photo of", *CLASSES, *COLOURS, *ACCESSORIES, *BACKGROUNDS, *MOTIONS, "still", "and", "the", "with"]
    )
    return sorted(set(text.split()))


def frame_scenes(scene: Scene, motion: torch.Tensor, frames: int, index: torch.Tensor) -> Scene:
    """One frame per sample (frame `index[i]` of sample i's clip): single images with motion context."""
    path = clip_scenes(scene, motion, frames)
    xs = torch.stack([s.x for s in path], dim=1)
    ys = torch.stack([s.y for s in path], dim=1)
    pick = index[:, None].to(xs.device)
    return replace(scene, x=xs.gather(1, pick)[:, 0], y=ys.gather(1, pick)[:, 0])


def random_captions(
    scene: Scene, motion: torch.Tensor | None, generator: torch.Generator | None = None, drop: float = 0.0
) -> list[str]:
    """Training captions with the grammar's optional parts varied, and `drop` of them emptied."""
    n = len(scene)
    rand = torch.rand(4, n, generator=generator).tolist()
    out = []
    for i in range(n):
        if rand[0][i] < drop:
            out.append("")
            continue
        out.append(
            caption(
                int(scene.cls[i]),
                None if rand[1][i] < 0.2 else int(scene.colour[i]),
                int(scene.accessory[i]),
                int(scene.background[i]),
                0 if motion is None or rand[2][i] < 0.5 else int(motion[i]),
                prefix="a photo of a" if rand[3][i] < 0.5 else "a",
            )
        )
    return out


def composition_phrases() -> tuple[str, ...]:
    """Every phrase the grammar may put after a subject: accessory, background and motion, alone
    and combined (the caption variety a masked subject photo is trained with)."""
    phrases = []
    for accessory in ACCESSORIES:
        for background in BACKGROUNDS:
            for motion in MOTIONS:
                words = " ".join(w for w in (accessory, background, motion) if w)
                if words:
                    phrases.append(words)
    return tuple(phrases)


def scene_phrases() -> tuple[str, ...]:
    """Every accessory, every background, and every accessory + background pair: the still
    scenes a subject can be put in (no motion: one picture cannot show it)."""
    accessories = [a for a in ACCESSORIES if a]
    backgrounds = [b for b in BACKGROUNDS if b]
    return (*accessories, *backgrounds, *(f"{a} {b}" for a in accessories for b in backgrounds))


def prior_prompts() -> tuple[str, ...]:
    """Prompts for the Shapes preset's prior images: the class phrase, interleaved with one seen
    caption per (class, colour), so the prior guards the other classes and colours too, not only
    the subject's class. Accessories cycle; held-out combinations stay out."""
    held = set(HELD_OUT)
    accessories = [a for a in ACCESSORIES if a]
    prompts = []
    for i, (cls, colour) in enumerate((c, k) for c in CLASSES for k in COLOURS):
        accessory = next(a for j in range(3) if (cls, colour, a := accessories[(i + j) % 3]) not in held)
        prompts += ["a photo of a {class_word}", f"a photo of a {colour} {cls} {accessory}"]
    return tuple(prompts)
