"""ClassDiffusion's semantic preservation loss (SPL) and the concept–class drift it controls."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import CLIPTextModel


def eos_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Index of each sequence's first EOS token.

    Not `pooler_output`: SD1.5's text config says `eos_token_id: 2`, so transformers pools at
    `argmax(input_ids)`, which is an added token's position (its id is the largest).
    """
    is_eos = input_ids == eos_token_id
    if not bool(is_eos.any(dim=-1).all()):
        raise ValueError("a tokenized prompt has no EOS token; was it truncated without one?")
    return is_eos.int().argmax(dim=-1)


def eos_features(text_encoder: CLIPTextModel, input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """The final-layer-normed hidden state at each sequence's EOS position: (batch, dim)."""
    return at_eos(text_encoder(input_ids)[0], input_ids, eos_token_id)  # last_hidden_state is layer-normed


def at_eos(hidden: torch.Tensor, input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Pick each sequence's EOS-position vector from hidden states already computed."""
    rows = torch.arange(len(input_ids), device=hidden.device)
    return hidden[rows, eos_positions(input_ids, eos_token_id).to(hidden.device)]


def concept_class_cosine(concept: torch.Tensor, klass: torch.Tensor) -> torch.Tensor:
    """Cosine between concept-phrase and class-phrase features, per batch item."""
    return F.cosine_similarity(concept.float(), klass.float(), dim=-1)


def semantic_preservation_loss(concept: torch.Tensor, klass: torch.Tensor) -> torch.Tensor:
    """SPL = 1 - cos(e("a photo of a <tok> dog"), e("a photo of a dog")), mean over the batch."""
    return (1 - concept_class_cosine(concept, klass)).mean()
