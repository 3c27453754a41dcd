"""Probe (session 27): still images with the class prompt for the first K of the family's steps (the concept's
LoRA off), then the concept's prompt at weight 1, through `cdvideo.strength.scheduled` as `cdvideo animate`
renders `--concept-schedule class:K/steps`; scored on the composition bars' prompts and seeds.

    python docs/composition/probes-s27/class_prompt_images_probe.py CONCEPT --early 0 2 4
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, "benchmarks")
from composition_bars import HEADPHONES, composition_prompts, right  # noqa: E402

from cdvideo import concept as concepts  # noqa: E402
from cdvideo import loading, presets, strength  # noqa: E402
from cdvideo.shapes import scorer  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("concept", type=Path)
parser.add_argument("--samples", type=int, default=16)
parser.add_argument("--early", type=int, nargs="+", default=[0, 2, 4])
parser.add_argument("--phrases", type=int, default=7)
args = parser.parse_args()
concept = concepts.load_concept(args.concept)
pipe = loading.load_image_pipeline("shapes", torch.float32)
pipe.scheduler = presets.make_scheduler("shapes", None, pipe.scheduler.config, video=False)
pipe.set_progress_bar_config(disable=True)
concepts.apply_concept(pipe, args.concept, concept, fuse=False)
steps, n = presets.SHAPES.steps, args.samples
phrases = [("", 100)] + [(p, 200 + i) for i, p in enumerate([HEADPHONES, *composition_prompts()][: args.phrases])]
for early in args.early:
    schedule = strength.Schedule(0.0, early / steps, class_prompt=True) if early else None
    row = {"early_steps": early}
    for phrase, seed in phrases:
        prompt = " ".join(w for w in (f"a {concept.token} circle", phrase) if w)
        with strength.scheduled(pipe, concepts.ADAPTER_NAME, schedule, steps, 1.0, [prompt] * n, concept.token) as call:
            images = pipe(**call, num_inference_steps=steps, guidance_scale=presets.SHAPES.guidance, height=64,
                          width=64, generator=torch.Generator().manual_seed(seed), output_type="np").images  # fmt: skip
        scores = scorer.score_frames(np.asarray(images))
        hits = [s.pattern for s in scores] if not phrase else [right(s, phrase, True) for s in scores]
        row[phrase or "identity"] = float(np.mean(hits))
    print(json.dumps(row), flush=True)
