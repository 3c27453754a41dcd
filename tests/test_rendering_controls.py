"""Memory and speed controls of `cdvideo animate`: each one is real, and the exact ones change no pixel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_animate_args

import cdvideo
from cdvideo import controls
from cdvideo.cli import main as cli_main
from cdvideo.videofiles import video_info

# Bit-exactness is not promised across kernels: chunked or re-laid-out work may sum in another order.
EXACT = 1e-5


def render(base: Path, adapter: Path, out: Path, **overrides) -> tuple[np.ndarray, list[str]]:
    notes: list[str] = []
    values = {
        "prompts": ["a dog running"],
        "use_concept": False,
        "base": str(base),
        "motion_adapter": str(adapter),
        "frames": 8,
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance": 3.0,
        "seeds": [7],
        "output": str(out),
        **overrides,
    }
    videos = cdvideo.animate(cdvideo.AnimateConfig(**values), say=notes.append, progress=False)
    return np.asarray(videos[0].frames), notes


def watch(monkeypatch, probe) -> list:
    """Run `probe(pipe)` on each pipeline right after the controls are applied; returns the pipelines seen.

    The real `controls.apply` runs first, so the probe sees what the render will use."""
    pipes = []
    real = controls.apply

    def apply(pipe, cfg, device, say=print):
        real(pipe, cfg, device, say)
        pipes.append(pipe)
        probe(pipe)

    monkeypatch.setattr(controls, "apply", apply)
    return pipes


def channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def motion_self_attentions(pipe) -> list[torch.nn.Module]:
    return [m for name, m in pipe.unet.named_modules() if "motion_modules" in name and name.endswith(".attn1")]


@pytest.fixture(scope="module")
def baseline(tiny_base, tiny_adapter, tmp_path_factory) -> np.ndarray:
    return render(tiny_base, tiny_adapter, tmp_path_factory.mktemp("base"))[0]


@pytest.mark.parametrize(
    "control",
    [
        {"decode_chunk_size": 1},  # = VAE slicing: one frame per decode
        {"decode_chunk_size": 3},  # chunks that do not divide the clip
        {"forward_chunk": 2},
        {"channels_last": True},
        {"cpu_offload": True},  # a no-op with a note on the CPU
    ],
    ids=lambda c: next(iter(c)),
)
def test_exact_controls_leave_the_video_unchanged(control, baseline, tiny_base, tiny_adapter, tmp_path, monkeypatch):
    seen = {"decode_batches": [], "unet_conv": [], "vae_conv": []}

    def probe(pipe):
        # What the VAE decoder is fed and the layout conv outputs come in: proof that a control took effect.
        pipe.vae.decoder.register_forward_pre_hook(lambda m, a: seen["decode_batches"].append(a[0].shape[0]))
        for key, conv in (
            ("unet_conv", pipe.unet.down_blocks[0].resnets[0].conv1),
            ("vae_conv", pipe.vae.decoder.conv_in),
        ):
            conv.register_forward_hook(lambda m, a, out, key=key: seen[key].append(channels_last(out)))

    pipes = watch(monkeypatch, probe)
    frames, notes = render(tiny_base, tiny_adapter, tmp_path, **control)
    assert frames.shape == baseline.shape == (8, 64, 64, 3)
    assert np.abs(frames - baseline).max() <= EXACT
    # 8 frames decoded in chunks of decode_chunk_size (default 16: one decode of all 8).
    chunk = control.get("decode_chunk_size", 16)
    assert seen["decode_batches"] == [min(chunk, 8 - i) for i in range(0, 8, chunk)]
    on = "channels_last" in control
    assert seen["unet_conv"] and set(seen["unet_conv"]) == {on}
    assert seen["vae_conv"] and set(seen["vae_conv"]) == {on}
    if on:
        assert all(
            p.is_contiguous(memory_format=torch.channels_last) for p in pipes[0].unet.parameters() if p.ndim == 4
        )
    assert not pipes[0].free_noise_enabled
    if "cpu_offload" in control:
        assert any("--cpu-offload" in n and "ignored on cpu" in n for n in notes), notes


def test_compile_control_compiles_the_unet_in_place(tiny_base, tiny_adapter):
    """Cheap half of the compile check: the pipeline keeps its UNet, whose calls now go through torch.compile."""
    from cdvideo import rendering

    cfg = rendering.resolve(
        cdvideo.AnimateConfig(prompts=["a dog"], use_concept=False, base=str(tiny_base),
                              motion_adapter=str(tiny_adapter), frames=8, width=64, height=64, compile=True),
        None,
    )  # fmt: skip
    pipe = rendering.build_pipeline(cfg, torch.float32)
    assert pipe.unet._compiled_call_impl is None
    controls.apply(pipe, cfg, torch.device("cpu"), say=lambda s: None)
    wrapped = getattr(pipe.unet._compiled_call_impl, "_torchdynamo_orig_callable", None)
    assert wrapped is not None and wrapped.__self__ is pipe.unet  # dynamo wraps this UNet's own call
    assert type(pipe.unet).__name__ == "UNetMotionModel"  # in place: not swapped for an OptimizedModule


@pytest.mark.slow
def test_compiled_unet_renders_the_same_video(baseline, tiny_base, tiny_adapter, tmp_path):
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    frames, _ = render(tiny_base, tiny_adapter, tmp_path, compile=True)
    assert np.abs(frames - baseline).max() <= 1e-4
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # dynamo really traced the UNet


def test_forward_chunking_is_really_on(tiny_base, tiny_adapter, tmp_path, monkeypatch):
    """Chunked feed-forward runs the FF layers on slices: count the calls to prove the control took effect."""
    import diffusers.models.attention as attention

    calls = []
    real = attention._chunked_feed_forward
    monkeypatch.setattr(attention, "_chunked_feed_forward", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    render(tiny_base, tiny_adapter, tmp_path, forward_chunk=4, steps=1)
    assert calls and set(calls) == {4}


def test_forward_chunk_that_does_not_divide_the_batch_is_one_clear_line(tiny_base, tiny_adapter, tmp_path, capsys):
    args = cli_animate_args(tiny_base, tiny_adapter, tmp_path, "--steps", "1", "--forward-chunk", "3", frames=8)
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--forward-chunk 3 must divide 16" in err[0], err


def test_bad_decode_chunk_size_is_refused(tiny_base, tiny_adapter, tmp_path):
    with pytest.raises(cdvideo.UserError, match="--decode-chunk-size must be positive"):
        render(tiny_base, tiny_adapter, tmp_path, decode_chunk_size=0)


def test_one_window_covering_the_clip_is_the_plain_render(baseline, tiny_base, tiny_adapter, tmp_path, monkeypatch):
    """FreeNoise wiring check: a single window over all frames must not change the maths."""
    lengths = []
    pipes = watch(monkeypatch, lambda pipe: [m.register_forward_pre_hook(lambda m, a: lengths.append(a[0].shape[1]))
                                             for m in motion_self_attentions(pipe)])  # fmt: skip
    frames, _ = render(tiny_base, tiny_adapter, tmp_path, context_length=8)
    assert np.abs(frames - baseline).max() <= EXACT
    # The windows really are on: FreeNoise blocks in every motion module, windows of the asked 8 frames.
    pipe = pipes[0]
    assert pipe.free_noise_enabled and pipe._free_noise_context_length == 8
    blocks = [
        m
        for n, m in pipe.unet.named_modules()
        if "motion_modules" in n and n.rsplit(".", 2)[-2] == "transformer_blocks"
    ]
    assert blocks and all(type(b).__name__ == "FreeNoiseTransformerBlock" for b in blocks)
    assert lengths and set(lengths) == {8}


def test_clip_longer_than_the_adapter_renders_in_sliding_windows(tiny_base, tiny_adapter, tmp_path, monkeypatch):
    lengths = []
    pipes = watch(monkeypatch, lambda pipe: [m.register_forward_pre_hook(lambda m, a: lengths.append(a[0].shape[1]))
                                             for m in motion_self_attentions(pipe)])  # fmt: skip
    frames, notes = render(tiny_base, tiny_adapter, tmp_path, frames=24, steps=1)
    assert frames.shape == (24, 64, 64, 3) and np.isfinite(frames).all()
    assert any("more than the motion adapter's 16" in n and "windows of 16 frames, stride 4" in n for n in notes)
    assert video_info(tmp_path / "a-dog-running-7.mp4")["frames"] == 24
    # Temporal attention sees 16-frame windows, never the whole 24 frames: (0,16), (4,20), (8,24) in each
    # motion module, in the one UNet call of a 1-step render (guidance batches both prompts into it).
    assert set(lengths) == {16}
    assert len(lengths) == 3 * len(motion_self_attentions(pipes[0])) > 0


@pytest.mark.parametrize(
    "windows, message",
    [
        ({"context_length": 17}, "--context-length 17 is more than the motion adapter's 16 frames"),
        ({"context_length": 8, "context_stride": 9}, "--context-stride 9 is longer than the window (8)"),
        ({"context_length": 0}, "must be positive"),
    ],
)
def test_bad_windows_are_refused_naming_the_limit(windows, message, tiny_base, tiny_adapter, tmp_path):
    with pytest.raises(cdvideo.UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        render(tiny_base, tiny_adapter, tmp_path, frames=24, **windows)


def test_shapes_adapter_renders_past_its_32_frames(tmp_path, capsys):
    args = ["animate", "a red circle", "--no-concept", "--base", "shapes", "--frames", "40", "--width", "32",
            "--height", "32", "--steps", "1", "--output", str(tmp_path), "--seed", "0"]  # fmt: skip
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "40 frames is more than the motion adapter's 32" in out
    assert video_info(tmp_path / "a-red-circle-0.mp4")["frames"] == 40


def concept_weight_per_step(monkeypatch) -> list[float]:
    """The concept LoRA's weight at each UNet call of the render, read off its first LoRA layer."""
    from peft.tuners.lora import LoraLayer

    weights: list[float] = []

    def probe(pipe):
        layer = next((m for m in pipe.unet.modules() if isinstance(m, LoraLayer) and "concept" in m.scaling), None)
        if layer is None:  # a render without the concept
            return
        full = layer.lora_alpha["concept"] / layer.r["concept"]
        pipe.unet.register_forward_pre_hook(lambda *_: weights.append(round(layer.scaling["concept"] / full, 4)))

    watch(monkeypatch, probe)
    return weights


