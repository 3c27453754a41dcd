"""The composition bars on the Shapes world: does a concept trained at the shipped settings compose?

For each training seed it trains the demo's striped circle (5 cut-out photos, `cdvideo train` with the
Shapes defaults and nothing else), then scores with the world's exact scorer, at the shipped sampler:

- identity: stripes in "a <tok> circle";
- headphones: stripes AND headphones AND circle in "a <tok> circle wearing headphones";
- every other accessory, background, and accessory + background pair: stripes AND the asked parts AND
  circle, against the base model's rate for the same prompt without the token (bar: 0.85x);
- plain prompts: accuracy kept on prompts without the token (bar: 0.90 of the base model's);
- video: share of frames with stripes and headphones in "a <tok> circle wearing headphones moving
  right" clips (bar 0.75), and the share of clips that move, against the base model's for the same
  prompts and seeds (bar: within 0.10).

    python benchmarks/composition_bars.py --seeds 0 1 2 --samples 32 --clips 32 --out docs/composition
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import cdvideo
from cdvideo import concept as concepts
from cdvideo import directions, loading, motion, presets, strength
from cdvideo.atomic import atomic_dir, write_json_atomic, write_text_atomic
from cdvideo.demo import write_subject_photos
from cdvideo.errors import UserError
from cdvideo.shapes import scorer, world

HEADPHONES = "wearing headphones"
VIDEO_PROMPT = "{} wearing headphones moving right"
# Every pipeline's dtype: fp32 as shipped, or bf16 with --precision bf16 (a CPU speed preset; recorded in the settings).
DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16}
precision = "fp32"
BARS = {"identity": 0.90, "headphones": 0.80, "relative": 0.85, "plain_kept": 0.90, "video_frames": 0.75}


def composition_prompts() -> list[str]:
    """Every accessory, every background, and every accessory + background pair (headphones alone
    has its own, absolute bar)."""
    return [p for p in world.scene_phrases() if p != HEADPHONES]


def pipelines(folder: Path | None, sampler: str | None = None, image: bool = True, video: bool = True):
    """Image and video pipelines as `cdvideo animate` builds them (the family's sampler unless named),
    with the concept in `folder` loaded once per text encoder; None for one not asked for.

    The video pipeline keeps the concept as a live adapter, as `animate` does beside motion LoRAs:
    activating a motion LoRA (peft's set_adapter) unmerges a fused concept and leaves it off."""
    dtype = DTYPE[precision]
    adapter = loading.load_motion_adapter("shapes", dtype) if video else None
    pipes = [
        loading.load_image_pipeline("shapes", dtype) if image else None,
        loading.video_pipeline(loading.load_image_pipeline("shapes", dtype), adapter) if video else None,
    ]
    for pipe, is_video in zip(pipes, (False, True), strict=True):
        if pipe is None:
            continue
        pipe.scheduler = presets.make_scheduler("shapes", sampler, pipe.scheduler.config, video=is_video)
        pipe.set_progress_bar_config(disable=True)
        if folder is not None:
            concepts.apply_concept(pipe, folder, concepts.load_concept(folder), fuse=not is_video)
    return tuple(pipes)


def asked_parts(phrase: str) -> dict[str, str]:
    """The accessory and the background a composition phrase names ("" for none)."""
    return {
        "accessory": next((a for a in world.ACCESSORIES if a and a in phrase), ""),
        "background": next((b for b in world.BACKGROUNDS if b and b in phrase), ""),
    }


def right(score, phrase: str, subject: bool) -> bool:
    """Class, the phrase's accessory and background, and (for a concept) the stripes, all right."""
    asked = asked_parts(phrase)
    return (
        score.cls == "circle"
        and score.accessory == asked["accessory"]
        and (score.background or "") == asked["background"]
        and (score.pattern or not subject)
    )


def images(pipe, prompt: str, n: int, seed: int) -> list:
    preset = presets.SHAPES
    return scorer.sample_and_score(pipe, prompt, n, steps=preset.steps, guidance=preset.guidance, seed=seed)


def with_asked_motion(pipe, prompt: str, concept_scale: float = 1.0, schedule: strength.Schedule | None = None) -> None:
    """The motion LoRA `cdvideo animate` applies for the prompt's words, at the weight it picks, when the
    family ships one, with the pipeline's concept (a live adapter, following `schedule`) kept on at
    `concept_scale` beside it."""
    concept = concepts.ADAPTER_NAME in pipe.get_list_adapters().get("unet", [])
    with_concept = concept and strength.concept_sets_motion(schedule)
    (choice,), _ = directions.plan_motions([prompt], None, None, "shapes", with_concept=with_concept)
    if choice and choice.lora:
        adapters = motion.load_motion_loras(pipe, [], [choice.lora], concept_scale if concept else None)
        adapters.activate(pipe, choice.lora, choice.weight)


def render_clips(
    pipe,
    prompts: list[str],
    classes: list[str],
    seed: int,
    batch: int = 8,
    schedule: strength.Schedule | None = None,
    concept_scale: float = 1.0,
    token: str | None = None,
) -> list:
    """Score clips of `prompts` at the family's shipped sampler settings, `batch` at a time, with the
    (unfused) concept `token`'s weight following `schedule` when given, and `concept_scale` after it."""
    preset, out = presets.SHAPES, []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        with strength.scheduled(
            pipe, concepts.ADAPTER_NAME, schedule, preset.steps, concept_scale, chunk, token
        ) as call:
            frames = pipe(**call, num_frames=preset.frames, num_inference_steps=preset.steps,
                          guidance_scale=preset.guidance, generator=torch.Generator().manual_seed(seed + start),
                          output_type="pt", height=64, width=64).frames  # fmt: skip
        out += scorer.score_clips(frames.float(), expected_cls=classes[start : start + batch])
    return out


def clips(
    pipe,
    prompt: str,
    n: int,
    seed: int,
    schedule: strength.Schedule | None = None,
    concept_scale: float = 1.0,
    token: str | None = None,
) -> list:
    return render_clips(pipe, [prompt] * n, ["circle"] * n, seed, schedule=schedule, concept_scale=concept_scale,
                        token=token)  # fmt: skip


def measure(folder: Path | None, samples: int) -> dict:
    """Image rates for a concept (folder) or, with None, the base model's for the class word alone."""
    image, _ = pipelines(folder, video=False)
    subject = f"{concepts.load_concept(folder).token} circle" if folder else "circle"
    is_concept = folder is not None
    rates = {}
    alone = images(image, f"a {subject}", samples, 100)
    rates["identity"] = float(np.mean([s.pattern for s in alone]))
    for i, phrase in enumerate([HEADPHONES, *composition_prompts()]):
        scores = images(image, f"a {subject} {phrase}", samples, 200 + i)
        rates[phrase] = float(np.mean([right(s, phrase, is_concept) for s in scores]))
    rates["plain_accuracy"] = scorer.plain_accuracy(
        image, samples, steps=presets.SHAPES.steps, guidance=presets.SHAPES.guidance, seed=300
    )
    return rates


def concept_render(
    concept: concepts.Concept | None, schedule: str | None = None, scale: float | None = None
) -> tuple[strength.Schedule | None, float]:
    """The concept's weight over the steps as `animate` applies it: `schedule` and `scale` when given (as
    `--concept-schedule`, `--lora-scale`), else the concept's own render settings; (None, 1.0) without one."""
    if concept is None:
        return None, 1.0
    schedule = schedule if schedule is not None else concept.render_schedule
    return strength.parse_schedule(schedule), scale if scale is not None else concept.render_scale


def measure_video(
    folder: Path | None, n_clips: int, schedule: str | None = None, concept_scale: float | None = None
) -> dict:
    """Clip rates for VIDEO_PROMPT, rendered as `animate` renders it: with the motion LoRA its words ask for,
    and the concept's weight following `schedule` and `concept_scale` (`animate --concept-schedule`,
    `--lora-scale`; None: the concept's own render settings)."""
    _, video = pipelines(folder, image=False)
    concept = concepts.load_concept(folder) if folder else None
    subject = f"{concept.token} circle" if concept else "circle"
    prompt = VIDEO_PROMPT.format(f"a {subject}")
    timed, scale = concept_render(concept, schedule, concept_scale)
    with_asked_motion(video, prompt, scale, timed)
    scored = clips(video, prompt, n_clips, 400, timed, scale, concept.token if concept else None)
    frames = [f for c in scored for f in c.frames]
    return {
        "video_frames": float(np.mean([(f.pattern or folder is None) and f.accessory == HEADPHONES for f in frames])),
        "moving": float(np.mean([c.motion != "" for c in scored])),
        "moving_right": float(np.mean([c.motion == "moving right" for c in scored])),
    }


def motion_lora_identity() -> dict:
    """Which motion LoRA the video prompt gets: its file's hash and weight (a new one re-measures video)."""
    said = directions.motion_in_prompt(VIDEO_PROMPT)
    source, weight = directions.family_loras("shapes").get(said[0] if said else "", (None, None))
    if source is None:
        return {}
    return {"motion_lora": lora_digest(source), "motion_weight": weight}


def lora_digest(source: str) -> str:
    """A shipped Shapes motion LoRA's identity: the first 16 hex digits of its weights' sha256."""
    return hashlib.sha256((Path(source) / directions.SHAPES_LORA_FILE).read_bytes()).hexdigest()[:16]


def subject_photos(work: Path) -> Path:
    """The demo subject's photos in `work/photos`, written once. Runs side by side (--no-report) share
    them: the first to finish writing puts them in place whole, so none trains on a half-written folder."""
    photos = work / "photos"
    if not photos.exists():
        with atomic_dir(photos, keep_existing=True) as staging:
            write_subject_photos(staging, seed=0)
    return photos


def concept_folder(seed: int, work: Path, overrides: dict | None = None) -> Path:
    """Where `concept_for` keeps the concept of `seed` and `overrides` (trained or not)."""
    tag = "".join(f"-{k}{json.dumps(v, separators=(',', ':'))}" for k, v in sorted((overrides or {}).items()))
    return work / (f"s{seed}-{hashlib.sha256(tag.encode()).hexdigest()[:8]}" if tag else f"s{seed}")


def render_key(folder: Path, planned: dict, scale: float | None = None, schedule: str | None = None) -> dict:
    """The weights a concept's clips render at, for the video cache key: a trained concept's own (one
    trained before recipes named them renders at 1), else `planned` (its recipe's); `scale` and `schedule`
    (`--lora-scale`, `--concept-schedule`) over either."""
    if (folder / concepts.MANIFEST).exists():
        concept = concepts.load_concept(folder)
        planned = {"render_scale": concept.render_scale, "render_schedule": concept.render_schedule}
    return {
        "render_scale": scale if scale is not None else planned["render_scale"],
        "render_schedule": schedule or planned["render_schedule"],
    }


def concept_for(seed: int, work: Path, overrides: dict | None = None) -> Path:
    """The concept trained at the shipped settings with `seed` (trained once per work folder), or with
    `overrides` (TrainConfig fields) in place of the preset's."""
    overrides = overrides or {}
    folder = concept_folder(seed, work, overrides)
    if (folder / concepts.MANIFEST).exists():
        return folder
    photos = subject_photos(work)
    return cdvideo.train(
        cdvideo.TrainConfig(
            images=[str(photos)], class_word="circle", base="shapes", output=str(folder), seed=seed, **overrides
        ),
        say=lambda s: None,
        progress=False,
    )


def parse_overrides(pairs: list[str]) -> dict:
    """`KEY=VALUE` pairs (VALUE read as JSON where it parses) checked against TrainConfig's fields."""
    fields = set(cdvideo.TrainConfig.__dataclass_fields__)
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            sys.exit(f"--set {pair}: expected KEY=VALUE with KEY a TrainConfig field, e.g. --set prior_target=base")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def verdicts(base: dict, runs: list[dict]) -> list[tuple[str, float, str, bool]]:
    """(bar, measured mean over seeds, threshold, met) for every bar."""
    mean = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
    rows = [
        ("identity: stripes in 'a <tok> circle'", mean["identity"], ">= 0.90", mean["identity"] >= BARS["identity"]),
        ("'a <tok> circle wearing headphones': stripes + headphones + circle", mean[HEADPHONES], ">= 0.80",
         mean[HEADPHONES] >= BARS["headphones"]),
    ]  # fmt: skip
    for phrase in composition_prompts():
        ceiling = base[phrase]
        ratio = mean[phrase] / ceiling if ceiling else float("nan")
        rows.append((f"'{phrase}' vs base {ceiling:.2f}", ratio, ">= 0.85x", ratio >= BARS["relative"]))
    kept = mean["plain_accuracy"] / base["plain_accuracy"]
    rows.append(("plain prompts kept", kept, ">= 0.90", kept >= BARS["plain_kept"]))
    if "video_frames" in mean:
        rows.append(("video: frames with stripes + headphones", mean["video_frames"], ">= 0.75",
                     mean["video_frames"] >= BARS["video_frames"]))  # fmt: skip
        gap = mean["moving"] - base["moving"]
        rows.append((f"video: clips that move vs base {base['moving']:.2f}", gap, "within 0.10", abs(gap) <= 0.10))
    return rows


def report(
    out: Path,
    base: dict,
    runs: list[dict],
    command: str,
    samples: int,
    n_clips: int,
    overrides: dict | None = None,
    name: str = "bars.md",
) -> str:
    rows = verdicts(base, runs)
    lines = [
        f"Command: `{command}`",
        "",
        f"{len(runs)} training seeds at the shipped Shapes settings"
        + (f" with {json.dumps(overrides)} in place of the preset's" if overrides else "")
        + f"; {samples} samples per prompt and seed, "
        f"{n_clips} clips per seed; the world's exact scorer. Values are means over seeds.",
        "",
        "| bar | measured | needs | met |",
        "|---|---|---|---|",
        *(f"| {name} | {value:.2f} | {need} | {'yes' if ok else 'no'} |" for name, value, need, ok in rows),
        "",
        f"Met: {sum(ok for *_, ok in rows)} of {len(rows)}.",
        "",
        "Per seed: "
        + "; ".join(
            f"seed {r['seed']}: identity {r['identity']:.2f}, headphones {r[HEADPHONES]:.2f}, "
            f"plain {r['plain_accuracy']:.2f}"
            + (
                f", video frames {r['video_frames']:.2f}, moving {r['moving']:.2f}" if "video_frames" in r else ""
            )  # fmt: skip
            for r in runs
        ),
    ]
    text = "\n".join(lines) + "\n"
    write_text_atomic(out / name, text)
    return text


def cached(path: Path, settings: dict, compute) -> dict:
    """`compute()`'s result, kept in `path` for these settings (a rerun, or a parallel run, reuses it)."""
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings:
            return saved["rates"]
    rates = compute()
    write_json_atomic(path, {"settings": settings, "rates": rates})
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=32, help="images per prompt and seed")
    parser.add_argument("--clips", type=int, default=32, help="clips per seed (0: images only)")
    parser.add_argument("--out", default="docs/composition")
    parser.add_argument("--work", help="folder for the trained concepts (default: a temporary one)")
    parser.add_argument("--base-only", action="store_true", help="measure the base model only (for parallel runs)")
    parser.add_argument("--no-report", action="store_true", help="measure only (for parallel runs)")
    parser.add_argument("--spl-weight", type=float, help="train with this SPL weight instead of the preset's")
    parser.add_argument(
        "--concept-schedule",
        metavar="SCALE:SHARE",
        help="render the clips as `animate --concept-schedule` does (its video files and report are kept apart; "
        "default: the concept's own, as animate renders it)",
    )
    parser.add_argument(
        "--lora-scale", type=float, help="the concept's LoRA weight in the clips (default: the concept's own)"
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="train with these TrainConfig fields instead of the preset's (recorded in the settings)",
    )
    parser.add_argument("--precision", choices=sorted(DTYPE), default="fp32", help="render in this precision")
    args = parser.parse_args()
    global precision
    precision = args.precision
    in_precision = {"precision": precision} if precision != "fp32" else {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="cdvideo-bars-"))
    preset = presets.SHAPES
    trained = ("train_steps", "caption_variety", "context_weight", "composites", "num_composites", "spl_weight",
               "prior_weight", "lora_lr", "token_lr")  # fmt: skip
    settings = {"samples": args.samples, "sampler": preset.sampler, "steps": preset.steps, **in_precision,
                "train": {k: getattr(preset, k) for k in trained}}  # fmt: skip
    overrides = parse_overrides(args.set) | ({"spl_weight": args.spl_weight} if args.spl_weight is not None else {})
    settings["train"] |= overrides
    base_settings = {k: v for k, v in settings.items() if k != "train"}
    video_settings = {"clips": args.clips, "sampler": preset.sampler, "steps": preset.steps, **in_precision,
                      **motion_lora_identity()}  # fmt: skip
    try:
        schedule = strength.parse_schedule(args.concept_schedule)
    except UserError as err:
        sys.exit(str(err))
    scheduled = f"-schedule-{args.concept_schedule.replace(':', '-')}" if schedule else ""
    scheduled += f"-scale-{args.lora_scale:g}" if args.lora_scale is not None else ""
    # What the recipe tells animate to render its concepts with (`render_key` lays the flags above over it).
    recipe = presets.RECIPES.get(overrides.get("recipe"))
    planned = {
        "render_scale": recipe.render_scale if recipe else 1.0,
        "render_schedule": recipe.render_schedule if recipe else None,
    }

    def rates(name: str, folder, render: dict | None = None) -> dict:
        """Image rates, and clip rates when asked, each cached in its own file under `out`."""
        found = cached(out / f"{name}.json", settings if folder else base_settings,
                       lambda: measure(folder() if folder else None, args.samples))  # fmt: skip
        if args.clips:
            factor = directions.concept_weight_factor("shapes", "right")  # the video prompt moves right
            with_concept = {"train": settings["train"], "concept_weight_factor": factor}
            video = {**video_settings, **(with_concept if folder else {})}
            file = f"{name}-video{scheduled if folder else ''}.json"
            video |= {"concept_schedule": args.concept_schedule} if folder and schedule else {}
            # Earlier files, rendered at weight 1 throughout, carry no render key and stay valid for it.
            video |= {"render": render} if folder and render != {"render_scale": 1.0, "render_schedule": None} else {}
            trained = folder or (lambda: None)
            found = found | cached(
                out / file, video, lambda: measure_video(trained(), args.clips, args.concept_schedule, args.lora_scale)
            )
        return found

    if not args.no_report or args.base_only:
        start = time.time()
        base = rates("base", None)
        print(f"base model ({time.time() - start:.0f} s): {json.dumps(base)}", flush=True)
    if args.base_only:
        return
    runs = []
    for seed in args.seeds:
        start = time.time()
        trained = functools.partial(concept_for, seed, work, overrides)
        weights = render_key(concept_folder(seed, work, overrides), planned, args.lora_scale, args.concept_schedule)
        runs.append({"seed": seed, **rates(f"seed-{seed}", trained, weights)})
        print(f"seed {seed} ({time.time() - start:.0f} s): {json.dumps(runs[-1])}", flush=True)
    if not args.no_report:
        command = "python " + shlex.join(sys.argv)
        print(report(out, base, runs, command, args.samples, args.clips, overrides, f"bars{scheduled}.md"))


if __name__ == "__main__":
    main()
