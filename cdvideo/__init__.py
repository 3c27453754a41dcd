"""cdvideo: personalized text-to-video. ClassDiffusion-style concepts, animated with AnimateDiff.

import cdvideo
cdvideo.train(cdvideo.TrainConfig(images=["photos/rex"], class_word="dog"))
cdvideo.animate(cdvideo.AnimateConfig(prompts=["a dog wearing headphones running"]))
"""

from __future__ import annotations

import importlib
import logging

__version__ = "0.1.0"

# bitsandbytes (the optional 8-bit AdamW) warns at import, through peft, on every CPU without the
# `kernels` package; cdvideo never uses its 4-bit kernels, and the line would sit under every error.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

_EXPORTS = {
    "train": "cdvideo.training",
    "TrainConfig": "cdvideo.training",
    "animate": "cdvideo.rendering",
    "AnimateConfig": "cdvideo.rendering",
    "export_concept": "cdvideo.concept_formats",
    "push": "cdvideo.hub",
    "demo": "cdvideo.demo",
    "UserError": "cdvideo.errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    # Lazy: `cdvideo --help` should not pay for importing torch and diffusers.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cdvideo' has no attribute {name!r}")
