"""Probe: images with the class prompt for the first K steps (concept LoRA at 0), then the concept prompt."""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, "benchmarks")
from composition_bars import HEADPHONES, composition_prompts, right

from cdvideo import concept as concepts
from cdvideo import loading, presets, strength
from cdvideo.shapes import scorer

p = argparse.ArgumentParser()
p.add_argument("concept", type=Path)
p.add_argument("--samples", type=int, default=16)
p.add_argument("--early", type=int, nargs="+", default=[0, 2, 4])
p.add_argument("--phrases", type=int, default=7)
a = p.parse_args()
concept = concepts.load_concept(a.concept)
pipe = loading.load_image_pipeline("shapes", torch.float32)
pipe.scheduler = presets.make_scheduler("shapes", None, pipe.scheduler.config, video=False)
pipe.set_progress_bar_config(disable=True)
concepts.apply_concept(pipe, a.concept, concept, fuse=False)
pre = presets.SHAPES
n = a.samples
phrases = [("", 100)] + [(ph, 200 + i) for i, ph in enumerate([HEADPHONES, *composition_prompts()][: a.phrases])]
for K in a.early:
    row = {"early_steps": K}
    for phrase, seed in phrases:
        cprompt = " ".join(w for w in (f"a {concept.token} circle", phrase) if w)
        kprompt = " ".join(w for w in ("a circle", phrase) if w)
        with torch.no_grad():
            kpos, neg = pipe.encode_prompt(kprompt, pipe.device, 1, True)
            cpos, _ = pipe.encode_prompt(cprompt, pipe.device, 1, True)
        swap = torch.cat([neg.repeat(n, 1, 1), cpos.repeat(n, 1, 1)])

        def cb(pl, i, t, kw, K=K, swap=swap):
            if i + 1 == K:
                strength.set_adapter_scale(pl.unet, concepts.ADAPTER_NAME, 1.0)
                kw["prompt_embeds"] = swap
            return kw

        strength.set_adapter_scale(pipe.unet, concepts.ADAPTER_NAME, 0.0 if K else 1.0)
        imgs = pipe(
            prompt_embeds=(kpos if K else cpos).repeat(n, 1, 1),
            negative_prompt_embeds=neg.repeat(n, 1, 1),
            num_inference_steps=pre.steps,
            guidance_scale=pre.guidance,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
            height=64,
            width=64,
            callback_on_step_end=cb,
            callback_on_step_end_tensor_inputs=["prompt_embeds"],
        ).images
        scores = scorer.score_frames(np.asarray(imgs))
        key = phrase or "identity"
        row[key] = (
            float(np.mean([s.pattern for s in scores]))
            if not phrase
            else float(np.mean([right(s, phrase, True) for s in scores]))
        )
    print(json.dumps(row), flush=True)
