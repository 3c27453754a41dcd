"""Inputs people already have: community single-file checkpoints, original AnimateDiff motion
modules, motion LoRAs and the AnimateDiff-Lightning sampler, each built offline in its real format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_animate_args
from original_layouts import animatediff_motion_module, ldm_checkpoint
from safetensors.torch import save_file

import cdvideo
from cdvideo import loading
from cdvideo.cli import main as cli_main
from cdvideo.motion import parse_motion_lora

QUICK = ["--frames", "2", "--width", "64", "--height", "64", "--steps", "2"]


def assert_same_weights(expected: torch.nn.Module, loaded: torch.nn.Module, close: tuple[str, ...] = ()) -> None:
    a, b = expected.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith(close):
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-3)
        else:
            assert torch.equal(a[key], b[key]), key


def render(tmp_path: Path, name: str, base: Path, adapter: Path | str, **settings) -> np.ndarray:
    """One quick render on the tiny models; frames as a float array."""
    values = {"prompts": ["a dog running"], "use_concept": False, "base": str(base), "motion_adapter": str(adapter),
              "frames": 2, "steps": 2, "width": 64, "height": 64, "output": str(tmp_path / name)}  # fmt: skip
    values.update(settings)
    (video,) = cdvideo.animate(cdvideo.AnimateConfig(**values), say=lambda s: None, progress=False)
    return video.frames


# -- community single-file checkpoints ---------------------------------------------------------


def test_shipped_sd15_tokenizer_is_clips(tmp_path):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(loading.SD15_CONFIG / "tokenizer")
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    # CLIP ViT-L/14's ids, as SD1.5 was trained with them.
    assert tokenizer("a photo of a dog").input_ids == [49406, 320, 1125, 539, 320, 1929, 49407]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 49407


@pytest.fixture(scope="module")
def community_checkpoint(tiny_base, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny model as a community .safetensors in the original SD layout, and a weightless config folder."""
    from diffusers import StableDiffusionPipeline

    folder = tmp_path_factory.mktemp("community")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base)
    save_file(ldm_checkpoint(pipe), folder / "dreamy-mix.safetensors")
    config = folder / "config"
    shutil.copytree(tiny_base, config, ignore=shutil.ignore_patterns("*.safetensors"))
    return folder / "dreamy-mix.safetensors", config


def test_single_file_checkpoint_loads_offline_with_the_weights_it_holds(community_checkpoint, tiny_base):
    from diffusers import StableDiffusionPipeline

    file, config = community_checkpoint
    assert "model.diffusion_model.input_blocks.0.0.weight" in loading.read_state_dict(str(file))
    source = StableDiffusionPipeline.from_pretrained(tiny_base)
    pipe = loading.load_image_pipeline(str(file), config=str(config))
    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(source, name), getattr(pipe, name))


def test_animate_on_a_single_file_checkpoint(community_checkpoint, tiny_adapter, tmp_path):
    file, config = community_checkpoint
    args = cli_animate_args(file, tiny_adapter, tmp_path, "--base-config", str(config), "--steps", "2")
    assert cli_main(args) == 0
    (settings,) = tmp_path.glob("*.json")
    assert json.loads(settings.read_text())["base"] == str(file)
    assert (tmp_path / settings.name.replace(".json", ".mp4")).stat().st_size > 0


def test_a_checkpoint_of_another_architecture_is_one_clear_line(community_checkpoint, tmp_path, capsys):
    file, _ = community_checkpoint  # tiny weights against the shipped SD1.5 configs
    args = ["animate", "a dog", "--no-concept", "--base", str(file), "--output", str(tmp_path), *QUICK]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "could not load base model" in err and "--base-config" in err and "Traceback" not in err


# -- original AnimateDiff motion-module files --------------------------------------------------


@pytest.fixture(scope="module")
def shapes_adapter():
    return loading.load_motion_adapter("shapes")


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_original_motion_module_file_loads_as_the_adapter_it_came_from(shapes_adapter, tmp_path, suffix):
    state = animatediff_motion_module(shapes_adapter)
    assert "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.ff_norm.weight" in state
    file = tmp_path / f"mm_shapes_v2{suffix}"
    save_file(state, file) if suffix == ".safetensors" else torch.save(state, file)
    adapter = loading.load_motion_adapter(str(file), config=loading.resolve_motion_adapter("shapes"))
    # diffusers recomputes the sinusoidal position tables instead of reading them (the shipped
    # adapter's were stored rounded); every learned weight is read exactly.
    assert_same_weights(shapes_adapter, adapter, close=("pos_embed.pe",))
    assert adapter.config.motion_max_seq_length == 32 and adapter.config.use_motion_mid_block


def test_single_file_in_diffusers_keys_loads_too(shapes_adapter, tmp_path):
    # AnimateDiff-Lightning ships its adapters this way (`animatediff_lightning_4step_diffusers.safetensors`).
    file = tmp_path / "lightning_4step_diffusers.safetensors"
    save_file({k: v.contiguous() for k, v in shapes_adapter.state_dict().items()}, file)
    adapter = loading.load_motion_adapter(str(file), config=loading.resolve_motion_adapter("shapes"))
    assert_same_weights(shapes_adapter, adapter)


