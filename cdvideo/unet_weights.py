"""What of the UNet a run trains, read and written as a diffusers LoRA state dict either way.

    lora   a peft LoRA on the target modules (cdvideo's default)
    full   the target modules' own weights, as Custom Diffusion and the official ClassDiffusion
           script train cross-attention K/V; saved as an exact full-rank LoRA of the weight change

The full fine-tune is stored as a LoRA so a concept stays what `pipe.load_lora_weights(folder)`
reads: delta = B @ A exactly, with one factor the identity (zero-padded), one rank R for every layer
(the largest min(out, in)) and alpha = R, so the scale is 1. One rank for all: per-layer ranks
would need rank/alpha patterns, which diffusers' kohya loader and LoRAs read without metadata get
wrong. The cost is size: SD1.5's 32 K/V layers store 38M numbers for their 19M weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from cdvideo.errors import UserError

FINETUNES = ("lora", "full")


class LoraWeights:
    """A peft LoRA already added to the UNet."""

    def __init__(self, unet) -> None:
        self.unet = unet
        self.params = [p for p in unet.parameters() if p.requires_grad]

    def state(self) -> dict[str, torch.Tensor]:
        return get_peft_model_state_dict(self.unet)

    def load(self, state: dict[str, torch.Tensor]) -> None:
        set_peft_model_state_dict(self.unet, state)

    @contextmanager
    def base_model(self) -> Iterator[None]:
        """The UNet without its LoRA, for as long as the block runs."""
        model = getattr(self.unet, "module", self.unet)  # under DDP
        model.disable_adapters()
        try:
            yield
        finally:
            model.enable_adapters()


class FullWeights:
    """The full weights of the UNet's Linear layers whose names end in one of `targets`."""

    def __init__(self, unet, targets: list[str]) -> None:
        config = LoraConfig(target_modules=list(targets))  # peft's own name matching, as the LoRA path uses
        self.modules = {
            name: module
            for name, module in unet.named_modules()
            if name and check_target_module_exists(config, name) and isinstance(module, torch.nn.Linear)
        }
        if not self.modules:
            raise UserError(
                f"--lora-targets {' '.join(targets)} matches no linear UNet layer to fine-tune in full; "
                "use names such as attn2.to_k attn2.to_v"
            )
        # Biases stay frozen: a LoRA can only carry a weight change (SD1.5's K/V have no bias anyway).
        self.params = [module.weight for module in self.modules.values()]
        for param in self.params:
            param.requires_grad_(True)
        self.original = {name: module.weight.detach().clone() for name, module in self.modules.items()}

    def deltas(self) -> dict[str, torch.Tensor]:
        return {name: module.weight.detach() - self.original[name] for name, module in self.modules.items()}

    def state(self) -> dict[str, torch.Tensor]:
        deltas = self.deltas()
        rank = max(min(delta.shape) for delta in deltas.values())
        state = {}
        for name, delta in deltas.items():
            down, up = exact_lora(delta, rank)
            state[f"{name}.lora_A.weight"] = down
            state[f"{name}.lora_B.weight"] = up
        return state

    @contextmanager
    def base_model(self) -> Iterator[None]:
        """The UNet with its original target weights, for as long as the block runs (no gradient)."""
        trained = {name: module.weight.data for name, module in self.modules.items()}
        try:
            for name, module in self.modules.items():
                module.weight.data = self.original[name]
            yield
        finally:
            for name, module in self.modules.items():
                module.weight.data = trained[name]

    def load(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, module in self.modules.items():
                down, up = state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"]
                module.weight.copy_(self.original[name] + (up.float() @ down.float()).to(module.weight))


def exact_lora(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B), A: (rank, in), B: (out, rank), with B @ A == delta exactly (rank >= min(out, in)):
    the identity on the smaller side, zero-padded; the padding only ever adds exact zeros."""
    out_features, in_features = delta.shape
    if rank < min(out_features, in_features):
        raise ValueError(f"rank {rank} cannot hold a {out_features}x{in_features} change exactly")
    delta = delta.float().cpu()
    down, up = torch.zeros(rank, in_features), torch.zeros(out_features, rank)
    if in_features <= out_features:
        down[:in_features] = torch.eye(in_features)
        up[:, :in_features] = delta
    else:
        down[:out_features] = delta
        up[:, :out_features] = torch.eye(out_features)
    return down, up


def lora_metadata(state: dict[str, torch.Tensor], rank: int, alpha: float, exact: bool) -> dict:
    """The peft config diffusers reads from `lora_adapter_metadata`, with exact module paths (a pattern
    like "to_q" would also match the motion modules' attention once loaded into an AnimateDiff UNet).
    An exact (full fine-tune) state has one rank R for all layers and alpha = R: scale 1."""
    modules = sorted({key.rsplit(".lora_", 1)[0] for key in state})
    if exact:
        ranks = {int(t.shape[0]) for key, t in state.items() if ".lora_A." in key}
        if len(ranks) != 1:
            raise ValueError(f"an exact LoRA has one rank for every layer, not {sorted(ranks)}")
        rank = ranks.pop()
        alpha = float(rank)
    return {"r": rank, "lora_alpha": alpha, "target_modules": modules}
