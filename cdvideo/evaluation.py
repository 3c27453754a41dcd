"""`cdvideo eval`: does the video look like the subject, follow the prompt, and still move?

For every prompt of a DreamBench-style set (configs/eval/) and seed, the concept's video and the base
model's video (same prompt with the class word alone, same seed) are rendered with `cdvideo.animate`,
or read from a folder of videos `cdvideo animate` wrote (cdvideo/clips.py). Each clip is scored
(cdvideo/metrics.py: CLIP/DINO/BLIP cosines, motion, VBench's dynamic degree and subject consistency,
the Shapes world's exact scorer, drift) and the report written (cdvideo/report.py). This module
orchestrates; `evaluate_checkpoints` scores a run's saved checkpoints and marks the identity /
prompt-following front.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cdvideo import clips as clipsets
from cdvideo import concept as concepts
from cdvideo import loading
from cdvideo.atomic import ensure_writable_dir, write_json_atomic, write_text_atomic
from cdvideo.backbones import BLIP_ID, CLIP_ID, DINO_ID, OFF, Backbones  # noqa: F401  (public names)
from cdvideo.clips import Clip, read_clip  # noqa: F401  (public names)
from cdvideo.errors import UserError
from cdvideo.flow import FlowEstimator, load_flow
from cdvideo.metrics import (  # noqa: F401  (public names)
    BREAK_CONSISTENCY_DROP,
    BREAK_RATIO,
    FREEZE_RATIO,
    SHAPES_RATES,
    STILL,
    drift_scores,
    motion_amount,
    motion_flag,
    shapes_scores,
    video_scores,
)
from cdvideo.metrics import parse_shapes_prompt as _parse_shapes_prompt  # noqa: F401
from cdvideo.report import (
    AXIS_NAMES,
    REPORT,
    checkpoints_markdown,
    fmt,
    mean,
    report_markdown,
    rounded,
    skipped_lines,
    summarise,
)

PROMPT_SETS = Path(__file__).resolve().parent.parent / "configs" / "eval"


@dataclass
class EvalConfig:
    concept: str | None = None
    prompts: str | None = None  # YAML prompt set; default configs/eval/{dreambench,shapes}.yaml
    videos: str | None = None  # read videos `cdvideo animate` wrote here; the rest are rendered
    output: str = "cdvideo-eval"
    checkpoints: str | None = None  # a run folder: score its saved checkpoints instead
    seeds: list[int] = field(default_factory=lambda: [0])
    frames: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    motion_adapter: str | None = None
    base_config: str | None = None
    precision: str | None = None
    device: str | None = None
    # Hub id or local folder; None = the default (skipped on Shapes when not on this machine); "none" = leave out.
    clip: str | None = None
    dino: str | None = None
    blip: str | None = None


@dataclass
class PromptItem:
    category: str
    template: str  # with "{}" for the subject phrase

    def fill(self, subject: str) -> str:
        return self.template.replace("{}", subject)


# ---------------------------------------------------------------------------
# prompt sets


def default_prompt_set(base: str) -> Path:
    return PROMPT_SETS / ("shapes.yaml" if base == "shapes" else "dreambench.yaml")


def load_prompt_set(path: str | Path) -> list[PromptItem]:
    """A YAML mapping of category -> list of prompt templates, each with one `{}` for the subject."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt set {path} not found; give --prompts FILE (see configs/eval/)")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"prompt set {path} does not parse as YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict) or not data:
        raise UserError(f"prompt set {path} must map categories to lists of prompts, e.g. 'accessory: [a {{}} ...]'")
    items = []
    for category, templates in data.items():
        if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
            raise UserError(f"prompt set {path}: category {category!r} must be a list of prompt strings")
        for template in templates:
            if template.count("{}") != 1:
                raise UserError(f"prompt set {path}: {template!r} needs exactly one {{}} where the subject goes")
            items.append(PromptItem(str(category), template.strip()))
    if not items:
        raise UserError(f"prompt set {path} has no prompts")
    return items