def test_concept_schedule_runs_the_concept_weak_in_the_early_steps(
    concept, tiny_base, tiny_adapter, tmp_path, monkeypatch
):
    weights = concept_weight_per_step(monkeypatch)
    out = tmp_path / "scheduled"
    scheduled, _ = render(tiny_base, tiny_adapter, out, use_concept=True, concept=str(concept), steps=4,
                          concept_schedule="0.25:0.5", lora_scale=0.8)  # fmt: skip
    assert weights == [0.25, 0.25, 0.8, 0.8]  # one UNet call per step: guidance runs as one batch
    settings = json.loads(next(out.glob("*.json")).read_text())
    assert settings["concept_schedule"] == "0.25:0.5" and settings["lora_scale"] == 0.8

    weights.clear()
    off, _ = render(tiny_base, tiny_adapter, tmp_path / "off", use_concept=True, concept=str(concept), steps=4,
                    concept_schedule="0:1")  # fmt: skip
    assert weights == [0.0] * 4
    no_lora, _ = render(tiny_base, tiny_adapter, tmp_path / "zero", use_concept=True, concept=str(concept), steps=4,
                        lora_scale=0.0)  # fmt: skip
    full, _ = render(tiny_base, tiny_adapter, tmp_path / "full", use_concept=True, concept=str(concept), steps=4)
    assert np.abs(off - no_lora).max() < EXACT  # weight 0 throughout is the concept's token without its LoRA
    assert np.abs(scheduled - full).max() > EXACT


