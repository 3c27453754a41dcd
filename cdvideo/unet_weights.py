"""What of the UNet a run trains, read and written as a diffusers LoRA state dict either way.

    lora   a peft LoRA on the target modules (cdvideo's default)
    full   the target modules' own weights, as Custom Diffusion and the official ClassDiffusion
           script train cross-attention K/V; saved as an exact full-rank LoRA of the weight change

The full fine-tune is stored as a LoRA so a concept stays what `pipe.load_lora_weights(folder)`
reads: delta = B @ A with r = min(out, in) and one factor the identity, which makes the product
exact, and alpha = r per module (scale 1), written in the file's `lora_adapter_metadata`.
"""

from __future__ import annotations

from collections import Counter

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
        state = {}
        for name, delta in self.deltas().items():
            down, up = exact_lora(delta)
            state[f"{name}.lora_A.weight"] = down
            state[f"{name}.lora_B.weight"] = up
        return state

    def load(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, module in self.modules.items():
                down, up = state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"]
                module.weight.copy_(self.original[name] + (up.float() @ down.float()).to(module.weight))


def exact_lora(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with B @ A == delta exactly: r = min(out, in), the identity on the smaller side."""
    out_features, in_features = delta.shape
    delta = delta.float().cpu()
    if in_features <= out_features:
        return torch.eye(in_features), delta.contiguous()
    return delta.contiguous(), torch.eye(out_features)


def lora_metadata(state: dict[str, torch.Tensor], rank: int, alpha: float, exact: bool) -> dict:
    """The peft config diffusers reads from `lora_adapter_metadata`: exact module paths (a pattern
    like "to_q" would also match the motion modules' attention once loaded into an AnimateDiff UNet).

    An exact (full fine-tune) state has one rank per module shape and scale 1 everywhere: the
    commonest rank is `r`, the others go into rank_pattern/alpha_pattern with alpha = their rank.
    """
    ranks = {key.rsplit(".lora_A.", 1)[0]: int(t.shape[0]) for key, t in state.items() if ".lora_A." in key}
    metadata = {"r": rank, "lora_alpha": alpha, "target_modules": sorted(ranks)}
    if exact:
        common = Counter(ranks.values()).most_common(1)[0][0]
        others = {module: r for module, r in sorted(ranks.items()) if r != common}
        metadata.update(r=common, lora_alpha=float(common))
        if others:
            metadata.update(rank_pattern=others, alpha_pattern={m: float(r) for m, r in others.items()})
    return metadata
