"""Base-model clips kept by what made them, so that no clip is rendered twice.

Clip composites (cdvideo/clip_composites.py) fit the user's subject into the base video model's own
clips of class prompts ("a photo of a circle wearing headphones moving right"). Such a clip depends
on the models, the prompt, the seed and the sampler, not on the subject: every concept of a class on
the same base is fitted into the same clips. So each clip is stored under a hash of exactly what made
it, in the user's cache (`$CDVIDEO_CACHE/clips`, by default `~/.cache/cdvideo/clips`), and any later
run reads it back. The package ships the Shapes family's clips of its class prompts
(`cdvideo/shapes/clip_bank/`, made by `scripts/build_clip_bank.py`), so `cdvideo demo` starts with
them; when the family's weights change, their hashes change and the shipped clips are simply not
found (a test checks that they are).

Local models are hashed by their files' contents; hub ids are taken as they are (a hub repository
that changes its weights under the same id keeps its old clips: clear the cache after such a change).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cdvideo.atomic import atomic_path
from cdvideo.errors import UserError

SHIPPED = Path(__file__).parent / "shapes" / "clip_bank"


def user_cache() -> Path:
    if os.environ.get("CDVIDEO_CACHE"):
        return Path(os.environ["CDVIDEO_CACHE"]) / "clips"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cdvideo" / "clips"


@functools.lru_cache(maxsize=32)
def source_digest(source: str) -> str:
    """Contents hash of a local model file or folder (its files, by relative name); a hub id as is."""
    path = Path(source)
    if not path.exists():
        return source
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and p.name[0] != ".")
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ClipBank:
    """Clips by key: read from `folders` in order, written to the last one."""

    models: str  # the base model's and motion adapter's digests
    folders: tuple[Path, ...]

    def key(self, prompt: str, seed: int, lora: tuple[str | None, float | None], settings: dict) -> str:
        """`settings`: everything else the render depends on (frames, size, steps, guidance, scheduler)."""
        source, weight = lora
        made_by = {
            "models": self.models,
            "prompt": prompt,
            "seed": seed,
            "lora": [source_digest(source), weight] if source else None,
            "settings": settings,
        }
        return hashlib.sha256(json.dumps(made_by, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def find(self, key: str) -> Path | None:
        return next((f / f"{key}.png" for f in self.folders if (f / f"{key}.png").is_file()), None)

    def put(self, key: str, clip_png: Path, prompt: str) -> None:
        """Keep a rendered clip; a cache that cannot be written is skipped (the clip is in the run's folder)."""
        folder = self.folders[-1]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(folder / f"{key}.txt") as tmp:
                tmp.write_text(prompt + "\n", encoding="utf-8")
            with atomic_path(folder / f"{key}.png") as tmp:
                shutil.copyfile(clip_png, tmp)
        except (OSError, UserError):
            pass


def for_models(base: str, adapter: str, write_to: Path | None = None) -> ClipBank:
    """The bank for clips of local or hub `base` and `adapter` sources: the shipped clips, then the
    user's cache (or `write_to`), which takes new clips."""
    models = f"{source_digest(base)}+{source_digest(adapter)}"
    return ClipBank(models, (SHIPPED, write_to or user_cache()))
