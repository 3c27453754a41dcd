"""Clip composites: the subject fitted into the base model's moving clips, taught through the frozen
motion modules (cdvideo/clip_composites.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNetMotionModel
from peft import LoraConfig

import cdvideo
from cdvideo import clip_composites, data, loading, presets
from cdvideo.cli import main as cli_main
from cdvideo.demo import write_subject_photos
from cdvideo.shapes import scorer, world


@pytest.fixture(scope="module")
def cutouts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cutouts")
    write_subject_photos(folder, count=3, seed=0)
    return folder


def _plain_circle_clips(n: int, motion: str, accessory: str, frames: int = 16) -> torch.Tensor:
    """The world's own clips (N, F, 3, 64, 64) of plain (unstriped) circles moving as asked."""
    scenes = world.sample_scenes(n, torch.Generator().manual_seed(5))
    scenes.cls[:] = world.CLASSES.index("circle")
    scenes.accessory[:] = list(world.ACCESSORIES).index(accessory)
    scenes.background[:] = 0
    scenes.pattern[:] = False
    return world.render_clip(scenes, torch.full((n,), world.MOTIONS.index(motion)), frames=frames)


def _fit(clips, captions, photos):
    return clip_composites.make_clip_composites(
        clips, captions, photos.images, photos.masks, scorer.object_masks, "a photo of a circle",
        "a photo of a <new1> circle", scorer.clip_motion, presets.SHAPES.motion_phrases,
    )  # fmt: skip


def test_a_clip_composite_moves_the_subject_as_the_base_clip_moved(cutouts):
    photos = data.load_photos([cutouts], 64)
    clips = list(_plain_circle_clips(3, "moving right", "wearing headphones"))
    assert not any(f.pattern for c in scorer.score_clips(torch.stack(clips)) for f in c.frames)
    empty = torch.ones_like(clips[0])  # white frames: no object, so the clip is left out
    still = _plain_circle_clips(1, "", "wearing headphones")[0]  # a clip that does not move teaches stillness
    # The caption says the motion the clip shows, whatever its prompt asked for.
    made = _fit([*clips, empty, still], ["a photo of a circle wearing headphones moving left"] * 5, photos)
    assert made.captions == ["a photo of a <new1> circle wearing headphones moving right"] * 3
    for clip in scorer.score_clips(torch.stack(made.clips)):
        assert clip.motion == "moving right" and len(clip.frames) == clip_composites.FRAMES
        assert all(f.pattern and f.accessory == "wearing headphones" and f.cls == "circle" for f in clip.frames)


def test_written_clips_read_back_frame_for_frame(cutouts, tmp_path):
    photos = data.load_photos([cutouts], 64)
    made = _fit(list(_plain_circle_clips(2, "moving up", "")), ["a photo of a circle moving up"] * 2, photos)
    assert made.captions == ["a photo of a <new1> circle moving up"] * 2
    clip_composites.write_clips(tmp_path, made)
    clips, captions = clip_composites.read_clips(tmp_path, "clip-composite-*.png")
    assert captions == made.captions
    for read, written in zip(clips, made.clips, strict=True):
        assert read.shape == (clip_composites.FRAMES, 3, 64, 64)
        assert (read - written).abs().max() <= 1 / 255 + 1e-6  # 8-bit PNG


def test_clip_prompts_cover_every_phrase_and_motion():
    phrases, motions = ("wearing a hat", "on grass", "at night"), ("moving left", "bouncing")
    prompts = clip_composites.clip_prompts("circle", phrases, motions, 6, seed=0)
    assert len(prompts) == 6 and all(p.startswith("a photo of a circle ") for p in prompts)
    assert sorted(sum(p.count(x) for p in prompts) for x in phrases) == [2, 2, 2]
    assert sorted(sum(p.endswith(m) for p in prompts) for m in motions) == [3, 3]


def test_bare_motions_add_the_bare_class_in_every_motion_and_keep_the_first_prompts():
    phrases, motions = ("", "wearing a hat", "on grass"), ("moving left", "moving up", "bouncing")
    first = clip_composites.clip_prompts("circle", phrases, motions, 6, seed=0)
    with_bare = clip_composites.clip_prompts("circle", phrases, motions, 6, seed=0, bare_motions=True)
    # the clips already drawn keep their prompts (and so their seeds and clip-bank keys)
    assert with_bare[:6] == first
    bare = {f"a photo of a circle {m}" for m in motions}
    assert bare <= set(with_bare)
    assert len(with_bare) == 6 + len(bare - set(first))  # each missing motion once, nothing else


