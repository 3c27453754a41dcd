"""Training memory options (cdvideo/memory.py) take effect and leave the result as it was."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli_train_args, write_dog_photos
from safetensors.torch import load_file

import cdvideo
from cdvideo import concept as concepts
from cdvideo import memory
from cdvideo.cli import main as cli_main

BF16_TOLERANCE = 2e-2  # relative: bf16 keeps 8 bits of mantissa


def _train(base: Path, photos: Path, out: Path, seen: list | None = None, **overrides) -> Path:
    values = {"images": [str(photos)], "class_word": "dog", "base": str(base), "output": str(out),
              "steps": 1, "resolution": 64, "batch_size": 1, "seed": 0, **overrides}  # fmt: skip
    hook = (lambda models: seen.append(_snapshot(models))) if seen is not None else None
    return cdvideo.train(cdvideo.TrainConfig(**values), say=lambda s: None, progress=False, after_backward=hook)


def _snapshot(models: dict) -> dict:
    """What the first backward pass left: LoRA gradients, the token row's gradient, the dtypes."""
    unet, text_encoder = models["unet"], models["text_encoder"]
    embeddings = text_encoder.get_input_embeddings().weight
    return {
        "checkpointing": unet.is_gradient_checkpointing,
        "lora_grads": {n: p.grad.detach().clone() for n, p in unet.named_parameters() if p.requires_grad},
        "token_grad": embeddings.grad[models["token_id"]].detach().clone(),
        "trainable_dtypes": {p.dtype for m in (unet, text_encoder) for p in m.parameters() if p.requires_grad},
        "frozen_dtypes": {
            p.dtype
            for m in (unet, text_encoder, models["vae"])
            for p in m.parameters()
            if not p.requires_grad and p.dim() > 1
        },  # fmt: skip
    }


def _first_loss(folder: Path) -> float:
    return json.loads((folder / "metrics.jsonl").read_text().splitlines()[0])["mse"]


def _close(a: torch.Tensor, b: torch.Tensor, rel: float) -> bool:
    return (a.float() - b.float()).norm() <= rel * b.float().norm() + 1e-8


def test_gradient_checkpointing_is_on_and_leaves_the_first_step_unchanged(tiny_base, dog_photos, tmp_path):
    plain, checkpointed = [], []
    a = _train(tiny_base, dog_photos, tmp_path / "plain", plain)
    b = _train(tiny_base, dog_photos, tmp_path / "gc", checkpointed, gradient_checkpointing=True)
    assert not plain[0]["checkpointing"] and checkpointed[0]["checkpointing"]
    assert _first_loss(a) == pytest.approx(_first_loss(b), rel=1e-5)
    grads_a, grads_b = plain[0]["lora_grads"], checkpointed[0]["lora_grads"]
    assert grads_a.keys() == grads_b.keys()
    assert all(_close(grads_b[k], grads_a[k], 1e-4) for k in grads_a)
    assert _close(checkpointed[0]["token_grad"], plain[0]["token_grad"], 1e-4)


def test_mixed_precision_stores_frozen_weights_in_bf16_and_trains_in_fp32(tiny_base, dog_photos, tmp_path):
    full, half = [], []
    a = _train(tiny_base, dog_photos, tmp_path / "fp32", full)
    b = _train(tiny_base, dog_photos, tmp_path / "bf16", half, mixed_precision="bf16", steps=2, checkpoint_every=1)
    assert full[0]["frozen_dtypes"] == {torch.float32}
    assert half[0]["frozen_dtypes"] == {torch.bfloat16}
    assert half[0]["trainable_dtypes"] == {torch.float32}  # LoRA and the embedding matrix with the token row
    state = torch.load(b / "checkpoints" / "step-000001" / "state.pt", weights_only=True)["optimizer"]["state"]
    assert {t.dtype for s in state.values() for k, t in s.items() if k != "step"} == {torch.float32}
    assert _first_loss(b) == pytest.approx(_first_loss(a), rel=BF16_TOLERANCE)
    grads_a, grads_b = full[0]["lora_grads"], half[0]["lora_grads"]
    assert sum(_close(grads_b[k], grads_a[k], 0.1) for k in grads_a) >= 0.9 * len(grads_a)
    lora = load_file(b / concepts.LORA_FILE)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in lora.values())


def test_adamw8bit_keeps_8bit_state_and_only_the_token_row_moves(tiny_base, dog_photos, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is the optional [8bit] extra")
    # bitsandbytes keeps tensors under 4096 entries in 32 bits: conv LoRAs of rank 8 are over it.
    lora = {"rank": 8, "lora_targets": ["conv1", "conv2", "to_k"]}
    out = _train(tiny_base, dog_photos, tmp_path / "c", optimizer="adamw8bit", steps=3, checkpoint_every=2, **lora)
    state = torch.load(out / "checkpoints" / "step-000002" / "state.pt", weights_only=True)["optimizer"]["state"]
    moments = [s["__bnb_optimizer_quant_state__"]["state1"] for s in state.values()]
    assert torch.uint8 in {m.dtype for m in moments}  # the large LoRA matrices
    embedding = max(moments, key=lambda m: m.numel())
    assert embedding.dtype == torch.float32  # the embedding matrix keeps fp32 state: its masked rows stay put
    assert concepts.load_concept(out).steps == 3  # train() itself checks that no other embedding row moved


def test_adamw8bit_without_bitsandbytes_is_one_clear_line(tiny_base, dog_photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as when it is not installed
    assert cli_main(cli_train_args(tiny_base, dog_photos, tmp_path / "c", "--optimizer", "adamw8bit")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'cdvideo[8bit]'" in err
    assert not (tmp_path / "c").exists()  # refused before anything was written


def test_cached_class_latents_are_written_reused_and_invalidated(tiny_base, dog_photos, tmp_path):
    class_dir = write_dog_photos(tmp_path / "class", count=3)
    cache = class_dir / memory.LATENT_CACHE
    prior = {"prior_weight": 1.0, "class_images": str(class_dir), "cache_latents": True, "steps": 2}
    first = _train(tiny_base, dog_photos, tmp_path / "a", **prior)
    assert cache.is_file()
    key = _cache_key(cache)
    stamp = cache.stat().st_mtime_ns
    second = _train(tiny_base, dog_photos, tmp_path / "b", **prior)
    assert cache.stat().st_mtime_ns == stamp  # read, not rewritten
    lora_a, lora_b = load_file(first / concepts.LORA_FILE), load_file(second / concepts.LORA_FILE)
    assert all(torch.equal(lora_a[k], lora_b[k]) for k in lora_a)
    uncached = _train(tiny_base, dog_photos, tmp_path / "c", **{**prior, "cache_latents": False})
    lora_c = load_file(uncached / concepts.LORA_FILE)
    assert all(torch.allclose(lora_a[k], lora_c[k], atol=1e-5) for k in lora_a)  # same latents, other strides
    write_dog_photos(class_dir, size=96, count=3)  # the images change: the cache must follow
    _train(tiny_base, dog_photos, tmp_path / "d", **prior)
    assert _cache_key(cache) != key


def _cache_key(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()["key"]