# ---------------------------------------------------------------------------
# scoring


@dataclass
class Scorers:
    """What scores each clip: the backbones that loaded, the flow estimator, and what had to be skipped."""

    backbones: Backbones
    flow: FlowEstimator | None  # None on the Shapes world, whose scorer reads motion exactly
    skipped: dict[str, str]


def _render_settings(cfg: EvalConfig) -> dict:
    names = ("motion_adapter", "frames", "width", "height", "steps", "guidance", "precision", "device", "base_config")
    return {k: getattr(cfg, k) for k in names}


def _plan_base(cfg: EvalConfig, items: list[PromptItem], base: str, class_word: str, out: Path) -> clipsets.ClipSet:
    """The base model's videos (class word alone): what the concept's motion and composition compare with."""
    prompts = [item.fill(class_word) for item in items]
    return clipsets.plan(cfg.videos, prompts, cfg.seeds, None, base, out / "base-videos")


def _plan_concept(cfg: EvalConfig, items: list[PromptItem], folder: Path, out: Path) -> clipsets.ClipSet:
    concept = concepts.load_concept(folder)
    prompts = [item.fill(f"{concept.token} {concept.class_word}") for item in items]
    return clipsets.plan(cfg.videos, prompts, cfg.seeds, folder, concept.base, out / "videos")


def _motion_basis(shapes: bool, flow: FlowEstimator | None) -> str:
    if shapes:
        return "travel_px"  # the object's centre, read by the world's scorer: exact
    return "flow" if flow else "motion"


