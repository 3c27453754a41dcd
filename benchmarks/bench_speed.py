"""CPU speed of the Shapes world: cdvideo's shipped defaults against a stock AnimateDiffPipeline at DDIM 25.

One process loads both pipelines once, then renders the same prompt and seed with each in turn
(order flipped every round, so load drift hits both alike). It prints the median time per clip, the
time ratio against the stock pipeline, the FLOPs each render does (counted by torch's FlopCounterMode
on one real render, not typed in), the achieved GFLOP/s, and that as a share of the cores' measured
peak (a matmul probe in the same precision on the same threads). With --train it also times training
steps at the Shapes defaults.

    python benchmarks/bench_speed.py                  # 3 rounds, 16 frames, 64 px
    python benchmarks/bench_speed.py --train --json runs/bench/speed.json
    python benchmarks/bench_speed.py --bf16           # where fp32 is the default: also `--precision bf16`

On a CPU with bf16 units the default renders in bf16, and the same settings in fp32 are timed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from cdvideo import loading

PROMPT = "a circle wearing headphones moving right"


def matmul_peak(threads: int, size: int = 1024, seconds: float = 3.0, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of a large matmul on `threads` threads: the practical peak of these cores in `dtype`."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e9


def stock_pipeline():
    """What a diffusers user writes: the Shapes base and motion adapter, the base's DDIM, 25 steps."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    from cdvideo.shapes.models import BASE_DIR, MOTION_DIR

    adapter = MotionAdapter.from_pretrained(MOTION_DIR, torch_dtype=torch.float32)
    pipe = AnimateDiffPipeline.from_pretrained(BASE_DIR, motion_adapter=adapter, torch_dtype=torch.float32)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)

    def render(seed: int):
        generator = torch.Generator().manual_seed(seed)
        return pipe(PROMPT, num_frames=16, num_inference_steps=25, guidance_scale=3.0, generator=generator,
                    output_type="np", height=64, width=64).frames[0]  # fmt: skip

    return render


def cdvideo_pipeline(precision: str | None = None):
    """`cdvideo animate --base shapes` as shipped (or at `--precision`): its sampler, steps, precision and speed
    settings."""
    from cdvideo import controls
    from cdvideo.rendering import AnimateConfig, build_pipeline, render_clip, resolve

    cfg = resolve(AnimateConfig(prompts=[PROMPT], base="shapes", use_concept=False, precision=precision), None)
    pipe = build_pipeline(cfg, loading.DTYPES[shipped_precision(precision)])
    pipe.set_progress_bar_config(disable=True)
    controls.apply(pipe, cfg, loading.pick_device("cpu"), say=lambda s: None)
    return lambda seed: render_clip(pipe, cfg, PROMPT, seed)


def shipped_precision(precision: str | None = None) -> str:
    """What `animate` renders the Shapes world in on this CPU (bf16 where it has bf16 units), or `precision`."""
    from cdvideo import presets

    return loading.pick_precision(torch.device("cpu"), precision, presets.SHAPES.cpu_bf16)


def count_flops(render) -> float:
    with FlopCounterMode(display=False) as counter:
        render(0)
    return counter.get_total_flops()


def time_renders(variants: dict, rounds: int) -> dict[str, list[float]]:
    times = {name: [] for name in variants}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            start = time.perf_counter()
            variants[name](r)
            times[name].append(time.perf_counter() - start)
    return times


def training_steps_per_second(steps: int, **overrides) -> float:
    """Steps/s of `cdvideo train` at the Shapes defaults on the demo's subject (setup excluded)."""
    from cdvideo.demo import write_subject_photos
    from cdvideo.training import TrainConfig, train

    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        write_subject_photos(Path(tmp) / "photos")
        cfg = TrainConfig(images=[f"{tmp}/photos"], class_word="circle", base="shapes", output=f"{tmp}/c",
                          steps=steps, **overrides)  # fmt: skip
        train(cfg, say=lambda s: None, progress=False, after_backward=lambda m: stamps.append(time.perf_counter()))
    timed = stamps[len(stamps) // 4 :]  # after warm-up
    return (len(timed) - 1) / (timed[-1] - timed[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train", action="store_true", help="also time training steps")
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--bf16", action="store_true", help="also time `--precision bf16` where fp32 is the default")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    default = shipped_precision()
    precisions = {"stock DDIM 25": "fp32", "cdvideo default": default}
    if default != "fp32":  # the same sampler and settings in fp32: what the sampler alone buys
        precisions["cdvideo fp32"] = "fp32"
    elif args.bf16:
        precisions["cdvideo bf16"] = "bf16"
    peaks = {dtype: matmul_peak(threads, dtype=loading.DTYPES[dtype]) for dtype in sorted(set(precisions.values()))}
    variants = {name: stock_pipeline() if name.startswith("stock") else cdvideo_pipeline(precision)
                for name, precision in precisions.items()}  # fmt: skip
    flops = {name: count_flops(render) for name, render in variants.items()}
    times = time_renders(variants, args.rounds)
    rows = {}
    for name, seconds in times.items():
        median = statistics.median(seconds)
        rows[name] = {
            "precision": precisions[name],
            "seconds": round(median, 2),
            "all_seconds": [round(s, 2) for s in seconds],
            "gflop": round(flops[name] / 1e9, 1),
            "gflop_per_s": round(flops[name] / 1e9 / median, 1),
            "share_of_peak": round(flops[name] / 1e9 / median / peaks[precisions[name]], 3),
        }
    stock = rows["stock DDIM 25"]
    result = {
        "threads": threads,
        "matmul_peak_gflop_per_s": {dtype: round(peak, 1) for dtype, peak in peaks.items()},
        "cpu": os.popen("lscpu | grep 'Model name'").read().split(":")[-1].strip(),
        "load_average": os.getloadavg(),
        "render": rows,
        "render_time_ratio": {name: round(stock["seconds"] / row["seconds"], 2) for name, row in rows.items()},
    }
    for dtype, peak in peaks.items():
        print(f"matmul probe: {peak:.1f} GFLOP/s in {dtype} on {threads} threads")
    for name, row in rows.items():
        print(f"{name:16} {row['precision']:5} {row['seconds']:6.2f} s/clip  {row['gflop']:7.1f} GFLOP  "
              f"{row['gflop_per_s']:6.1f} GFLOP/s  {row['share_of_peak']:.0%} of the {row['precision']} peak  "
              f"{result['render_time_ratio'][name]:.2f}x the stock pipeline's speed")  # fmt: skip
    if args.train:
        # The Shapes defaults before masked photos: the whole photo taught, no base-model context.
        before = training_steps_per_second(args.train_steps, masked_loss=False, context_weight=0.0)
        after = training_steps_per_second(args.train_steps)
        result["train_steps_per_s"] = {"unmasked, no context": round(before, 2), "default": round(after, 2)}
        result["train_ratio"] = round(after / before, 2)
        ratio = result["train_ratio"]
        print(f"training: {after:.2f} steps/s at the defaults against {before:.2f} unmasked ({ratio:.2f}x)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
