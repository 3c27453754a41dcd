"""The official ClassDiffusion code as options: its SPL pooling, and its full K/V recipe saved as a stock LoRA."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file

import cdvideo
from cdvideo import concept as concepts
from cdvideo.loss import eos_positions, pool, pooled_positions
from cdvideo.unet_weights import FullWeights


def _encoder_with_token(base: Path):
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", dtype=torch.float32)
    tokenizer.add_tokens(["<new1>"])
    text_encoder.resize_token_embeddings(len(tokenizer))
    return tokenizer, text_encoder


@pytest.mark.parametrize("base", ["tiny", "shapes"])
def test_token_pooling_is_where_the_official_code_pools(base, tiny_base):
    """The official SPL reads `pooler_output` of unpadded phrases; with `eos_token_id: 2` transformers
    pools at argmax(input_ids): the added token for the concept phrase, the EOS for the class phrase."""
    from cdvideo.loading import resolve_base

    folder = tiny_base if base == "tiny" else Path(resolve_base("shapes"))
    tokenizer, text_encoder = _encoder_with_token(folder)
    word = "dog" if base == "tiny" else "circle"
    assert text_encoder.config.eos_token_id == 2
    phrases = [f"a photo of a <new1> {word}", f"a photo of a {word}"]
    padded = tokenizer(phrases, padding="max_length", max_length=77, return_tensors="pt").input_ids
    added = tokenizer.convert_tokens_to_ids("<new1>")
    with torch.no_grad():
        ours = pool(text_encoder(padded)[0], padded, tokenizer.eos_token_id, "token")
        for i, phrase in enumerate(phrases):
            unpadded = tokenizer([phrase], return_tensors="pt").input_ids  # the official padding="longest"
            assert torch.allclose(ours[i], text_encoder(unpadded).pooler_output[0], atol=1e-6)
    positions = pooled_positions(padded, tokenizer.eos_token_id, "token")
    assert padded[0, positions[0]] == added  # concept phrase: the added token, before the class word
    assert positions[1] == eos_positions(padded, tokenizer.eos_token_id)[1]  # class phrase: its EOS


def _trained_models(tiny_base, dog_photos, out, **overrides):
    """Train on the tiny model; returns (concept folder, the trained UNet, the trained text encoder)."""
    seen = {}
    values = {"images": [str(dog_photos)], "class_word": "dog", "base": str(tiny_base), "output": str(out)}
    folder = cdvideo.train(
        cdvideo.TrainConfig(**values, resolution=64, **overrides),
        say=lambda s: None,
        progress=False,
        after_backward=lambda models: seen.update(models),
    )
    return folder, seen["unet"], seen["text_encoder"]


def _unet_out(unet, hidden):
    generator = torch.Generator().manual_seed(3)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([10, 700]), hidden).sample


def test_classdiffusion_recipe_trains_only_cross_attention_kv_and_loads_in_stock_diffusers(
    tiny_base, dog_photos, tmp_path
):
    # A large rate makes the change visible: the loaded concept must reproduce it, not the base model.
    folder, unet, text_encoder = _trained_models(
        tiny_base, dog_photos, tmp_path / "cd", recipe="classdiffusion", steps=3, lora_lr=1e-2
    )
    base_unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    trained, before = dict(unet.named_parameters()), dict(base_unet.named_parameters())
    assert trained.keys() == before.keys()  # full weights, no adapter layers
    kv = [n for n in before if n.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))]
    assert kv and all(not torch.equal(trained[n], before[n]) for n in kv)
    assert all(torch.equal(trained[n], before[n]) for n in before if n not in kv)  # the rest bit-identical

    manifest = concepts.load_concept(folder)
    assert (manifest.finetune, manifest.spl_pooling, manifest.spl_weight, manifest.prior_weight) == (
        "full",
        "token",
        1.0,
        0.0,
    )
    settings = json.loads((folder / "train_config.json").read_text())
    assert settings["token_lr"] == pytest.approx(1e-5 * 2)  # 1e-5 x batch 2 x 1 process x 1 accumulation
    assert settings["lora_lr"] == 1e-2 and settings["init_word"] == "ktn" and settings["max_grad_norm"] == 1.0

    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None)
    pipe.load_lora_weights(str(folder))
    pipe.load_textual_inversion(str(folder / concepts.EMBEDS_FILE), token="<new1>")
    ids = pipe.tokenizer(["a photo of a <new1> dog"] * 2, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        hidden = text_encoder(ids.input_ids)[0]
        assert torch.allclose(pipe.text_encoder(ids.input_ids)[0], hidden, atol=1e-5)
    expected = _unet_out(unet, hidden)
    assert not torch.allclose(_unet_out(base_unet, hidden), expected, atol=1e-3)
    assert torch.allclose(_unet_out(pipe.unet, hidden), expected, atol=1e-5)
    pipe.fuse_lora()  # what `cdvideo animate` does
    assert torch.allclose(_unet_out(pipe.unet, hidden), expected, atol=1e-5)


def test_full_weights_of_mixed_shapes_round_trip_through_the_concept_folder(tiny_base, tmp_path):
    """Layers whose min(out, in) differ share one zero-padded rank, alpha = rank: every loader reads scale 1."""
    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    weights = FullWeights(unet, ["attn2.to_k", "attn2.to_out.0", "attn1.to_q"])
    with torch.no_grad():
        for param in weights.params:
            param.add_(torch.randn_like(param) * 0.1)
    state = weights.state()
    assert len({min(p.shape) for p in weights.params}) > 1  # layers of different min(out, in)
    manifest = concepts.Concept("<new1>", "dog", str(tiny_base), 0, 0.0, 0.0, 1, 0, ["attn2.to_k"], finetune="full")
    concepts.save_concept(tmp_path, manifest, state, torch.zeros(32))
    hidden = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(0))
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None)
    pipe.load_lora_weights(str(tmp_path))
    assert torch.allclose(_unet_out(pipe.unet, hidden), _unet_out(unet, hidden), atol=1e-5)

    from cdvideo.concept_formats import export_kohya

    kohya = tmp_path / "k.safetensors"
    export_kohya(tmp_path, concepts.load_concept(tmp_path), kohya)
    fresh = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None)
    fresh.load_lora_weights(load_file(kohya))  # each module's alpha = its rank: scale 1 everywhere
    assert torch.allclose(_unet_out(fresh.unet, hidden), _unet_out(unet, hidden), atol=1e-5)


def test_full_weights_give_the_teacher_terms_the_original_model(tiny_base):
    """The masked loss's context term and the base-model prior ask for the base model's prediction; with
    the full K/V fine-tune there is no adapter to switch off, so the original weights stand in."""
    unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    base = _unet_out(unet, hidden := torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(0)))
    weights = FullWeights(unet, ["attn2.to_k", "attn2.to_v"])
    with torch.no_grad():
        for param in weights.params:
            param.add_(torch.randn_like(param) * 0.1)
    trained = _unet_out(unet, hidden)
    assert not torch.allclose(trained, base, atol=1e-3)
    with weights.base_model():
        assert torch.equal(_unet_out(unet, hidden), base)
    assert torch.equal(_unet_out(unet, hidden), trained)


def test_classdiffusion_recipe_trains_on_cut_out_photos(tmp_path):
    """Cut-outs turn on the masked loss, whose context term reads the base model: with the official
    recipe's full K/V weights this used to fail ("No adapter loaded")."""
    from cdvideo.demo import write_subject_photos

    photos = write_subject_photos(tmp_path / "photos", count=2)
    lines: list[str] = []
    folder = cdvideo.train(
        cdvideo.TrainConfig(images=[str(p) for p in photos], class_word="circle", base="shapes",
                            recipe="classdiffusion", steps=2, lora_lr=1e-2, output=str(tmp_path / "concept")),
        say=lines.append, progress=False,
    )  # fmt: skip
    assert any("transparency is the subject's mask" in line for line in lines)
    state = load_file(folder / concepts.LORA_FILE)
    assert state and any(v.abs().max() > 1e-4 for k, v in state.items() if ".lora_B." in k)


