"""The demo's headline clip with a concept, at several weights of the right motion LoRA: how often it moves
right, stands still, and keeps the subject's stripes and headphones (the world's scorer).

    python benchmarks/concept_motion_weight.py runs/demo-v6/seed-0/concept --clips 16 --weights 1.0 1.5 2.0

The clips are the composition bars' video cells (seeds from 400, 8 at a time), so weight 1 reproduces
their "moves right" for the same concept. Prints one JSON line per weight.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from composition_bars import HEADPHONES, VIDEO_PROMPT, pipelines, render_clips

from cdvideo import concept as concepts
from cdvideo import directions, motion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("concept", type=Path)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    args = parser.parse_args()
    _, video = pipelines(args.concept, image=False)
    prompt = VIDEO_PROMPT.format(f"a {concepts.load_concept(args.concept).token} circle")
    source, _ = directions.family_loras("shapes")["right"]
    adapters = motion.load_motion_loras(video, [], [source], 1.0)
    for weight in args.weights:
        adapters.activate(video, source, weight)
        scored = render_clips(video, [prompt] * args.clips, ["circle"] * args.clips, 400)
        frames = [f for clip in scored for f in clip.frames]
        row = {
            "weight": weight,
            "clips": args.clips,
            "moving_right": float(np.mean([c.motion == "moving right" for c in scored])),
            "still": float(np.mean([c.motion == "" for c in scored])),
            "frames_stripes_headphones": float(np.mean([f.pattern and f.accessory == HEADPHONES for f in frames])),
            "motions": [c.motion or "still" for c in scored],
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
