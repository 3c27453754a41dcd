"""Concepts leaving cdvideo: kohya / A1111 / diffusers exports, the model card, the Hub push, contact sheets."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import cli_train_args
from safetensors import safe_open
from safetensors.torch import load_file

import cdvideo
from cdvideo import concept as concepts
from cdvideo.cli import main as cli_main
from cdvideo.presets import SD15_MOTION_ADAPTER
from cdvideo.videofiles import read_video, to_uint8_frames


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained_run(tiny_base, dog_photos, tmp_path_factory) -> tuple[Path, list[str]]:
    """A concept from `cdvideo train` with alpha != rank, trained hard enough to change the frames,
    and the names of the files renamed into its folder, in the order of the renames."""
    out = tmp_path_factory.mktemp("trained") / "rex"
    args = cli_train_args(tiny_base, dog_photos, out, "--rank", "4", "--alpha", "8", "--lora-lr", "0.05", steps=3)
    renames: list[str] = []
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).parent == out:
            renames.append(Path(dst).name)
        return real_replace(src, dst, *args, **kwargs)

    # Every file reaches its final name by an atomic rename; the order of the renames is the write order.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", replace)
        assert cli_main(args) == 0
    return out, renames


@pytest.fixture(scope="module")
def trained(trained_run) -> Path:
    return trained_run[0]


@pytest.fixture(scope="module")
def conv_concept(tiny_base, tmp_path_factory) -> Path:
    """A concept whose LoRA also reaches convolutions and projections (the Shapes preset's targets)."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(3)
    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2"]
    unet.add_adapter(LoraConfig(r=2, lora_alpha=6, target_modules=targets, init_lora_weights=False))
    state = {k: v * 0.3 for k, v in get_peft_model_state_dict(unet).items()}
    manifest = concepts.Concept(
        token="<new1>",
        class_word="dog",
        base=str(tiny_base.resolve()),
        rank=2,
        alpha=6.0,
        spl_weight=1.0,
        steps=1,
        seed=3,
        lora_targets=targets,
    )
    folder = tmp_path_factory.mktemp("conv") / "conv-concept"
    concepts.save_concept(folder, manifest, state, torch.randn(32))
    return folder


def render(base: Path, adapter: Path, load) -> np.ndarray:
    from diffusers import AnimateDiffPipeline, MotionAdapter

    pipe = AnimateDiffPipeline.from_pretrained(base, motion_adapter=MotionAdapter.from_pretrained(adapter))
    pipe.set_progress_bar_config(disable=True)
    load(pipe)
    generator = torch.Generator().manual_seed(0)
    return pipe(
        "a <new1> dog running",
        num_frames=2,
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=1.0,  # one UNet pass a step: the LoRA shows as well without guidance
        generator=generator,
        output_type="np",
    ).frames[0]


@pytest.mark.parametrize("which", ["trained", "conv_concept"])
def test_kohya_and_a1111_exports_render_the_same_frames_in_stock_diffusers(
    which, request, tiny_base, tiny_adapter, tmp_path, capsys
):
    folder = request.getfixturevalue(which)
    manifest = concepts.load_concept(folder)
    code, out, err = run_cli(["export", folder, "--format", "kohya", "--output", tmp_path / "lora"], capsys)
    assert code == 0, err
    kohya_file = tmp_path / "lora" / f"{folder.name}.safetensors"
    assert f"wrote {kohya_file}" in out
    code, out, err = run_cli(["export", folder, "--format", "a1111", "--output", tmp_path / "emb"], capsys)
    assert code == 0, err
    embedding_file = tmp_path / "emb" / "new1.safetensors"  # A1111's trigger word is the file name

    kohya = load_file(kohya_file)
    modules = {k.split(".", 1)[0] for k in kohya}
    assert all(m.startswith("lora_unet_") for m in modules)
    for module in modules:
        assert {f"{module}.{s}" for s in ("lora_down.weight", "lora_up.weight", "alpha")} <= set(kohya)
        assert kohya[f"{module}.lora_down.weight"].shape[0] == manifest.rank
        assert kohya[f"{module}.alpha"].item() == manifest.alpha != manifest.rank  # the true alpha, not the rank
    with safe_open(kohya_file, "pt") as f:
        header = f.metadata()
    assert header["ss_network_dim"] == str(manifest.rank) and float(header["ss_network_alpha"]) == manifest.alpha
    assert header["ss_sd_model_name"] == tiny_base.name  # named, not located

    def from_concept(pipe):
        pipe.load_lora_weights(str(folder))
        pipe.load_textual_inversion(str(folder / concepts.EMBEDS_FILE), token="<new1>")

    def from_exports(pipe):
        pipe.load_lora_weights(str(kohya_file))  # diffusers' own kohya conversion path
        pipe.load_textual_inversion(str(embedding_file), token="<new1>")
        config = next(iter(pipe.unet.peft_config.values()))
        assert (config.r, config.lora_alpha) == (manifest.rank, manifest.alpha)

    def stock_conversion(pipe):
        from diffusers import StableDiffusionPipeline
        from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

        state, _ = StableDiffusionPipeline.lora_state_dict(str(folder))
        pipe.load_lora_weights(convert_state_dict_to_kohya(state))  # alpha := rank
        pipe.load_textual_inversion(str(embedding_file), token="<new1>")

    ours = render(tiny_base, tiny_adapter, from_concept)
    exported = render(tiny_base, tiny_adapter, from_exports)
    np.testing.assert_array_equal(exported, ours)
    stock = render(tiny_base, tiny_adapter, stock_conversion)
    assert np.abs(stock - ours).max() > 1e-3  # alpha = rank loads the LoRA at the wrong strength


def test_a1111_embedding_is_one_emb_params_row_that_diffusers_loads(trained, tiny_base, capsys):
    from diffusers import StableDiffusionPipeline

    code, out, err = run_cli(["export", trained, "--format", "a1111"], capsys)
    assert code == 0, err
    path = trained / "exports" / "embeddings" / "new1.safetensors"
    assert out.strip() == f"wrote {path}"
    state = load_file(path)
    assert list(state) == ["emb_params"] and state["emb_params"].shape == (1, 32)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None)
    pipe.load_textual_inversion(str(path), token="<new1>")
    row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("<new1>")]
    learned = load_file(trained / concepts.EMBEDS_FILE)["<new1>"][0]
    torch.testing.assert_close(row.detach(), learned, rtol=0, atol=0)


