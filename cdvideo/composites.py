"""Scene composites: the subject pasted into the base model's own pictures of its class.

Photos show the subject alone, so on their own they teach "the subject, nothing worn, plain
background", and naming an accessory or a place then displaces the subject (docs/composition/).
A composite shows the subject where such prompts put it: the base model draws "a photo of a circle
wearing a hat", a locator finds the class object's body, and the subject's cut-out is fitted into
that body, under the accessory. Captioned "a photo of a <tok> circle wearing a hat", the whole image
is true, so it is taught whole. This is SVDiff's Cut-Mix idea (Han et al. 2023), fitted to the
object the base model drew instead of pasted beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# Images (N, 3, H, W) in [0, 1] -> (body, accessory) bool masks (N, H, W) of the class object.
Locator = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

_MIN_BODY_PIXELS = 20  # fewer: the base model drew no object to fit the subject into
_ALPHA_CUT = 0.5
_EDGE = 2  # pixels around the scene's object body that still carry its colour


@dataclass
class Composites:
    images: list[Image.Image]
    captions: list[str]
    scenes: list[Image.Image]  # the base model's scene behind each composite
    scene_captions: list[str]  # and the class prompt it was drawn from


def scene_prompts(class_word: str, phrases: tuple[str, ...]) -> list[str]:
    """What the base model is asked to draw: the class phrase with each composition phrase."""
    return [f"a photo of a {class_word} {phrase}" for phrase in phrases]


def _box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = mask.nonzero(as_tuple=True)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def fit_subject(
    scene: torch.Tensor,
    body: torch.Tensor,
    accessory: torch.Tensor,
    subject: torch.Tensor,
    alpha: torch.Tensor,
    box: tuple[int, int, int, int] | None = None,
) -> torch.Tensor | None:
    """`scene` (3, H, W) with the subject (3, H, W; cut-out `alpha` (H, W) in [0, 1]) scaled onto
    `box` (y0, y1, x0, x1; default: the box of `body`) and drawn there, never over the accessory; None
    when the scene has no body to fit it into."""
    if box is None and int(body.sum()) < _MIN_BODY_PIXELS or not bool((alpha > _ALPHA_CUT).any()):
        return None
    y0, y1, x0, x1 = box or _box(body)
    sy0, sy1, sx0, sx1 = _box(alpha > _ALPHA_CUT)
    cut = torch.cat([subject, alpha[None]])[:, sy0:sy1, sx0:sx1]
    fitted = F.interpolate(cut[None], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)[0]
    canvas = torch.zeros(4, *scene.shape[1:])
    canvas[:, y0:y1, x0:x1] = fitted.clamp(0, 1)
    # The scene's own object must not show around the subject (its colour would be learned as the
    # subject's rim): its body and blended edge are painted over with the backdrop first.
    edge = F.max_pool2d(body[None, None].float(), 2 * _EDGE + 1, stride=1, padding=_EDGE)[0, 0] > 0
    scene = torch.where(edge & ~accessory, _backdrop(scene)[:, None, None], scene)
    # Then the whole cut-out; only what is worn stays on top.
    weight = canvas[3] * (~accessory).float()
    return scene * (1 - weight) + canvas[:3] * weight


def _unblend_from_white(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The subject's own colours at its soft edge: the photo loader composited the cut-out on white
    (rgb = colour * alpha + (1 - alpha)), and blending that onto a scene again would draw a pale rim."""
    return ((rgb - (1 - alpha)) / alpha.clamp_min(1e-3)).clamp(0, 1)


def _backdrop(scene: torch.Tensor) -> torch.Tensor:
    """The colour of the scene's border: what lies behind the object in a plain backdrop."""
    border = torch.cat([scene[:, :2].flatten(1), scene[:, -2:].flatten(1), scene[:, :, :2].flatten(1),
                        scene[:, :, -2:].flatten(1)], dim=1)  # fmt: skip
    return border.median(dim=1).values


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image (3, H, W) or a mask (H, W) in [0, 1]."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1) if array.ndim == 3 else torch.from_numpy(array)


