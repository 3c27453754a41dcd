"""`cdvideo demo`: the whole job offline on the embedded Shapes world, with a scorecard."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cdvideo.atomic import atomic_path, ensure_writable_dir
from cdvideo.presets import DEMO_RECIPE
from cdvideo.rendering import AnimateConfig, animate
from cdvideo.training import TrainConfig, train

PROMPT = "a circle wearing headphones moving right"


def write_subject_photos(folder: Path, count: int = 5, seed: int = 0) -> list[Path]:
    """The user's 'dog': cut-out photos (PNG with alpha) of the striped circle that no caption names."""
    from cdvideo.shapes import world

    ensure_writable_dir(folder)
    scenes = world.subject_scenes(count, torch.Generator().manual_seed(seed))
    images, alphas = world.render(scenes), world.object_coverage(scenes)
    paths = []
    for i, (image, alpha) in enumerate(zip(images, alphas, strict=True)):
        path = folder / f"subject-{i}.png"
        rgba = torch.cat([image, alpha[None]]).permute(1, 2, 0).numpy()
        with atomic_path(path) as tmp:
            Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA").save(tmp)
        paths.append(path)
    return paths


def scorecard(frames: np.ndarray, expected_motion: str = "moving right") -> dict:
    """What the world's scorer reads off a rendered clip."""
    from cdvideo.shapes import scorer

    clip = scorer.score_clip(torch.from_numpy(np.asarray(frames)).permute(0, 3, 1, 2).float())
    pattern = sum(f.pattern for f in clip.frames) / len(clip.frames)
    return {
        "subject pattern (frames)": f"{pattern:.0%}",
        "class": clip.cls,
        "accessory": clip.accessory or "none",
        "motion": clip.motion or "still",
        "motion correct": clip.motion == expected_motion,
    }


def demo(
    output: str = "cdvideo-demo",
    seed: int = 0,
    recipe: str | None = DEMO_RECIPE,
    say: Callable[[str], None] = print,
    train_settings: dict | None = None,
) -> dict:
    """Train the demo subject's concept, render the headline prompt with and without it, and score both.
    `recipe` None or "none" trains at the family's plain defaults; `train_settings` (TrainConfig fields) override
    the family's and the recipe's settings."""
    out = ensure_writable_dir(Path(output))
    photos = out / "photos"
    write_subject_photos(photos, seed=seed)
    say(f"wrote 5 subject photos to {photos}")
    concept_dir = train(
        TrainConfig(
            images=[str(photos)],
            class_word="circle",
            base="shapes",
            output=str(out / "concept"),
            seed=seed,
            recipe=None if recipe == "none" else recipe,
            **(train_settings or {}),
        ),  # fmt: skip
        say=say,
    )
    with_concept = animate(
        AnimateConfig(prompts=[PROMPT], concept=str(concept_dir), seeds=[seed], output=str(out / "with-concept")),
        say=say,
    )[0]
    without = animate(
        AnimateConfig(
            prompts=[PROMPT], use_concept=False, base="shapes", seeds=[seed], output=str(out / "without-concept")
        ),
        say=say,
    )[0]
    from cdvideo.concept import load_concept

    cards = {"with concept": scorecard(with_concept.frames), "without concept": scorecard(without.frames)}
    drift = load_concept(concept_dir).drift
    say("")
    say(f"scorecard for '{PROMPT}' (seed {seed}):")
    keys = list(cards["with concept"])
    say(f"  {'':26}{'with concept':>22}{'without':>22}")
    for key in keys:
        say(f"  {key:26}{str(cards['with concept'][key]):>22}{str(cards['without concept'][key]):>22}")
    say(f"  {'concept-class cosine':26}{drift:>22.3f}")
    return {"cards": cards, "drift": drift, "videos": [with_concept.files, without.files]}
