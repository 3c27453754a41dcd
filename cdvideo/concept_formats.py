"""`cdvideo export`: a concept in the formats other tools load.

    kohya      LoRA as AUTOMATIC1111 / ComfyUI / kohya sd-scripts write it: `lora_unet_<path>` keys
               with `.lora_down.weight`, `.lora_up.weight` and the module's true `.alpha`
    a1111      the token embedding as `{"emb_params": tensor[1, dim]}`, named after the token
    diffusers  the concept's own two files, copied into a folder of their own

Default output: CONCEPT/exports/{lora,embeddings,diffusers}/, the first two laid out like
A1111's `models/Lora` and `embeddings` folders.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cdvideo import concept as concepts
from cdvideo.atomic import atomic_path
from cdvideo.errors import UserError

FORMATS = ("kohya", "a1111", "diffusers")
EXPORTS = "exports"

# The parts of an SD1 pipeline a LoRA can adapt; diffusers stores a LoRA config for each in the
# file header (`lora_adapter_metadata`).
_COMPONENTS = ("unet", "text_encoder")


def file_stem(name: str, fallback: str) -> str:
    """A file name A1111 shows as is: `<new1>` -> `new1` (case kept; A1111 matches the stem)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "", name).strip(".")
    return stem or fallback


def _true_alpha(config: dict, module: str, rank: int) -> float:
    """The alpha peft would give `module`: alpha_pattern, else lora_alpha, else rank (scale 1)."""
    from peft.utils.other import get_pattern_key

    pattern = config.get("alpha_pattern") or {}
    key = get_pattern_key(list(pattern), module)
    if key in pattern:
        return float(pattern[key])
    return float(config.get("lora_alpha", rank))


def _split_metadata(metadata: dict | None) -> dict[str, dict]:
    """diffusers writes `{"unet.r": 4, "unet.lora_alpha": 8, ...}`: group it by component."""
    groups: dict[str, dict] = {name: {} for name in _COMPONENTS}
    for key, value in (metadata or {}).items():
        component, _, field = key.partition(".")
        if component in groups:
            groups[component][field] = value
    return groups


def to_kohya(state: dict[str, torch.Tensor], metadata: dict | None) -> dict[str, torch.Tensor]:
    """A diffusers/peft SD1 LoRA state dict (`unet.<path>.lora_A.weight`, ...) in kohya's layout.

    diffusers' `convert_state_dict_to_kohya` does the key renaming; three of its choices are wrong
    for SD1 and are corrected here: it writes every `.alpha` as the rank (a LoRA trained with
    alpha != rank would load at the wrong strength), names the text encoder `lora_te1_` (SDXL's
    first encoder; SD1 tools expect `lora_te_`), and under transformers 5 it leaves out the
    `text_model_` that SD1 text-encoder keys carry.
    """
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    unknown = sorted({k.partition(".")[0] for k in state} - set(_COMPONENTS))
    if unknown:
        raise UserError(f"LoRA has weights for {unknown}; an SD1 kohya LoRA holds only the UNet and text encoder")
    kohya = convert_state_dict_to_kohya(state)
    configs = _split_metadata(metadata)
    for key, down in state.items():
        if ".lora_A." not in key:
            continue
        component, _, rest = key.partition(".")
        module = rest.split(".lora_A.", 1)[0]
        path = module.replace(".", "_")
        if component == "text_encoder":
            stock = f"lora_te1_{path}"
            # transformers 5's CLIPTextModel dropped the `text_model.` level by which SD1 LoRA tools
            # (and diffusers' own kohya loader) address its layers.
            name = f"lora_te_{path}" if module.startswith("text_model.") else f"lora_te_text_model_{path}"
        else:
            stock = name = f"lora_unet_{path}"
        if f"{stock}.alpha" not in kohya:
            raise RuntimeError(f"diffusers' kohya conversion did not name {key} as {stock}")
        for suffix in ("lora_down.weight", "lora_up.weight"):
            kohya[f"{name}.{suffix}"] = kohya.pop(f"{stock}.{suffix}")
        del kohya[f"{stock}.alpha"]
        rank = down.shape[0]
        kohya[f"{name}.alpha"] = torch.tensor(_true_alpha(configs[component], module, rank), dtype=torch.float32)
    return {k: v.contiguous() for k, v in sorted(kohya.items())}


def _read_lora(folder: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    from diffusers import StableDiffusionPipeline

    state, _, metadata = StableDiffusionPipeline.lora_state_dict(
        str(folder), weight_name=concepts.LORA_FILE, return_lora_metadata=True
    )
    return state, metadata


def _token_row(folder: Path, token: str) -> torch.Tensor:
    with safe_open(folder / concepts.EMBEDS_FILE, "pt") as f:
        if token not in f.keys():
            raise UserError(f"{folder / concepts.EMBEDS_FILE} has no row for {token}; the concept is damaged")
        return f.get_tensor(token).reshape(1, -1).float().contiguous()


def _target(output: str | Path | None, default_dir: Path, name: str) -> Path:
    """`--output` ending in .safetensors is the file itself; anything else is its folder."""
    if output is None:
        return default_dir / name
    path = Path(output)
    return path if path.suffix == ".safetensors" else path / name


def export_kohya(folder: Path, concept: concepts.Concept, output: str | Path | None = None) -> Path:
    state, metadata = _read_lora(folder)
    kohya = to_kohya(state, metadata)
    target = _target(output, folder / EXPORTS / "lora", f"{file_stem(folder.resolve().name, 'concept')}.safetensors")
    # A1111 and kohya's tools read these `ss_*` fields to describe a LoRA.
    header = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(concept.rank),
        "ss_network_alpha": str(concept.alpha),
        "ss_base_model_version": "sd_v1",
        # A local base is named, not located: the file may be shared, the user's directories not.
        "ss_sd_model_name": Path(concept.base).name if Path(concept.base).is_absolute() else concept.base,
        "ss_output_name": target.stem,
        "cdvideo_token": concept.token,
        "cdvideo_class_word": concept.class_word,
    }
    with atomic_path(target) as tmp:
        save_file(kohya, tmp, metadata=header)
    return target


def export_a1111(folder: Path, concept: concepts.Concept, output: str | Path | None = None) -> Path:
    target = _target(output, folder / EXPORTS / "embeddings", f"{file_stem(concept.token, 'embedding')}.safetensors")
    with atomic_path(target) as tmp:
        save_file({"emb_params": _token_row(folder, concept.token)}, tmp)
    return target


def export_diffusers(folder: Path, concept: concepts.Concept, output: str | Path | None = None) -> list[Path]:
    target = Path(output) if output is not None else folder / EXPORTS / "diffusers"
    if target.suffix == ".safetensors":
        raise UserError("--format diffusers writes two files: give --output a folder, not a .safetensors file")
    written = []
    for name in (concepts.LORA_FILE, concepts.EMBEDS_FILE):
        with atomic_path(target / name) as tmp:
            shutil.copyfile(folder / name, tmp)
        written.append(target / name)
    return written


def export_concept(concept: str | Path, format: str, output: str | Path | None = None) -> list[Path]:
    """Write concept folder `concept` in `format` (one of FORMATS); returns the files written."""
    if format not in FORMATS:
        raise UserError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    folder = Path(concept)
    manifest = concepts.load_concept(folder)
    if format == "kohya":
        return [export_kohya(folder, manifest, output)]
    if format == "a1111":
        return [export_a1111(folder, manifest, output)]
    return export_diffusers(folder, manifest, output)
