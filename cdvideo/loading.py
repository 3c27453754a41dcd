"""Loading base models and motion adapters: hub ids, local diffusers folders, single files, 'shapes'."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from diffusers import AnimateDiffPipeline, MotionAdapter, StableDiffusionPipeline
from diffusers.loaders.single_file_utils import SingleFileComponentError
from safetensors import SafetensorError
from safetensors.torch import load_file

from cdvideo.errors import UserError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# Diffusers configs (no weights) for single-file checkpoints, so that loading one needs no network.
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
SD15_CONFIG = CONFIGS_DIR / "sd15"
SD15_MOTION_CONFIG = SD15_CONFIG / "motion_adapter"


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


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_precision(device: torch.device, precision: str | None, cpu_bf16: bool = False) -> str:
    """The precision asked for, else fp16 on a GPU; on the CPU bf16 where the model family renders as right
    in it (`cpu_bf16`, from its preset) and the CPU has bf16 units, else fp32. Without bf16 units a CPU
    emulates bf16 slower than fp32."""
    if precision is None:
        if device.type == "cuda":
            precision = "fp16"
        else:
            precision = "bf16" if cpu_bf16 and cpu_bf16_units() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise UserError(
            "--precision fp16 is not supported on the CPU; use --precision fp32, or bf16 on a CPU with bf16 units"
        )
    return precision


BF16_UNITS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16"}  # /proc/cpuinfo flag -> name, fastest first


def cpu_bf16_units(cpuinfo: str | None = None) -> str | None:
    """The CPU's bf16 matrix units, read from /proc/cpuinfo: "AMX" (Intel Xeon since Sapphire Rapids),
    "AVX512-BF16" (AMD Zen 4, Intel Cooper Lake), or None where bf16 is emulated and slower than fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = set(cpuinfo.split())
    return next((name for flag, name in BF16_UNITS.items() if flag in flags), None)


def load_error(what: str, name: str, err: Exception, hint: str | None = None) -> UserError:
    """One line for a model that would not load: what, which, why."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    hint = hint or "check the name and network, or give a local folder ('shapes' works offline)"
    return UserError(f"could not load {what} '{name}' ({hint}): {first[:240]}")


def is_single_file(source: str) -> bool:
    return source.endswith(SINGLE_FILE_SUFFIXES) and Path(source).is_file()


def _config_dir(config: str | None, default: Path, needs: tuple[str, ...], flag: str) -> str:
    folder = Path(config) if config else default
    missing = [name for name in needs if not (folder / name).exists()]
    if missing:
        where = f"{flag} {folder}" if config else f"the shipped configs in {folder}"
        raise UserError(
            f"{where} lacks {', '.join(missing)}; pass {flag} with a diffusers model folder (weights not needed)"
        )
    return str(folder)


def load_image_pipeline(
    base: str, dtype: torch.dtype = torch.float32, config: str | None = None
) -> StableDiffusionPipeline:
    """SD1.5-family pipeline from a hub id, a local diffusers folder, or a single checkpoint file.

    A single file (a community checkpoint in the original SD layout) takes its architecture,
    scheduler and tokenizer from `config`, a diffusers folder, by default the shipped SD1.5 one.
    """
    source = resolve_base(base)
    hint = None
    # diffusers reads a .ckpt with torch.load(weights_only=True): a crafted pickle fails to load.
    kwargs = {"dtype": dtype, "safety_checker": None, "requires_safety_checker": False}
    try:
        if is_single_file(source):
            hint = "is it an SD1-family checkpoint? --base-config names a diffusers folder of the same architecture"
            needs = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer")
            kwargs["config"] = _config_dir(config, SD15_CONFIG, needs, "--base-config")
            pipe = StableDiffusionPipeline.from_single_file(source, local_files_only=True, **kwargs)
        else:
            if Path(source).exists() and not (Path(source) / "model_index.json").exists():
                raise UserError(f"{source} is not a diffusers model folder (no model_index.json)")
            pipe = StableDiffusionPipeline.from_pretrained(source, **kwargs)
    except UserError:
        raise
    except (OSError, ValueError, RuntimeError, SingleFileComponentError) as err:
        raise load_error("base model", base, err, hint) from err
    pipe.set_progress_bar_config(leave=False)
    return pipe


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .ckpt file; a pickle is read weights-only, never executed."""
    try:
        if path.endswith(".safetensors"):
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"{path} holds Python objects besides tensors; refusing to unpickle it (use a .safetensors file)"
        ) from err
    except (OSError, RuntimeError, SafetensorError) as err:
        raise UserError(f"could not read {path}: {str(err).splitlines()[0][:200]}") from err
    # Training checkpoints wrap the weights; motion-module files are usually flat.
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a file of named tensors")
    return state


def motion_file_overrides(state: dict[str, torch.Tensor]) -> dict:
    """What an original motion-module file says about itself: frame limit and mid block (v1/v2/v3 differ)."""
    overrides = {"use_motion_mid_block": any(k.startswith("mid_block.") for k in state)}
    for key, value in state.items():
        if key.endswith(("pos_encoder.pe", "pos_embed.pe")):
            overrides["motion_max_seq_length"] = value.shape[1]
            break
    return overrides


def load_motion_adapter(name: str, dtype: torch.dtype = torch.float32, config: str | None = None) -> MotionAdapter:
    """A diffusers MotionAdapter folder or hub id, or an original AnimateDiff motion-module file.

    A single file takes its architecture from `config` (default: SD1.5's motion adapter), with
    the frame limit and mid block read from the file itself.
    """
    source = resolve_motion_adapter(name)
    hint = None
    try:
        if is_single_file(source):
            hint = "for a motion module not shaped like SD1.5's, give --motion-adapter-config FOLDER"
            folder = _config_dir(config, SD15_MOTION_CONFIG, ("config.json",), "--motion-adapter-config")
            state = read_state_dict(source)
            return MotionAdapter.from_single_file(
                state, config=folder, local_files_only=True, torch_dtype=dtype, **motion_file_overrides(state)
            )
        return MotionAdapter.from_pretrained(source, dtype=dtype)
    except UserError:
        raise
    except (OSError, ValueError, RuntimeError, SingleFileComponentError) as err:
        raise load_error("motion adapter", name, err, hint) from err


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
