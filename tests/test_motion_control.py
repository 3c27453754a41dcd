"""Motion as asked: `--motion NAME` or the prompt's words, mapped to each family's motion LoRAs
(guoyww's on SD1.5, the shipped ones on Shapes), applied per prompt and recorded; and the script
that trains a Shapes motion LoRA. Nothing here downloads: SD1.5's LoRAs come from a local folder."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import cdvideo
from cdvideo import directions
from cdvideo.cli import main as cli_main
from cdvideo.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def render(tmp_path: Path, name: str, base: Path, adapter: Path, prompts: list[str], **settings) -> list:
    values = {"prompts": prompts, "use_concept": False, "base": str(base), "motion_adapter": str(adapter),
              "frames": 2, "steps": 2, "width": 64, "height": 64, "output": str(tmp_path / name)}  # fmt: skip
    lines = settings.pop("lines", None)
    values.update(settings)
    return cdvideo.animate(cdvideo.AnimateConfig(**values), say=(lines.append if lines is not None else print),
                           progress=False)  # fmt: skip


def settings_of(video) -> dict:
    return json.loads(video.files["json"].read_text())


# -- asking: flag names and prompt grammar -----------------------------------------------------


@pytest.mark.parametrize(
    "flag, name",
    [("right", "right"), ("Left", "left"), ("pan-left", "right"), ("pan right", "left"), ("tilt_up", "down"),
     ("tilt-down", "up"), ("zoom-in", "zoom-in"), ("counterclockwise", "roll-anticlockwise"), ("none", "none")],
)  # fmt: skip
def test_flag_names_and_camera_words_resolve_to_where_the_content_goes(flag, name):
    assert directions.motion_name(flag) == name


def test_unknown_flag_names_the_choices():
    with pytest.raises(UserError, match="--motion 'sideways' is unknown; choose one of left, right, up, down"):
        directions.motion_name("sideways")


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a dog moving right", ("right", "moving right")),
        ("a dog running to the left on the beach", ("left", "running to the left")),
        ("a circle wearing headphones moving up", ("up", "moving up")),
        ("camera pans left over a city", ("right", "camera pans left")),
        ("Panning Right, a red car", ("left", "Panning Right")),
        ("a forest, tilting up", ("down", "tilting up")),
        ("a cat, zooming out", ("zoom-out", "zooming out")),
        ("a dog rolling anti-clockwise", ("roll-anticlockwise", "rolling anti-clockwise")),
        ("a dog wearing headphones running", None),
        ("an upright piano on the left", None),
    ],
)
def test_prompt_grammar(prompt, expected):
    assert directions.motion_in_prompt(prompt) == expected


def test_a_prompt_asking_two_motions_is_one_clear_line():
    with pytest.raises(UserError, match="asks for 2 motions \\('moving left' and 'zooming in'\\); keep one"):
        directions.motion_in_prompt("a dog moving left, zooming in")


def test_the_flag_wins_over_the_prompt_and_says_so():
    choices, lines = directions.plan_motions(
        ["a dog moving left", "a dog", "a dog moving right"], "right", None, "sd15"
    )
    assert [c.name for c in choices] == ["right"] * 3
    assert [c.asked_by for c in choices] == ["flag"] * 3
    assert choices[0].words == "moving left" and choices[1].words is None
    assert lines == ["--motion right overrides 'moving left' (left) in the prompt 'a dog moving left'"]
    choices, lines = directions.plan_motions(["a dog moving left", "a dog"], None, 0.6, "sd15")
    assert (choices[0].name, choices[0].asked_by, choices[0].weight) == ("left", "prompt", 0.6)
    assert choices[1] is None and lines == []
    choices, _ = directions.plan_motions(["a dog moving left"], "none", None, "sd15")
    assert choices == [None]


# -- SD1.5: guoyww's MotionLoRAs ---------------------------------------------------------------


def test_sd15_maps_directions_to_guoyww_camera_loras():
    loras = directions.family_loras("sd15")
    assert {name: source for name, (source, _) in loras.items()} == {
        "left": "guoyww/animatediff-motion-lora-pan-right",
        "right": "guoyww/animatediff-motion-lora-pan-left",
        "up": "guoyww/animatediff-motion-lora-tilt-down",
        "down": "guoyww/animatediff-motion-lora-tilt-up",
        "zoom-in": "guoyww/animatediff-motion-lora-zoom-in",
        "zoom-out": "guoyww/animatediff-motion-lora-zoom-out",
        "roll-clockwise": "guoyww/animatediff-motion-lora-rolling-clockwise",
        "roll-anticlockwise": "guoyww/animatediff-motion-lora-rolling-anticlockwise",
    }
    assert {weight for _, weight in loras.values()} == {1.0}


@pytest.fixture(scope="module")
def guoyww_copy(motion_lora, tmp_path_factory) -> Path:
    """A local folder as `hf download guoyww/animatediff-motion-lora-pan-left --local-dir ...` lays it out,
    holding the tiny motion LoRA (one .safetensors file, named as guoyww's)."""
    folder = tmp_path_factory.mktemp("guoyww") / "animatediff-motion-lora-pan-left"
    folder.mkdir()
    shutil.copy(motion_lora, folder / "diffusion_pytorch_model.safetensors")
    return folder.parent


@pytest.mark.slow
def test_prompt_words_load_the_motion_lora_on_top_of_the_concept_per_prompt_and_record_it(
    concept, guoyww_copy, tiny_base, live_adapter, tmp_path
):
    models = (tiny_base, live_adapter)
    with_concept = {"concept": str(concept), "use_concept": True, "motion_lora_dir": str(guoyww_copy)}
    lines = []
    moving, still = render(tmp_path, "both", *models, ["a dog moving right", "a dog"], **with_concept, lines=lines)
    (plain_moving,) = render(tmp_path, "none", *models, ["a dog moving right"], **with_concept, motion="none")
    (plain_still,) = render(tmp_path, "still", *models, ["a dog"], **with_concept)
    lora = str(guoyww_copy / "animatediff-motion-lora-pan-left")
    # The LoRA moves the first prompt's frames; the second prompt, in the same run, renders without it.
    assert np.abs(moving.frames - plain_moving.frames).mean() > 1e-3
    np.testing.assert_allclose(still.frames, plain_still.frames, atol=1e-4)
    assert settings_of(moving)["motion"] == {
        "name": "right", "asked_by": "prompt", "words": "moving right", "lora": lora, "weight": 1.0,
        "camera": "pan-left",
    }  # fmt: skip
    assert settings_of(still)["motion"] is None and settings_of(plain_moving)["motion"] is None
    assert (
        f"prompt: a <new1> dog moving right | motion right (camera pan-left; from the prompt): {lora} at weight 1.0"
        in lines
    )  # noqa: E501
    # The flag names it too, at a chosen weight; weight 0 is the concept alone.
    (flagged,) = render(tmp_path, "w0", *models, ["a dog"], **with_concept, motion="right", motion_weight=0.0)
    np.testing.assert_allclose(flagged.frames, plain_still.frames, atol=1e-4)
    assert settings_of(flagged)["motion"]["asked_by"] == "flag" and settings_of(flagged)["motion"]["weight"] == 0.0


def test_a_motion_the_local_copy_lacks_is_one_line_naming_what_exists(
    guoyww_copy, tiny_base, live_adapter, tmp_path, capsys
):
    args = ["animate", "a dog", "--no-concept", "--base", str(tiny_base), "--motion-adapter", str(live_adapter),
            "--motion", "left", "--motion-lora-dir", str(guoyww_copy), "--output", str(tmp_path)]  # fmt: skip
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "cdvideo: error: the sd15 family has no motion LoRA for 'left' (it has: right); check --motion-lora-dir, "
        "or give a file with --motion-lora PATH[:WEIGHT]"
    )


