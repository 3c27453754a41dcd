"""The clips `cdvideo eval` scores: read from videos `cdvideo animate` wrote, or rendered, one pipeline
per concept (or base model) for the whole prompt x seed set, with one progress bar over every clip."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cdvideo import loading, videofiles
from cdvideo.errors import UserError


@dataclass
class Clip:
    frames: np.ndarray  # (F, H, W, 3) uint8
    file: str


@dataclass
class ClipSet:
    """One model's clips for a prompt list: found on disk, and still to render (seed -> prompts)."""

    concept: Path | None  # None: the base model alone
    base: str
    out: Path
    found: dict[tuple[str, int], Clip] = field(default_factory=dict)
    missing: dict[int, list[str]] = field(default_factory=dict)

    @property
    def to_render(self) -> int:
        return sum(len(p) for p in self.missing.values())


def _video_index(folder: Path) -> dict[tuple[str, int, str | None], tuple[Path, dict]]:
    """(rendered prompt, seed, concept folder or None) -> (video file, settings), from the JSON beside each."""
    index = {}
    for meta in sorted(folder.rglob("*.json")):  # recursive: an earlier eval's output folder works too
        try:
            settings = json.loads(meta.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            continue  # not one of ours
        if not isinstance(settings, dict) or "rendered_prompt" not in settings or "seed" not in settings:
            continue
        video = next((meta.with_suffix(s) for s in (".mp4", ".gif") if meta.with_suffix(s).exists()), None)
        if video is None:
            continue
        owner = str(Path(settings["concept"]).resolve()) if settings.get("concept") else None
        index[(settings["rendered_prompt"], int(settings["seed"]), owner)] = (video, settings)
    return index


def read_clip(path: Path) -> Clip:
    try:
        frames = videofiles.read_video(path)
    except Exception as err:  # decord/imageio raise their own types for corrupt files
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UserError(f"video {path} does not decode ({first}); delete it and its .json to render it again") from err
    if frames.ndim != 4 or len(frames) == 0:
        raise UserError(f"video {path} has no frames; delete it and its .json to render it again")
    return Clip(np.ascontiguousarray(frames), str(path))


def plan(
    videos: str | None, prompts: list[str], seeds: list[int], concept: Path | None, base: str, out: Path
) -> ClipSet:
    """Which (prompt, seed) clips are already in `videos` (read now) and which must be rendered into `out`."""
    owner = str(concept.resolve()) if concept else None
    index = _video_index(Path(videos)) if videos else {}
    clips = ClipSet(concept, base, out)
    for prompt in prompts:
        for seed in seeds:
            found = index.get((prompt, seed, owner))
            if found and (owner or loading.base_identity(found[1].get("base", "")) == base):
                clips.found[(prompt, seed)] = read_clip(found[0])
            else:
                clips.missing.setdefault(seed, []).append(prompt)
    return clips


def progress_bar(total: int):
    """Clips rendered / total with an ETA, on stderr; silent when nothing is to render."""
    from tqdm import tqdm

    return tqdm(total=total, desc="rendering clips", unit="clip", file=sys.stderr, disable=total == 0, leave=True)


def render(clips: ClipSet, settings: dict, bar, say) -> dict[tuple[str, int], Clip]:
    """Render what `clips` is missing with `cdvideo.animate`; `settings` are AnimateConfig fields."""
    from cdvideo.rendering import AnimateConfig, animate

    done = dict(clips.found)
    # One pipeline load per distinct prompt list (normally one for everything).
    groups: dict[tuple[str, ...], list[int]] = {}
    for seed, todo in clips.missing.items():
        groups.setdefault(tuple(todo), []).append(seed)
    for todo, seeds in groups.items():
        config = AnimateConfig(
            prompts=list(todo),
            concept=str(clips.concept) if clips.concept else None,
            use_concept=clips.concept is not None,
            base=clips.base,
            seeds=seeds,
            output=str(clips.out),
            **settings,
        )
        videos = animate(config, say=lambda _msg: None, progress=False, on_video=lambda _v: bar.update(1))
        for video in videos:
            # Scored as generated, not as re-decoded from the lossy mp4.
            done[(video.prompt, video.seed)] = Clip(videofiles.to_uint8_frames(video.frames), str(video.files["mp4"]))
        say(f"rendered {len(videos)} {'concept' if clips.concept else 'base model'} videos into {clips.out}")
    return done
