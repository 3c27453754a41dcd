"""Scale-out: training and batch rendering as 2 CPU processes (torchrun, gloo), as `accelerate launch` runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cdvideo
from cdvideo import concept as concepts

REPO = Path(__file__).resolve().parent.parent


def launch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Two processes on this machine's CPUs: torchrun is what `accelerate launch --multi_gpu` starts."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_process_training_averages_gradients_and_writes_the_concept_once(tiny_base, dog_photos, tmp_path):
    # Each rank keeps its own LoRA after training: equal only if the gradients were averaged,
    # since the ranks draw different batches.
    script = tmp_path / "train2.py"
    script.write_text(
        textwrap.dedent(f"""
        import os
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file
        import cdvideo

        seen = {{}}
        def keep(models):
            seen.update(models)
        cfg = cdvideo.TrainConfig(images=[{str(dog_photos)!r}], class_word="dog", base={str(tiny_base)!r},
                                  output={str(tmp_path / "concept")!r}, steps=3, resolution=64, batch_size=1,
                                  gradient_accumulation=2)
        cdvideo.train(cfg, progress=False, after_backward=keep)
        rank = os.environ["RANK"]
        state = {{k: v.contiguous() for k, v in get_peft_model_state_dict(seen["unet"]).items()}}
        save_file(state, {str(tmp_path)!r} + f"/rank{{rank}}.safetensors")
    """)
    )
    result = launch([str(script)], tmp_path)
    assert result.stdout.count("wrote concept to") == 1  # the main process reports and writes
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    concept = concepts.load_concept(tmp_path / "concept")
    saved = {k.removeprefix("unet."): v for k, v in load_file(tmp_path / "concept" / concepts.LORA_FILE).items()}
    assert saved.keys() == rank0.keys() and all(torch.equal(saved[k], rank0[k]) for k in saved)
    steps = [json.loads(line)["step"] for line in (tmp_path / "concept" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 3  # one writer
    assert json.loads((tmp_path / "concept" / "train_config.json").read_text())["num_processes"] == 2
    assert concept.steps == 3


def test_gradient_accumulation_and_bf16_autocast_in_one_process(tiny_base, dog_photos, tmp_path):
    from diffusers import UNet2DConditionModel
    from torch.optim.optimizer import register_optimizer_step_post_hook

    seen = {"unet_calls": 0, "activations": set(), "optimizer_steps": 0, "trainable": set(), "grads": set()}

    def on_unet(module, args):
        if isinstance(module, UNet2DConditionModel):
            if not seen["unet_calls"]:  # once: what the first convolution inside the UNet computes in
                module.conv_in.register_forward_hook(lambda m, a, out: seen["activations"].add(out.dtype))
            seen["unet_calls"] += 1

    def on_step(optimizer, args, kwargs):
        seen["optimizer_steps"] += 1

    def after_backward(models):
        trainable = [p for p in models["unet"].parameters() if p.requires_grad]
        seen["trainable"] |= {p.dtype for p in trainable}
        seen["grads"] |= {p.grad.dtype for p in trainable if p.grad is not None}

    cfg = cdvideo.TrainConfig(images=[str(dog_photos)], class_word="dog", base=str(tiny_base),
                              output=str(tmp_path / "c"), steps=2, resolution=64, batch_size=1,
                              gradient_accumulation=2, mixed_precision="bf16")  # fmt: skip
    # Global hooks: the UNet and optimizer are built inside train(); these see the real ones at work.
    hooks = [
        torch.nn.modules.module.register_module_forward_pre_hook(on_unet),
        register_optimizer_step_post_hook(on_step),
    ]
    try:
        cdvideo.train(cfg, say=lambda s: None, progress=False, after_backward=after_backward)
    finally:
        for hook in hooks:
            hook.remove()
    # Accumulation: 2 steps x 2 batches = 4 UNet passes, but the optimizer really steps only twice.
    assert seen["unet_calls"] == 4
    assert seen["optimizer_steps"] == 2
    # Autocast: the UNet computes in bf16 while the trainable LoRA weights and their gradients stay fp32.
    assert seen["activations"] == {torch.bfloat16}
    assert seen["trainable"] == {torch.float32} and seen["grads"] == {torch.float32}
    assert concepts.load_concept(tmp_path / "c").steps == 2
    lora = load_file(tmp_path / "c" / concepts.LORA_FILE)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in lora.values())


@pytest.mark.slow
def test_batch_rendering_splits_prompt_seed_jobs_and_writes_each_once(tiny_base, tiny_adapter, tmp_path):
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(
        textwrap.dedent(f"""
        base: {tiny_base}
        motion_adapter: {tiny_adapter}
        use_concept: false
        prompts: [a dog running, a cat on the beach, a dog wearing headphones]
        seeds: [0, 1]
        frames: 2
        steps: 1
        width: 64
        height: 64
    """)
    )
    out = tmp_path / "out"
    result = launch(["-m", "cdvideo.cli", "animate", "--prompt-file", str(prompts), "--output", str(out)], tmp_path)
    # Two processes share one stdout, so a line may start mid-way through the other's: find, don't split.
    wrote = re.findall(r"wrote (\S+\.mp4) and", result.stdout)
    assert len(wrote) == 6 and len(set(wrote)) == 6  # 3 prompts x 2 seeds, each by one process
    for kind in ("mp4", "gif", "json"):
        assert len(list(out.glob(f"*.{kind}"))) == 6
    assert not list(out.glob(".*"))  # no temp files left behind
    seeds = sorted((json.loads(p.read_text())["prompt"], json.loads(p.read_text())["seed"]) for p in out.glob("*.json"))
    assert len(set(seeds)) == 6


def test_fp16_autocast_on_the_cpu_is_one_clear_line(tiny_base, dog_photos, tmp_path, capsys):
    from conftest import cli_train_args

    from cdvideo.cli import main as cli_main

    args = cli_train_args(tiny_base, dog_photos, tmp_path / "c", "--mixed-precision", "fp16", "--device", "cpu")
    assert cli_main(args) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