def test_motion_module_frame_limit_and_mid_block_come_from_the_file(shapes_adapter):
    state = animatediff_motion_module(shapes_adapter)
    v1_like = {k: (v[:, :24] if k.endswith("pos_encoder.pe") else v) for k, v in state.items()}
    v1_like = {k: v for k, v in v1_like.items() if not k.startswith("mid_block.")}
    assert loading.motion_file_overrides(v1_like) == {"use_motion_mid_block": False, "motion_max_seq_length": 24}


def test_animate_with_an_original_motion_module_file(tiny_base, tiny_adapter, tmp_path, capsys):
    from diffusers import MotionAdapter

    file = tmp_path / "mm_tiny.ckpt"
    torch.save(animatediff_motion_module(MotionAdapter.from_pretrained(tiny_adapter)), file)
    from_folder = render(tmp_path, "folder", tiny_base, tiny_adapter)
    from_file = render(tmp_path, "file", tiny_base, file, motion_adapter_config=str(tiny_adapter))
    np.testing.assert_allclose(from_file, from_folder, atol=1e-5)
    # Without --motion-adapter-config the file is read as SD1.5's architecture, which it is not.
    args = cli_animate_args(tiny_base, file, tmp_path / "o", "--steps", "2")
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "could not load motion adapter" in err and "--motion-adapter-config" in err


# -- motion LoRAs ------------------------------------------------------------------------------


def test_motion_lora_spec_parsing():
    assert parse_motion_lora("zoom-out.safetensors:0.8") == ("zoom-out.safetensors", 0.8)
    assert parse_motion_lora("guoyww/animatediff-motion-lora-zoom-out") == (
        "guoyww/animatediff-motion-lora-zoom-out",
        1.0,
    )
    assert parse_motion_lora("pan.safetensors:-0.5") == ("pan.safetensors", -0.5)


@pytest.mark.slow
def test_motion_lora_weight_moves_the_frames_and_weight_zero_is_no_lora(motion_lora, tiny_base, live_adapter, tmp_path):
    models = (tiny_base, live_adapter)
    plain = render(tmp_path, "plain", *models)
    at = {w: render(tmp_path, f"w{w}", *models, motion_loras=[f"{motion_lora}:{w}"]) for w in (0.0, 0.5, 1.0)}
    assert np.array_equal(at[0.0], plain)
    assert np.abs(at[0.5] - plain).mean() > 1e-3
    assert np.abs(at[1.0] - plain).mean() > np.abs(at[0.5] - plain).mean()
    settings = json.loads(next((tmp_path / "w0.5").glob("*.json")).read_text())
    assert settings["motion_loras"] == [f"{motion_lora}:0.5"]


@pytest.mark.slow
def test_motion_lora_stacks_with_the_concept(concept, motion_lora, tiny_base, live_adapter, tmp_path):
    import safetensors

    with safetensors.safe_open(concept / "pytorch_lora_weights.safetensors", "pt") as f:
        concept_keys = list(f.keys())
    assert concept_keys and not any("motion_modules" in k for k in concept_keys)
    with_concept = {"concept": str(concept), "use_concept": True, "lora_scale": 0.8}
    concept_only = render(tmp_path, "concept", tiny_base, live_adapter, **with_concept)
    both = {w: render(tmp_path, f"both{w}", tiny_base, live_adapter, **with_concept,
                      motion_loras=[f"{motion_lora}:{w}"]) for w in (0.0, 1.0)}  # fmt: skip
    # Weight 0 leaves the (then unfused) concept at its own weight: the concept-only frames.
    np.testing.assert_allclose(both[0.0], concept_only, atol=1e-4)
    assert np.abs(both[1.0] - concept_only).mean() > 1e-3


# -- AnimateDiff-Lightning sampler -------------------------------------------------------------


def test_lightning_sampler_preset_is_used_and_recorded(tiny_base, tiny_adapter, tmp_path):
    args = cli_animate_args(tiny_base, tiny_adapter, tmp_path, "--sampler", "lightning")
    assert cli_main(args) == 0
    settings = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert settings["sampler"] == "lightning" and settings["steps"] == 4 and settings["guidance"] == 1.0
    scheduler = settings["scheduler"]
    assert scheduler["class"] == "EulerDiscreteScheduler"
    assert scheduler["timestep_spacing"] == "trailing" and scheduler["beta_schedule"] == "linear"


def test_lightning_steps_and_guidance_can_still_be_set(tmp_path):
    from cdvideo.rendering import AnimateConfig, resolve

    cfg = resolve(AnimateConfig(prompts=["a dog"], base="shapes", sampler="lightning", steps=8, guidance=1.5), None)
    assert (cfg.steps, cfg.guidance) == (8, 1.5)
    cfg = resolve(AnimateConfig(prompts=["a dog"], base="shapes", sampler="lightning"), None)
    assert (cfg.steps, cfg.guidance) == (4, 1.0)
