"""The main flow on tiny SD-1.5-shaped models: train -> concept folder -> animate, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_animate_args, cli_train_args
from safetensors.torch import load_file

import cdvideo
from cdvideo import concept as concepts
from cdvideo import presets
from cdvideo.cli import main as cli_main
from cdvideo.loss import eos_features, eos_positions
from cdvideo.prompts import bind_prompt
from cdvideo.videofiles import read_video, video_info


def train_tiny(base: Path, photos: Path, out: Path, **overrides) -> Path:
    values = {
        "images": [str(photos)],
        "class_word": "dog",
        "base": str(base),
        "output": str(out),
        "steps": 6,
        "resolution": 64,
        "batch_size": 2,
        "seed": 0,
        **overrides,
    }
    return cdvideo.train(cdvideo.TrainConfig(**values), say=lambda s: None, progress=False)


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def concept_dir(tiny_base, dog_photos, tmp_path_factory) -> Path:
    return train_tiny(tiny_base, dog_photos, tmp_path_factory.mktemp("c") / "concept", rank=4, alpha=8.0)


def test_pooling_trap_eos_features_use_the_real_eos(tiny_base):
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_base, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(tiny_base, subfolder="text_encoder")
    assert text_encoder.config.eos_token_id == 2  # as in SD1.5's config
    tokenizer.add_tokens(["<new1>"])
    text_encoder.resize_token_embeddings(len(tokenizer))
    ids = tokenizer(
        ["a photo of a <new1> dog", "a photo of a dog"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    added = tokenizer.convert_tokens_to_ids("<new1>")
    eos = eos_positions(ids, tokenizer.eos_token_id)
    assert ids[0, eos[0]] == tokenizer.eos_token_id and ids[0, eos[0] - 1] != tokenizer.eos_token_id
    assert eos[0] == (ids[0] == added).nonzero().item() + 2  # "<new1> dog </s>"
    with torch.no_grad():
        out = text_encoder(ids)
        ours = eos_features(text_encoder, ids, tokenizer.eos_token_id)
    assert torch.allclose(ours, out.last_hidden_state[torch.arange(2), eos])
    # transformers pools at argmax(input_ids) here: the added token, not the EOS.
    assert ids[0].argmax() == (ids[0] == added).nonzero().item()
    assert not torch.allclose(out.pooler_output[0], ours[0])


def test_gradients_reach_only_lora_and_the_token_row(tiny_base, dog_photos, tmp_path):
    seen = []

    def check(models):
        token_id = models["token_id"]
        for name, module in (
            ("unet", models["unet"]),
            ("text_encoder", models["text_encoder"]),
            ("vae", models["vae"]),
        ):
            for pname, param in module.named_parameters():
                if param.grad is None:
                    continue
                if name == "unet":
                    assert "lora_" in pname, pname
                else:
                    assert name == "text_encoder" and pname.endswith("token_embedding.weight"), pname
                    nonzero_rows = param.grad.abs().sum(dim=1).nonzero().flatten().tolist()
                    assert nonzero_rows == [token_id]
        lora_grads = [p.grad for n, p in models["unet"].named_parameters() if "lora_" in n and p.grad is not None]
        assert lora_grads and any(g.abs().sum() > 0 for g in lora_grads)
        seen.append(True)

    cdvideo.train(
        cdvideo.TrainConfig(
            images=[str(dog_photos)],
            class_word="dog",
            base=str(tiny_base),
            output=str(tmp_path / "c"),
            steps=2,
            resolution=64,
            batch_size=2,
        ),
        say=lambda s: None,
        progress=False,
        after_backward=check,
    )
    assert len(seen) == 2


def test_lora_targets_limit_the_lora_to_cross_attention_kv(tiny_base, tiny_adapter, dog_photos, tmp_path, capsys):
    out = tmp_path / "kv"
    assert cli_main(cli_train_args(tiny_base, dog_photos, out, "--lora-targets", "attn2.to_k", "attn2.to_v")) == 0
    assert concepts.load_concept(out).lora_targets == ["attn2.to_k", "attn2.to_v"]
    keys = list(load_file(out / concepts.LORA_FILE))
    assert keys and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in keys)
    video = cli_animate_args(tiny_base, tiny_adapter, tmp_path / "video", "--steps", "2")
    video[video.index("--no-concept")] = f"--concept={out}"
    assert cli_main(video) == 0 and list((tmp_path / "video").glob("*.mp4"))

    capsys.readouterr()
    assert cli_main(cli_train_args(tiny_base, dog_photos, tmp_path / "bad", "--lora-targets", "to_nothing")) == 2
    err = capsys.readouterr().err.strip()
    assert "--lora-targets to_nothing matches no UNet module" in err and "\n" not in err and "Traceback" not in err


def test_spl_keeps_the_concept_near_its_class_and_plain_training_drifts(tiny_base, dog_photos, tmp_path):
    fast = {"steps": 30, "token_lr": 0.05}
    plain = train_tiny(tiny_base, dog_photos, tmp_path / "plain", spl_weight=0.0, **fast)
    spl = train_tiny(tiny_base, dog_photos, tmp_path / "spl", spl_weight=10.0, **fast)
    plain_m, spl_m = metrics(plain), metrics(spl)
    # Without SPL the token drifts away from the class; with it, SPL falls back toward zero (measured:
    # from a peak of 0.08 to 0.003, while the plain run ends at 0.19).
    assert plain_m[-1]["cosine"] < plain_m[0]["cosine"] - 0.01
    assert spl_m[-1]["spl"] < 0.25 * max(m["spl"] for m in spl_m)
    assert spl_m[-1]["spl"] < 0.25 * plain_m[-1]["spl"]
    assert concepts.load_concept(spl).drift > concepts.load_concept(plain).drift + 0.01


def test_concept_folder_contract(concept_dir, tiny_base):
    from safetensors import safe_open

    manifest = json.loads((concept_dir / "cdvideo.json").read_text())
    for key in (
        "format_version",
        "token",
        "class_word",
        "base",
        "rank",
        "alpha",
        "spl_weight",
        "steps",
        "seed",
        "drift",
    ):
        assert key in manifest
    assert manifest["base"] == str(tiny_base.resolve()) and manifest["rank"] == 4 and manifest["alpha"] == 8.0
    with safe_open(concept_dir / "pytorch_lora_weights.safetensors", "pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert keys and all(k.startswith("unet.") for k in keys)
    assert meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 8.0
    with safe_open(concept_dir / "learned_embeds.safetensors", "pt") as f:
        assert list(f.keys()) == ["<new1>"] and f.get_tensor("<new1>").shape == (1, 32)
    assert [row["step"] for row in metrics(concept_dir)] == [1, 2, 3, 4, 5, 6]  # every step of the 6-step run


def test_stock_diffusers_loads_the_concept_without_cdvideo(concept_dir, tiny_base, tiny_adapter):
    script = textwrap.dedent(f"""
        import sys, torch
        from diffusers import AnimateDiffPipeline, MotionAdapter
        adapter = MotionAdapter.from_pretrained({str(tiny_adapter)!r})
        pipe = AnimateDiffPipeline.from_pretrained({str(tiny_base)!r}, motion_adapter=adapter)
        pipe.load_lora_weights({str(concept_dir)!r}, adapter_name="rex")
        pipe.load_textual_inversion({str(concept_dir / "learned_embeds.safetensors")!r}, token="<new1>")
        config = pipe.unet.peft_config["rex"]
        assert config.r == 4 and config.lora_alpha == 8.0, (config.r, config.lora_alpha)
        assert not any("motion_modules" in n and "lora_" in n for n, _ in pipe.unet.named_parameters())
        out = pipe("a photo of a <new1> dog", num_frames=4, height=64, width=64, num_inference_steps=2,
                   output_type="np").frames
        assert out.shape == (1, 4, 64, 64, 3), out.shape
        assert "cdvideo" not in sys.modules
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli_main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_animate_with_and_without_concept_writes_decodable_videos(
    concept_dir, tiny_base, tiny_adapter, tmp_path, capsys
):
    common = [
        "--motion-adapter",
        str(tiny_adapter),
        "--frames",
        "8",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "2",
        "--seed",
        "3",
        "--fps",
        "8",
    ]
    code, out, err = run_cli(
        [
            "animate",
            "a dog wearing headphones running",
            "--concept",
            str(concept_dir),
            "--output",
            str(tmp_path / "with"),
            *common,
        ],
        capsys,
    )
    assert code == 0, err
    assert "a <new1> dog wearing headphones running" in out
    code, out, err = run_cli(
        [
            "animate",
            "a dog wearing headphones running",
            "--no-concept",
            "--base",
            str(tiny_base),
            "--output",
            str(tmp_path / "without"),
            *common,
        ],
        capsys,
    )
    assert code == 0, err
    stem = "a-dog-wearing-headphones-running-3"
    with_mp4, without_mp4 = tmp_path / "with" / f"{stem}.mp4", tmp_path / "without" / f"{stem}.mp4"
    for path in (with_mp4, without_mp4, tmp_path / "with" / f"{stem}.gif"):
        info = video_info(path)
        assert (info["frames"], info["width"], info["height"]) == (8, 64, 64)
        assert abs(info["fps"] - 8) < 0.1
    import decord
    import imageio.v3 as iio

    assert len(decord.VideoReader(str(with_mp4))) == 8
    assert iio.imread(with_mp4, index=None).shape[0] == 8
    a, b = read_video(with_mp4).astype(float), read_video(without_mp4).astype(float)
    assert np.abs(a - b).mean() > 1.0  # the concept changes the video for the same seed
    settings = json.loads((tmp_path / "with" / f"{stem}.json").read_text())
    assert settings["rendered_prompt"] == "a <new1> dog wearing headphones running"
    assert settings["scheduler"]["class"] == "DDIMScheduler"
    assert settings["scheduler"]["beta_schedule"] == "linear" and settings["scheduler"]["steps_offset"] == 1
    assert not list((tmp_path / "with").glob(".*"))  # no temp files left


