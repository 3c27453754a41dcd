"""Loading base models and motion adapters: hub ids, local diffusers folders, single files, 'shapes'."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AnimateDiffPipeline, MotionAdapter, StableDiffusionPipeline

from cdvideo.errors import UserError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def resolve_base(base: str) -> str:
    """Where to load a base model from: the embedded Shapes model by name, else as given."""
    if base == "shapes":
        from cdvideo.shapes.models import BASE_DIR

        if not (BASE_DIR / "model_index.json").exists():
            raise UserError(f"the embedded Shapes model is missing from {BASE_DIR}; reinstall cdvideo")
        return str(BASE_DIR)
    return base


def resolve_motion_adapter(name: str) -> str:
    if name == "shapes":
        from cdvideo.shapes.models import MOTION_DIR

        if not (MOTION_DIR / "config.json").exists():
            raise UserError(f"the embedded Shapes motion adapter is missing from {MOTION_DIR}; reinstall cdvideo")
        return str(MOTION_DIR)
    return name


def base_identity(base: str) -> str:
    """A stable name for a base model, stored in concepts to catch a mismatched base at load."""
    path = Path(base)
    if base != "shapes" and path.exists():
        return str(path.resolve())
    return base


def pick_device(device: str | None = None) -> torch.device:
    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, precision: str | None) -> torch.dtype:
    precision = precision or ("fp16" if device.type == "cuda" else "fp32")
    if precision in ("fp16", "bf16") and device.type == "cpu":
        raise UserError(f"--precision {precision} is not supported on the CPU; use --precision fp32")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def load_error(
    what: str,
    name: str,
    err: Exception,
    hint: str = "check the name and network, or give a local folder ('shapes' works offline)",
) -> UserError:
    """One line for a model that would not load: what, which, why."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f"could not load {what} '{name}' ({hint}): {first[:240]}")


def load_image_pipeline(
    base: str, dtype: torch.dtype = torch.float32, config: str | None = None
) -> StableDiffusionPipeline:
    """SD1.5-family pipeline from a hub id, a local diffusers folder, or a single checkpoint file."""
    source = resolve_base(base)
    kwargs = {"dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    try:
        if source.endswith(SINGLE_FILE_SUFFIXES) and Path(source).is_file():
            if config:
                kwargs["config"] = config
            pipe = StableDiffusionPipeline.from_single_file(source, **kwargs)
        else:
            if Path(source).exists() and not (Path(source) / "model_index.json").exists():
                raise UserError(f"{source} is not a diffusers model folder (no model_index.json)")
            pipe = StableDiffusionPipeline.from_pretrained(source, **kwargs)
    except UserError:
        raise
    except (OSError, ValueError) as err:
        raise load_error("base model", base, err) from err
    pipe.set_progress_bar_config(leave=False)
    return pipe


def load_motion_adapter(name: str, dtype: torch.dtype = torch.float32) -> MotionAdapter:
    source = resolve_motion_adapter(name)
    try:
        if source.endswith(SINGLE_FILE_SUFFIXES) and Path(source).is_file():
            return MotionAdapter.from_single_file(source, dtype=dtype)
        return MotionAdapter.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as err:
        raise load_error("motion adapter", name, err) from err


def video_pipeline(image: StableDiffusionPipeline, adapter: MotionAdapter) -> AnimateDiffPipeline:
    """AnimateDiff over an already loaded image pipeline's components (no second copy in memory)."""
    pipe = AnimateDiffPipeline(
        vae=image.vae,
        text_encoder=image.text_encoder,
        tokenizer=image.tokenizer,
        unet=image.unet,
        motion_adapter=adapter,
        scheduler=image.scheduler,
    )
    pipe.set_progress_bar_config(leave=False)
    return pipe
