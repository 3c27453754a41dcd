"""Memory and speed controls for `cdvideo animate`, applied to a built AnimateDiffPipeline.

Memory (small GPUs): VAE decode chunk size, model CPU offload, feed-forward chunking, FreeNoise
sliding context windows for clips longer than the motion adapter's length.
Speed (large GPUs): fp16/bf16 (`loading.pick_precision`), `torch.compile`, channels-last.
Every control keeps the maths the same except FreeNoise windows, which change how frames
attend to each other; the others change where and in what order the work runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cdvideo.errors import UserError

# diffusers' default stride: windows of 16 overlap by 12 frames.
DEFAULT_CONTEXT_STRIDE = 4


@dataclass(frozen=True)
class Windows:
    length: int
    stride: int


def context_windows(frames: int, limit: int, length: int | None, stride: int | None) -> Windows | None:
    """FreeNoise windows for a clip of `frames`, or None when it fits the adapter's `limit` unwindowed."""
    if length is None and stride is None and frames <= limit:
        return None
    length = limit if length is None else length
    stride = DEFAULT_CONTEXT_STRIDE if stride is None else stride
    if length <= 0 or stride <= 0:
        raise UserError("--context-length and --context-stride must be positive")
    if length > limit:
        raise UserError(
            f"--context-length {length} is more than the motion adapter's {limit} frames; use {limit} or fewer"
        )
    if stride > length:
        raise UserError(f"--context-stride {stride} is longer than the window ({length}): frames would be skipped")
    return Windows(length, stride)


def feed_forward_rows(pipe, frames: int, height: int, width: int, guidance: float) -> int:
    """The largest chunk size that divides every feed-forward batch in the UNet (any divisor of it works)."""
    copies = 2 if guidance > 1 else 1  # classifier-free guidance doubles the batch
    scale = pipe.vae_scale_factor
    # Spatial blocks see (copies*frames) rows; motion modules see one row per latent pixel per copy,
    # at every resolution level (stride-2 convolutions round up).
    rows = [copies * frames]
    for level in range(len(pipe.unet.config.block_out_channels)):
        rows.append(copies * math.ceil(height // scale / 2**level) * math.ceil(width // scale / 2**level))
    return math.gcd(*rows)


def apply(pipe, cfg, device: torch.device, say: Callable[[str], None] = print) -> None:
    """Turn on the controls `cfg` asks for, then put the pipeline on `device` (or offload it there).

    `cfg` is a resolved `AnimateConfig`. Call after LoRA fusing: compile and memory layout must
    see the final weights.
    """
    limit = pipe.motion_adapter.config.motion_max_seq_length
    windows = context_windows(cfg.frames, limit, cfg.context_length, cfg.context_stride)
    if windows:
        if cfg.frames > limit and cfg.context_length is None:
            say(
                f"note: {cfg.frames} frames is more than the motion adapter's {limit}: rendering in FreeNoise "
                f"sliding windows of {windows.length} frames, stride {windows.stride} "
                "(--context-length/--context-stride)"
            )
        pipe.enable_free_noise(context_length=windows.length, context_stride=windows.stride)
    if cfg.forward_chunk:
        rows = feed_forward_rows(pipe, cfg.frames, cfg.height, cfg.width, cfg.guidance)
        if cfg.forward_chunk < 0 or rows % cfg.forward_chunk:
            raise UserError(
                f"--forward-chunk {cfg.forward_chunk} must divide {rows} at these settings (the feed-forward batch)"
            )
        # dim 0: rows are frames (spatial blocks) and latent pixels (motion modules); peak FF memory / rows*chunk.
        pipe.unet.enable_forward_chunking(chunk_size=cfg.forward_chunk, dim=0)
    if cfg.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if cfg.compile:
        # In place: the pipeline keeps its UNetMotionModel (a wrapped module would fail its type checks).
        pipe.unet.compile()
    if cfg.cpu_offload and device.type == "cuda":
        # Instead of .to(device): one model at a time on the GPU, so the whole pipeline never has to fit.
        pipe.enable_model_cpu_offload(device=device)
        return
    if cfg.cpu_offload:
        say(f"note: --cpu-offload only saves GPU memory; ignored on {device.type}, where everything is in RAM already")
    pipe.to(device)
