"""The concept folder: the contract between `cdvideo train` and `cdvideo animate`.

    pytorch_lora_weights.safetensors   diffusers LoRA, its peft config in the file's metadata
    learned_embeds.safetensors         {token: tensor[1, dim]}
    README.md                          model card with the Hub's YAML front matter (cdvideo/card.py)
    photos/                            the subject photos, small copies: `cdvideo eval` scores identity on them
    cdvideo.json                       manifest, written last: its presence means "complete"

A stock diffusers pipeline loads the first two with `load_lora_weights` and
`load_textual_inversion`; cdvideo is not needed to use a concept.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

from cdvideo.atomic import atomic_path, write_json_atomic
from cdvideo.errors import UserError

FORMAT_VERSION = 1
MANIFEST = "cdvideo.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
EMBEDS_FILE = "learned_embeds.safetensors"
ADAPTER_NAME = "concept"  # the concept LoRA's adapter name inside a pipeline
PHOTOS_DIR = "photos"
# Identity backbones look at 224-384 px; larger copies would only bloat the concept.
PHOTO_SIZE = 384


@dataclass
class Concept:
    token: str
    class_word: str
    base: str
    rank: int
    alpha: float
    spl_weight: float
    steps: int
    seed: int
    lora_targets: list[str]
    drift: float | None = None  # final concept-class cosine (1.0 = no drift)
    prior_weight: float = 0.0
    metrics: dict = field(default_factory=dict)
    # Where SPL read each phrase (cdvideo.loss.POOLINGS); `drift` is measured at the EOS either way.
    spl_pooling: str = "eos"
    # lora, or full: the target weights fine-tuned in full, stored as an exact LoRA of the change
    # (rank/alpha are then the stored LoRA's commonest rank, scale 1; cdvideo/unet_weights.py).
    finetune: str = "lora"
    # The LoRA weight `animate` gives the concept unless told otherwise, and "SCALE:SHARE", its weight in the
    # first SHARE of the denoising steps (cdvideo/strength.py); set by the recipe that trained it.
    render_scale: float = 1.0
    render_schedule: str | None = None
    format_version: int = FORMAT_VERSION


def save_concept(
    folder: Path,
    concept: Concept,
    unet_lora_state: dict[str, torch.Tensor],
    token_embedding: torch.Tensor,
) -> None:
    """Write the concept's files, each atomically; the manifest last so a killed run is never loadable.

    Both weight files are written in full under temp names before anything at the final names
    changes: a full disk leaves an earlier concept in `folder` whole and loadable.
    """
    from diffusers import StableDiffusionPipeline

    from cdvideo.card import write_model_card  # imported here: the card module imports this one
    from cdvideo.unet_weights import lora_metadata

    folder.mkdir(parents=True, exist_ok=True)
    metadata = lora_metadata(unet_lora_state, concept.rank, concept.alpha, exact=concept.finetune == "full")
    concept = replace(concept, rank=metadata["r"], alpha=metadata["lora_alpha"])
    with atomic_path(folder / LORA_FILE) as lora_tmp, atomic_path(folder / EMBEDS_FILE) as embeds_tmp:
        StableDiffusionPipeline.save_lora_weights(
            lora_tmp.parent,
            unet_lora_layers=unet_lora_state,
            weight_name=lora_tmp.name,
            unet_lora_adapter_metadata=metadata,
        )
        save_file({concept.token: token_embedding.detach().float().cpu().reshape(1, -1).contiguous()}, embeds_tmp)
        # From here the old files are replaced one by one: no manifest until the new one is complete.
        (folder / MANIFEST).unlink(missing_ok=True)
    write_model_card(folder, concept)
    write_json_atomic(folder / MANIFEST, asdict(concept))


def load_concept(folder: Path | str) -> Concept:
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.exists():
        if folder.exists():
            raise UserError(f"{folder} is not a finished concept (no {MANIFEST}); train it again or resume")
        raise UserError(f"concept folder {folder} does not exist; train one with `cdvideo train` first")
    try:
        data = json.loads(manifest.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{manifest} is not valid JSON ({err.msg}); the concept is damaged") from err
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(
            f"{manifest} has format version {version!r}; this cdvideo reads version {FORMAT_VERSION}: upgrade cdvideo"
        )
    for name in (LORA_FILE, EMBEDS_FILE):
        if not (folder / name).exists():
            raise UserError(f"concept {folder} is missing {name}; train it again")
    known = set(Concept.__dataclass_fields__)
    return Concept(**{k: v for k, v in data.items() if k in known})


def apply_concept(pipe, folder: Path | str, concept: Concept, scale: float = 1.0, fuse: bool = True) -> None:
    """Load a concept into any SD1.5-family diffusers pipeline with the stock loaders."""
    folder = Path(folder)
    pipe.load_lora_weights(str(folder), weight_name=LORA_FILE, adapter_name=ADAPTER_NAME)
    pipe.load_textual_inversion(str(folder / EMBEDS_FILE), token=concept.token)
    if fuse:
        # Fused weights cost nothing per step at render time.
        pipe.fuse_lora(lora_scale=scale, adapter_names=[ADAPTER_NAME])
    elif scale != 1.0:
        pipe.set_adapters([ADAPTER_NAME], adapter_weights=[scale])


def save_photos(folder: Path, images: list[Image.Image]) -> None:
    """Keep small copies of the training photos in the concept, replacing any from an earlier run."""
    photos = Path(folder) / PHOTOS_DIR
    if photos.exists():
        for old in photos.glob("photo-*.png"):
            old.unlink()
    for i, image in enumerate(images):
        small = image.convert("RGB")
        if max(small.size) > PHOTO_SIZE:
            small = small.resize((PHOTO_SIZE, PHOTO_SIZE), Image.Resampling.LANCZOS)
        with atomic_path(photos / f"photo-{i:03d}.png") as tmp:
            small.save(tmp, format="PNG")


def load_photos(folder: Path | str) -> list[Image.Image]:
    """The subject photos stored in a concept (or a training run's folder)."""
    from cdvideo.data import IMAGE_SUFFIXES

    photos = Path(folder) / PHOTOS_DIR
    paths = sorted(p for p in photos.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if photos.is_dir() else []
    if not paths:
        raise UserError(
            f"concept {folder} has no subject photos ({PHOTOS_DIR}/ is missing or empty, as in concepts trained "
            f"before cdvideo 0.1 kept them): copy the subject's photos into {photos} and run again"
        )
    images = []
    for path in paths:
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except OSError as err:
            raise UserError(f"photo {path} does not open ({err}); replace or delete it") from err
    return images
