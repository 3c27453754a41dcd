"""Peak memory of a training step with each memory option on and off (cdvideo/memory.py).

Every variant runs the real `cdvideo.train()` for 2 steps at batch 1 on SD1.5-architecture random weights
(`configs/sd15/`, built once, no download), each in its own subprocess. The measured window starts after
the first backward pass (the weights, gradients and precomputed latents are alive) and ends when `train()`
returns: it covers the first optimizer step (AdamW allocates its state), the whole second step and the
save. Peak memory:

- CPU: torch's profiler with profile_memory=True records every allocation and free of the window; peak =
  bytes held by live tensors when the window opens (every tensor the garbage collector can see) + the
  highest running sum of the recorded allocations.
- CUDA: torch.cuda.max_memory_allocated() over the same window.

The first two steps' MSE of each variant is printed against the fp32 baseline (same seed, same batches):
the options must not change the result beyond bf16 rounding.

    nice -n 15 python benchmarks/bench_memory.py --resolution 256            # CPU, about 10 minutes
    python benchmarks/bench_memory.py --resolution 512 --device cuda
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MIB = 1024 * 1024
VARIANTS = {  # name -> TrainConfig overrides ("frozen_fp32": autocast only, frozen weights left in fp32)
    "fp32 (baseline)": {},
    "fp32 + gradient checkpointing": {"gradient_checkpointing": True},
    "fp32 + adamw8bit": {"optimizer": "adamw8bit"},
    "bf16 autocast, frozen fp32": {"mixed_precision": "bf16", "frozen_fp32": True},
    "bf16 (frozen weights bf16)": {"mixed_precision": "bf16"},
    "bf16 + gradient checkpointing": {"mixed_precision": "bf16", "gradient_checkpointing": True},
    "bf16 + checkpointing + adamw8bit": {
        "mixed_precision": "bf16",
        "gradient_checkpointing": True,
        "optimizer": "adamw8bit",
    },
}


def _live_tensor_bytes() -> int:
    """Bytes of the distinct storages of every CPU tensor the garbage collector can reach."""
    import torch

    seen, total = set(), 0
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor) or obj.device.type != "cpu":
                continue
            storage = obj.untyped_storage()
        except (RuntimeError, ReferenceError):
            continue
        if storage.data_ptr() not in seen and storage.nbytes():
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


class PeakWindow:
    """Opens at the first backward pass, closes when asked; reports the peak bytes in between."""

    def __init__(self, device: str):
        self.device, self.prof, self.start_bytes, self.opened = device, None, 0, None

    def open(self, models: dict) -> None:
        import torch

        if self.opened is not None:
            return
        self.opened = time.perf_counter()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        self.start_bytes = _live_tensor_bytes()
        self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
        self.prof.start()

    def close(self) -> int:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        self.prof.stop()
        # Kineto's raw records: one per allocation and free (prof.events() keeps only those outside an op).
        events = [e for e in self.prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        running = peak = 0
        for event in sorted(events, key=lambda e: e.start_ns()):
            running += event.nbytes()
            peak = max(peak, running)
        return self.start_bytes + peak


def worker(args) -> dict:
    import cdvideo
    from cdvideo import memory

    overrides = dict(VARIANTS[args.variant])
    if overrides.pop("frozen_fp32", False):
        memory.frozen_dtype = lambda mixed_precision: None  # autocast alone, as before this option existed
    out = Path(args.work) / ("run-" + "".join(c if c.isalnum() else "-" for c in args.variant))
    window = PeakWindow(args.device)
    cfg = cdvideo.TrainConfig(
        images=[args.photos], class_word="star", base=args.base, output=str(out), steps=2, batch_size=1,
        resolution=args.resolution, rank=4, spl_weight=1.0, prior_weight=0.0, seed=0, device=args.device,
        **overrides,
    )  # fmt: skip
    cdvideo.train(cfg, say=lambda s: None, progress=False, after_backward=window.open)
    peak = window.close()
    seconds = time.perf_counter() - window.opened
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"variant": args.variant, "peak_bytes": peak, "mse": [r["mse"] for r in rows], "window_s": seconds}


def build(work: Path, resolution: int) -> dict:
    from bench_train import build_sd15_random

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import write_dog_photos

    base = work / "sd15-random"
    if not (base / "model_index.json").exists():  # --models DIR keeps them for the next run
        build_sd15_random(base)
    return {"base": str(base), "photos": str(write_dog_photos(work / "photos", resolution))}


def table(results: list[dict], resolution: int, device: str) -> str:
    base = results[0]
    lines = [
        f"peak memory of a training step, SD1.5 architecture, {resolution} px, batch 1, {device}",
        "",
        "| variant | peak MiB | ratio | MSE step 1, 2 | rel. diff to baseline |",
        "|---|---:|---:|---|---:|",
    ]
    for r in results:
        diff = max(abs(a - b) / abs(b) for a, b in zip(r["mse"], base["mse"]))
        mse = ", ".join(f"{v:.5f}" for v in r["mse"])
        ratio = r["peak_bytes"] / base["peak_bytes"]
        lines.append(f"| {r['variant']} | {r['peak_bytes'] / MIB:,.0f} | {ratio:.2f}x | {mse} | {diff:.2e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--models", help="folder to build the random SD1.5 weights in once and reuse (default: temp)")
    parser.add_argument("--worker", dest="variant", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--photos", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(worker(args)))
        return
    if args.variants[0] != "fp32 (baseline)":
        args.variants.insert(0, "fp32 (baseline)")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        built = build(Path(args.models or tmp), args.resolution)
        results = []
        for variant in args.variants:
            start = time.time()
            cmd = [sys.executable, __file__, "--worker", variant, "--work", tmp, "--resolution", str(args.resolution),
                   "--device", args.device, "--base", built["base"], "--photos", built["photos"]]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode or not line:
                sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(line[0].removeprefix("RESULT ")))
            print(f"{variant}: {results[-1]['peak_bytes'] / MIB:,.0f} MiB ({time.time() - start:.0f} s)", flush=True)
    print()
    print(table(results, args.resolution, args.device))
    if args.json:
        Path(args.json).write_text(json.dumps({"resolution": args.resolution, "device": args.device,
                                               "results": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