# -- Shapes: shipped motion LoRAs ----------------------------------------------------------------


def test_shapes_flag_without_shipped_weights_is_one_clear_line(tmp_path, capsys):
    # The world has no zoom, so no Shapes zoom LoRA ships.
    shipped = sorted(directions.shipped_shapes_loras())
    args = ["animate", "a circle", "--base", "shapes", "--no-concept", "--motion", "zoom-in", "--output", str(tmp_path)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"cdvideo: error: the shapes family has no motion LoRA for 'zoom-in' (it has: {', '.join(shipped) or 'none'}); "
        "scripts/train_motion_lora.py trains one, or give a file with --motion-lora PATH[:WEIGHT]"
    ]


def test_shapes_prompt_words_without_weights_render_with_a_note_and_record_it(tmp_path):
    lines = []
    (video,) = cdvideo.animate(
        cdvideo.AnimateConfig(prompts=["a circle zooming in"], base="shapes", use_concept=False, frames=2,
                              steps=2, output=str(tmp_path)),
        say=lines.append, progress=False,
    )  # fmt: skip
    assert any(
        line.startswith("note: 'zooming in' asks for zoom-in; the shapes family has no motion LoRA") for line in lines
    )
    assert settings_of(video)["motion"] == {
        "name": "zoom-in", "asked_by": "prompt", "words": "zooming in", "lora": None, "weight": None,
        "camera": "zoom-in",
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(directions.shipped_shapes_loras()))
def test_a_shipped_shapes_motion_lora_loads_in_stock_diffusers_and_is_applied_by_its_words(name, tmp_path):
    """Each shipped LoRA is a stock diffusers LoRA on the motion modules; "moving NAME" in a prompt
    applies it at its recorded weight, quietly, and the settings JSON says so."""
    from diffusers import AnimateDiffPipeline, MotionAdapter

    from cdvideo.shapes import models

    folder = directions.shipped_shapes_loras()[name]
    adapter = MotionAdapter.from_pretrained(models.MOTION_DIR)
    pipe = AnimateDiffPipeline.from_pretrained(models.BASE_DIR, motion_adapter=adapter)
    pipe.load_lora_weights(str(folder), weight_name=directions.SHAPES_LORA_FILE, adapter_name=f"motion-{name}")
    adapted = {n for n, _ in pipe.unet.named_parameters() if f"lora_A.motion-{name}" in n}
    assert adapted and all("motion_modules" in n for n in adapted)

    weight = json.loads((folder / directions.SHAPES_RECORD).read_text())["weight"]
    # diffusers' loggers do not propagate: listen on its root logger itself.
    heard = []
    listener = logging.Handler()
    listener.emit = lambda record: heard.append(record.getMessage())
    logging.getLogger("diffusers").addHandler(listener)
    (video,) = cdvideo.animate(
        cdvideo.AnimateConfig(prompts=[f"a circle moving {name}"], base="shapes", use_concept=False, frames=2,
                              steps=2, output=str(tmp_path)),
        say=lambda s: None, progress=False,
    )  # fmt: skip
    logging.getLogger("diffusers").removeHandler(listener)
    # A motion LoRA has no text-encoder keys by design: nothing to warn the user about.
    assert not [m for m in heard if "No LoRA keys" in m]
    assert settings_of(video)["motion"] == {
        "name": name, "asked_by": "prompt", "words": f"moving {name}", "lora": str(folder), "weight": weight,
        "camera": directions.CAMERA[name],
    }  # fmt: skip


