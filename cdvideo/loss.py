"""ClassDiffusion's semantic preservation loss (SPL) and the concept–class drift it controls."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import CLIPTextModel

# Where a phrase's feature vector is read from the text encoder's final hidden states:
#   eos    each sequence's first EOS token (the paper's reading; what cdvideo reports as drift)
#   token  argmax(input_ids) over the unpadded prompt, which is what the official ClassDiffusion code
#          gets from `pooler_output` on SD1.5 (`eos_token_id: 2` in its text config): the added token
#          for the concept phrase (its id is the largest), the EOS for the class phrase.
POOLINGS = ("eos", "token")


def eos_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Index of each sequence's first EOS token.

    Not `pooler_output`: SD1.5's text config says `eos_token_id: 2`, so transformers pools at
    `argmax(input_ids)`, which is an added token's position (its id is the largest).
    """
    is_eos = input_ids == eos_token_id
    if not bool(is_eos.any(dim=-1).all()):
        raise ValueError("a tokenized prompt has no EOS token; was it truncated without one?")
    return is_eos.int().argmax(dim=-1)


def pooled_positions(input_ids: torch.Tensor, eos_token_id: int, pooling: str = "eos") -> torch.Tensor:
    """Each sequence's pooling position under `pooling` (see POOLINGS)."""
    eos = eos_positions(input_ids, eos_token_id)
    if pooling == "eos":
        return eos
    if pooling != "token":
        raise ValueError(f"unknown SPL pooling {pooling!r}; expected one of {POOLINGS}")
    # The official code tokenizes its SPL phrases unpadded; padding after the EOS (which causal
    # attention never lets earlier positions see) is masked out so a pad id cannot win the argmax.
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
    unpadded = torch.where(positions <= eos[:, None], input_ids, torch.full_like(input_ids, -1))
    return unpadded.argmax(dim=-1)


def pool(hidden: torch.Tensor, input_ids: torch.Tensor, eos_token_id: int, pooling: str = "eos") -> torch.Tensor:
    """Pick each sequence's pooled vector from hidden states already computed: (batch, dim)."""
    rows = torch.arange(len(input_ids), device=hidden.device)
    return hidden[rows, pooled_positions(input_ids, eos_token_id, pooling).to(hidden.device)]


def at_eos(hidden: torch.Tensor, input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Pick each sequence's EOS-position vector from hidden states already computed."""
    return pool(hidden, input_ids, eos_token_id, "eos")


def phrase_features(
    text_encoder: CLIPTextModel, input_ids: torch.Tensor, eos_token_id: int, pooling: str = "eos"
) -> torch.Tensor:
    """The final-layer-normed hidden state at each sequence's pooling position: (batch, dim)."""
    return pool(text_encoder(input_ids)[0], input_ids, eos_token_id, pooling)  # last_hidden_state is layer-normed


def eos_features(text_encoder: CLIPTextModel, input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """The final-layer-normed hidden state at each sequence's EOS position: (batch, dim)."""
    return phrase_features(text_encoder, input_ids, eos_token_id, "eos")


def concept_class_cosine(concept: torch.Tensor, klass: torch.Tensor) -> torch.Tensor:
    """Cosine between concept-phrase and class-phrase features, per batch item."""
    return F.cosine_similarity(concept.float(), klass.float(), dim=-1)


def semantic_preservation_loss(concept: torch.Tensor, klass: torch.Tensor) -> torch.Tensor:
    """SPL = 1 - cos(e("a photo of a <tok> dog"), e("a photo of a dog")), mean over the batch."""
    return (1 - concept_class_cosine(concept, klass)).mean()
