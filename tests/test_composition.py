"""Composition levers: subject masks from the photos' transparency, masked loss, caption variety,
scene composites."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_train_args
from peft import LoraConfig
from PIL import Image

import cdvideo
from cdvideo import composites, data, loading, presets, strength
from cdvideo import concept as concepts
from cdvideo.cli import main as cli_main
from cdvideo.demo import write_subject_photos
from cdvideo.objective import batch_loss, draw_composites, subject_captions
from cdvideo.shapes import scorer, world
from cdvideo.training import TrainConfig
from cdvideo.training_inputs import generate_class_images


@pytest.fixture(scope="module")
def cutouts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cutouts")
    write_subject_photos(folder, count=3, seed=0)
    return folder


def test_transparent_photos_carry_the_subject_mask(cutouts, dog_photos):
    photos = data.load_photos([cutouts], 64)
    scenes = world.subject_scenes(3, torch.Generator().manual_seed(0))
    coverage = world.object_coverage(scenes)
    for mask, expected in zip(photos.masks, coverage, strict=True):
        np.testing.assert_allclose(np.asarray(mask, np.float32) / 255, expected.numpy(), atol=1 / 255)
    masks = data.masks_to_tensor(photos.masks, flip=True, size=16)
    assert masks.shape == (6, 1, 16, 16)
    # Flipped copies follow the photos, mirrored, as photos_to_tensor orders them.
    torch.testing.assert_close(masks[3:], torch.flip(masks[:3], dims=[3]))
    assert data.masks_to_tensor(data.load_photos([dog_photos], 64).masks, flip=False, size=16) is None


def _prediction_grads(base: Path, mask: torch.Tensor | None, term: str, context_weight: float = 0.0):
    """|d term / d UNet prediction| per pixel for one batch of two masked photos on the tiny model."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base)
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_k"]))
    for lora in (p for n, p in pipe.unet.named_parameters() if "lora_B" in n):
        torch.nn.init.normal_(lora, std=0.5)  # the LoRA has learned something: it differs from the base
    cfg = TrainConfig(images=[], class_word="dog", base=str(base), batch_size=2, context_weight=context_weight)
    cfg = cfg.resolved()
    tokens = pipe.tokenizer(["a photo of a dog"], padding="max_length", max_length=77, return_tensors="pt")
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        teacher_hidden = pipe.text_encoder(tokens.input_ids)[0]
    predictions = []

    def keep(module, args, out) -> None:
        if out.sample.requires_grad:  # the student's forward, not the base model's (no-grad) one
            out.sample.retain_grad()
            predictions.append(out.sample)

    pipe.unet.register_forward_hook(keep)
    batch = {
        "instance": (latents, torch.zeros_like(latents)),
        "class": None,
        "concept_ids": tokens.input_ids,
        "variety": 0.0,
        "variety_rows": 1,
        "composites": None,
        "masks": mask,
        "teacher_hidden": teacher_hidden,
        "eos_id": pipe.tokenizer.eos_token_id,
        "class_features": torch.zeros(1, 32),
        "class_spl": torch.zeros(1, 32),
    }
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    parts = batch_loss(cfg, batch, pipe.unet, pipe.text_encoder, scheduler, torch.Generator().manual_seed(1), 1.0)[1]
    parts[term].backward()
    return predictions[-1].grad.abs().sum(dim=1, keepdim=True)


SUBJECT = torch.zeros(2, 1, 8, 8)
SUBJECT[..., 2:6, 3:7] = 1.0


def test_masked_loss_teaches_only_the_subject(tiny_base):
    """Outside the subject's mask the photos teach nothing: the background and what stands beside
    the subject (a hat, headphones) are not learned from them."""
    masked = _prediction_grads(tiny_base, SUBJECT, "mse")
    assert float(masked[SUBJECT == 0].max()) == 0.0 and bool((masked[SUBJECT == 1] > 0).all())
    assert bool((_prediction_grads(tiny_base, None, "mse") > 0).all())


def test_context_term_teaches_the_base_models_view_around_the_subject(tiny_base):
    """Around the subject the concept prompt is pulled toward the base model's prediction for the
    class prompt; inside it, only the photos speak."""
    around = _prediction_grads(tiny_base, SUBJECT, "context", context_weight=1.0)
    assert float(around[SUBJECT == 1].max()) == 0.0 and bool((around[SUBJECT == 0] > 0).all())


