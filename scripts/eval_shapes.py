"""Quality bars of the embedded Shapes models, measured with the world's exact scorer.

    python scripts/eval_shapes.py --samples 64 --out docs/shapes_quality.json

Image model: class+colour+accessory on seen and held-out combinations, and background.
Motion adapter: motion direction and class kept across frames. Prints one table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cdvideo import loading  # noqa: E402
from cdvideo.shapes import scorer, world  # noqa: E402

CLASSES, COLOURS, ACCESSORIES, BACKGROUNDS = (
    world.CLASSES,
    list(world.COLOURS),
    list(world.ACCESSORIES),
    list(world.BACKGROUNDS),
)


def image_prompts(n_seen: int, generator: torch.Generator) -> list[dict]:
    held = {tuple(t) for t in world.HELD_OUT}
    prompts = []
    for cls, colour, accessory in world.HELD_OUT:
        prompts.append({"kind": "held-out", "cls": cls, "colour": colour, "accessory": accessory, "background": ""})
    while sum(p["kind"] == "seen" for p in prompts) < n_seen:
        cls = CLASSES[int(torch.randint(4, (1,), generator=generator))]
        colour = COLOURS[int(torch.randint(4, (1,), generator=generator))]
        accessory = ACCESSORIES[int(torch.randint(4, (1,), generator=generator))]
        background = BACKGROUNDS[int(torch.randint(5, (1,), generator=generator))]
        if (cls, colour, accessory) not in held:
            prompts.append(
                {"kind": "seen", "cls": cls, "colour": colour, "accessory": accessory, "background": background}
            )
    for p in prompts:
        p["prompt"] = world.caption(
            CLASSES.index(p["cls"]),
            COLOURS.index(p["colour"]),
            ACCESSORIES.index(p["accessory"]),
            BACKGROUNDS.index(p["background"]),
        )
    return prompts


def load_pipelines(device: str, dtype: torch.dtype):
    """The same pipelines `cdvideo animate --base shapes` builds."""
    image = loading.load_image_pipeline("shapes", dtype).to(device)
    image.set_progress_bar_config(disable=True)
    video = loading.video_pipeline(image, loading.load_motion_adapter("shapes", dtype)).to(device)
    video.set_progress_bar_config(disable=True)
    return image, video


def eval_images(pipe, prompts, samples: int, guidance: float, steps: int, batch: int, seed: int) -> dict:
    rows = []
    for p in prompts:
        frames = []
        for start in range(0, samples, batch):
            n = min(batch, samples - start)
            gen = torch.Generator(pipe.device).manual_seed(seed + start)
            out = pipe(
                p["prompt"],
                num_images_per_prompt=n,
                guidance_scale=guidance,
                num_inference_steps=steps,
                generator=gen,
                output_type="np",
                height=64,
                width=64,
            )
            frames.append(out.images)
        scores = scorer.score_frames(np.concatenate(frames))
        joint = [s.cls == p["cls"] and s.colour == p["colour"] and s.accessory == p["accessory"] for s in scores]
        bg = [s.background == p["background"] for s in scores]
        rows.append({**p, "joint": sum(joint) / len(joint), "background_ok": sum(bg) / len(bg)})
    summary = {}
    for kind in ("seen", "held-out"):
        sel = [r["joint"] for r in rows if r["kind"] == kind]
        summary[f"joint_{kind}"] = sum(sel) / max(len(sel), 1)
    summary["background"] = sum(r["background_ok"] for r in rows) / len(rows)
    return {"summary": summary, "rows": rows}


def eval_motion(pipe, clips: int, guidance: float, steps: int, batch: int, seed: int, frames: int = 16) -> dict:
    rows = []
    gen_prompts = torch.Generator().manual_seed(seed)
    for m, motion in enumerate(world.MOTIONS):
        ok, kept = 0, []
        for start in range(0, clips, batch):
            n = min(batch, clips - start)
            scene = world.sample_scenes(n, gen_prompts)
            prompts = [
                world.caption(int(scene.cls[i]), int(scene.colour[i]), 0, int(scene.background[i]), m) for i in range(n)
            ]
            gen = torch.Generator(pipe.device).manual_seed(seed + start)
            out = pipe(
                prompts,
                num_frames=frames,
                guidance_scale=guidance,
                num_inference_steps=steps,
                generator=gen,
                output_type="pt",
                height=64,
                width=64,
            )
            for i, video in enumerate(out.frames):
                score = scorer.score_clip(video.float().cpu())
                ok += score.motion == motion
                kept.append(sum(f.cls == CLASSES[int(scene.cls[i])] for f in score.frames) / len(score.frames))
        rows.append({"motion": motion or "still", "direction_ok": ok / clips, "class_kept": sum(kept) / len(kept)})
    summary = {
        "direction": sum(r["direction_ok"] for r in rows) / len(rows),
        "class_kept": sum(r["class_kept"] for r in rows) / len(rows),
    }
    return {"summary": summary, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seen-prompts", type=int, default=12)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--guidance", type=float, nargs="+", default=[None])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--skip-motion", action="store_true")
    parser.add_argument("--skip-images", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    from cdvideo import presets

    preset = presets.SHAPES
    steps = args.steps or preset.steps
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    image, video = load_pipelines(args.device, dtype)
    prompts = image_prompts(args.seen_prompts, torch.Generator().manual_seed(args.seed))
    report = {"command": " ".join(sys.argv), "samples": args.samples, "steps": steps, "results": []}
    for guidance in args.guidance:
        guidance = guidance or preset.guidance
        start = time.time()
        result = {"guidance": guidance}
        if not args.skip_images:
            result["images"] = eval_images(image, prompts, args.samples, guidance, steps, args.batch, args.seed)
        if not args.skip_motion:
            result["motion"] = eval_motion(video, args.clips, guidance, steps, max(1, args.batch // 16), args.seed)
        result["seconds"] = round(time.time() - start, 1)
        report["results"].append(result)
        line = {k: round(v, 3) for k, v in result.get("images", {"summary": {}})["summary"].items()}
        if "motion" in result:
            line.update({f"motion_{k}": round(v, 3) for k, v in result["motion"]["summary"].items()})
        print(json.dumps({"guidance": guidance, **line, "seconds": result["seconds"]}), flush=True)
        if args.out:  # after each setting, so a time limit keeps what was measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
