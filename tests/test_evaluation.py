"""`cdvideo eval` and training-time tracking, on tiny backbones built from configs and the Shapes world.

The backbones are saved to a folder and passed as local paths: the same loaders a hub id goes through.
Videos for the fast tests are drawn by the Shapes world itself, so the world's scorer knows the answer.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import cdvideo
from cdvideo import concept as concepts
from cdvideo import evaluation, videofiles
from cdvideo.cli import main as cli_main
from cdvideo.shapes import world

PROMPTS = "accessory:\n  - a {} wearing headphones moving left\naction:\n  - a {} moving right\n"


def build_tiny_backbones(folder: Path) -> dict[str, str]:
    """CLIP, DINO (ViT) and BLIP retrieval models with their processors, tiny and offline."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
        BlipProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    from cdvideo.shapes.models import build_tokenizer

    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    paths = {k: folder / k for k in ("clip", "dino", "blip")}
    tokenizer = build_tokenizer()
    text = {**small, "vocab_size": len(tokenizer), "max_position_embeddings": 77}
    CLIPModel(
        CLIPConfig(text_config=text, vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=16)
    ).save_pretrained(paths["clip"])
    crop = {"height": 32, "width": 32}
    CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=crop), tokenizer=tokenizer
    ).save_pretrained(paths["clip"])
    ViTModel(ViTConfig(**small, image_size=32, patch_size=16), add_pooling_layer=False).save_pretrained(paths["dino"])
    ViTImageProcessor(size=crop).save_pretrained(paths["dino"])
    vocab = folder / "vocab.txt"
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *("##" + c for c in letters)]))
    BlipForImageTextRetrieval(
        BlipConfig(
            text_config={**small, "vocab_size": 57, "encoder_hidden_size": 32},
            vision_config={**small, "image_size": 32, "patch_size": 8},
            projection_dim=16,
        )
    ).save_pretrained(paths["blip"])
    BlipProcessor(
        image_processor=BlipImageProcessor(size=crop), tokenizer=BertTokenizer(vocab_file=str(vocab))
    ).save_pretrained(paths["blip"])
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="session")
def backbones(tmp_path_factory) -> dict[str, str]:
    return build_tiny_backbones(tmp_path_factory.mktemp("backbones"))


def backbone_args(paths: dict[str, str]) -> list[str]:
    return ["--clip", paths["clip"], "--dino", paths["dino"], "--blip", paths["blip"]]


