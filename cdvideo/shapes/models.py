"""The Shapes model family: SD1.5-shaped components, small enough to ship and to run on a CPU.

The tokenizer is a real CLIP byte-level BPE whose merges spell the world's words, so added
tokens and `load_textual_inversion` behave as on SD1.5. The text encoder keeps SD1.5's
`eos_token_id: 2` on purpose: it reproduces the pooling trap the SPL code must avoid.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    MotionAdapter,
    UNet2DConditionModel,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from cdvideo.shapes import world

WEIGHTS_DIR = Path(__file__).parent / "weights"
BASE_DIR = WEIGHTS_DIR / "base"
MOTION_DIR = WEIGHTS_DIR / "motion_adapter"

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
HIDDEN = 128
BLOCKS = (64, 128, 128)

# v-prediction with a zero-terminal-SNR schedule: small images are mostly low frequency, and
# with SD's schedule the leftover signal at t=T taught an earlier probe to ignore background words.
SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "clip_sample": False,
    "steps_offset": 1,
}


def build_tokenizer(extra_words: list[str] | None = None) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges build each grammar word letter by letter."""
    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for symbol in alphabet + [s + "</w>" for s in alphabet]:
        vocab.setdefault(symbol, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in world.vocabulary_words() + (extra_words or []):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            merge = (current, piece)
            if merge not in merges:
                merges.append(merge)
            current += piece
            vocab.setdefault(current, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def text_encoder_config(vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=HIDDEN,
        bos_token_id=0,
        eos_token_id=2,  # as in SD1.5's config: not the tokenizer's EOS id
        pad_token_id=1,
    )


def build_text_encoder(vocab_size: int) -> CLIPTextModel:
    return CLIPTextModel(text_encoder_config(vocab_size))


def build_vae() -> AutoencoderKL:
    """64x64x3 -> 16x16x4 latents (two downsamples)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=world.SIZE,
    )


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=world.SIZE // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=BLOCKS,
        layers_per_block=2,
        cross_attention_dim=HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def build_motion_adapter() -> MotionAdapter:
    return MotionAdapter(
        block_out_channels=BLOCKS,
        motion_layers_per_block=2,
        motion_num_attention_heads=4,
        motion_norm_num_groups=32,
        motion_max_seq_length=32,
        use_motion_mid_block=True,
    )


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**{k: v for k, v in SCHEDULER.items() if k != "clip_sample"}, clip_sample=False)


def sample_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULER)