def test_bind_prompt():
    assert bind_prompt("a dog running", "<new1>", "dog") == ("a <new1> dog running", None)
    assert bind_prompt("a <new1> dog", "<new1>", "dog") == ("a <new1> dog", None)
    assert bind_prompt("A Dog on the beach", "<new1>", "dog")[0] == "A <new1> Dog on the beach"
    assert bind_prompt("hotdogs for sale", "<new1>", "dog")[1] is not None  # no whole-word match: warned
    assert "will not appear" in bind_prompt("a cat", "<new1>", "dog")[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "{empty}", "--class-word", "dog", "--base", "{base}"], "no usable photos"),
        (
            [
                "train",
                "{photos}",
                "--class-word",
                "dog",
                "--base",
                "{base}",
                "--token",
                "dog",
                "--output",
                "{tmp}/x",
                "--resolution",
                "64",
                "--steps",
                "1",
            ],
            "already in the tokenizer's vocabulary",
        ),
        (["train", "{photos}", "--class-word", "dog", "--base", "{base}", "--steps", "0"], "--steps must be positive"),
        (
            ["train", "{photos}", "--class-word", "dog", "--base", "{base}", "--output", "{file}/sub", "--steps", "1"],
            "cannot write",
        ),
        (["animate", "a dog", "--concept", "{concept}", "--base", "{tmp}/other-base"], "concept was trained on base"),
        (["animate", "a dog", "--concept", "{tmp}/missing"], "does not exist"),
        (["animate", "a dog", "--no-concept", "--base", "{base}", "--width", "60"], "multiples of 8"),
        (
            ["animate", "a dog", "--no-concept", "--base", "{base}", "--precision", "fp16", "--device", "cpu"],
            "not supported on the CPU",
        ),
    ],
)
def test_bad_input_gets_one_clear_line(args, message, tiny_base, dog_photos, concept_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    values = {
        "empty": tmp_path / "empty",
        "base": tiny_base,
        "photos": dog_photos,
        "tmp": tmp_path,
        "file": tmp_path / "file",
        "concept": concept_dir,
    }
    code, out, err = run_cli([a.format(**values) for a in args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_windows_beyond_the_adapter_limit_are_refused(tiny_base, tiny_adapter, tmp_path, capsys):
    code, _, err = run_cli(
        [
            "animate",
            "a dog",
            "--no-concept",
            "--base",
            str(tiny_base),
            "--motion-adapter",
            str(tiny_adapter),
            "--frames",
            "40",
            "--context-length",
            "40",
            "--width",
            "64",
            "--height",
            "64",
            "--output",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 2 and "motion adapter's 16" in err


def test_prompt_without_the_class_word_is_warned(concept_dir, tiny_adapter, tmp_path, capsys):
    code, out, err = run_cli(
        [
            "animate",
            "a cat on the beach",
            "--concept",
            str(concept_dir),
            "--motion-adapter",
            str(tiny_adapter),
            "--frames",
            "4",
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "1",
            "--output",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0, err
    assert "will not appear" in out


def test_prior_preservation_with_generated_class_images_and_spl(tiny_base, dog_photos, tmp_path):
    folder = train_tiny(
        tiny_base, dog_photos, tmp_path / "prior", prior_weight=1.0, num_class_images=2, spl_weight=1.0, steps=3
    )
    assert len(list((folder / "class-images").glob("*.png"))) == 2  # made by the base model itself
    rows = metrics(folder)
    assert all(r["prior"] > 0 for r in rows)
    assert concepts.load_concept(folder).prior_weight == 1.0
    # The same run without SPL sees the same first batch but learns another token: SPL acts beside the prior.
    images = str(folder / "class-images")
    no_spl = train_tiny(
        tiny_base, dog_photos, tmp_path / "no-spl", prior_weight=1.0, class_images=images, spl_weight=0.0, steps=3
    )
    first, first_no_spl = rows[0], metrics(no_spl)[0]
    assert all(first[k] == pytest.approx(first_no_spl[k], rel=1e-5) for k in ("mse", "prior", "spl"))
    rows_with = load_file(folder / concepts.EMBEDS_FILE)["<new1>"]
    rows_without = load_file(no_spl / concepts.EMBEDS_FILE)["<new1>"]
    assert not torch.allclose(rows_with, rows_without, atol=1e-7)


def test_prior_images_drawn_from_several_prompts_keep_their_captions(tiny_base, dog_photos, tmp_path):
    prompts = ["a photo of a dog", "a photo of a cat on the beach"]
    folder = train_tiny(
        tiny_base, dog_photos, tmp_path / "bank", prior_weight=1.0, num_class_images=3, class_prompts=prompts, steps=2
    )
    captions = sorted((folder / "class-images").glob("*.txt"))
    assert [c.read_text().strip() for c in captions] == [prompts[0], prompts[1], prompts[0]]
    assert len(list((folder / "class-images").glob("*.png"))) == 3


def test_class_image_captions_follow_kohya_sidecars(tmp_path):
    from cdvideo.training_inputs import class_prompts

    (tmp_path / "a.txt").write_text("a photo of a cat on the beach\n")
    (tmp_path / "c.txt").write_text("   \n")  # an empty caption is no caption
    paths = [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"]
    assert class_prompts(paths, "a photo of a dog") == [
        "a photo of a cat on the beach",
        "a photo of a dog",
        "a photo of a dog",
    ]


def test_shapes_preset_prior_bank_covers_every_class_and_colour_but_no_held_out_combination():
    from cdvideo.shapes import world

    bank = [p for p in presets.SHAPES.prior_prompts if "{class_word}" not in p]
    assert {(c, k) for c in world.CLASSES for k in world.COLOURS} == {(p.split()[5], p.split()[4]) for p in bank}
    assert not any(f"{k} {c} {a}" in p for c, k, a in world.HELD_OUT for p in bank)
    # Trained as a circle: the other classes are guarded, circles by the class phrase alone.
    resolved = cdvideo.TrainConfig(images=[], class_word="circle", base="shapes").resolved().class_prompts
    assert "a photo of a circle" in resolved and not any("circle" in p for p in set(resolved) - {"a photo of a circle"})
    assert {p.split()[5] for p in set(resolved) - {"a photo of a circle"}} == {"square", "triangle", "star"}


def test_prompt_file_renders_every_prompt_and_seed(concept_dir, tiny_adapter, tmp_path, capsys):
    prompt_file = tmp_path / "prompts.yaml"
    prompt_file.write_text(
        "prompts:\n  - a dog running\n  - a dog on the beach\nseeds: [1, 2]\nsteps: 1\n"
        "frames: 4\nwidth: 64\nheight: 64\n"
    )
    code, out, err = run_cli(
        [
            "animate",
            "--prompt-file",
            str(prompt_file),
            "--concept",
            str(concept_dir),
            "--motion-adapter",
            str(tiny_adapter),
            "--output",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").glob("*.mp4")) == [
        "a-dog-on-the-beach-1.mp4",
        "a-dog-on-the-beach-2.mp4",
        "a-dog-running-1.mp4",
        "a-dog-running-2.mp4",
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompts: [a dog]\nwarp_speed: 9\n")
    code, _, err = run_cli(["animate", "--prompt-file", str(bad), "--concept", str(concept_dir)], capsys)
    assert code == 2 and "warp_speed" in err
