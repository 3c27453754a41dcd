"""Training on small GPUs: gradient checkpointing, half-precision frozen weights, 8-bit AdamW, cached latents.

- `--gradient-checkpointing`: the UNet recomputes its blocks' activations in the backward pass.
- `--mixed-precision fp16|bf16`: besides autocast, the frozen weights (matrices and kernels of the UNet,
  text encoder and VAE) are stored in that precision. The LoRA, the token's embedding matrix and the
  optimizer state stay fp32, and so do norm and bias vectors (1-D, under 1% of the weights): CPU
  kernels refuse an fp32 activation with a half-precision norm weight, and autocast feeds them either.
- `--optimizer adamw8bit`: bitsandbytes' AdamW with 8-bit state (`pip install 'cdvideo[8bit]'`).
- `--cache-latents`: the class images' VAE posteriors are kept beside them in a safetensors file, keyed
  by the images' bytes, the resolution and the base model, and reused by later runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cdvideo.atomic import atomic_path
from cdvideo.errors import UserError

OPTIMIZERS = ("adamw", "adamw8bit")
LATENT_CACHE = ".cdvideo-latents.safetensors"  # hidden: photo loading skips it, `push` leaves it out
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def check_options(optimizer: str) -> None:
    """Fail before any model loads: an unknown optimizer, or 8-bit AdamW without bitsandbytes."""
    if optimizer not in OPTIMIZERS:
        raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)} (got {optimizer!r})")
    if optimizer == "adamw8bit":
        _bitsandbytes()


def _bitsandbytes():
    try:
        import bitsandbytes
    except ImportError:
        raise UserError(
            "--optimizer adamw8bit needs bitsandbytes: pip install 'cdvideo[8bit]' (or use --optimizer adamw)"
        ) from None
    return bitsandbytes


def make_optimizer(name: str, groups: list[dict], fp32_state: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """torch's AdamW, or bitsandbytes' AdamW8bit (8-bit moment estimates) with fp32 state for `fp32_state`.

    The embedding matrix needs fp32 state: 8-bit state is quantized in blocks, and a block shared with
    the token's row gives the masked rows beside it small nonzero moments, which move them.
    """
    check_options(name)
    if name == "adamw":
        return torch.optim.AdamW(groups)
    bnb = _bitsandbytes()
    for param in fp32_state:
        bnb.optim.GlobalOptimManager.get_instance().override_config(param, "optim_bits", 32)
    return bnb.optim.AdamW8bit(groups)


def frozen_dtype(mixed_precision: str) -> torch.dtype | None:
    """The precision frozen weights are stored in: half under mixed precision, else as loaded."""
    return HALF.get(mixed_precision)


def cast_frozen(modules: Iterable[torch.nn.Module], dtype: torch.dtype) -> None:
    """Store frozen matrices and kernels in `dtype`; trainable and 1-D parameters are left as they are.

    Parameters keep their identity (`.data` is replaced), so an optimizer built earlier still holds them.
    """
    for module in modules:
        for param in module.parameters():
            if not param.requires_grad and param.dim() > 1:
                param.data = param.data.to(dtype)


def prepare_models(cfg, unet, text_encoder, vae) -> None:
    """Apply the memory options of a TrainConfig to models whose trainable parts are already chosen."""
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    dtype = frozen_dtype(cfg.mixed_precision)
    if dtype is not None:
        cast_frozen((unet, text_encoder, vae), dtype)


def _cache_key(paths: list[Path], resolution: int, base: str) -> str:
    digest = hashlib.sha256(json.dumps({"resolution": resolution, "base": base}).encode())
    for path in paths:
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def cached_latents(
    folder: Path,
    paths: list[Path],
    resolution: int,
    base: str,
    encode: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    say: Callable[[str], None] = print,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The class images' VAE posterior (mean, std): read from `folder`'s cache when it matches the images,
    the resolution and the base model; else `encode()`d and written there for the next run."""
    key = _cache_key(paths, resolution, base)
    path = Path(folder) / LATENT_CACHE
    cached = _read_cache(path, key)
    if cached is not None:
        say(f"class-image latents read from {path}")
        return cached
    # The run that writes the cache trains on what later runs will read: identical results.
    mean, std = (t.cpu().contiguous() for t in encode())
    with atomic_path(path) as tmp:
        save_file({"mean": mean, "std": std}, str(tmp), metadata={"key": key})
    say(f"class-image latents cached in {path}")
    return mean, std


def _read_cache(path: Path, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None  # other images, resolution or base: encode afresh
        tensors = load_file(str(path))
        return tensors["mean"], tensors["std"]
    except (SafetensorError, OSError, KeyError):
        return None  # a damaged cache is only a slower run