def test_the_motion_model_trains_the_unets_own_lora():
    """Through the shared motion model, a clip's loss reaches the UNet's LoRA (the concept that is
    saved) and never the frozen motion modules; with the LoRA at zero it predicts as AnimateDiff's
    own motion model does."""
    pipe = loading.load_image_pipeline("shapes", torch.float32)
    adapter = loading.load_motion_adapter("shapes")
    reference = UNetMotionModel.from_unet2d(pipe.unet, adapter)
    unet = pipe.unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "conv1"]))
    motion = clip_composites.shared_motion_unet(unet, adapter)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, clip_composites.FRAMES, 16, 16, generator=generator)
    hidden = torch.randn(clip_composites.FRAMES, 77, 128, generator=generator)
    with torch.no_grad():
        expected = reference(latents, torch.tensor([500]), hidden).sample
        torch.testing.assert_close(motion(latents, torch.tensor([500]), hidden).sample, expected, atol=1e-4, rtol=1e-4)
    lora = {n: p for n, p in unet.named_parameters() if "lora_" in n}
    for name, param in lora.items():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    with torch.no_grad():
        assert (motion(latents, torch.tensor([500]), hidden).sample - expected).abs().max() > 1e-3
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    mean = torch.randn(2, clip_composites.FRAMES, 4, 16, 16, generator=generator)
    ids = pipe.tokenizer(["a photo of a circle moving right"] * 2, padding="max_length", max_length=77,
                         return_tensors="pt").input_ids  # fmt: skip
    loss = clip_composites.clip_loss(
        motion, lambda i: pipe.text_encoder(i)[0], (mean, torch.zeros_like(mean), ids), scheduler,
        scheduler.get_velocity, generator, 1.0,
    )  # fmt: skip
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_A" in n)
    assert all(p.grad is None for n, p in motion.named_parameters() if "motion_modules" in n)


def test_shapes_training_teaches_clip_composites(cutouts, tmp_path):
    out = tmp_path / "concept"
    args = ["train", str(cutouts), "--class-word", "circle", "--base", "shapes", "--output", str(out),
            "--steps", "2", "--prior-weight", "0", "--clip-composites", "1", "--num-clip-composites", "4"]  # fmt: skip
    assert cli_main(args) == 0
    settings = json.loads((out / "train_config.json").read_text())
    assert settings["clip_composites"] == 1.0 and settings["num_clip_composites"] == 4
    base, _ = clip_composites.read_clips(out / "clip-composites" / "clips")
    assert len(base) == 4 and all(len(clip) == presets.SHAPES.frames for clip in base)
    clips, captions = clip_composites.read_clips(out / "clip-composites", "clip-composite-*.png")
    assert 1 <= len(clips) <= 4
    motions = presets.SHAPES.motion_phrases
    for clip, caption in zip(clips, captions, strict=True):
        assert caption.startswith("a photo of a <new1> circle ") and caption.endswith(motions)
        assert all(f.pattern for f in scorer.score_frames(clip))  # the subject is in every frame
        assert scorer.clip_motion(clip) != ""


def test_a_resumed_run_draws_the_same_clips_and_trains_the_same_concept(cutouts, tmp_path):
    """Each step's clip composite is drawn from a generator of (seed, step, process): a run resumed from its
    step-2 checkpoint ends with the concept of the run that went straight through."""
    from safetensors.torch import load_file

    def run(out: Path, resume: str | None = None) -> dict:
        cdvideo.train(
            cdvideo.TrainConfig(images=[str(cutouts)], class_word="circle", base="shapes", output=str(out), steps=4,
                                prior_weight=0.0, clip_composites=1.0, num_clip_composites=2, checkpoint_every=2,
                                keep_checkpoints=0, resume=resume),
            say=lambda _: None,
        )  # fmt: skip
        return load_file(out / "pytorch_lora_weights.safetensors") | load_file(out / "learned_embeds.safetensors")

    straight = run(tmp_path / "straight")
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    for name in ("pytorch_lora_weights.safetensors", "learned_embeds.safetensors", "cdvideo.json"):
        (tmp_path / "resumed" / name).unlink()
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "resumed" / "checkpoints" / "step-000002"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert (straight[key].float() - resumed[key].float()).abs().max() <= 1e-6, key


def test_clip_every_n_teaches_a_clip_on_every_nth_step_at_n_times_its_weight(cutouts, tmp_path, monkeypatch, capsys):
    real_clip_loss, losses = clip_composites.clip_loss, []

    def counted(*args, **kwargs):
        losses.append(real_clip_loss(*args, **kwargs))
        return losses[-1]

    monkeypatch.setattr(clip_composites, "clip_loss", counted)
    args = ["train", str(cutouts), "--class-word", "circle", "--base", "shapes", "--prior-weight", "0",
            "--clip-composites", "1", "--num-clip-composites", "2", "--steps", "5"]  # fmt: skip
    assert cli_main([*args, "--output", str(tmp_path / "every-2"), "--clip-every", "2"]) == 0
    assert len(losses) == 3  # steps 0, 2 and 4 of 5
    assert json.loads((tmp_path / "every-2" / "train_config.json").read_text())["clip_every"] == 2

    # Step 0's clip at twice the weight: the concept of --clip-composites 2 taught every step, not of 1.
    def one_step(name: str, weight: str, every: str) -> dict:
        from safetensors.torch import load_file

        out = tmp_path / name
        one = [a if a != "5" else "1" for a in args]
        assert cli_main([*one, "--output", str(out), "--clip-composites", weight, "--clip-every", every]) == 0
        return load_file(out / "pytorch_lora_weights.safetensors")

    doubled, weight_2, weight_1 = one_step("a", "1", "2"), one_step("b", "2", "1"), one_step("c", "1", "1")
    assert all(torch.equal(doubled[k], weight_2[k]) for k in doubled)
    assert any(not torch.equal(doubled[k], weight_1[k]) for k in doubled)

    capsys.readouterr()
    assert cli_main([*args, "--output", str(tmp_path / "every-0"), "--clip-every", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--clip-every is a number of steps, 1 or more" in err
    assert not (tmp_path / "every-0").exists()