def evaluate_concept(
    cfg: EvalConfig,
    concept_folder: Path,
    out: Path,
    scorers: Scorers,
    items: list[PromptItem],
    base_clips: dict[tuple[str, int], Clip],
    clips: dict[tuple[str, int], Clip],
) -> dict:
    """Score one concept's clips on the prompt set; writes report.json and report.md into `out`."""
    concept = concepts.load_concept(concept_folder)
    photo_images = concepts.load_photos(concept_folder)
    bb = scorers.backbones
    subject = f"{concept.token} {concept.class_word}"
    with_token = [item.fill(subject) for item in items]
    text = [item.fill(concept.class_word) for item in items]
    photos = {
        "clip": bb.clip_images(photo_images) if bb.clip else None,
        "dino": bb.dino_images(photo_images) if bb.dino else None,
    }
    phrase_drift, prompt_drift = drift_scores(concept_folder, concept, list(zip(with_token, text)), cfg.base_config)
    shapes = concept.base == "shapes"
    basis = _motion_basis(shapes, scorers.flow)

    rows = []
    for item, prompt, plain, drift in zip(items, with_token, text, prompt_drift):
        videos = []
        for seed in cfg.seeds:
            clip, base = clips[(prompt, seed)], base_clips[(plain, seed)]
            scores = video_scores(bb, clip.frames, photos, plain, scorers.flow)
            base_scores = video_scores(bb, base.frames, photos, plain, scorers.flow)
            video = {
                "seed": seed,
                "file": clip.file,
                "base_file": base.file,
                "frames": len(clip.frames),
                "scores": rounded(scores),
                "base": rounded(base_scores),
                "motion_ratio": round(scores["motion"] / base_scores["motion"], 4)
                if base_scores["motion"] >= STILL
                else None,
                "flag": motion_flag(scores, base_scores),
            }
            if shapes:
                video["shapes"] = rounded(shapes_scores(clip.frames, concept.class_word, plain, subject=True))
                video["base_shapes"] = rounded(shapes_scores(base.frames, concept.class_word, plain, subject=False))
                amount, base_amount = video["shapes"]["travel_px"], video["base_shapes"]["travel_px"]
            else:
                amount, base_amount = scores[basis], base_scores[basis]
            video["moves_less"] = amount < base_amount
            videos.append(video)
        row = {
            "category": item.category,
            "template": item.template,
            "prompt": prompt,
            "text_prompt": plain,
            "drift": round(drift, 4),
            "scores": summarise(videos, "scores"),
            "base": summarise(videos, "base"),
            "motion_ratio": mean(v["motion_ratio"] for v in videos),
            "moving_less": sum(v["moves_less"] for v in videos),
            "flags": sorted({v["flag"] for v in videos if v["flag"]}),
            "videos": videos,
        }
        if shapes:
            row["shapes"] = {k: mean(v["shapes"][k] for v in videos) for k in SHAPES_RATES}
            row["base_shapes"] = {k: mean(v["base_shapes"][k] for v in videos) for k in SHAPES_RATES}
        rows.append(row)

    overall = {
        "scores": summarise(rows, "scores"),
        "base": summarise(rows, "base"),
        "motion_ratio": mean(r["motion_ratio"] for r in rows),
        "videos_flagged": sum(bool(v["flag"]) for r in rows for v in r["videos"]),
        "videos_moving_less": sum(r["moving_less"] for r in rows),
        "videos": sum(len(r["videos"]) for r in rows),
        "drift": round(phrase_drift, 4),
        "prompt_drift": mean(r["drift"] for r in rows),
    }
    if shapes:
        overall["shapes"] = {k: mean(r["shapes"][k] for r in rows) for k in SHAPES_RATES}
        overall["base_shapes"] = {k: mean(r["base_shapes"][k] for r in rows) for k in SHAPES_RATES}
    basis_words = {
        "travel_px": "the object's centre travel per frame (world scorer)",
        "flow": "mean optical-flow magnitude",
        "motion": "mean frame difference",
    }
    report = {
        "concept": str(concept_folder),
        "token": concept.token,
        "class_word": concept.class_word,
        "base": concept.base,
        "steps": concept.steps,
        "spl_weight": concept.spl_weight,
        "prior_weight": concept.prior_weight,
        "seeds": list(cfg.seeds),
        "photos": len(photo_images),
        "backbones": bb.describe(),
        "flow_estimator": scorers.flow.name if scorers.flow else None,
        "skipped": dict(scorers.skipped),
        "rules": {
            "freezes": f"motion < {FREEZE_RATIO} x the base video's",
            "breaks motion": f"frame consistency {BREAK_CONSISTENCY_DROP} below the base video's, "
            f"or motion > {BREAK_RATIO} x the base video's",
            "moves less": f"{basis_words[basis]} below the base video's (same prompt and seed)",
            "dynamic": "VBench dynamic degree: share of clips with round(4 x frames / 16) frame pairs whose top-5% "
            "flow magnitude exceeds 6 x min(H, W) / 256 px",
            "subject consistency": "VBench: mean over frames of (cos to first + cos to previous) / 2, DINO CLS, "
            "each floored at 0",
            "drift": "cosine of 'a photo of a <token> <class>' vs 'a photo of a <class>' (EOS, final layer norm)",
        },
        "overall": overall,
        "prompts": rows,
    }
    write_json_atomic(out / f"{REPORT}.json", report)
    write_text_atomic(out / f"{REPORT}.md", report_markdown(report))
    return report


# ---------------------------------------------------------------------------
# entry points


def _setup(cfg: EvalConfig, base: str, say: Callable[[str], None]) -> tuple[list[PromptItem], Path, Scorers]:
    """Cheap checks first (prompt set, output folder), then the backbones and the flow estimator."""
    items = load_prompt_set(cfg.prompts or default_prompt_set(base))
    if not cfg.seeds:
        raise UserError("give at least one --seed")
    out = ensure_writable_dir(cfg.output)
    device = loading.pick_device(cfg.device)
    shapes = base == "shapes"
    # On the Shapes world the exact scorer stands without the hub: its default backbones are optional.
    backbones = Backbones(cfg.clip, cfg.dino, cfg.blip, device, optional=shapes)
    skipped = {key.upper(): why for key, why in backbones.skipped.items()}
    flow = None
    if not shapes:
        flow, why = load_flow(device)
        if why:
            skipped["RAFT"] = f"{why.removeprefix('RAFT skipped: ')}; flow uses the {flow.name}"
    for name, why in skipped.items():
        say(f"skipped {name}: {why}")
    return items, out, Scorers(backbones, flow, skipped)


