"""The motion bars on the Shapes world (issue 14): do clips move the way the user asked?

For each direction with a shipped motion LoRA (cdvideo/shapes/weights/motion_loras/), it renders clips
as `cdvideo animate` does for a prompt that says "moving <direction>" (the family's sampler and steps;
the LoRA the words ask for, at its recorded weight), and scores them with the world's scorer:

- plain prompts: "a <colour> <class> moving <direction>" over the world's classes and colours;
- with a concept (--concept): "a <tok> circle moving <direction>";
- `asked`: the share of clips whose motion reads as asked (bar 0.85);
- `class kept`: the share of frames that keep the asked class (bar 0.90);
- with --without, the same clips with no motion LoRA (the adapter alone), for comparison.

    python benchmarks/motion_bars.py --clips 32 --concept cdvideo-demo/concept --out docs/motion
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import composition_bars
import numpy as np
import torch

from cdvideo import concept as concepts
from cdvideo import directions, loading, motion, presets, strength
from cdvideo.atomic import write_json_atomic, write_text_atomic
from cdvideo.shapes import world

BARS = {"asked": 0.85, "class_kept": 0.90}


def video_pipeline(concept: Path | None, dtype: torch.dtype = torch.float32):
    image = loading.load_image_pipeline("shapes", dtype)
    pipe = loading.video_pipeline(image, loading.load_motion_adapter("shapes", dtype))
    pipe.scheduler = presets.make_scheduler("shapes", None, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if concept is not None:
        # As `cdvideo animate` loads a concept beside motion LoRAs: a live adapter, not fused.
        concepts.apply_concept(pipe, concept, concepts.load_concept(concept), fuse=False)
    return pipe


def plain_prompts(direction: str, n: int, seed: int) -> tuple[list[str], list[str]]:
    """n prompts over the world's classes and colours (a fixed draw per seed), with their classes."""
    generator = torch.Generator().manual_seed(seed)
    cls = torch.randint(len(world.CLASSES), (n,), generator=generator).tolist()
    colour = torch.randint(len(world.COLOURS), (n,), generator=generator).tolist()
    names = list(world.COLOURS)
    prompts = [f"a {names[k]} {world.CLASSES[c]} moving {direction}" for c, k in zip(cls, colour, strict=True)]
    return prompts, [world.CLASSES[c] for c in cls]


def rates(scores: list, direction: str) -> dict:
    return {
        "asked": float(np.mean([s.motion == f"moving {direction}" for s in scores])),
        "class_kept": float(np.mean([s.class_kept for s in scores])),
        "moving": float(np.mean([s.motion != "" for s in scores])),
        "clips": len(scores),
        # What the other clips read as ("still" when the scorer saw no motion).
        "misses": dict(Counter(s.motion or "still" for s in scores if s.motion != f"moving {direction}")),
    }


def measure(
    n: int,
    concept: Path | None,
    without: bool,
    only: list[str] | None,
    plain: bool = True,
    say=print,
    dtype: torch.dtype = torch.float32,
    concept_schedule: str | None = None,
    weight_factor: float = 1.0,
    seed_shift: int = 0,
) -> dict:
    loras = directions.family_loras("shapes")
    wanted = [d for d in ("left", "right", "up", "down") if d in loras and (not only or d in only)]
    if not wanted:
        sys.exit("no shipped Shapes motion LoRA to measure; scripts/train_motion_lora.py trains one")
    results: dict = {}
    for subject in ([None] if plain or not concept else []) + ([concept] if concept else []):
        pipe = video_pipeline(subject, dtype)
        sources = [loras[d][0] for d in wanted]
        # The concept's weight over the steps as `animate` gives it (its recipe's render settings).
        schedule, scale = composition_bars.concept_render(
            concepts.load_concept(subject) if subject else None, concept_schedule
        )
        adapters = motion.load_motion_loras(pipe, [], sources, concept_scale=scale if subject else None)
        token = concepts.load_concept(subject).token if subject else None
        key = "concept" if subject else "plain"
        for i, direction in enumerate(wanted):
            if subject:
                prompts, classes = [f"a {token} circle moving {direction}"] * n, ["circle"] * n
            else:
                prompts, classes = plain_prompts(direction, n, seed_shift + 10 + i)
            for use in [True, False] if without else [True]:
                source, weight = loras[direction]
                # as `animate` picks it
                with_concept = subject and strength.concept_sets_motion(schedule)
                weight *= directions.concept_weight_factor("shapes", direction) if with_concept else 1.0
                weight *= weight_factor
                adapters.activate(pipe, source if use else None, weight if use else None)
                started = time.time()
                first_seed = seed_shift + 1000 + 100 * i
                scored = composition_bars.render_clips(pipe, prompts, classes, first_seed, schedule=schedule,
                                                       concept_scale=scale, token=token)  # fmt: skip
                cell = rates(scored, direction) | {"seconds": round(time.time() - started, 1)}
                cell |= {"lora_sha": composition_bars.lora_digest(source), "weight": weight} if use else {}
                cell |= {"concept_sha": concept_digest(subject)} if subject else {}
                cell |= {"precision": "bf16"} if dtype == torch.bfloat16 else {}
                cell |= {"seed_shift": seed_shift} if seed_shift else {}
                if subject and (schedule or scale != 1.0):
                    cell |= {"concept_render": strength.describe(schedule, scale)}
                results.setdefault(key, {}).setdefault(direction, {})["lora" if use else "no lora"] = cell
                label = "lora" if use else "no lora"
                say(f"{key:8s} {direction:5s} {label:8s} asked {cell['asked']:.2f}  class kept "
                    f"{cell['class_kept']:.2f}  moving {cell['moving']:.2f}  ({cell['seconds']} s)")  # fmt: skip
    return results