def test_text_encoder_lora_becomes_lora_te_with_its_true_alpha(tiny_base, tmp_path):
    """SD1 tools read `lora_te_`; diffusers' converter writes SDXL's `lora_te1_` and alpha = rank."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel

    from cdvideo.concept_formats import to_kohya

    torch.manual_seed(4)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None)
    targets = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]  # what kohya's trainer adapts
    pipe.text_encoder.add_adapter(LoraConfig(r=2, lora_alpha=5, target_modules=targets, init_lora_weights=False))
    StableDiffusionPipeline.save_lora_weights(
        tmp_path,
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
        text_encoder_lora_adapter_metadata={"r": 2, "lora_alpha": 5, "target_modules": targets},
    )
    state, _, metadata = StableDiffusionPipeline.lora_state_dict(str(tmp_path), return_lora_metadata=True)
    kohya = to_kohya(state, metadata)
    assert kohya and all(k.startswith("lora_te_text_model_encoder_layers_") for k in kohya)
    assert {v.item() for k, v in kohya.items() if k.endswith(".alpha")} == {5.0}

    ids = pipe.tokenizer(["a photo of a dog"], return_tensors="pt").input_ids

    def encode(lora) -> torch.Tensor:
        fresh = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None)
        fresh.load_lora_weights(lora)
        with torch.no_grad():
            return fresh.text_encoder(ids)[0]

    exported = encode(kohya)
    torch.testing.assert_close(exported, encode(str(tmp_path)), rtol=0, atol=0)
    with torch.no_grad():
        plain = CLIPTextModel.from_pretrained(tiny_base, subfolder="text_encoder")(ids)[0]
    assert not torch.allclose(exported, plain)


def test_diffusers_export_copies_the_two_files_and_bad_exports_are_one_line(trained, tmp_path, capsys):
    code, _, err = run_cli(["export", trained, "--format", "diffusers", "--output", tmp_path / "d"], capsys)
    assert code == 0, err
    for name in (concepts.LORA_FILE, concepts.EMBEDS_FILE):
        assert (tmp_path / "d" / name).read_bytes() == (trained / name).read_bytes()
    for args, message in (
        (["export", tmp_path / "missing", "--format", "kohya"], "does not exist"),
        (["export", trained, "--format", "diffusers", "--output", tmp_path / "x.safetensors"], "--output a folder"),
    ):
        code, _, err = run_cli(args, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not list(tmp_path.rglob(".*"))  # no temp files left


def test_train_writes_a_hub_model_card_before_the_manifest(trained_run):
    from huggingface_hub import ModelCard

    trained, renames = trained_run
    readme, manifest_file = trained / "README.md", trained / concepts.MANIFEST
    # Each save renames weights, then the card, then the manifest: a manifest never points at a stale card.
    saves = [i for i, name in enumerate(renames) if name == concepts.MANIFEST]
    assert saves, renames
    for start, end in zip([-1, *saves], saves):
        written = renames[start + 1 : end]
        assert "README.md" in written and concepts.LORA_FILE in written, renames
        assert written.index(concepts.LORA_FILE) < written.index("README.md"), renames
    manifest = json.loads(manifest_file.read_text())
    card = ModelCard.load(readme)
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers" and data["license"] == "creativeml-openrail-m"
    assert data["instance_prompt"] == "a <new1> dog"
    assert {"lora", "stable-diffusion", "text-to-video", "animatediff"} <= set(data["tags"])
    assert data["motion_adapter"] == SD15_MOTION_ADAPTER
    assert data["example_prompt"].startswith("a <new1> dog")
    assert data["concept_class_cosine"] == manifest["drift"]
    assert "base_model" not in data  # a local folder is no Hub id; the Hub would reject the card
    assert str(trained.parent) not in card.text and "| LoRA rank / alpha | 4 / 8 |" in card.text


def test_card_for_a_hub_base_names_it_and_shows_the_sample_gif(trained, tmp_path):
    from huggingface_hub import ModelCard

    from cdvideo.card import model_card_text

    folder = tmp_path / "rex"
    shutil.copytree(trained, folder)
    (folder / "sample.gif").write_bytes(b"GIF89a")
    manifest = concepts.load_concept(folder)
    manifest.base = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    card = ModelCard(model_card_text(folder, manifest, repo_id="me/rex"))
    assert card.data.base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert card.data.widget[0]["output"]["url"] == "sample.gif" and "](sample.gif)" in card.text
    assert "pipe.load_lora_weights('me/rex')" in card.text


class RecordingApi:
    """The Hub's two calls, recorded: the network is unreachable here. What would be uploaded is
    computed with huggingface_hub's own pattern filter, as `upload_folder` does."""

    def __init__(self, token: str | None = "hf_test"):
        self.token = token
        self.calls: list[tuple[str, dict]] = []
        self.sent: dict[str, bytes] = {}

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub import RepoUrl

        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, folder_path, ignore_patterns=None, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        self.calls.append(("upload_folder", {"folder_path": folder_path, **kwargs}))
        root = Path(folder_path)
        names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        for name in filter_repo_objects(names, ignore_patterns=ignore_patterns):
            self.sent[name] = (root / name).read_bytes()