def evaluate(cfg: EvalConfig, say: Callable[[str], None] = print) -> dict:
    """Score a concept folder; returns the report (also written as report.json / report.md in cfg.output)."""
    if cfg.checkpoints and cfg.concept:
        raise UserError("give a concept folder or --checkpoints RUN_DIR, not both")
    if cfg.checkpoints:
        return evaluate_checkpoints(cfg, say)
    if not cfg.concept:
        raise UserError("give a concept folder (or --checkpoints RUN_DIR)")
    folder = Path(cfg.concept)
    concept = concepts.load_concept(folder)
    concepts.load_photos(folder)  # before any model loads: a concept without photos fails fast
    items, out, scorers = _setup(cfg, concept.base, say)
    base_set = _plan_base(cfg, items, concept.base, concept.class_word, out)
    concept_set = _plan_concept(cfg, items, folder, out)
    settings = _render_settings(cfg)
    with clipsets.progress_bar(base_set.to_render + concept_set.to_render) as bar:
        base_clips = clipsets.render(base_set, settings, bar, say)
        clips = clipsets.render(concept_set, settings, bar, say)
    report = evaluate_concept(cfg, folder, out, scorers, items, base_clips, clips)
    o = report["overall"]
    names = {"clip_i": "CLIP-I", "dino_i": "DINO-I", "clip_t": "CLIP-T", "blip_t": "BLIP-T"}
    shown = "  ".join(f"{v} {fmt(o['scores'][k])}" for k, v in names.items())
    if "shapes" in o:
        shown += f"  composition {fmt(o['shapes']['composition'])} (base {fmt(o['base_shapes']['composition'])})"
    shown += f"  drift {fmt(o['drift'])}  moving less than base {o['videos_moving_less']}/{o['videos']}"
    say(shown)
    for line in skipped_lines(report):
        say(f"skipped {line}")
    say(f"report in {out / (REPORT + '.md')}")
    return report


# ---------------------------------------------------------------------------
# checkpoints


def _run_folder(run: Path) -> Path:
    """Where a run's settings and photos are: the finished concept, else its newest checkpoint."""
    from cdvideo import checkpoints
    from cdvideo.training import CONFIG_FILE

    newest = checkpoints.latest(run)
    return newest if not (run / CONFIG_FILE).exists() and newest is not None else run


def _run_config(run: Path):
    from cdvideo.training import CONFIG_FILE, TrainConfig

    path = _run_folder(run) / CONFIG_FILE
    try:
        values = json.loads(path.read_text())
        return TrainConfig(**{k: v for k, v in values.items() if k in TrainConfig.__dataclass_fields__})
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise UserError(f"{path} is missing or unreadable ({err}); is {run} the --output of `cdvideo train`?") from err


