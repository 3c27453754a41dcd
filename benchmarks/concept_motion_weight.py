"""A concept's clips at several weights of one direction's motion LoRA: how often they move the asked
way, stand still, and keep the subject's stripes and headphones (the world's scorer).

    python benchmarks/concept_motion_weight.py runs/demo/concept --clips 16 --weights 1.0 1.5 2.0
    python benchmarks/concept_motion_weight.py runs/demo/concept --direction left --weights 1.5 2 2.5 3

The prompt is the composition bars' video prompt with the direction put in ("a <tok> circle wearing
headphones moving left"), or with `--bare` the motion bars' ("a <tok> circle moving left"), and the
clips are the composition bars' video seeds (from 400, 8 at a time): weight 1 with "right" reproduces
their "moves right" for the same concept. `benchmarks/motion_bars.py` measures on other seeds (from
1000), so a weight picked here is checked there on clips it was not picked on.
Prints one JSON line per weight.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from composition_bars import HEADPHONES, VIDEO_PROMPT, concept_render, pipelines, render_clips

from cdvideo import concept as concepts
from cdvideo import directions, motion, strength


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("concept", type=Path)
    parser.add_argument("--direction", default="right", choices=("left", "right", "up", "down"))
    parser.add_argument("--bare", action="store_true", help="the motion bars' prompt: 'a <tok> circle moving left'")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--concept-schedule", metavar="SCALE:SHARE", help="as `cdvideo animate --concept-schedule`")
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    args = parser.parse_args()
    concept = concepts.load_concept(args.concept)
    schedule, scale = concept_render(concept, args.concept_schedule)  # the concept's own unless given
    _, video = pipelines(args.concept, image=False)
    token = concept.token
    template = "{} moving right" if args.bare else VIDEO_PROMPT
    prompt = template.format(f"a {token} circle").replace("moving right", f"moving {args.direction}")
    source, _ = directions.family_loras("shapes")[args.direction]
    adapters = motion.load_motion_loras(video, [], [source], scale)
    asked = f"moving {args.direction}"
    for weight in args.weights:
        adapters.activate(video, source, weight)
        prompts, classes = [prompt] * args.clips, ["circle"] * args.clips
        scored = render_clips(video, prompts, classes, 400, schedule=schedule, concept_scale=scale, token=token)
        frames = [f for clip in scored for f in clip.frames]
        row = {
            "direction": args.direction,
            "prompt": prompt,
            "weight": weight,
            "concept_render": strength.describe(schedule, scale),
            "clips": args.clips,
            "moving_asked": float(np.mean([c.motion == asked for c in scored])),
            "still": float(np.mean([c.motion == "" for c in scored])),
            "frames_stripes": float(np.mean([bool(f.pattern) for f in frames])),
            "frames_stripes_headphones": float(np.mean([f.pattern and f.accessory == HEADPHONES for f in frames])),
            "motions": [c.motion or "still" for c in scored],
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