def test_with_a_shapes_concept_the_direction_lora_runs_stronger_and_says_so(tmp_path):
    """A concept damps its direction LoRA (docs/motion/concept-weight.md): with one loaded, the prompt's
    motion LoRA gets 1.5x its recorded weight (up: 2x), printed and recorded; --motion-weight still sets it."""
    from cdvideo.demo import write_subject_photos

    photos = write_subject_photos(tmp_path / "photos", count=2)
    concept = cdvideo.train(
        cdvideo.TrainConfig(images=[str(p) for p in photos], class_word="circle", base="shapes", steps=1,
                            prior_weight=0.0, output=str(tmp_path / "concept")),
        say=lambda s: None, progress=False,
    )  # fmt: skip
    loras = directions.shipped_shapes_loras()
    recorded, recorded_up = (
        json.loads((loras[d] / directions.SHAPES_RECORD).read_text())["weight"] for d in ("right", "up")
    )

    def render(name: str, lines: list | None = None, prompt: str = "a circle moving right", **config) -> dict:
        (video,) = cdvideo.animate(
            cdvideo.AnimateConfig(prompts=[prompt], base="shapes", frames=2, steps=2,
                                  output=str(tmp_path / name), **config),
            say=(lines if lines is not None else []).append, progress=False,
        )  # fmt: skip
        return settings_of(video)["motion"]

    lines: list[str] = []
    assert render("concept", lines, concept=str(concept))["weight"] == 1.5 * recorded
    assert [line for line in lines if line.startswith("prompt: ")] == [
        f"prompt: a <new1> circle moving right | motion right (camera pan-left; from the prompt): "
        f"{directions.shipped_shapes_loras()['right']} at weight {1.5 * recorded}"
    ]
    assert render("up", prompt="a circle moving up", concept=str(concept))["weight"] == 2.0 * recorded_up
    assert render("flag", concept=str(concept), motion_weight=0.8)["weight"] == 0.8
    assert render("plain", use_concept=False)["weight"] == recorded
    (sd15,), _ = directions.plan_motions(["a dog moving left"], None, None, "sd15", with_concept=True)
    assert sd15.weight == directions.SD15_DEFAULT_WEIGHT  # unmeasured there: the LoRA's own weight