def test_push_sends_the_concept_and_its_card_but_not_working_files(trained, tmp_path):
    from huggingface_hub import ModelCard

    folder = tmp_path / "rex"
    shutil.copytree(trained, folder, ignore=shutil.ignore_patterns("exports"))
    cdvideo.export_concept(folder, "kohya")  # exports travel with the concept
    (folder / "checkpoints" / "step-000001").mkdir(parents=True)
    (folder / "checkpoints" / "step-000001" / "state.pt").write_bytes(b"optimizer")
    (folder / ".README.tmp-1-abcd.md").write_text("half written")
    api = RecordingApi()
    url = cdvideo.push(folder, "me/rex-dog", private=True, api=api, say=lambda s: None)
    assert url == "https://huggingface.co/me/rex-dog"
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1]["private"] is True and api.calls[0][1]["exist_ok"] is True
    assert api.calls[1][1]["repo_id"] == "me/rex-dog"
    assert set(api.sent) == {
        "README.md",
        "cdvideo.json",
        "pytorch_lora_weights.safetensors",
        "learned_embeds.safetensors",
        "metrics.jsonl",
        "curves.png",
        "train_config.json",
        "exports/lora/rex.safetensors",
    }
    assert (folder / "photos").is_dir()  # kept locally for `cdvideo eval`, never uploaded
    card = ModelCard(api.sent["README.md"].decode())
    assert card.data.instance_prompt == "a <new1> dog"
    assert "pipe.load_lora_weights('me/rex-dog')" in card.text

    edited = "---\nlicense: mit\n---\n# my own words\n"
    (folder / "README.md").write_text(edited)
    said = []
    cdvideo.push(folder, "me/rex-dog", api=api, say=said.append)
    assert api.sent["README.md"].decode() == edited and "keeping your edited" in said[0]


