"""Training checkpoints: everything needed to continue a run exactly where it stopped."""

from __future__ import annotations

import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cdvideo.atomic import atomic_dir
from cdvideo.errors import UserError

FOLDER = "checkpoints"


@dataclass
class TrainState:
    step: int
    generator_state: torch.Tensor | None = None


def save(
    out: Path,
    step: int,
    unet_state: dict[str, torch.Tensor],
    token_row: torch.Tensor,
    optimizer,
    generator: torch.Generator,
    keep: int = 2,
    run_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoints/step-N atomically (a folder renamed into place), then drop all but the newest `keep`
    (0 keeps every one). `run_files(folder)` adds the run's settings and photos, so `cdvideo eval
    --checkpoints` can score a run that never finished. `unet_state` is the trained UNet weights as a
    diffusers LoRA state dict (cdvideo/unet_weights.py)."""
    root = out / FOLDER
    final = root / f"step-{step:06d}"
    with atomic_dir(final) as tmp:
        lora = {k: v.detach().contiguous().cpu() for k, v in unet_state.items()}
        save_file(lora, tmp / "lora.safetensors")
        save_file({"token_row": token_row.detach().contiguous().cpu()}, tmp / "token.safetensors")
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        # Through a Python file object: a full disk then surfaces as OSError, not a bare C++ error.
        with open(tmp / "state.pt", "wb") as f:
            torch.save(state, f)
        if run_files:
            run_files(tmp)
    for old in sorted(root.glob("step-*"))[:-keep] if keep else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def saved(out: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    return sorted(p for p in (out / FOLDER).glob("step-*") if re.fullmatch(r"step-\d+", p.name))


def latest(out: Path) -> Path | None:
    found = saved(out)
    return found[-1] if found else None


def _read(path: Path, read, hint: str):
    try:
        return read()
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError, SafetensorError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"checkpoint {path} is damaged or not a cdvideo checkpoint ({first[:160]}); {hint}") from err


def weights(path: Path, hint: str = "resume from another one or start fresh") -> tuple[dict, torch.Tensor]:
    """A checkpoint's UNet LoRA state (peft keys) and the token's embedding row."""
    lora = _read(path, lambda: load_file(path / "lora.safetensors"), hint)
    token_row = _read(path, lambda: load_file(path / "token.safetensors")["token_row"], hint)
    return lora, token_row


def resume(out: Path, which: str, unet_weights, embeddings: torch.nn.Parameter, token_id: int, optimizer) -> TrainState:
    """Load a checkpoint by path or 'latest' into `unet_weights` (a cdvideo.unet_weights LoraWeights or
    FullWeights) and the token row. A named checkpoint that is missing is an error."""
    if which == "latest":
        path = latest(out)
        if path is None:
            return TrainState(step=0)
    else:
        path = Path(which)
        if not (path / "state.pt").exists():
            raise UserError(f"checkpoint {path} not found; use --resume latest or a folder under {out / FOLDER}")
    # weights_only: a checkpoint folder may come from anywhere; never execute a pickle.
    state = _read(
        path, lambda: torch.load(path / "state.pt", weights_only=True), "resume from another one or start fresh"
    )
    lora, token_row = weights(path)
    expected = {k: v.shape for k, v in unet_weights.state().items()}
    if {k: v.shape for k, v in lora.items()} != expected:
        raise UserError(
            f"checkpoint {path} holds a LoRA of another shape (--rank, --lora-targets or --finetune differ): "
            "resume with the settings it was trained with, or start fresh in a new --output"
        )
    unet_weights.load(lora)
    with torch.no_grad():
        embeddings[token_id] = token_row.to(embeddings.device)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return TrainState(step=int(state["step"]), generator_state=state["generator"])
