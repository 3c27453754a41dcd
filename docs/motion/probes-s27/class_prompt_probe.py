"""Probe: the class prompt for the first K steps (concept LoRA at E), then the concept prompt at full scale."""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, "benchmarks")
from composition_bars import HEADPHONES, pipelines

from cdvideo import concept as concepts
from cdvideo import directions, motion, presets, strength
from cdvideo.shapes import scorer

p = argparse.ArgumentParser()
p.add_argument("concept", type=Path)
p.add_argument("--direction", default="left")
p.add_argument("--clips", type=int, default=16)
p.add_argument("--early", type=int, nargs="+", default=[4])
p.add_argument("--early-scale", type=float, default=0.0)
p.add_argument("--weight", type=float, default=1.5)
p.add_argument("--headphones", action="store_true")
a = p.parse_args()
concept = concepts.load_concept(a.concept)
_, video = pipelines(a.concept, image=False)
scale = concept.render_scale
tail = (" wearing headphones" if a.headphones else "") + f" moving {a.direction}"
cprompt, kprompt = f"a {concept.token} circle{tail}", f"a circle{tail}"
source, _ = directions.family_loras("shapes")[a.direction]
adapters = motion.load_motion_loras(video, [], [source], scale)
adapters.activate(video, source, a.weight)
pre = presets.SHAPES
F = pre.frames
dev = video.device
with torch.no_grad():
    kpos, neg = video.encode_prompt(kprompt, dev, 1, True)
    cpos, _ = video.encode_prompt(cprompt, dev, 1, True)
for K in a.early:
    out = []
    for start in range(0, a.clips, 8):
        n = min(8, a.clips - start)
        strength.set_adapter_scale(video.unet, concepts.ADAPTER_NAME, a.early_scale if K else scale)
        swap = torch.cat([neg.repeat(n, 1, 1), cpos.repeat(n, 1, 1)]).repeat_interleave(F, dim=0)

        def cb(pipe, i, t, kw, K=K, swap=swap):
            if i + 1 == K:
                strength.set_adapter_scale(pipe.unet, concepts.ADAPTER_NAME, scale)
                kw["prompt_embeds"] = swap
            return kw

        first = kpos if K else cpos
        frames = video(
            prompt_embeds=first.repeat(n, 1, 1),
            negative_prompt_embeds=neg.repeat(n, 1, 1),
            num_frames=F,
            num_inference_steps=pre.steps,
            guidance_scale=pre.guidance,
            generator=torch.Generator().manual_seed(400 + start),
            output_type="pt",
            height=64,
            width=64,
            callback_on_step_end=cb,
            callback_on_step_end_tensor_inputs=["prompt_embeds"],
        ).frames
        out += scorer.score_clips(frames.float(), expected_cls=["circle"] * n)
    fr = [f for c in out for f in c.frames]
    asked = f"moving {a.direction}"
    print(
        json.dumps(
            {
                "prompt": cprompt,
                "early_steps": K,
                "early_scale": a.early_scale,
                "weight": a.weight,
                "moving_asked": float(np.mean([c.motion == asked for c in out])),
                "still": float(np.mean([c.motion == "" for c in out])),
                "frames_stripes": float(np.mean([bool(f.pattern) for f in fr])),
                "frames_stripes_headphones": float(
                    np.mean([bool(f.pattern) and f.accessory == HEADPHONES for f in fr])
                ),
                "motions": [c.motion or "still" for c in out],
            }
        ),
        flush=True,
    )
