"""Tiny SD-1.5-shaped models built from configs (no network), saved as local diffusers folders."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cdvideo

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# base clips rendered by tests go to a scratch cache, not the user's (cdvideo/clip_bank.py)
os.environ["CDVIDEO_CACHE"] = tempfile.mkdtemp(prefix="cdvideo-test-cache-")
# the benchmarks are scripts, not a package: tests import them by name (`import motion_bars`)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

WORDS = ["dog", "cat", "wearing", "headphones", "running", "photo", "of", "a", "on", "the", "beach"]


def build_tiny_base(folder: Path) -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cdvideo.shapes.models import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer(extra_words=WORDS)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,  # SD1.5's (wrong) ids: the pooling trap
        )
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=64,
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=16,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_adapter(folder: Path) -> Path:
    from diffusers import MotionAdapter

    torch.manual_seed(1)
    adapter = MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=16,
        motion_max_seq_length=16,
        use_motion_mid_block=False,
    )
    adapter.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return build_tiny_base(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory) -> Path:
    return build_tiny_adapter(tmp_path_factory.mktemp("models") / "tiny-motion")


def cli_train_args(base: Path, photos: Path, out: Path, *extra: str, steps: int = 1) -> list[str]:
    """`cdvideo train` arguments for a quick run on the tiny model."""
    return ["train", str(photos), "--class-word", "dog", "--base", str(base), "--output", str(out),
            "--steps", str(steps), "--resolution", "64", *extra]  # fmt: skip


def cli_animate_args(base: Path, adapter: Path, out: Path, *extra: str, frames: int = 2) -> list[str]:
    """`cdvideo animate` arguments for a quick render of "a dog" without a concept on the tiny models."""
    return ["animate", "a dog", "--no-concept", "--base", str(base), "--motion-adapter", str(adapter),
            "--frames", str(frames), "--width", "64", "--height", "64", "--output", str(out), *extra]  # fmt: skip


def write_dog_photos(folder: Path, size: int = 80, count: int = 5) -> Path:
    """A few 'photos' of one subject: an orange blob with a dark ear at varied places."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    s = max(size, 64)
    for i in range(count):
        image = np.full((s, s, 3), 235, np.uint8)
        x, y = rng.integers(s // 4, 3 * s // 4, size=2)
        w, h = s // 5, s // 6
        image[y - h : y + h, x - w : x + w] = (220, 120, 40)
        image[y - h - s // 20 : y - h + s // 40, x - w : x - w + s // 10] = (60, 40, 20)
        Image.fromarray(image).save(folder / f"rex-{i}.jpg")
    return folder


@pytest.fixture(scope="session")
def dog_photos(tmp_path_factory) -> Path:
    folder = write_dog_photos(tmp_path_factory.mktemp("photos"))
    (folder / ".DS_Store").write_bytes(b"\x00\x01junk")  # users' folders have these
    return folder


@pytest.fixture(scope="session")
def concept(tiny_base, dog_photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("c") / "concept"
    config = cdvideo.TrainConfig(images=[str(dog_photos)], class_word="dog", base=str(tiny_base), output=str(out),
                                 steps=2, resolution=64)  # fmt: skip
    return cdvideo.train(config, say=lambda s: None, progress=False)


@pytest.fixture(scope="session")
def live_adapter(tiny_adapter, tmp_path_factory) -> Path:
    """The tiny adapter as if trained: a fresh one's output projections are zero, so it does nothing."""
    from diffusers import MotionAdapter

    adapter = MotionAdapter.from_pretrained(tiny_adapter)
    torch.manual_seed(4)
    for name, module in adapter.named_modules():
        if name.endswith("proj_out"):
            torch.nn.init.normal_(module.weight, std=0.2)
    folder = tmp_path_factory.mktemp("live-adapter")
    adapter.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def motion_lora(tiny_base, live_adapter, tmp_path_factory) -> Path:
    """A camera-motion-style LoRA: peft on the motion modules' attention of a UNetMotionModel."""
    from diffusers import AnimateDiffPipeline, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet2d = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    unet = UNetMotionModel.from_unet2d(unet2d, MotionAdapter.from_pretrained(live_adapter))
    # Attention only, as AnimateDiff's motion LoRAs (diffusers calls proj_out(input=...), which a
    # peft LoRA layer on it cannot take).
    ends = (".to_q", ".to_k", ".to_v", ".to_out.0")
    targets = [name for name, _ in unet.named_modules() if "motion_modules" in name and name.endswith(ends)]
    torch.manual_seed(3)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    folder = tmp_path_factory.mktemp("motion-lora")
    AnimateDiffPipeline.save_lora_weights(
        folder, unet_lora_layers=get_peft_model_state_dict(unet), weight_name="shapes-zoom.safetensors"
    )
    return folder / "shapes-zoom.safetensors"