def concept_digest(concept: Path) -> str:
    """A concept's identity: the first 16 hex digits of the sha256 of its token row and LoRA weights."""
    digest = hashlib.sha256()
    for name in ("learned_embeds.safetensors", "pytorch_lora_weights.safetensors"):
        if (concept / name).exists():
            digest.update((concept / name).read_bytes())
    return digest.hexdigest()[:16]


def merged(old: dict, new: dict, concept: str | None = None) -> dict:
    """`new` over `old`: an old cell stays only while its direction's shipped LoRA is the one it measured,
    and, for a with-concept cell, while `concept` (this run's concept digest) is the concept it measured."""
    loras = directions.family_loras("shapes")
    out = {key: dict(per) for key, per in new.items()}
    for key, per_direction in old.items():
        for direction, cells in per_direction.items():
            current = composition_bars.lora_digest(loras[direction][0]) if direction in loras else None
            measured = cells.get("lora", {})
            same_lora = measured.get("lora_sha") == current
            same_concept = key != "concept" or (concept is not None and measured.get("concept_sha") == concept)
            if direction not in out.get(key, {}) and same_lora and same_concept:
                out.setdefault(key, {})[direction] = cells
    return {key: dict(sorted(per.items())) for key, per in out.items()}


def report(results: dict, commands: list[str]) -> str:
    lines = ["# Motion bars (issue 14)", "",
             "Commands (each measures the directions it names; a cell stays until its LoRA or concept changes):", "",
             *[f"    {c}" for c in commands], "",
             "| prompts | direction | motion LoRA | clips | moves as asked (0.85) | class kept (0.90) | moving | "
             "the other clips read |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, per_direction in results.items():
        for direction, cells in per_direction.items():
            for use, cell in cells.items():
                asked = f"{cell['asked']:.2f}" + (" met" if use == "lora" and cell["asked"] >= BARS["asked"] else "")
                kept = f"{cell['class_kept']:.2f}" + (
                    " met" if use == "lora" and cell["class_kept"] >= BARS["class_kept"] else ""
                )
                misses = ", ".join(f"{motion} {n}" for motion, n in sorted(cell.get("misses", {}).items()))
                lines.append(f"| {key} | {direction} | {use} | {cell['clips']} | {asked} | {kept} | "
                             f"{cell['moving']:.2f} | {misses} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=32, help="clips per direction and prompt kind")
    parser.add_argument("--concept", type=Path, help="a Shapes concept folder for the with-concept rows")
    parser.add_argument("--directions", nargs="+", choices=("left", "right", "up", "down"))
    parser.add_argument("--no-plain", action="store_true", help="with --concept: only the with-concept rows")
    parser.add_argument("--without", action="store_true", help="also render every cell with no motion LoRA")
    parser.add_argument("--out", type=Path, help="folder for motion_bars.json and motion_bars.md")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="render in this precision")
    parser.add_argument("--concept-schedule", metavar="SCHEDULE", help="as `cdvideo animate --concept-schedule`")
    parser.add_argument(
        "--weight-factor",
        type=float,
        default=1.0,
        help="multiply each motion LoRA's weight by this (a probe: the shipped weight is 1)",
    )
    parser.add_argument(
        "--seed-shift",
        type=int,
        default=0,
        help="draw other prompts and seeds (a probe picks a weight on clips the bars do not use)",
    )
    args = parser.parse_args()
    if args.out and (args.weight_factor != 1.0 or args.seed_shift):
        parser.error("--weight-factor and --seed-shift are probes: they print, and do not write the bars (no --out)")
    command = "python benchmarks/motion_bars.py " + shlex.join(sys.argv[1:])
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    results = measure(args.clips, args.concept, args.without, args.directions, plain=not args.no_plain, dtype=dtype,
                      concept_schedule=args.concept_schedule, weight_factor=args.weight_factor,
                      seed_shift=args.seed_shift)  # fmt: skip
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        previous = args.out / "motion_bars.json"
        old = json.loads(previous.read_text()) if previous.exists() else {}
        results = merged(old.get("results", {}), results, concept_digest(args.concept) if args.concept else None)
        commands = list(dict.fromkeys([*old.get("commands", []), command]))
        write_json_atomic(previous, {"commands": commands, "results": results})
        write_text_atomic(args.out / "motion_bars.md", report(results, commands))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