def test_loading_every_shipped_motion_lora_on_one_pipeline_is_quiet():
    """Several motion LoRAs on one UNet (clip composites load one per motion) are the point, and none
    has text-encoder keys: neither diffusers nor peft may warn the user about it."""
    import warnings

    from diffusers import AnimateDiffPipeline, MotionAdapter

    from cdvideo import motion
    from cdvideo.shapes import models

    pipe = AnimateDiffPipeline.from_pretrained(
        models.BASE_DIR, motion_adapter=MotionAdapter.from_pretrained(models.MOTION_DIR)
    )
    sources = [str(folder) for folder in directions.shipped_shapes_loras().values()]
    heard = []
    listener = logging.Handler()
    listener.emit = lambda record: heard.append(record.getMessage())
    logging.getLogger("diffusers").addHandler(listener)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = motion.load_motion_loras(pipe, [], sources)
    finally:
        logging.getLogger("diffusers").removeHandler(listener)
    assert len(loaded.named) == len(sources) >= 2
    assert not heard and not [str(w.message) for w in caught if "peft_config" in str(w.message)]


def test_shapes_registry_finds_a_trained_lora_only_with_its_record(tmp_path):
    (tmp_path / "right").mkdir()
    (tmp_path / "right" / directions.SHAPES_LORA_FILE).write_bytes(b"")
    assert directions.family_loras("shapes", str(tmp_path)) == {}  # weights without a training record
    (tmp_path / "right" / directions.SHAPES_RECORD).write_text(json.dumps({"weight": 0.75}))
    assert directions.family_loras("shapes", str(tmp_path)) == {"right": (str(tmp_path / "right"), 0.75)}


# -- the training script -----------------------------------------------------------------------


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_shapes_checkpoint_saves_three_times_in_a_row(tmp_path):
    kit = _script("train_shapes")
    layer = torch.nn.Linear(2, 2)
    for step in (1, 2, 3):  # the third used to fail with ENOTEMPTY on the leftover .old folder
        with torch.no_grad():
            layer.weight.fill_(step)
        kit.save_checkpoint(tmp_path / "ckpt", {"layer": layer}, {"step": step})
    fresh = torch.nn.Linear(2, 2)
    assert kit.load_checkpoint(tmp_path / "ckpt", {"layer": fresh})["step"] == 3
    assert torch.equal(fresh.weight, torch.full((2, 2), 3.0))


def test_motion_lora_script_trains_resumes_and_loads_in_stock_diffusers(tmp_path, capsys):
    import safetensors
    from diffusers import AnimateDiffPipeline, MotionAdapter

    from cdvideo.shapes import models

    trainer = _script("train_motion_lora")
    run = ["--motion", "right", "--clips", "1", "--frames", "8", "--run-dir", str(tmp_path / "run")]
    trainer.main([*run, "--steps", "1"])
    assert "time per step: " in capsys.readouterr().out
    out = trainer.main([*run, "--steps", "2", "--resume"])  # continues at step 1
    record = json.loads((out / "TRAINING.json").read_text())
    assert (record["motion"], record["steps"], record["frames"], record["camera"]) == ("right", 2, 8, "pan-left")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["resumed_at"] for r in log if "resumed_at" in r] == [0, 1]
    with safetensors.safe_open(out / "pytorch_lora_weights.safetensors", "pt") as f:
        keys = list(f.keys())
        assert {f.get_tensor(k).dtype for k in keys} == {torch.float16}
    assert keys and all("motion_modules" in k and "lora" in k for k in keys)

    pipe = AnimateDiffPipeline.from_pretrained(
        models.BASE_DIR, motion_adapter=MotionAdapter.from_pretrained(models.MOTION_DIR), dtype=torch.float32
    )
    pipe.load_lora_weights(out, adapter_name="right")
    assert "right" in pipe.get_list_adapters()["unet"]

    def frames(weight: float) -> np.ndarray:
        pipe.set_adapters(["right"], adapter_weights=[weight])
        return pipe("a circle", num_frames=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                    output_type="np").frames[0]  # fmt: skip

    assert not np.array_equal(frames(1.0), frames(0.0))