def text_states_per_step(monkeypatch) -> list[torch.Tensor]:
    """The conditional text states the UNet gets at each call of the render (guidance's second half)."""
    states: list[torch.Tensor] = []

    def probe(pipe):
        def keep(module, args, kwargs):
            hidden = kwargs["encoder_hidden_states"]
            states.append(hidden[hidden.shape[0] // 2 :].clone())

        pipe.unet.register_forward_pre_hook(keep, with_kwargs=True)

    watch(monkeypatch, probe)
    return states


def test_class_prompt_schedule_renders_the_class_prompt_first_then_the_concept(
    concept, tiny_base, tiny_adapter, tmp_path, monkeypatch
):
    weights = concept_weight_per_step(monkeypatch)
    states = text_states_per_step(monkeypatch)
    out = tmp_path / "class"
    _, notes = render(tiny_base, tiny_adapter, out, use_concept=True, concept=str(concept), steps=4,
                      concept_schedule="class:0.5")  # fmt: skip
    assert weights == [0.0, 0.0, 1.0, 1.0]
    assert any("the class prompt, without the concept, in the first 50% of the steps" in n for n in notes)
    assert json.loads(next(out.glob("*.json")).read_text())["concept_schedule"] == "class:0.5"
    early, late = states[:2], states[2:]
    states.clear()
    render(tiny_base, tiny_adapter, tmp_path / "plain", steps=4)  # "a dog running" without the concept
    plain = states[:4]
    states.clear()
    render(tiny_base, tiny_adapter, tmp_path / "whole", use_concept=True, concept=str(concept), steps=4)
    whole = states[:4]
    assert all(torch.equal(e, plain[0]) for e in early)  # the class prompt, as the base model reads it
    assert all(torch.equal(x, whole[0]) for x in late)  # then the concept's prompt, "a <new1> dog running"
    assert not torch.equal(plain[0], whole[0])


def test_class_prompt_schedule_with_context_windows_is_one_clear_error(concept, tiny_base, tiny_adapter, tmp_path):
    with pytest.raises(cdvideo.UserError, match="cannot run with context windows"):
        render(tiny_base, tiny_adapter, tmp_path, use_concept=True, concept=str(concept), frames=24, steps=2,
               concept_schedule="class:0.5")  # fmt: skip


@pytest.mark.parametrize("schedule", ["0.4", "half:0.5", "0.4:1.5", "class", "class:1.5"])
def test_bad_concept_schedule_is_one_clear_line(schedule, tiny_base, tiny_adapter, tmp_path, capsys):
    code = cli_main(cli_animate_args(tiny_base, tiny_adapter, tmp_path, "--concept-schedule", schedule))
    err = capsys.readouterr().err
    assert code == 2 and "--concept-schedule" in err and "SCALE:SHARE" in err and "Traceback" not in err


def test_bf16_renders_on_the_cpu_close_to_fp32_and_is_recorded(tmp_path, monkeypatch):
    """bf16 is a speed setting on CPUs with bf16 units (docs/benchmarks.md): it runs the Shapes world in bf16, draws
    the same clip within bf16 rounding, is recorded in the settings JSON, and says so where it is slow."""
    from cdvideo import loading

    shapes = {"prompts": ["a red circle moving right"], "frames": 4}
    fp32, _ = render("shapes", "shapes", tmp_path / "fp32", precision="fp32", **shapes)
    dtypes = []
    monkeypatch.setattr(loading, "cpu_bf16_units", lambda: None)
    real = controls.apply
    monkeypatch.setattr(controls, "apply", lambda pipe, *a, **k: (dtypes.append(pipe.unet.dtype), real(pipe, *a, **k)))
    bf16, notes = render("shapes", "shapes", tmp_path / "bf16", precision="bf16", **shapes)
    assert dtypes == [torch.bfloat16]
    assert fp32.shape == bf16.shape
    gap = np.abs(fp32.astype(float) - bf16.astype(float)).mean() / 255
    assert 0 < gap < 0.05, gap  # another computation, the same picture
    (settings,) = (tmp_path / "bf16").glob("*.json")
    assert json.loads(settings.read_text())["precision"] == "bf16"
    assert any("no bf16 units" in line for line in notes)


@pytest.mark.parametrize(("units", "base", "expected"), [("AVX512-BF16", "shapes", "bf16"), (None, "shapes", "fp32"),
                                                         ("AMX", "tiny-sd15", "fp32")])  # fmt: skip
def test_the_default_precision_is_bf16_only_where_the_cpu_and_the_family_allow_it(
    units, base, expected, tiny_base, tiny_adapter, tmp_path, monkeypatch
):
    """On a CPU with bf16 units the Shapes world renders in bf16 unless told (measured as right as fp32 and 1.4-1.9x
    faster); a CPU without them, or a family nobody measured in bf16, renders in fp32. The settings say which."""
    from cdvideo import loading

    monkeypatch.setattr(loading, "cpu_bf16_units", lambda: units)
    dtypes = []
    real = controls.apply
    monkeypatch.setattr(controls, "apply", lambda pipe, *a, **k: (dtypes.append(pipe.unet.dtype), real(pipe, *a, **k)))
    models = ("shapes", "shapes") if base == "shapes" else (tiny_base, tiny_adapter)
    _, notes = render(*models, tmp_path / "default", prompts=["a red circle"], frames=2, steps=2)
    assert dtypes == [loading.DTYPES[expected]]
    (settings,) = (tmp_path / "default").glob("*.json")
    assert json.loads(settings.read_text())["precision"] == expected
    assert not any("bf16 units" in line for line in notes)
    render(*models, tmp_path / "asked", prompts=["a red circle"], frames=2, steps=2, precision="fp32")
    assert dtypes[-1] == torch.float32


@pytest.mark.parametrize(
    ("flags", "units"),
    [
        ("fpu avx2 avx512f avx512_bf16 avx512_vnni", "AVX512-BF16"),  # AMD EPYC (Zen 4): bf16 1.4x fp32 here
        ("avx2 avx512f avx512_bf16 amx_bf16 amx_tile", "AMX"),  # Xeon Sapphire Rapids
        ("fpu avx2 fma", None),  # AVX2 laptops: bf16 is emulated
        ("avx512f avx512_vnni", None),
    ],
)
def test_cpu_bf16_units_are_read_from_cpuinfo(flags, units):
    """The bf16 note reads /proc/cpuinfo: an AVX512-BF16 CPU renders bf16 faster and must not be told otherwise."""
    from cdvideo import loading

    assert loading.cpu_bf16_units(f"processor\t: 0\nflags\t\t: {flags}\n") == units


def test_a_concept_renders_at_its_recipes_strength_unless_told(concept, tiny_base, tiny_adapter, tmp_path, monkeypatch):
    """A concept's manifest carries the weight its recipe renders it at; animate applies it with no flags, says
    so, records it, and `--concept-schedule none --lora-scale 1` gives the plain concept back."""
    import shutil

    recommended = tmp_path / "recommended"
    shutil.copytree(concept, recommended)
    manifest = recommended / "cdvideo.json"
    manifest.write_text(
        json.dumps(json.loads(manifest.read_text()) | {"render_scale": 1.5, "render_schedule": "0.5:0.5"})
    )
    weights = concept_weight_per_step(monkeypatch)
    out = tmp_path / "default"
    _, notes = render(tiny_base, tiny_adapter, out, use_concept=True, concept=str(recommended), steps=4)
    assert weights == [0.5, 0.5, 1.5, 1.5]
    assert any("LoRA weight 1.5 (0.5 in the first 50% of the steps)" in line for line in notes)
    settings = json.loads(next(out.glob("*.json")).read_text())
    assert settings["concept_schedule"] == "0.5:0.5" and settings["lora_scale"] == 1.5

    weights.clear()
    out = tmp_path / "told"
    told, notes = render(tiny_base, tiny_adapter, out, use_concept=True, concept=str(recommended), steps=4,
                         concept_schedule="none", lora_scale=1.0, motion_loras=[])  # fmt: skip
    plain, _ = render(tiny_base, tiny_adapter, tmp_path / "plain", use_concept=True, concept=str(concept), steps=4)
    (said,) = [line for line in notes if "LoRA weight" in line]
    assert said.endswith("LoRA weight 1")
    assert np.abs(told - plain).max() < EXACT  # the same concept, at weight 1 throughout
    settings = json.loads(next(out.glob("*.json")).read_text())
    assert settings["concept_schedule"] == "none" and settings["lora_scale"] == 1.0


def test_the_composites_recipe_records_its_render_strength_in_the_concept(tmp_path):
    """... and its model card tells diffusers users the weight cdvideo renders it at."""
    from cdvideo import presets, strength
    from cdvideo.card import model_card_text
    from cdvideo.training import TrainConfig, concept_record

    cfg = TrainConfig(images=["photos"], class_word="circle", base="shapes", recipe="composites").resolved()
    record = concept_record(cfg, cfg.steps, 0.9, {})
    assert (record.render_scale, record.render_schedule) == (
        presets.COMPOSITES.render_scale,
        presets.COMPOSITES.render_schedule,
    )
    said = strength.describe(strength.parse_schedule(record.render_schedule), record.render_scale)
    assert f"rendered by `cdvideo animate` at | {said}" in model_card_text(tmp_path, record)
    plain = concept_record(TrainConfig(images=["photos"], class_word="circle", base="shapes").resolved(), 10, 0.9, {})
    assert (plain.render_scale, plain.render_schedule) == (1.0, None)
