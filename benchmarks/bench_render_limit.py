"""How close an AnimateDiff render gets to the machine: SD1.5-architecture random weights, FLOPs counted.

Builds the SD1.5 UNet, VAE and text encoder from `configs/sd15/` and a default (SD1.5-shaped)
`MotionAdapter` with random weights (no download), then renders a clip with diffusers'
`AnimateDiffPipeline` the way `cdvideo animate` does (DDIM, classifier-free guidance) and reports
time, peak memory and model FLOP utilisation against the analytical counts of issue 7:

- UNet: 0.80 TFLOP per forward of one 64x64-latent image; the motion modules add 38% at 16 frames;
- VAE decode: 2.5 TFLOP per 512 px frame;
- peak: bf16 dense TFLOP/s of the GPU read from its name (`PEAK_TFLOPS`: H200 SXM 989, H200 NVL 835),
  or `--peak-tflops` for a GPU not in that table.

The counts are also measured once with `torch.utils.flop_counter.FlopCounterMode` on one UNet forward
and one VAE decode, so the utilisation uses measured rather than assumed FLOPs where they differ.

    python benchmarks/bench_render_limit.py                          # 16 frames, 512 px, 25 steps, bf16
    python benchmarks/bench_render_limit.py --variants eager channels-last compile
    python benchmarks/bench_render_limit.py --device cpu --dtype fp32 --resolution 64 --frames 2 --steps 2  # smoke
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SD15 = REPO / "configs" / "sd15"
ANALYTICAL = {"unet_tflop_per_frame": 0.80, "motion_overhead_16f": 0.38, "vae_tflop_per_frame_512": 2.5}
# bf16 dense tensor-core TFLOP/s from NVIDIA's datasheets (the sparse figures are twice these), by the
# name the GPU reports; more specific names first: the SXM parts report the bare name.
PEAK_TFLOPS = [
    ("H200 NVL", 835.0),
    ("H200", 989.0),  # SXM
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
]


def gpu_part(device: torch.device) -> dict:
    """The GPU's name (and power limit, which tells SXM from NVL/PCIe parts) as nvidia-smi reports them."""
    part = {"name": torch.cuda.get_device_name(device), "power_limit_w": None}
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        query = ["nvidia-smi", f"--id={index}", "--query-gpu=power.limit", "--format=csv,noheader,nounits"]
        part["power_limit_w"] = float(subprocess.run(query, capture_output=True, text=True, timeout=30).stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        pass  # no nvidia-smi (or a GPU hidden from it): the name alone decides
    return part


def peak_tflops(name: str, override: float | None) -> float | None:
    """bf16 dense peak for MFU: `override` when given, else the table's entry for `name` (None: unknown GPU)."""
    if override is not None:
        return override
    return next((peak for part, peak in PEAK_TFLOPS if part.lower() in name.lower()), None)


def build_pipeline(device: torch.device, dtype: torch.dtype):
    from diffusers import (
        AnimateDiffPipeline,
        AutoencoderKL,
        DDIMScheduler,
        MotionAdapter,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(REPO))
    from cdvideo.shapes.models import build_tokenizer

    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15 / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15 / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15 / "text_encoder"))
        adapter = MotionAdapter()  # the default config is AnimateDiff v1.5's
    scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(SD15 / "scheduler"))
    pipe = AnimateDiffPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_tokenizer(),  # unused: prompt embeddings are passed in
        unet=unet,
        motion_adapter=adapter,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def count_tflop(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops() / 1e12


def measured_counts(pipe, args, device, dtype) -> dict:
    """FLOPs of one UNet forward over all frames (one guidance branch) and one frame's VAE decode."""
    latent = args.resolution // 8
    sample = torch.randn(1, 4, args.frames, latent, latent, device=device, dtype=dtype)
    text = torch.randn(args.frames, 77, 768, device=device, dtype=dtype)
    t = torch.tensor([500], device=device)
    unet = count_tflop(lambda: pipe.unet(sample, t, text))
    vae = count_tflop(lambda: pipe.vae.decode(sample[:, :, 0]))
    return {"unet_tflop_per_frame": unet / args.frames, "vae_tflop_per_frame": vae}


def render(pipe, args, device, dtype, steps: int):
    generator = torch.Generator(device).manual_seed(0)
    embeds = torch.randn(1, 77, 768, generator=generator, device=device).to(dtype)
    return pipe(
        prompt_embeds=embeds,
        negative_prompt_embeds=torch.zeros_like(embeds),
        num_frames=args.frames,
        height=args.resolution,
        width=args.resolution,
        num_inference_steps=steps,
        guidance_scale=args.guidance,
        generator=generator,
        output_type="pt",
        decode_chunk_size=args.decode_chunk_size,
    ).frames


def apply_variant(pipe, variant: str) -> None:
    if variant in ("channels-last", "compile"):
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if variant == "compile":
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs", fullgraph=False)
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode="max-autotune-no-cudagraphs", fullgraph=False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--decode-chunk-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, help="bf16 dense peak; default: from the GPU's name")
    parser.add_argument("--variants", nargs="+", default=["eager"], choices=["eager", "channels-last", "compile"])
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    part = gpu_part(device) if device.type == "cuda" else {"name": "cpu", "power_limit_w": None}
    peak = peak_tflops(part["name"], args.peak_tflops)
    if peak is None and device.type == "cuda":
        sys.exit(f"no bf16 peak known for {part['name']}: pass --peak-tflops (its dense bf16 TFLOP/s)")
    pipe = build_pipeline(device, dtype)
    counts = measured_counts(pipe, args, device, dtype)
    branches = 2 if args.guidance > 1 else 1
    unet_tflop = counts["unet_tflop_per_frame"] * args.frames * branches * args.steps
    vae_tflop = counts["vae_tflop_per_frame"] * args.frames
    scale = (args.resolution / 512) ** 2
    analytical = (
        ANALYTICAL["unet_tflop_per_frame"] * (1 + ANALYTICAL["motion_overhead_16f"]) * scale
    ) * args.frames * branches * args.steps + ANALYTICAL["vae_tflop_per_frame_512"] * scale * args.frames
    info = {
        "device": part["name"],
        "power_limit_w": part["power_limit_w"],
        "peak_tflops": peak,
        "torch": torch.__version__,
        "settings": vars(args),
        "measured_counts_tflop": counts,
        "render_tflop_measured": unet_tflop + vae_tflop,
        "render_tflop_analytical": analytical,
        "results": [],
    }
    print(json.dumps({k: v for k, v in info.items() if k != "results"}, indent=1), flush=True)
    for variant in args.variants:
        apply_variant(pipe, variant)
        start = time.perf_counter()
        render(pipe, args, device, dtype, steps=2)  # warm-up (and compilation)
        sync(device)
        warmup_s = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(args.repeats):
            sync(device)
            start = time.perf_counter()
            frames = render(pipe, args, device, dtype, steps=args.steps)
            sync(device)
            times.append(time.perf_counter() - start)
        best = min(times)
        result = {
            "variant": variant,
            "warmup_s": round(warmup_s, 2),
            "seconds": [round(t, 3) for t in times],
            "frames_finite": bool(torch.isfinite(frames).all()),
            "mfu_measured_flops": (unet_tflop + vae_tflop) / best / peak if peak else None,
            "mfu_analytical_flops": analytical / best / peak if peak else None,
            "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        }
        info["results"].append(result)
        print(json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