def test_push_without_token_or_network_is_one_clear_line(trained, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    code, _, err = run_cli(["push", trained, "--repo-id", "me/rex"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        "cdvideo: error: no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again"
    ]

    # A real HfApi against a closed local port: the network error as a user would meet it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
    for offline in (True, False):
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
        code, _, err = run_cli(["push", trained, "--repo-id", "me/rex"], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "could not push to me/rex" in lines[0], err
    code, _, err = run_cli(["push", trained, "--repo-id", "not a repo"], capsys)
    assert code == 2 and "USER/NAME" in err


def test_animate_writes_contact_sheets_and_a_resolved_prompt_file_that_reruns(trained, tiny_adapter, tmp_path, capsys):
    from PIL import Image

    settings = {
        "prompts": ["a dog running", "a dog on the beach"],
        "seeds": [1, 2],
        "steps": 1,
        "frames": 4,
        "width": 64,
        "height": 64,
        "motion_adapter": str(tiny_adapter),
        "concept": str(trained),
        "output": str(tmp_path / "first"),
    }
    videos = cdvideo.animate(cdvideo.AnimateConfig(**settings), say=lambda s: None, progress=False)
    out = tmp_path / "first"
    sheet = np.asarray(Image.open(out / "contact-sheet.png").convert("RGB"))
    assert sheet.shape == (2 * 64 + 2, 2 * 64 + 2, 3)
    for i, video in enumerate(videos):  # rows: prompts, columns: seeds
        r, c = divmod(i, 2)
        assert (video.prompt, video.seed) == (settings["prompts"][r], settings["seeds"][c])
        cell = sheet[r * 66 : r * 66 + 64, c * 66 : c * 66 + 64]
        np.testing.assert_array_equal(cell, to_uint8_frames(video.frames)[2])
    assert (sheet[64:66] == 255).all() and (sheet[:, 64:66] == 255).all()
    animated = read_video(out / "contact-sheet.gif")
    assert animated.shape == (4, 130, 130, 3)

    resolved = yaml.safe_load((out / "prompts.resolved.yaml").read_text())
    assert resolved["guidance"] is not None and resolved["fps"] == 8 and resolved["concept"] == str(trained)
    code, _, err = run_cli(
        ["animate", "--prompt-file", out / "prompts.resolved.yaml", "--output", tmp_path / "again"], capsys
    )
    assert code == 0, err
    for video in videos:
        again = read_video(tmp_path / "again" / video.files["gif"].name)
        np.testing.assert_array_equal(again, read_video(video.files["gif"]))


def test_one_video_gets_no_contact_sheet(trained, tiny_adapter, tmp_path):
    cfg = cdvideo.AnimateConfig(
        prompts=["a dog"],
        steps=1,
        frames=4,
        width=64,
        height=64,
        motion_adapter=str(tiny_adapter),
        concept=str(trained),
        output=str(tmp_path),
    )
    cdvideo.animate(cfg, say=lambda s: None, progress=False)
    assert not list(tmp_path.glob("contact-sheet*")) and (tmp_path / "prompts.resolved.yaml").exists()