def test_motion_lora_script_continues_a_finished_lora(tmp_path):
    """--init-from starts from a shipped LoRA's weights, and its record counts all the steps."""
    from cdvideo import directions

    trainer = _script("train_motion_lora")
    shipped = Path(directions.family_loras("shapes")["right"][0])
    out = trainer.main(["--motion", "right", "--clips", "1", "--frames", "8", "--steps", "1", "--lr", "1e-9",
                        "--run-dir", str(tmp_path / "run"), "--init-from", str(shipped)])  # fmt: skip
    record = json.loads((out / "TRAINING.json").read_text())
    before = json.loads((shipped / "TRAINING.json").read_text())["steps"]
    assert (record["steps"], record["continued_from_step"]) == (before + 1, before)
    old, new = trainer.shipped_lora(shipped), trainer.shipped_lora(out)
    assert old.keys() == new.keys()
    assert max(float((old[k] - new[k]).abs().max()) for k in old) < 1e-2  # one tiny step from the shipped weights
    assert max(float(new[k].abs().max()) for k in new if "lora_B" in k) > 1e-2  # not a fresh (zero) LoRA


def test_motion_bars_keep_a_cell_only_while_its_lora_is_the_shipped_one() -> None:
    import motion_bars

    shipped = motion_bars.composition_bars.lora_digest(directions.family_loras("shapes")["up"][0])
    old = {"plain": {"up": {"lora": {"asked": 0.9, "lora_sha": shipped}},
                     "left": {"lora": {"asked": 0.6, "lora_sha": "an older left"}}}}  # fmt: skip
    new = {"plain": {"right": {"lora": {"asked": 0.8, "lora_sha": "x"}}}}
    merged = motion_bars.merged(old, new)["plain"]
    assert sorted(merged) == ["right", "up"]
    assert merged["up"]["lora"]["asked"] == 0.9


def test_motion_bars_keep_a_concept_cell_only_for_the_concept_it_measured(tmp_path) -> None:
    """A with-concept cell stays only when the run measures that same concept (its weights' digest)."""
    import motion_bars

    concept = tmp_path / "concept"
    concept.mkdir()
    (concept / "learned_embeds.safetensors").write_bytes(b"token row")
    (concept / "pytorch_lora_weights.safetensors").write_bytes(b"lora")
    digest = motion_bars.concept_digest(concept)
    shipped = motion_bars.composition_bars.lora_digest(directions.family_loras("shapes")["up"][0])
    old = {"concept": {"up": {"lora": {"asked": 0.5, "lora_sha": shipped, "concept_sha": digest}}}}
    new = {"plain": {"right": {"lora": {"asked": 0.8}}}}
    assert motion_bars.merged(old, new, digest)["concept"]["up"]["lora"]["asked"] == 0.5
    assert "concept" not in motion_bars.merged(old, new, None)  # a plain run drops the old concept's row
    (concept / "pytorch_lora_weights.safetensors").write_bytes(b"another lora")
    assert motion_bars.concept_digest(concept) != digest
    assert "concept" not in motion_bars.merged(old, new, motion_bars.concept_digest(concept))


def test_motion_bars_report_what_the_clips_that_missed_read_as() -> None:
    import motion_bars

    from cdvideo.shapes.scorer import ClipScore

    def clip(motion: str, class_kept: float) -> ClipScore:
        return ClipScore([], "circle", "red", "", "", False, motion, class_kept)

    scores = [clip("moving left", 1.0), clip("moving left", 1.0), clip("", 1.0), clip("moving up", 0.5)]
    cell = motion_bars.rates(scores, "left")
    assert (cell["asked"], cell["moving"], cell["class_kept"]) == (0.5, 0.75, 0.875)
    assert cell["misses"] == {"still": 1, "moving up": 1}
    row = motion_bars.report({"plain": {"left": {"lora": cell}}}, ["cmd"]).splitlines()[-1]
    assert row == "| plain | left | lora | 4 | 0.50 | 0.88 | 0.75 | moving up 1, still 1 |"