def checkpoint_concept(run: Path, checkpoint: Path, folder: Path) -> Path:
    """Turn a training checkpoint into a loadable concept folder (same files `cdvideo train` writes)."""
    from cdvideo import checkpoints, tracking
    from cdvideo.training import concept_record

    cfg = _run_config(run)
    step = int(checkpoint.name.split("-")[1])
    lora, token_row = checkpoints.weights(checkpoint, hint="delete it or train again")
    row = next((r for r in tracking.read_metrics(run) if r.get("step") == step), {})
    concepts.save_concept(folder, concept_record(cfg, step, row.get("cosine"), row), lora, token_row)
    concepts.save_photos(folder, concepts.load_photos(_run_folder(run)))
    return folder


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both axes (higher is better on each)."""
    front = []
    for i, (a, b) in enumerate(points):
        dominated = any((c >= a and d >= b) and (c > a or d > b) for j, (c, d) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def best_tradeoff(points: list[tuple[float, float]]) -> int:
    """On the front, the largest sum of both axes after scaling each to [0, 1] across all points; ties: earliest."""
    front = pareto_front(points)

    def scaled(axis: int, v: float) -> float:
        values = [p[axis] for p in points]
        span = max(values) - min(values)
        return (v - min(values)) / span if span > 0 else 1.0

    return max(front, key=lambda i: (scaled(0, points[i][0]) + scaled(1, points[i][1]), -i))


def evaluate_checkpoints(cfg: EvalConfig, say: Callable[[str], None] = print) -> dict:
    """Score every saved checkpoint of a run (and its final concept); mark the identity / prompt front."""
    from cdvideo import checkpoints

    run = Path(cfg.checkpoints)
    if not run.is_dir():
        raise UserError(f"run folder {run} does not exist; give the --output folder of `cdvideo train`")
    concepts.load_photos(_run_folder(run))
    found = checkpoints.saved(run)
    candidates = [(int(p.name.split("-")[1]), p) for p in found]
    if (run / concepts.MANIFEST).exists():
        candidates.append((concepts.load_concept(run).steps, None))
    if not candidates:
        raise UserError(
            f"{run} has no checkpoints; train with --checkpoint-every N --keep-checkpoints 0 to keep them all"
        )
    candidates.sort(key=lambda c: (c[0], c[1] is None))
    if found:
        config = _run_config(run)
        base, class_word = loading.base_identity(config.base), config.class_word
    else:
        final = concepts.load_concept(run)
        base, class_word = final.base, final.class_word
    if base != "shapes" and OFF in (cfg.dino, cfg.clip):
        raise UserError("comparing checkpoints needs DINO-I and CLIP-T: do not set --dino or --clip to none")
    items, out, scorers = _setup(cfg, base, say)
    # Every checkpoint is compared with the same base-model videos: rendered once.
    base_set = _plan_base(cfg, items, base, class_word, out)
    folders = {}
    for step, path in candidates:
        name = f"step-{step:06d}" if path else "final"
        folders[name] = checkpoint_concept(run, path, out / name / "concept") if path else run
    sets = {name: _plan_concept(cfg, items, folder, out / name) for name, folder in folders.items()}
    settings = _render_settings(cfg)
    entries = []
    with clipsets.progress_bar(base_set.to_render + sum(s.to_render for s in sets.values())) as bar:
        base_clips = clipsets.render(base_set, settings, bar, say)
        for (step, _), (name, folder) in zip(candidates, folders.items()):
            clips = clipsets.render(sets[name], settings, bar, say)
            report = evaluate_concept(cfg, folder, out / name, scorers, items, base_clips, clips)
            o = report["overall"]
            entry = {"name": name, "step": step, **o["scores"], "drift": o["drift"], "flagged": o["videos_flagged"]}
            if "shapes" in o:
                entry["composition"] = o["shapes"]["composition"]
                entry["subject"] = o["shapes"]["subject_ok"]
            entries.append(entry)
    # The world's exact scorer, where there is one, beats any learned proxy for both axes.
    axes = ("subject", "composition") if "composition" in entries[0] else ("dino_i", "clip_t")
    points = [(e[axes[0]], e[axes[1]]) for e in entries]
    front = pareto_front(points)
    best = best_tradeoff(points)
    for i, e in enumerate(entries):
        e["pareto"] = i in front
        e["best"] = i == best
    summary = {
        "run": str(run),
        "axes": {"identity": AXIS_NAMES[axes[0]], "prompt following": AXIS_NAMES[axes[1]]},
        "rule": f"best = on the Pareto front of ({AXIS_NAMES[axes[0]]}, {AXIS_NAMES[axes[1]]}), the largest sum "
        "of both after scaling each to [0, 1] across the checkpoints",
        "best": entries[best]["name"],
        "checkpoints": entries,
    }
    write_json_atomic(out / "checkpoints.json", summary)
    write_text_atomic(out / "checkpoints.md", checkpoints_markdown(summary))
    say(f"best trade-off: {summary['best']}; table in {out / 'checkpoints.md'}")
    return summary