def cut_out(photo: Image.Image, mask: Image.Image, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The photo's subject (3, H, W) in its own colours and its alpha (H, W), at `size`."""
    subject, alpha = to_tensor(photo.convert("RGB")), to_tensor(mask)
    if subject.shape[1:] != size:
        subject = F.interpolate(subject[None], size=size, mode="bilinear", align_corners=False)[0]
        alpha = F.interpolate(alpha[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return _unblend_from_white(subject, alpha), alpha


def _located(frames: torch.Tensor, locate: Locator) -> tuple[torch.Tensor, torch.Tensor]:
    bodies, accessories = locate(frames)
    size = frames.shape[2:]
    if bodies.shape[1:] != size:  # a locator that reads a fixed size: masks back at the frames'
        bodies = F.interpolate(bodies[:, None].float(), size=size)[:, 0] > 0.5
        accessories = F.interpolate(accessories[:, None].float(), size=size)[:, 0] > 0.5
    return bodies, accessories


def fit_into_image(
    scene: torch.Tensor, locate: Locator, subject: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor | None:
    """The subject fitted where `locate` finds the class object in `scene` (3, H, W); None if nowhere."""
    bodies, accessories = _located(scene[None], locate)
    return fit_subject(scene, bodies[0], accessories[0], subject, alpha)


_LOST = 0.4  # a frame whose object is under this share of the clip's median size lost it (flicker)


def fit_into_clip(
    frames: torch.Tensor, locate: Locator, subject: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor | None:
    """The subject fitted along the class object's path through `frames` (F, 3, H, W), at one size
    (the median of the object's boxes), so it neither flickers nor changes size where the locator
    loses the object for a frame; there its place is interpolated from the frames around. None when
    the object is found in fewer than half the frames."""
    bodies, accessories = _located(frames, locate)
    areas = bodies.flatten(1).sum(1).float()
    found = areas >= max(_MIN_BODY_PIXELS, _LOST * float(areas.median()))
    if int(found.sum()) * 2 < len(frames):
        return None
    boxes = torch.tensor([_box(b) if ok else (0, 0, 0, 0) for b, ok in zip(bodies, found, strict=True)]).float()
    height = float((boxes[found, 1] - boxes[found, 0]).median())
    width = float((boxes[found, 3] - boxes[found, 2]).median())
    t = np.arange(len(frames))
    centre_y = np.interp(t, t[found.numpy()], ((boxes[found, 0] + boxes[found, 1]) / 2).numpy())
    centre_x = np.interp(t, t[found.numpy()], ((boxes[found, 2] + boxes[found, 3]) / 2).numpy())
    size_y, size_x = frames.shape[2:]
    fitted = []
    for i, (scene, body, accessory) in enumerate(zip(frames, bodies, accessories, strict=True)):
        y0 = int(round(min(max(centre_y[i] - height / 2, 0), size_y - height)))
        x0 = int(round(min(max(centre_x[i] - width / 2, 0), size_x - width)))
        box = (y0, y0 + int(round(height)), x0, x0 + int(round(width)))
        fitted.append(fit_subject(scene, body, accessory, subject, alpha, box))
    return torch.stack(fitted)


def to_image(pixels: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> an RGB image."""
    array = (pixels.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(array, "RGB")


def make_composites(
    scenes: list[Image.Image],
    scene_captions: list[str],
    photos: list[Image.Image],
    masks: list[Image.Image],
    locate: Locator,
    class_phrase: str,
    concept_phrase: str,
) -> Composites:
    """Fit the photos' subjects (in turn) into the scenes; each caption's `class_phrase` becomes
    `concept_phrase`. Scenes with no object to fit into are left out."""
    out = Composites([], [], [], [])
    for i, (scene, caption) in enumerate(zip(scenes, scene_captions, strict=True)):
        pixels = to_tensor(scene.convert("RGB"))
        k = i % len(photos)
        fitted = fit_into_image(pixels, locate, *cut_out(photos[k], masks[k], tuple(pixels.shape[1:])))
        if fitted is None or not caption.startswith(class_phrase):
            continue
        out.images.append(to_image(fitted))
        out.captions.append(concept_phrase + caption[len(class_phrase) :])
        out.scenes.append(scene)
        out.scene_captions.append(caption)
    return out