def world_clip(accessory: str, motion: str, pattern: bool, frames: int = 6) -> np.ndarray:
    """A clip drawn by the world: (F, H, W, 3) uint8."""
    scene = replace(
        world.subject_scenes(1, torch.Generator().manual_seed(3)),
        accessory=torch.tensor([list(world.ACCESSORIES).index(accessory)]),
        pattern=torch.tensor([pattern]),
    )
    clip = world.render_clip(scene, torch.tensor([world.MOTIONS.index(motion)]), frames)[0]
    return (clip.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def write_video_with_settings(frames, folder: Path, prompt: str, concept: Path | None) -> Path:
    """What `cdvideo animate` leaves: <stem>.mp4/.gif and the settings JSON beside them."""
    stem = videofiles.video_stem(prompt, 0)
    files = videofiles.write_video(frames, folder, stem)
    settings = {"prompt": prompt, "rendered_prompt": prompt, "seed": 0, "base": "shapes"}
    settings["concept"] = str(concept) if concept else None
    (folder / f"{stem}.json").write_text(json.dumps(settings))
    return files["mp4"]


@pytest.fixture(scope="module")
def drawn_concept(tmp_path_factory) -> Path:
    """A Shapes concept folder (manifest, token embedding, photos) whose videos the world draws for us.

    Its LoRA is empty: these tests read videos from disk, so the UNet never runs.
    """
    folder = tmp_path_factory.mktemp("drawn") / "concept"
    folder.mkdir()
    concept = concepts.Concept(
        token="<new1>", class_word="circle", base="shapes", rank=4, alpha=4.0, spl_weight=1.0, steps=4,
        seed=0, lora_targets=["to_q"], drift=None,
    )  # fmt: skip
    save_file(
        {"<new1>": torch.randn(1, 128, generator=torch.Generator().manual_seed(0))},
        folder / "learned_embeds.safetensors",
    )
    save_file({"unused": torch.zeros(1)}, folder / concepts.LORA_FILE)
    photos = world.render(world.subject_scenes(3, torch.Generator().manual_seed(0)))
    concepts.save_photos(folder, [Image.fromarray((p.permute(1, 2, 0).numpy() * 255).astype(np.uint8)) for p in photos])
    (folder / concepts.MANIFEST).write_text(json.dumps(asdict(concept)))
    return folder


@pytest.fixture(scope="module")
def drawn_videos(drawn_concept, tmp_path_factory) -> Path:
    """Concept and base videos for PROMPTS: the subject with headphones moving left (as asked), and the
    subject standing still where 'moving right' was asked; the base videos show a plain circle doing it."""
    folder = tmp_path_factory.mktemp("videos")
    write_video_with_settings(world_clip("wearing headphones", "moving left", True), folder,
                              "a <new1> circle wearing headphones moving left", drawn_concept)  # fmt: skip
    still = world_clip("", "", True)
    write_video_with_settings(still, folder, "a <new1> circle moving right", drawn_concept)
    write_video_with_settings(world_clip("wearing headphones", "moving left", False), folder,
                              "a circle wearing headphones moving left", None)  # fmt: skip
    write_video_with_settings(world_clip("", "moving right", False), folder, "a circle moving right", None)
    return folder


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli_main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_report_from_rendered_videos_scores_identity_text_motion_drift_and_the_world(
    drawn_concept, drawn_videos, backbones, tmp_path, capsys
):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(PROMPTS)
    out = tmp_path / "eval"
    code, stdout, err = run_cli(
        ["eval", str(drawn_concept), "--prompts", str(prompts), "--videos", str(drawn_videos), "--output", str(out)]
        + backbone_args(backbones),
        capsys,
    )
    assert code == 0, err
    assert "CLIP-I" in stdout
    assert not (out / "videos").exists() and not (out / "base-videos").exists()  # nothing rendered
    report = json.loads((out / "report.json").read_text())
    assert {b["id"] for b in report["backbones"].values()} == set(backbones.values())
    assert report["backbones"]["clip"]["image_size"] == "32x32"
    left, right = report["prompts"]
    assert left["text_prompt"] == "a circle wearing headphones moving left"  # text scores never see the token
    for row in (left, right):
        assert row["scores"]["clip_i_worst"] <= row["scores"]["clip_i"]
        assert row["scores"]["dynamic"] is None and row["scores"]["flow"] is None  # the world reads motion exactly
    # A clip standing still is (up to codec noise) one frame repeated: consistent with itself.
    assert right["scores"]["subject_consistency"] == pytest.approx(1.0, abs=2e-3)
    assert right["scores"]["frame_consistency"] == pytest.approx(1.0, abs=2e-3)
    assert left["videos"][0]["file"].startswith(str(drawn_videos))
    # The world's exact scorer: the subject with the asked accessory and motion, then a frozen one.
    assert left["shapes"] == {"subject_ok": 1.0, "class_kept": 1.0, "accessory_ok": 1.0, "background_ok": 1.0,
                              "motion_ok": 1.0, "composition": 1.0}  # fmt: skip
    assert right["shapes"]["subject_ok"] == 1.0 and right["shapes"]["motion_ok"] == 0.0
    # The base model's video is held to the class word alone (its composition is the ceiling).
    assert right["base_shapes"] == {"subject_ok": 1.0, "class_kept": 1.0, "accessory_ok": 1.0, "background_ok": 1.0,
                                    "motion_ok": 1.0, "composition": 1.0}  # fmt: skip
    assert right["videos"][0]["base_shapes"]["pattern_frames"] == 0.0  # a plain circle, not the subject
    assert right["flags"] == ["freezes"] and left["flags"] == []
    assert right["scores"]["motion"] < 0.1 * right["base"]["motion"]  # still, up to codec noise
    assert report["overall"]["videos_flagged"] == 1
    assert report["overall"]["shapes"]["composition"] == 0.5
    # Drift: the concept phrase against the class phrase in the Shapes text encoder.
    assert -1.0 <= report["overall"]["drift"] < 1.0
    md = (out / "report.md").read_text()
    assert "| a <new1> circle moving right |" in md and "freezes" in md and backbones["dino"] in md


def test_backbone_scores_are_one_for_the_same_image_and_lower_for_another(drawn_concept, backbones):
    """Identity and consistency read the right pairs: a clip of the photo itself scores 1.0 on every
    cosine, and a clip whose later frames show something else scores less on each."""
    from cdvideo import metrics
    from cdvideo.backbones import Backbones

    bb = Backbones(backbones["clip"], backbones["dino"], backbones["blip"], torch.device("cpu"))
    photo = np.asarray(concepts.load_photos(drawn_concept)[0].convert("RGB"))
    photos = {"clip": bb.clip_images([Image.fromarray(photo)]), "dino": bb.dino_images([Image.fromarray(photo)])}
    same = metrics.video_scores(bb, np.stack([photo] * 4), photos, "a circle")
    for key in ("clip_i", "clip_i_worst", "dino_i", "dino_i_worst", "frame_consistency", "subject_consistency"):
        assert same[key] == pytest.approx(1.0, abs=1e-5), key
    other = np.ascontiguousarray(255 - photo[::-1])  # colours inverted, upside down
    mixed = metrics.video_scores(bb, np.stack([photo, photo, other, other]), photos, "a circle")
    for key in ("clip_i", "dino_i", "frame_consistency", "subject_consistency"):
        assert mixed[key] < same[key] - 1e-3, key
    assert mixed["clip_i_worst"] < mixed["clip_i"] and mixed["dino_i_worst"] < mixed["dino_i"]
    # VBench's subject consistency: frames 2 and 3 are `other`, so frame 1 scores 1, frame 2 scores
    # (c + c) / 2 and frame 3 scores (c + 1) / 2, with c = max(0, cos(photo, other)).
    d = bb.dino_images([Image.fromarray(photo), Image.fromarray(other)])
    c = max(0.0, float(d[0] @ d[1]))
    assert mixed["subject_consistency"] == pytest.approx((1 + c + (c + 1) / 2) / 3, abs=1e-5)


def test_a_concept_without_photos_is_one_clear_error(drawn_concept, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(drawn_concept, bare)
    shutil.rmtree(bare / concepts.PHOTOS_DIR)
    code, _, err = run_cli(["eval", str(bare), "--output", str(tmp_path / "e")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "no subject photos" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "text, message",
    [
        ("accessory: [a {} wearing a hat\n", "does not parse"),
        ("accessory:\n  - a dog wearing a hat\n", "exactly one {}"),
    ],
)
def test_a_prompt_set_that_does_not_parse_is_one_clear_error(drawn_concept, tmp_path, capsys, text, message):
    prompts = tmp_path / "bad.yaml"
    prompts.write_text(text)
    code, _, err = run_cli(["eval", str(drawn_concept), "--prompts", str(prompts)], capsys)
    assert code == 2 and err.count("\n") == 1 and message in err


def test_a_video_that_does_not_decode_is_one_clear_error(drawn_concept, drawn_videos, backbones, tmp_path, capsys):
    videos = tmp_path / "videos"
    shutil.copytree(drawn_videos, videos)
    broken = videos / f"{videofiles.video_stem('a <new1> circle moving right', 0)}.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(PROMPTS)
    code, _, err = run_cli(
        [
            "eval",
            str(drawn_concept),
            "--prompts",
            str(prompts),
            "--videos",
            str(videos),
            "--output",
            str(tmp_path / "e"),
        ]
        + backbone_args(backbones),
        capsys,
    )
    assert code == 2 and err.count("\n") == 1
    assert "does not decode" in err and broken.name in err


def test_pareto_front_and_best_tradeoff():
    points = [(0.50, 0.30), (0.60, 0.28), (0.55, 0.25), (0.40, 0.31)]
    assert evaluation.pareto_front(points) == [0, 1, 3]  # (0.55, 0.25) is beaten by (0.60, 0.28)
    # Scaled to [0, 1] per axis: point 0 sums 0.5 + 0.83, point 1 sums 1.0 + 0.5, point 3 sums 0 + 1.
    assert evaluation.best_tradeoff(points) == 1
    assert evaluation.best_tradeoff([(0.5, 0.3), (0.5, 0.3)]) == 0  # ties: the earlier checkpoint


def test_default_prompt_sets_parse_and_speak_the_shapes_grammar():
    dreambench = evaluation.load_prompt_set(evaluation.default_prompt_set("x"))
    assert {i.category for i in dreambench} >= {"accessory", "context", "action", "style"}
    shapes = evaluation.load_prompt_set(evaluation.default_prompt_set("shapes"))
    for item in shapes:
        asked = evaluation._parse_shapes_prompt(item.fill("circle"))
        named = [asked["accessory"], asked["background"], asked["motion"] or ""]
        # Every phrase in a Shapes prompt is one the world's vocabulary (and so its scorer) knows.
        rest = item.fill("circle").removeprefix("a circle")
        for phrase in named:
            rest = rest.replace(phrase, "")
        assert rest.strip() == "", item.template


@pytest.mark.slow
def test_train_tracks_then_eval_scores_the_concept_and_its_checkpoints(backbones, tmp_path, capsys):
    from cdvideo.demo import write_subject_photos

    photos = tmp_path / "photos"
    write_subject_photos(photos, count=3)
    run = tmp_path / "run"
    cdvideo.train(
        cdvideo.TrainConfig(
            images=[str(photos)], class_word="circle", base="shapes", output=str(run), steps=4, batch_size=2,
            checkpoint_every=2, keep_checkpoints=0, validate_every=2, validation_steps=2,
        ),
        say=lambda _: None,
        progress=False,
    )  # fmt: skip
    # Training-time tracking: every step's losses and drift, validation stills, curves, photos kept.
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(abs(r["spl"] + r["cosine"] - 1) < 1e-5 and r["mse"] > 0 for r in rows)
    assert sorted(p.name for p in (run / "validation").iterdir()) == ["step-000002.png", "step-000004.png"]
    assert Image.open(run / "curves.png").format == "PNG"
    assert len(concepts.load_photos(run)) == 3

    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("composition:\n  - a {} wearing headphones moving left\n")
    render = ["--prompts", str(prompts), "--frames", "4", "--steps", "2", *backbone_args(backbones)]
    code, _, err = run_cli(["eval", str(run), "--output", str(tmp_path / "eval"), *render], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    # The training phrase's drift, measured again from the saved concept, is the one training reported.
    assert report["overall"]["drift"] == pytest.approx(concepts.load_concept(run).drift, abs=1e-4)
    video = report["prompts"][0]["videos"][0]
    assert video["frames"] == 4 and Path(video["file"]).exists() and Path(video["base_file"]).exists()

    # The first eval's videos (base model, final concept) are reused: only the checkpoint's video is rendered.
    reuse = ["--videos", str(tmp_path / "eval")]
    code, _, err = run_cli(
        ["eval", "--checkpoints", str(run), "--output", str(tmp_path / "ck"), *render, *reuse], capsys
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "ck" / "checkpoints.json").read_text())
    assert [e["name"] for e in summary["checkpoints"]] == ["step-000002", "final"]
    assert sum(e["best"] for e in summary["checkpoints"]) == 1
    assert all(e["pareto"] for e in summary["checkpoints"] if e["best"])
    assert concepts.load_concept(tmp_path / "ck" / "step-000002" / "concept").steps == 2
    assert "★" in (tmp_path / "ck" / "checkpoints.md").read_text()
    assert not (tmp_path / "ck" / "base-videos").exists() and not (tmp_path / "ck" / "final" / "videos").exists()


def test_backbones_left_out_give_null_scores_and_keep_the_world_scorer(drawn_concept, drawn_videos, tmp_path, capsys):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(PROMPTS)
    out = tmp_path / "eval"
    code, stdout, err = run_cli(
        ["eval", str(drawn_concept), "--prompts", str(prompts), "--videos", str(drawn_videos), "--output", str(out)]
        + ["--clip", "none", "--dino", "none", "--blip", "none"],
        capsys,
    )
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["backbones"]["clip"]["id"] == "none" and report["backbones"]["clip"]["image_size"] is None
    assert report["overall"]["scores"]["clip_i"] is None and report["overall"]["scores"]["dino_i_worst"] is None
    assert report["overall"]["shapes"]["composition"] == 0.5
    assert report["prompts"][1]["flags"] == ["freezes"]  # motion needs no backbone
    assert "CLIP-I –" in stdout


def test_metrics_keep_one_row_per_step_across_restart_and_resume(tmp_path):
    from cdvideo.tracking import MetricsLog, plot_curves, read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"step": 7, "mse": 1.0}\n')  # an earlier run's log in the folder

    def run(start: int, end: int) -> None:
        log = MetricsLog(tmp_path, start)
        for step in range(start + 1, end + 1):
            spl = torch.tensor(0.1 / step)
            log.add(step, torch.tensor(0.2), spl, torch.tensor(0.0), 1 - spl)
            if step % 2 == 0:
                log.flush()
        log.flush()

    run(0, 5)  # a fresh run starts a fresh log
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    run(2, 5)  # resumed from step 2: later rows are redone, not duplicated
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[2] == {
        "step": 3,
        "mse": 0.2,
        "spl": pytest.approx(0.033333),
        "prior": 0.0,
        "cosine": pytest.approx(0.966667),
    }
    assert Image.open(plot_curves(tmp_path)).format == "PNG"


@pytest.fixture(scope="module")
def trained_concept(tmp_path_factory) -> Path:
    """A real Shapes concept, trained briefly (no prior images, to stay cheap)."""
    from cdvideo.demo import write_subject_photos

    folder = tmp_path_factory.mktemp("trained")
    write_subject_photos(folder / "photos", count=3)
    return cdvideo.train(
        cdvideo.TrainConfig(images=[str(folder / "photos")], class_word="circle", base="shapes",
                            output=str(folder / "concept"), steps=2, batch_size=2, prior_weight=0.0),
        say=lambda _: None,
        progress=False,
    )  # fmt: skip


@pytest.mark.slow
def test_eval_on_shapes_runs_offline_with_no_flags_and_names_the_skipped_backbones(
    trained_concept, tmp_path, capsys, monkeypatch
):
    from huggingface_hub import try_to_load_from_cache

    from cdvideo import backbones, rendering

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # the hub is unreachable, as for a user offline
    for key, repo in backbones.DEFAULTS.items():
        if isinstance(try_to_load_from_cache(repo, "config.json"), str):  # a machine that has it: hide it
            monkeypatch.setitem(backbones.DEFAULTS, key, f"cdvideo-tests/absent-{key}")
    builds = []
    real_build = rendering.build_pipeline
    monkeypatch.setattr(rendering, "build_pipeline", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("composition:\n  - a {} wearing a hat moving left\n")
    out = tmp_path / "eval"
    code, stdout, err = run_cli(
        ["eval", str(trained_concept), "--prompts", str(prompts), "--frames", "4", "--steps", "1",
         "--output", str(out)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    # One pipeline for the base model's clips and one for the concept's, not one per clip.
    assert len(builds) == 2
    assert "2/2" in err and "clip" in err  # the progress bar counted every clip
    report = json.loads((out / "report.json").read_text())
    assert set(report["skipped"]) == {"CLIP", "DINO", "BLIP"}
    for key, name in (("CLIP", "clip"), ("DINO", "dino"), ("BLIP", "blip")):
        assert backbones.DEFAULTS[name] in report["skipped"][key]
        assert f"skipped {key}: {backbones.DEFAULTS[name]}" in stdout
    assert report["overall"]["scores"]["clip_i"] is None and report["overall"]["scores"]["dino_i"] is None
    md = (out / "report.md").read_text()
    assert "Skipped: CLIP:" in md and "BLIP" in md
    # The world's exact scorer, per prompt and overall, for the concept and for the base model.
    for row in report["prompts"]:
        assert set(row["shapes"]) == set(evaluation.SHAPES_RATES) and set(row["base_shapes"]) == set(row["shapes"])
        assert 0.0 <= row["shapes"]["class_kept"] <= 1.0
        video = row["videos"][0]
        assert video["frames"] == 4
        # Motion amount from the object's track, and the flag: fewer pixels per frame than the base clip.
        assert video["moves_less"] == (video["shapes"]["travel_px"] < video["base_shapes"]["travel_px"])
        assert row["moving_less"] == int(video["moves_less"])
    assert report["overall"]["videos_moving_less"] == sum(r["moving_less"] for r in report["prompts"])
    assert "moves less" in report["rules"] and "travel" in report["rules"]["moves less"]
    # Drift: the training phrase's concept-class cosine, as training measured it.
    assert report["overall"]["drift"] == pytest.approx(concepts.load_concept(trained_concept).drift, abs=1e-4)
    assert f"drift {report['overall']['drift']:.3f}" in stdout and "composition" in stdout


@pytest.mark.parametrize("flags", [[], ["--dino", "cdvideo-tests/absent-dino"]])
def test_on_sd15_a_backbone_that_does_not_load_is_one_clear_line(drawn_concept, tmp_path, capsys, flags):
    """Without the world's scorer the backbones are the measure: a default or named one that will not load
    (offline here) stops eval with one line that says how to skip it, not a report missing its columns."""
    sd = tmp_path / "sd-concept"
    shutil.copytree(drawn_concept, sd)
    manifest = json.loads((sd / concepts.MANIFEST).read_text())
    (sd / concepts.MANIFEST).write_text(json.dumps({**manifest, "base": "stable-diffusion-v1-5/stable-diffusion-v1-5"}))
    clip = ["--clip", "none", "--blip", "none"] if flags else []
    code, _, err = run_cli(["eval", str(sd), "--output", str(tmp_path / "e"), *clip, *flags], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    which = "DINO backbone 'cdvideo-tests/absent-dino'" if flags else "CLIP backbone 'openai/clip-vit-base-patch32'"
    assert which in err and ("--dino none" if flags else "--clip none") in err
