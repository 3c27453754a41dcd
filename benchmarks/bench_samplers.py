"""Quality and time of each sampler on the Shapes world, read by the world's exact scorer.

Images: the scorer's four plain prompts, N samples each; right = class, colour and accessory all
right. Clips: N clips of a blue circle or a red square wearing a hat moving left/right/up/down; the
share that moves at all and the share that moves as asked. Each run appends one JSON line.

    python benchmarks/bench_samplers.py images euler 8 --n 32
    python benchmarks/bench_samplers.py clips ddim 25 --n 64 --out runs/samplers.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cdvideo import loading
from cdvideo.presets import SAMPLERS, make_scheduler
from cdvideo.shapes import scorer

MOTIONS = ["moving left", "moving right", "moving up", "moving down"]


def image_accuracy(sampler: str, steps: int, n: int) -> float:
    pipe = loading.load_image_pipeline("shapes")
    pipe.scheduler = make_scheduler("shapes", sampler, pipe.scheduler.config, video=False)
    pipe.set_progress_bar_config(disable=True)
    hits = []
    for i, (prompt, cls, colour, accessory) in enumerate(scorer.PLAIN_PROMPTS):
        scores = scorer.sample_and_score(pipe, prompt, n, steps=steps, guidance=3.0, seed=10 + i)
        hits += [s.cls == cls and s.colour == colour and s.accessory == accessory for s in scores]
    return float(np.mean(hits))


def clip_motion(sampler: str, steps: int, n: int) -> dict:
    pipe = loading.video_pipeline(loading.load_image_pipeline("shapes"), loading.load_motion_adapter("shapes"))
    pipe.scheduler = make_scheduler("shapes", sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    read = []
    for i in range(n):
        motion = MOTIONS[i % 4]
        prompt = f"a red square wearing a hat {motion}" if i % 2 else f"a blue circle {motion}"
        frames = pipe(prompt, num_frames=16, num_inference_steps=steps, guidance_scale=3.0, height=64, width=64,
                      generator=torch.Generator().manual_seed(1000 + i), output_type="pt").frames  # fmt: skip
        read.append((scorer.score_clips(frames.float())[0].motion, motion))
    return {
        "moving": float(np.mean([got != "" for got, _ in read])),
        "direction": float(np.mean([got == asked for got, asked in read])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["images", "clips"])
    parser.add_argument("sampler", choices=list(SAMPLERS))
    parser.add_argument("steps", type=int)
    parser.add_argument("--n", type=int, default=32, help="images per prompt, or clips")
    parser.add_argument("--out", default="runs/samplers.jsonl")
    args = parser.parse_args()
    start = time.time()
    if args.mode == "images":
        result = {"accuracy": image_accuracy(args.sampler, args.steps, args.n), "samples": 4 * args.n}
    else:
        result = clip_motion(args.sampler, args.steps, args.n)
    row = {"mode": args.mode, "sampler": args.sampler, "steps": args.steps, "n": args.n, **result,
           "seconds": round(time.time() - start, 1)}  # fmt: skip
    print(json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