def test_caption_variety_draws_phrases_at_the_asked_share():
    picks = torch.zeros(4000, dtype=torch.long)
    ids = torch.zeros(len(presets.SHAPES.caption_phrases) + 1, 77, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    for share in (0.0, 0.5, 1.0):
        rows = subject_captions({"variety_rows": len(ids), "variety": share}, picks, generator)
        assert float((rows > 0).float().mean()) == pytest.approx(share, abs=0.03)
    # Every phrase can be drawn, and row 0 (the plain concept phrase SPL reads) is never a phrase.
    rows = subject_captions({"variety_rows": len(ids), "variety": 1.0}, picks, generator)
    assert set(rows.tolist()) == set(range(1, len(ids)))


def test_composition_phrases_cover_every_accessory_background_and_motion():
    phrases = world.composition_phrases()
    for part in [*world.ACCESSORIES, *world.BACKGROUNDS, *world.MOTIONS]:
        if part:
            assert part in phrases
    assert "wearing headphones on grass moving right" in phrases and "" not in phrases


def test_shapes_training_on_cutouts_records_what_it_applied(cutouts, tmp_path, capsys):
    out = tmp_path / "concept"
    args = ["train", str(cutouts), "--class-word", "circle", "--base", "shapes", "--output", str(out),
            "--steps", "2", "--prior-weight", "0", "--caption-variety", "0.5"]  # fmt: skip
    assert cli_main(args) == 0
    settings = json.loads((out / "train_config.json").read_text())
    assert settings["masked_loss"] is True and settings["caption_variety"] == 0.5


def test_masks_are_asked_of_photos_without_transparency(tiny_base, dog_photos, tmp_path, capsys):
    code = cli_main(cli_train_args(tiny_base, dog_photos, tmp_path / "c", "--masked-loss"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "transparency" in err[0] and "5 of 5" in err[0]
    # Caption variety without masks would teach false captions: it is turned off, said and recorded.
    assert cli_main(cli_train_args(tiny_base, dog_photos, tmp_path / "d", "--caption-variety", "0.5")) == 0
    assert "caption variety is off" in capsys.readouterr().out
    assert json.loads((tmp_path / "d" / "train_config.json").read_text())["caption_variety"] == 0.0


def _world_scenes(accessory: str, background: str, n: int) -> torch.Tensor:
    """The world's own pictures of plain (unstriped) circles with `accessory` and `background`."""
    scenes = world.sample_scenes(n, torch.Generator().manual_seed(3))
    scenes.cls[:] = world.CLASSES.index("circle")
    scenes.accessory[:] = list(world.ACCESSORIES).index(accessory)
    scenes.background[:] = list(world.BACKGROUNDS).index(background)
    scenes.pattern[:] = False
    return world.render(scenes)


@pytest.mark.parametrize("phrase", world.scene_phrases())
def test_a_composite_shows_the_subject_with_what_the_scene_has(cutouts, phrase):
    """Fitted into a scene, the subject keeps its stripes and the scene keeps what the circle wears
    and where it is: the world's scorer reads the composite as the subject plus the phrase."""
    accessory = next((a for a in world.ACCESSORIES if a and phrase.startswith(a)), "")
    background = phrase[len(accessory) :].strip()
    photos = data.load_photos([cutouts], 64)
    scenes = _world_scenes(accessory, background, 6)
    images = [Image.fromarray((s.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for s in scenes]
    made = composites.make_composites(
        images, [f"a photo of a circle {phrase}"] * 6, photos.images, photos.masks, scorer.object_masks,
        "a photo of a circle", "a photo of a <new1> circle",
    )  # fmt: skip
    assert made.captions == [f"a photo of a <new1> circle {phrase}"] * 6
    pixels = torch.stack([torch.from_numpy(np.asarray(m, np.float32) / 255).permute(2, 0, 1) for m in made.images])
    for score in scorer.score_frames(pixels):
        assert (score.pattern, score.cls, score.accessory, score.background) == (True, "circle", accessory, background)
    # Before fitting, no scene had the subject.
    assert not any(score.pattern for score in scorer.score_frames(scenes))


def test_a_scene_without_the_object_gets_no_composite(cutouts):
    photos = data.load_photos([cutouts], 64)
    empty = Image.new("RGB", (64, 64), "white")
    made = composites.make_composites(
        [empty], ["a photo of a circle on grass"], photos.images, photos.masks, scorer.object_masks,
        "a photo of a circle", "a photo of a <new1> circle",
    )  # fmt: skip
    assert made.images == [] and made.captions == []


def test_composites_are_drawn_at_the_asked_share_and_taught_whole():
    n = 4000
    latents, rows, mask = torch.zeros(n, 4, 2, 2), torch.zeros(n, dtype=torch.long), torch.zeros(n, 1, 2, 2)
    batch = {"composites": (torch.ones(3, 4, 2, 2), torch.zeros(3, 4, 2, 2), torch.tensor([5, 6, 7]))}
    for share in (0.0, 0.3, 1.0):
        out, out_rows, out_mask = draw_composites(share, batch, latents, rows, mask, torch.Generator().manual_seed(0))
        drawn = out.flatten(1).amax(1) > 0
        assert float(drawn.float().mean()) == pytest.approx(share, abs=0.03)
        # A composite item carries its scene's caption and its whole picture is taught.
        assert bool((out_rows[drawn] >= 5).all()) and bool((out_rows[~drawn] == 0).all())
        assert bool((out_mask[drawn] == 1).all()) and bool((out_mask[~drawn] == 0).all())


def test_shapes_training_fits_the_subject_into_scenes(cutouts, tmp_path):
    out = tmp_path / "concept"
    args = ["train", str(cutouts), "--class-word", "circle", "--base", "shapes", "--output", str(out),
            "--steps", "2", "--prior-weight", "0", "--composites", "0.5", "--num-composites", "4"]  # fmt: skip
    assert cli_main(args) == 0
    settings = json.loads((out / "train_config.json").read_text())
    assert settings["composites"] == 0.5 and settings["num_composites"] == 4
    captions = sorted((out / "composites").glob("composite-*.txt"))
    assert 1 <= len(captions) <= 4 and len(list((out / "composites" / "scenes").glob("*.png"))) == 4
    phrases = set(world.scene_phrases())
    for caption in captions:
        text = caption.read_text().strip()
        assert text.startswith("a photo of a <new1> circle ") and text[len("a photo of a <new1> circle ") :] in phrases
        assert caption.with_suffix(".png").is_file()
    # The scenes show what their captions ask (hat, scarf, headphones, sky): drawn at the pipeline's
    # default guidance (7.5) instead of the family's (3.0), the scarf scene showed no scarf, and the
    # composites taught "<tok> circle with a scarf" on pictures without one.
    scenes = sorted((out / "composites" / "scenes").glob("*.png"))
    scores = scorer.score_frames(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in scenes]))
    asked = [p.with_suffix(".txt").read_text().strip().removeprefix("a photo of a circle ") for p in scenes]
    assert asked == list(world.scene_phrases()[:4])
    assert [(s.cls, s.accessory, s.background) for s in scores] == [
        ("circle", "wearing a hat", ""), ("circle", "with a scarf", ""), ("circle", "wearing headphones", ""),
        ("circle", "", "in the sky"),
    ]  # fmt: skip


def test_prior_images_follow_the_familys_guidance(tmp_path):
    pipe = loading.load_image_pipeline("shapes", torch.float32)
    pipe.scheduler = presets.make_scheduler("shapes", None, pipe.scheduler.config, video=False)
    folder = tmp_path / "scenes"
    prompt = "a photo of a circle with a scarf"
    generate_class_images(pipe, presets.SHAPES, [prompt], 8, 64, folder, 0, say=lambda s: None)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]
    assert len(images) == 8 and all((p.with_suffix(".txt")).read_text().strip() == prompt for p in folder.glob("*.png"))
    read = [s.accessory for s in scorer.score_frames(np.stack(images))]
    assert read.count("with a scarf") >= 7, read


@pytest.mark.parametrize(
    ("flag", "field", "what"),
    [("--composites", "composites", "scene composites"), ("--clip-composites", "clip_composites", "clip composites")],
)
def test_composites_need_a_locator_and_masks(tiny_base, dog_photos, tmp_path, capsys, flag, field, what):
    code = cli_main(cli_train_args(tiny_base, dog_photos, tmp_path / "c", flag, "0.5"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "locator" in err[0] and f"{flag} 0" in err[0]
    # On Shapes, photos without transparency turn them off, say so and record it.
    args = ["train", str(dog_photos), "--class-word", "circle", "--base", "shapes", "--output", str(tmp_path / "d"),
            "--steps", "1", "--prior-weight", "0", flag, "0.5"]  # fmt: skip
    assert cli_main(args) == 0
    assert f"{what} are off" in capsys.readouterr().out
    assert json.loads((tmp_path / "d" / "train_config.json").read_text())[field] == 0.0
    # Out of range: one line naming the option.
    assert cli_main([*args[:-1], "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]


def test_a_soft_edged_cutout_leaves_no_pale_rim_on_a_dark_scene(tmp_path):
    """The loader shows a cut-out on white; fitted onto a black scene, its soft edge must blend blue
    into black, not into the white it was shown on."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    alpha = ((20 - ((yy - 32) ** 2 + (xx - 32) ** 2).sqrt()) / 4).clamp(0, 1)  # 4 px soft edge
    rgba = torch.stack([torch.zeros(64, 64), torch.zeros(64, 64), torch.ones(64, 64), alpha], -1)
    Image.fromarray((rgba.numpy() * 255).round().astype(np.uint8), "RGBA").save(tmp_path / "blue.png")
    photos = data.load_photos([tmp_path], 64)
    scene = Image.new("RGB", (64, 64), "black")

    def locate(pixels):
        disk = ((yy - 30) ** 2 + (xx - 34) ** 2).sqrt() < 14
        return disk[None].expand(len(pixels), -1, -1), torch.zeros(len(pixels), 64, 64, dtype=torch.bool)

    made = composites.make_composites([scene], ["a photo of a circle at night"], photos.images, photos.masks,
                                      locate, "a photo of a circle", "a photo of a <new1> circle")  # fmt: skip
    pixels = np.asarray(made.images[0], np.float32) / 255
    assert pixels[..., 2].max() > 0.99  # the subject is there
    assert pixels[..., :2].max() < 0.02  # and nothing pale around it


def _prior_term(base: Path, prior_target: str, learned: bool) -> float:
    """The prior part of one batch on the tiny model, with a fresh (zero) or a learned LoRA."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base)
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_k", "to_q"]))
    if learned:
        for lora in (p for n, p in pipe.unet.named_parameters() if "lora_B" in n):
            torch.nn.init.normal_(lora, std=0.5)
    cfg = TrainConfig(images=[], class_word="dog", base=str(base), batch_size=2, prior_weight=1.0,
                      prior_target=prior_target).resolved()  # fmt: skip
    tokens = pipe.tokenizer(["a photo of a dog"], padding="max_length", max_length=77, return_tensors="pt")
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = pipe.text_encoder(tokens.input_ids)[0]
    batch = {
        "instance": (latents, torch.zeros_like(latents)), "class": (latents.flip(0), torch.zeros_like(latents)),
        "class_hidden": hidden, "class_caption": torch.zeros(2, dtype=torch.long), "concept_ids": tokens.input_ids,
        "variety": 0.0, "variety_rows": 1, "composites": None, "masks": None, "teacher_hidden": hidden,
        "eos_id": pipe.tokenizer.eos_token_id, "class_features": torch.zeros(1, 32), "class_spl": torch.zeros(1, 32),
    }  # fmt: skip
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        parts = batch_loss(cfg, batch, pipe.unet, pipe.text_encoder, scheduler, torch.Generator().manual_seed(1), 1.0)
    return float(parts[1]["prior"])


def test_prior_items_can_follow_the_base_model_instead_of_their_noise(tiny_base):
    """--prior-target base holds the LoRA to the base model's own prediction off the token: nothing to
    learn while the LoRA is still the base model, a penalty once it differs. DreamBooth's target (the
    images' noise) is never met exactly."""
    assert _prior_term(tiny_base, "base", learned=False) < 1e-10
    assert _prior_term(tiny_base, "base", learned=True) > 0.0
    assert _prior_term(tiny_base, "images", learned=False) > 0.1


def test_an_unknown_prior_target_is_one_clear_line(tiny_base, dog_photos, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli_main(cli_train_args(tiny_base, dog_photos, tmp_path / "out", "--prior-weight", "1", "--prior-target", "x"))
    assert stop.value.code != 0
    assert "--prior-target" in capsys.readouterr().err


def test_composition_bars_train_with_named_fields_and_refuse_unknown_ones() -> None:
    import composition_bars

    assert composition_bars.parse_overrides(["prior_target=base", 'lora_targets=["attn2.to_k"]', "steps=300"]) == {
        "prior_target": "base",
        "lora_targets": ["attn2.to_k"],
        "steps": 300,
    }
    with pytest.raises(SystemExit, match="TrainConfig field"):
        composition_bars.parse_overrides(["prior_tagret=base"])


def test_composition_bars_never_train_on_a_half_written_photo_folder(tmp_path, monkeypatch) -> None:
    """Runs side by side (--no-report) share the work folder's photos: one that finds the folder must
    find all five photos in it, and one that loses the race to write them leaves nothing behind."""
    import composition_bars

    seen_while_writing = []

    def slow_writer(folder, seed=0):
        paths = write_subject_photos(folder, count=2, seed=seed)
        seen_while_writing.append((tmp_path / "work" / "photos").exists())
        return paths

    monkeypatch.setattr(composition_bars, "write_subject_photos", slow_writer)
    photos = composition_bars.subject_photos(tmp_path / "work")
    assert seen_while_writing == [False]  # the photos were written aside, not in place
    assert sorted(p.name for p in photos.iterdir()) == ["subject-0.png", "subject-1.png"]

    def racing_writer(folder, seed=0):  # the run beside this one finishes first (one photo, to tell them apart)
        write_subject_photos(tmp_path / "work2" / "photos", count=1, seed=seed)
        return write_subject_photos(folder, count=2, seed=seed)

    monkeypatch.setattr(composition_bars, "write_subject_photos", racing_writer)
    composition_bars.subject_photos(tmp_path / "work2")
    assert sorted(p.name for p in (tmp_path / "work2").iterdir()) == ["photos"]  # no staging folder left
    # The first writer's folder stays as it was: a run already reading it never sees it replaced.
    assert sorted(p.name for p in (tmp_path / "work2" / "photos").iterdir()) == ["subject-0.png"]


def test_composition_bars_keep_the_concept_on_beside_the_asked_motion_lora(tmp_path) -> None:
    """A fused concept is unmerged and left off when a motion LoRA is activated (peft's set_adapter),
    so the bars' clips must hold the concept as `cdvideo animate` does: a live adapter, on."""
    import composition_bars

    write_subject_photos(tmp_path / "photos", count=2)
    folder = cdvideo.train(
        cdvideo.TrainConfig(images=[str(tmp_path / "photos")], class_word="circle", base="shapes",
                            output=str(tmp_path / "concept"), steps=2, batch_size=2, prior_weight=0.0),
        say=lambda _: None, progress=False,
    )  # fmt: skip
    _, video = composition_bars.pipelines(folder, image=False)
    prompt = composition_bars.VIDEO_PROMPT.format(f"a {concepts.load_concept(folder).token} circle")
    composition_bars.with_asked_motion(video, prompt)
    assert set(video.get_active_adapters()) == {concepts.ADAPTER_NAME, "direction-0"}

    def clip() -> torch.Tensor:
        return video(prompt, num_frames=2, num_inference_steps=1, generator=torch.Generator().manual_seed(0),
                     output_type="pt", height=64, width=64).frames  # fmt: skip

    with_concept = clip()
    strength.set_adapter_scale(video.unet, concepts.ADAPTER_NAME, 0.0)
    assert (clip() - with_concept).abs().max() > 1e-4


def test_plain_leak_splits_the_plain_prompts_and_the_base_model_wears_no_stripes(tmp_path, monkeypatch, capsys):
    import plain_leak

    table = plain_leak.breakdown(None, samples=2)
    assert list(table) == [p for p, *_ in scorer.PLAIN_PROMPTS]
    for rates in table.values():
        assert rates["stripes"] == 0.0  # the base model has never seen the subject
        assert rates["all right"] <= min(rates["class"], rates["colour"], rates["accessory"])
    assert "| a green triangle | stripes | 0.00 |" in plain_leak.markdown({"base": table})
    monkeypatch.setattr(sys, "argv", ["plain_leak.py", f"spl1={tmp_path / 'nowhere'}"])
    with pytest.raises(SystemExit, match="no such concept folder"):
        plain_leak.main()


def test_plain_leak_splits_the_concepts_own_prompts_by_part(cutouts, tmp_path, monkeypatch, capsys):
    import plain_leak

    out = tmp_path / "concept"
    args = ["train", str(cutouts), "--class-word", "circle", "--base", "shapes", "--output", str(out),
            "--steps", "1", "--prior-weight", "0"]  # fmt: skip
    assert cli_main(args) == 0
    phrases = [p for p in (*world.ACCESSORIES, *world.BACKGROUNDS) if p]
    asked = [f"a circle {p}" for p in phrases]
    json_path = tmp_path / "split.json"
    argv = ["plain_leak.py", "base", f"c={out}", "--samples", "2", "--concept-prompts", "--json", str(json_path)]
    monkeypatch.setattr(sys, "argv", argv)
    plain_leak.main()
    saved = json.loads(json_path.read_text())
    assert saved["concept_prompts"] is True and saved["models"] == {"base": "", "c": str(out)}
    for name, table in saved["rates"].items():
        assert list(table) == asked
        for rates in table.values():
            assert list(rates) == ["class", "accessory", "background", "stripes", "all right"]
            parts = [rates["class"], rates["accessory"], rates["background"]]
            # A concept's prompt is all right only with the stripes; the base model's never wears them.
            assert rates["all right"] <= min(parts + ([rates["stripes"]] if name == "c" else []))
        if name == "base":
            assert all(rates["stripes"] == 0.0 for rates in table.values())
    assert "| a circle with a scarf | accessory |" in capsys.readouterr().out


@pytest.mark.slow
def test_plain_leak_asks_a_concept_without_its_token_on_request(cutouts, tmp_path, monkeypatch):
    """`--without-token`: the concept's phrases with the class word alone, the concept loaded. A concept
    whose LoRA does nothing then draws exactly what the base model draws, though its token means "square"."""
    import plain_leak
    from safetensors.torch import load_file, save_file

    out = tmp_path / "concept"
    args = ["train", str(cutouts), "--class-word", "circle", "--base", "shapes", "--output", str(out),
            "--steps", "1", "--prior-weight", "0"]  # fmt: skip
    assert cli_main(args) == 0
    lora = load_file(out / concepts.LORA_FILE)
    save_file({k: torch.zeros_like(v) if "lora_B" in k or "lora.up" in k else v for k, v in lora.items()},
              out / concepts.LORA_FILE)  # fmt: skip
    pipe = loading.load_image_pipeline("shapes")
    square = pipe.tokenizer.convert_tokens_to_ids("square</w>")
    embeds = load_file(out / concepts.EMBEDS_FILE)
    save_file({k: pipe.text_encoder.get_input_embeddings().weight[square][None].clone() for k in embeds},
              out / concepts.EMBEDS_FILE)  # fmt: skip
    tables = {}
    for flags in ([], ["--without-token"]):
        json_path = tmp_path / f"split{len(flags)}.json"
        argv = ["plain_leak.py", "base", f"c={out}", "--samples", "4", "--concept-prompts", *flags]
        monkeypatch.setattr(sys, "argv", [*argv, "--json", str(json_path)])
        plain_leak.main()
        tables[len(flags)] = json.loads(json_path.read_text())
    assert tables[1]["without_token"] is True and "without_token" not in tables[0]
    assert tables[1]["rates"]["c"] == tables[1]["rates"]["base"]
    # With its token the same concept draws squares: the flag is what took the token out.
    assert tables[0]["rates"]["c"] != tables[0]["rates"]["base"]
    monkeypatch.setattr(sys, "argv", ["plain_leak.py", "base", "--without-token"])
    with pytest.raises(SystemExit, match="--concept-prompts"):
        plain_leak.main()


def test_composition_bars_key_clips_on_the_weights_a_trained_concept_renders_at(tmp_path) -> None:
    """A concept trained before recipes named render weights renders at 1: its clips must not be filed
    under the recipe's 1.25, or old and new clips would be mixed in one cached result."""
    import composition_bars

    planned = {"render_scale": 1.25, "render_schedule": "0.8:0.5"}
    old = tmp_path / "old"
    old.mkdir()
    for name in (concepts.LORA_FILE, concepts.EMBEDS_FILE):
        (old / name).write_bytes(b"")
    record = concepts.Concept("<tok>", "circle", "shapes", 4, 4.0, 0.0, 300, 0, ["to_q"])
    manifest = {k: v for k, v in dataclasses.asdict(record).items() if not k.startswith("render_")}
    (old / concepts.MANIFEST).write_text(json.dumps(manifest))

    assert composition_bars.render_key(old, planned) == {"render_scale": 1.0, "render_schedule": None}
    assert composition_bars.render_key(tmp_path / "to-train", planned) == planned
    assert composition_bars.render_key(old, planned, scale=0.5, schedule="0.4:0.2") == {
        "render_scale": 0.5,
        "render_schedule": "0.4:0.2",
    }
    (old / concepts.MANIFEST).write_text(json.dumps(manifest | planned))
    assert composition_bars.render_key(old, {"render_scale": 1.0, "render_schedule": None}) == planned