def test_token_pooling_trains_on_the_token_and_reports_drift_at_the_eos(tiny_base, dog_photos, tmp_path):
    rows = {}
    for pooling in ("eos", "token"):
        folder, _, _ = _trained_models(
            tiny_base, dog_photos, tmp_path / pooling, spl_pooling=pooling, spl_weight=1.0, steps=2, batch_size=2
        )
        assert concepts.load_concept(folder).spl_pooling == pooling
        rows[pooling] = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    # Same first batch, same weights: the EOS drift agrees; SPL differs, read at the token position.
    assert rows["eos"][0]["cosine"] == pytest.approx(rows["token"][0]["cosine"], abs=1e-6)
    assert rows["eos"][0]["spl"] == pytest.approx(1 - rows["eos"][0]["cosine"], abs=1e-5)
    assert abs(rows["token"][0]["spl"] - (1 - rows["token"][0]["cosine"])) > 1e-3


def test_full_finetune_resumes_to_the_same_concept(tiny_base, dog_photos, tmp_path):
    common = {"recipe": "classdiffusion", "steps": 4, "lora_lr": 1e-3, "checkpoint_every": 2, "keep_checkpoints": 0}
    straight, _, _ = _trained_models(tiny_base, dog_photos, tmp_path / "a", **common)
    resumed = tmp_path / "b"  # a run killed after its step-2 checkpoint, continued
    shutil.copytree(straight / "checkpoints" / "step-000002", resumed / "checkpoints" / "step-000002")
    _trained_models(tiny_base, dog_photos, resumed, **common, resume="latest")
    a, b = load_file(straight / concepts.LORA_FILE), load_file(resumed / concepts.LORA_FILE)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(a[k].abs().max() > 1e-4 for k in a if ".lora_B." in k)  # it did train


def test_unknown_recipe_and_bad_pooling_get_one_clear_line(tiny_base, dog_photos, tmp_path):
    from cdvideo.errors import UserError

    with pytest.raises(UserError, match="--recipe 'nope' is unknown; known: classdiffusion"):
        cdvideo.TrainConfig(images=[str(dog_photos)], class_word="dog", recipe="nope").resolved()
    with pytest.raises(UserError, match="--spl-pooling must be one of eos, token"):
        _trained_models(tiny_base, dog_photos, tmp_path / "x", spl_pooling="cls", steps=1)


def test_composites_recipe_fills_the_shapes_settings_it_was_measured_at_and_options_still_win():
    cfg = cdvideo.TrainConfig(images=["x"], class_word="circle", base="shapes", recipe="composites").resolved()
    assert (cfg.composites, cfg.steps, cfg.prior_target, cfg.prior_weight, cfg.token_lr, cfg.clip_composites) == (
        0.5,
        300,
        "base",
        3.0,
        1e-3,
        4.0,
    )
    assert set(cfg.lora_targets) == {"to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out"}  # no convs
    assert (
        cdvideo.TrainConfig(images=["x"], class_word="circle", base="shapes", recipe="composites", steps=50)
        .resolved()
        .steps
        == 50
    )
