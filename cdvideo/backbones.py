"""The hub image/text encoders `cdvideo eval` scores with (CLIP, DINO, BLIP), and which ones it skipped.

Each is a hub id or a local folder, loaded with transformers' own loaders. "none" leaves one out. On the
Shapes world (optional=True) a *default* backbone that is not already on this machine is skipped and
named rather than fetched: the world's exact scorer, motion and drift stand without it, and eval stays
offline. A backbone the user named is always loaded or fails as one line.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from cdvideo import loading
from cdvideo.errors import UserError

CLIP_ID = "openai/clip-vit-base-patch32"
DINO_ID = "facebook/dino-vits16"
BLIP_ID = "Salesforce/blip-itm-large-coco"
DEFAULTS = {"clip": CLIP_ID, "dino": DINO_ID, "blip": BLIP_ID}
OFF = "none"  # as a backbone id: leave that backbone out
USES = {"clip": "CLIP-I, CLIP-T, frame consistency", "dino": "DINO-I, subject consistency", "blip": "BLIP-T (ITC)"}
_FEATURES = {"clip": "projected", "dino": "CLS", "blip": "ITC"}


def _from_pretrained(cls, name: str, what: str, local_only: bool, key: str):
    try:
        return cls.from_pretrained(name, local_files_only=local_only)
    except (OSError, ValueError) as err:
        hint = f"check the id and network, give a local folder, or --{key} none to skip it"
        raise loading.load_error(what, name, err, hint=hint) from err


class Backbones:
    """CLIP, DINO and BLIP; `skipped` maps each one left out to why (its metrics are null)."""

    def __init__(
        self,
        clip: str | None,
        dino: str | None,
        blip: str | None,
        device: torch.device,
        optional: bool = False,
    ):
        from transformers import AutoModel, AutoProcessor, BlipForImageTextRetrieval, CLIPModel

        given = {"clip": clip, "dino": dino, "blip": blip}
        classes = {"clip": CLIPModel, "dino": AutoModel, "blip": BlipForImageTextRetrieval}
        self.ids = {k: v or DEFAULTS[k] for k, v in given.items()}
        self.device = device
        self.skipped: dict[str, str] = {}
        self.models: dict = {}
        self.procs: dict = {}
        for key, name in self.ids.items():
            if name == OFF:
                self.skipped[key] = f"left out (--{key} none)"
                continue
            what = key.upper()
            # Only the cache for a default on an optional family: offline, a hub lookup retries for a minute.
            local_only = optional and given[key] is None
            try:
                model = _from_pretrained(classes[key], name, f"{what} backbone", local_only, key)
                self.procs[key] = _from_pretrained(AutoProcessor, name, f"{what} processor", local_only, key)
            except UserError:
                if not local_only:
                    raise
                self.skipped[key] = f"{name} is not on this machine (give --{key} {name} to download it)"
                continue
            self.models[key] = model.to(device).eval()
        self.clip, self.dino, self.blip = (self.models.get(k) for k in ("clip", "dino", "blip"))
        self.clip_proc, self.dino_proc, self.blip_proc = (self.procs.get(k) for k in ("clip", "dino", "blip"))

    def describe(self) -> dict:
        def size(proc) -> str:
            proc = getattr(proc, "image_processor", proc)
            s = getattr(proc, "crop_size", None) if getattr(proc, "do_center_crop", False) else None
            s = s or proc.size
            s = {k: v for k, v in dict(s).items() if v}
            return f"{s['height']}x{s['width']}" if "height" in s else str(s)

        return {
            k: {
                "id": self.ids[k] if k in self.models else OFF,
                "image_size": size(self.procs[k]) if k in self.models else None,
                "scale": "raw cosine in [-1, 1] (not 100x)",
                "features": _FEATURES[k],
                "skipped": self.skipped.get(k),
            }
            for k in DEFAULTS
        }

    @torch.no_grad()
    def clip_images(self, images: list[Image.Image]) -> torch.Tensor:
        inputs = self.clip_proc(images=images, return_tensors="pt").to(self.device)
        return F.normalize(self.clip.get_image_features(**inputs).pooler_output.float(), dim=-1)

    @torch.no_grad()
    def clip_text(self, text: str) -> torch.Tensor:
        inputs = self.clip_proc(text=[text], return_tensors="pt", padding=True, truncation=True).to(self.device)
        return F.normalize(self.clip.get_text_features(**inputs).pooler_output.float(), dim=-1)[0]

    @torch.no_grad()
    def dino_images(self, images: list[Image.Image]) -> torch.Tensor:
        inputs = self.dino_proc(images=images, return_tensors="pt").to(self.device)
        return F.normalize(self.dino(**inputs).last_hidden_state[:, 0].float(), dim=-1)

    @torch.no_grad()
    def blip_cosines(self, images: list[Image.Image], text: str) -> torch.Tensor:
        inputs = self.blip_proc(images=images, text=[text], return_tensors="pt", padding=True).to(self.device)
        out = self.blip(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            pixel_values=inputs.pixel_values,
            use_itm_head=False,  # the ITC head: a cosine of projected features
        )
        return out.itm_score[:, 0].float()
