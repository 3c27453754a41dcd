"""The clip bank: base-model clips kept by what made them (cdvideo/clip_bank.py), and the Shapes clips
the package ships for the demo's class."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import cdvideo
from cdvideo import clip_bank, clip_composites, loading, presets
from cdvideo.demo import write_subject_photos


@pytest.fixture(scope="module")
def video():
    image = loading.load_image_pipeline("shapes")
    pipe = loading.video_pipeline(image, loading.load_motion_adapter("shapes"))
    pipe.scheduler = presets.make_scheduler("shapes", None, image.scheduler.config)
    return pipe


def test_a_second_subject_of_the_class_takes_its_base_clips_from_the_bank(tmp_path, monkeypatch):
    monkeypatch.setattr(clip_bank, "SHIPPED", tmp_path / "shipped")  # empty: the clips below are rendered here
    monkeypatch.setenv("CDVIDEO_CACHE", str(tmp_path / "cache"))
    said: dict[int, list[str]] = {0: [], 1: []}
    for seed in (0, 1):
        photos = write_subject_photos(tmp_path / f"photos-{seed}", count=2, seed=seed)
        cdvideo.train(
            cdvideo.TrainConfig(images=[str(p) for p in photos], class_word="circle", base="shapes", seed=seed,
                                output=str(tmp_path / f"concept-{seed}"), steps=1, prior_weight=0.0,
                                clip_composites=1.0, num_clip_composites=2),
            say=said[seed].append,
        )  # fmt: skip
    assert any(line.startswith("rendering 2 base clips") for line in said[0])
    assert "took 2 of 2 base clips from the clip bank" in said[1]
    assert not any(line.startswith("rendering") and "base clips" in line for line in said[1])
    for i in range(2):
        name = f"clip-composites/clips/clip-{i:04d}.png"
        assert (tmp_path / "concept-0" / name).read_bytes() == (tmp_path / "concept-1" / name).read_bytes()
    assert len(list((tmp_path / "cache" / "clips").glob("*.png"))) == 2


def test_what_made_a_clip_is_its_key(tmp_path):
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "w.safetensors").write_bytes(b"one")
    bank = clip_bank.ClipBank("models", (tmp_path,))
    settings = {"frames": 16, "steps": 8}
    key = bank.key("a photo of a circle moving right", 3, (str(tmp_path / "lora"), 1.0), settings)
    assert key == bank.key("a photo of a circle moving right", 3, (str(tmp_path / "lora"), 1.0), dict(settings))
    assert key != bank.key("a photo of a circle moving left", 3, (str(tmp_path / "lora"), 1.0), settings)
    assert key != bank.key("a photo of a circle moving right", 4, (str(tmp_path / "lora"), 1.0), settings)
    assert key != bank.key("a photo of a circle moving right", 3, (str(tmp_path / "lora"), 0.5), settings)
    assert key != bank.key(
        "a photo of a circle moving right", 3, (str(tmp_path / "lora"), 1.0), {**settings, "steps": 25}
    )
    assert key != clip_bank.ClipBank("other models", (tmp_path,)).key(
        "a photo of a circle moving right", 3, (str(tmp_path / "lora"), 1.0), settings
    )
    clip_bank.source_digest.cache_clear()
    (tmp_path / "lora" / "w.safetensors").write_bytes(b"two")  # retrained LoRA, same folder
    assert key != bank.key("a photo of a circle moving right", 3, (str(tmp_path / "lora"), 1.0), settings)


def test_the_demo_class_starts_with_every_base_clip_from_the_shipped_bank(video, tmp_path):
    """Fails when the family's weights or motion LoRAs changed and the bank was not rebuilt
    (`python scripts/build_clip_bank.py`): the demo would render its base clips again."""
    said: list[str] = []
    count = presets.RECIPES["composites"].settings["num_clip_composites"]
    clip_composites.draw_base_clips(video, "shapes", "circle", count, 64, tmp_path / "clips", said.append,
                                    tmp_path / "cache")  # fmt: skip
    assert said == [f"took {count} of {count} base clips from the clip bank"]
    clips, captions = clip_composites.read_clips(tmp_path / "clips")
    assert len(clips) == count and all(len(clip) == presets.SHAPES.frames for clip in clips)
    assert (
        sum(c.startswith("a photo of a circle ") and c.endswith(presets.SHAPES.motion_phrases) for c in captions)
        == count
    )
    assert any(c.split(" ")[5] == "moving" for c in captions)  # one bare prompt: "a photo of a circle moving ..."


def test_a_shipped_clip_is_what_the_base_model_draws(video, tmp_path):
    count = presets.RECIPES["composites"].settings["num_clip_composites"]
    clip_composites.draw_base_clips(video, "shapes", "circle", count, 64, tmp_path / "shipped", lambda _: None,
                                    tmp_path / "cache")  # fmt: skip
    prompt = (tmp_path / "shipped" / "clip-0000.txt").read_text().strip()
    clip_composites.render_base_clips(
        video, [prompt], tmp_path / "drawn", presets.SHAPES.frames, 64, presets.SHAPES.steps, presets.SHAPES.guidance,
        clip_composites.BASE_CLIP_SEED, lambda _: None, clip_composites.directions.family_loras("shapes"),
    )  # fmt: skip
    shipped = np.asarray(Image.open(tmp_path / "shipped" / "clip-0000.png"), dtype=np.float32)
    drawn = np.asarray(Image.open(tmp_path / "drawn" / "clip-0000.png"), dtype=np.float32)
    assert np.abs(shipped - drawn).mean() < 1.0  # in 0-255 levels: the same clip up to float rounding
