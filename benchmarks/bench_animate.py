"""Rendering benchmark: `cdvideo.animate()` vs a stock diffusers AnimateDiffPipeline built by hand.

Compare mode (default): both variants render the same prompt, seed and settings (frames, size,
steps, guidance, the model family's sampler), once without and once with a concept. The stock
variant loads the concept the way its model card says: `load_lora_weights`, `load_textual_inversion`,
`fuse_lora`. Each block is one variant in a fresh subprocess (load, render, write mp4 + gif); blocks
alternate stock/cdvideo and flip order every round. Printed: median time per variant, the ratio, peak
RSS (VmHWM) and, on CUDA, `torch.cuda.max_memory_allocated`, and the largest pixel difference between
the two variants' frames (the renders must agree).

Sweep mode (`--sweep`): cdvideo alone, a fresh process per point: how per-video time and peak RSS grow
with frames (8/16/32, and 48 in FreeNoise windows), resolution, number of seeds and each
memory/speed control. Each point renders two seeds; the faster video is its time.

    python benchmarks/bench_animate.py                      # shapes, 64 px, 16 frames, 2 steps, 2 rounds
    python benchmarks/bench_animate.py --sweep
    python benchmarks/bench_animate.py --device cuda --steps 25
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import REPO, _peak_rss_mib, serve_worker  # noqa: E402

PROMPT = "a star spinning"
CLASS_WORD = "star"
TOKEN = "<new1>"


# --------------------------------------------------------------------------------------------------
# Workers (each runs in its own subprocess)
# --------------------------------------------------------------------------------------------------


def _settings(args) -> dict:
    return {
        "frames": args.frames,
        "width": args.resolution,
        "height": args.resolution,
        "steps": args.steps,
        "guidance": args.guidance,
    }


def _cuda_peak(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def worker_concept(args) -> dict:
    """A small shapes concept (a few steps: only the loading and fusing cost matters here)."""
    import cdvideo

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import write_dog_photos

    work = Path(args.output)
    photos = write_dog_photos(work / "photos", 64)
    folder = cdvideo.train(
        cdvideo.TrainConfig(
            images=[str(photos)], class_word=CLASS_WORD, base="shapes", output=str(work / "concept"), steps=4
        ),
        say=lambda _m: None,
        progress=False,
    )
    return {"concept": str(folder)}


def _time_pipeline_calls(sink: list[float]) -> None:
    """Record how long each AnimateDiffPipeline call takes (denoising + VAE decode), nothing else changed."""
    from diffusers import AnimateDiffPipeline

    call = AnimateDiffPipeline.__call__

    def timed(self, *a, **k):
        start = time.perf_counter()
        try:
            return call(self, *a, **k)
        finally:
            sink.append(time.perf_counter() - start)

    AnimateDiffPipeline.__call__ = timed


def worker_cdvideo(args) -> dict:
    import numpy as np

    import cdvideo
    from cdvideo import loading

    renders: list[float] = []
    _time_pipeline_calls(renders)
    start = time.perf_counter()
    cfg = cdvideo.AnimateConfig(
        prompts=[PROMPT],
        concept=args.concept,
        use_concept=bool(args.concept),
        base="shapes",
        seeds=[args.seed],
        output=args.output,
        device=args.device,
        **_settings(args),
    )
    video = cdvideo.animate(cfg, say=lambda _m: None, progress=False)[0]
    total = time.perf_counter() - start
    np.save(Path(args.output) / "frames.npy", np.asarray(video.frames, dtype=np.float32))
    return {
        "seconds": total,
        "video_seconds": video.seconds,
        "render_seconds": renders[0],
        "peak_rss_mib": _peak_rss_mib(),
        "cuda_max_allocated_mib": _cuda_peak(loading.pick_device(args.device)),
        "prompt": video.rendered_prompt,
    }


def worker_stock(args) -> dict:
    """What a diffusers user writes by hand: the same model, sampler, settings and seed."""
    import numpy as np
    import torch
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter
    from diffusers.utils import export_to_gif, export_to_video

    from cdvideo.shapes.models import BASE_DIR, MOTION_DIR

    start = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    adapter = MotionAdapter.from_pretrained(MOTION_DIR, dtype=dtype)
    pipe = AnimateDiffPipeline.from_pretrained(BASE_DIR, motion_adapter=adapter, dtype=dtype)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    prompt = PROMPT
    if args.concept:
        pipe.load_lora_weights(args.concept, weight_name="pytorch_lora_weights.safetensors")
        pipe.load_textual_inversion(str(Path(args.concept) / "learned_embeds.safetensors"), token=TOKEN)
        pipe.fuse_lora(lora_scale=1.0)
        prompt = PROMPT.replace(CLASS_WORD, f"{TOKEN} {CLASS_WORD}")
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    video_start = time.perf_counter()
    renders: list[float] = []
    _time_pipeline_calls(renders)
    s = _settings(args)
    frames = pipe(
        prompt,
        num_frames=s["frames"],
        width=s["width"],
        height=s["height"],
        num_inference_steps=s["steps"],
        guidance_scale=s["guidance"],
        generator=torch.Generator("cpu").manual_seed(args.seed),
        output_type="np",
    ).frames[0]
    out = Path(args.output)
    export_to_video(list(frames), str(out / "video.mp4"), fps=8)
    export_to_gif([pipe.numpy_to_pil(f)[0] for f in frames], str(out / "video.gif"), fps=8)
    done = time.perf_counter()
    np.save(out / "frames.npy", np.asarray(frames, dtype=np.float32))
    return {
        "seconds": done - start,
        "video_seconds": done - video_start,
        "render_seconds": renders[0],
        "peak_rss_mib": _peak_rss_mib(),
        "cuda_max_allocated_mib": _cuda_peak(device),
        "prompt": prompt,
    }


SWEEP = [  # (label, AnimateConfig overrides); the first is the baseline the others change one thing of
    ("baseline: 16 frames, 64 px", {}),
    ("frames 8", {"frames": 8}),
    ("frames 32", {"frames": 32}),
    ("frames 48 (FreeNoise windows 32/4)", {"frames": 48}),
    ("128 px", {"width": 128, "height": 128}),
    ("4 seeds", {"seeds": [0, 1, 2, 3]}),
    ("decode chunk 1 (= VAE slicing)", {"decode_chunk_size": 1}),
    ("forward chunk 2", {"forward_chunk": 2}),
    ("channels-last", {"channels_last": True}),
    ("compile", {"compile": True}),
    ("128 px, decode chunk 1", {"width": 128, "height": 128, "decode_chunk_size": 1}),
]


def worker_point(args) -> dict:
    """One sweep point in a fresh process, so its peak RSS is its own (freed memory is not given back)."""
    import cdvideo
    from cdvideo import loading

    label, overrides = SWEEP[args.point]
    # Two videos per point: the faster one is the figure (less contention noise; compile's first is warm-up).
    values = {"prompts": [PROMPT], "use_concept": False, "base": "shapes", "seeds": [args.seed, args.seed + 1]}
    values |= _settings(args) | {"output": args.output, "device": args.device} | overrides
    start = time.perf_counter()
    videos = cdvideo.animate(cdvideo.AnimateConfig(**values), say=lambda _m: None, progress=False)
    return {
        "label": label,
        "seconds_total": time.perf_counter() - start,
        "video_seconds": [v.seconds for v in videos],
        "peak_rss_mib": _peak_rss_mib(),
        "cuda_max_allocated_mib": _cuda_peak(loading.pick_device(args.device)),
    }


def run_worker(args) -> None:
    workers = {"concept": worker_concept, "cdvideo": worker_cdvideo, "stock": worker_stock, "point": worker_point}
    serve_worker(args, workers)


# --------------------------------------------------------------------------------------------------
# Driver (never imports torch)
# --------------------------------------------------------------------------------------------------


def _spawn(kind: str, args, tmp: Path, extra: list[str] = ()) -> dict | list:
    result = tmp / f"{kind}-{time.monotonic_ns()}.json"
    out = tmp / f"out-{time.monotonic_ns()}"
    out.mkdir()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--result", str(result),
           "--output", str(out), "--seed", str(args.seed), "--threads", str(args.threads),
           "--frames", str(args.frames), "--resolution", str(args.resolution), "--steps", str(args.steps),
           "--guidance", str(args.guidance), *extra]  # fmt: skip
    if args.device:
        cmd += ["--device", args.device]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    if args.threads > 0:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{kind} worker failed (exit {proc.returncode})")
    data = json.loads(result.read_text())
    if isinstance(data, dict):
        data["frames_file"] = str(out / "frames.npy")
    return data


def _max_pixel_diff(a: str, b: str) -> float:
    import numpy as np

    return float(np.abs(np.load(a) - np.load(b)).max())


def compare(args, tmp: Path) -> dict:
    concept = _spawn("concept", args, tmp)["concept"]
    results: dict[str, list[dict]] = {}
    for label, extra in (("no concept", []), ("concept", ["--concept", concept])):
        for round_ in range(args.rounds):
            order = ("stock", "cdvideo") if round_ % 2 == 0 else ("cdvideo", "stock")
            for variant in order:
                results.setdefault(f"{label}/{variant}", []).append(_spawn(variant, args, tmp, extra))
    summary = {}
    print(f"\n{'setting':<12} {'variant':<8} {'total s (median)':>17} {'per video s':>12} {'render s':>9} "
          f"{'peak RSS MiB':>13} {'CUDA MiB':>9}")  # fmt: skip
    for label in ("no concept", "concept"):
        stock, ours = results[f"{label}/stock"], results[f"{label}/cdvideo"]
        for name, runs in (("stock", stock), ("cdvideo", ours)):
            cuda = runs[-1]["cuda_max_allocated_mib"]
            print(
                f"{label:<12} {name:<8} {statistics.median(r['seconds'] for r in runs):>17.2f} "
                f"{statistics.median(r['video_seconds'] for r in runs):>12.2f} "
                f"{statistics.median(r['render_seconds'] for r in runs):>9.2f} "
                f"{max(r['peak_rss_mib'] for r in runs):>13.0f} {'-' if cuda is None else f'{cuda:.0f}':>9}"
            )
        diff = _max_pixel_diff(stock[0]["frames_file"], ours[0]["frames_file"])
        ratios = {
            key: statistics.median(r[key] for r in ours) / statistics.median(r[key] for r in stock)
            for key in ("seconds", "video_seconds", "render_seconds")
        }
        summary[label] = {**ratios, "max_pixel_diff": diff}
        print(
            f"  {label}: cdvideo/stock time = {ratios['seconds']:.3f}x total, {ratios['video_seconds']:.3f}x per "
            f"video, {ratios['render_seconds']:.3f}x render; max |frame difference| = {diff:.2e} "
            f"(prompts: {ours[0]['prompt']!r} / {stock[0]['prompt']!r})"
        )
    return {"runs": results, "summary": summary}


def sweep(args, tmp: Path) -> list[dict]:
    rows = []
    for index, (label, _) in enumerate(SWEEP):
        if not args.only or any(word in label for word in args.only):
            rows.append(_spawn("point", args, tmp, ["--point", str(index)]))
    print(f"\n{'point':<36} {'videos':>6} {'all videos s':>12} {'per video s (min)':>18} {'peak RSS MiB':>13} "
          f"{'CUDA MiB':>9}")  # fmt: skip
    for row in rows:
        rss, cuda, times = row["peak_rss_mib"], row["cuda_max_allocated_mib"], row["video_seconds"]
        print(f"{row['label']:<36} {len(times):>6} {sum(times):>12.2f} {min(times):>18.2f} "
              f"{'-' if rss is None else f'{rss:.0f}':>13} {'-' if cuda is None else f'{cuda:.0f}':>9}")  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="cost vs frames, resolution, batch and controls")
    parser.add_argument("--only", nargs="+", help="with --sweep: points whose label contains one of these words")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="sampler steps (few: the CPU is shared)")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2, help="stock/cdvideo block pairs, interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (0 = torch's default)")
    parser.add_argument("--json", help="write all results to this file")
    parser.add_argument("--worker", choices=["concept", "cdvideo", "stock", "point", "info"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--concept", help=argparse.SUPPRESS)
    parser.add_argument("--point", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-animate-") as tmp:
        info = _spawn("info", args, Path(tmp))
        print(
            f"machine: {info['cpu']} x{info['cpu_count']}, {info['device']}, torch {info['torch']}, "
            f"{args.threads or info['torch_threads']} thread(s), load {info['loadavg_1min']:.1f}; "
            f"shapes, {args.frames} frames, {args.resolution} px, {args.steps} steps, guidance {args.guidance}"
        )
        results = sweep(args, Path(tmp)) if args.sweep else compare(args, Path(tmp))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
