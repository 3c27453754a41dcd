"""Training-step benchmark: cdvideo's real `train()` loop vs a DreamBooth-LoRA-style reference loop.

Both variants train the same thing on the same model, photos, batch size and resolution: UNet LoRA
(peft, `unet.add_adapter`) + the new token's embedding row, AdamW, noise MSE + ClassDiffusion's SPL.
They differ only in the per-step work:

- cdvideo: `cdvideo.training.train()` itself, timed per step through its `after_backward` hook.
  VAE posteriors are computed once before the loop (a latent is sampled per step), the concept prompt
  goes through the text encoder once per step (batch 1, expanded to the batch), and the class
  phrase's features are precomputed.
- reference: the loop of diffusers' `train_dreambooth_lora.py`: the pixel batch goes through the VAE
  encoder every step, the prompt batch (batch-size copies, tokenized per step) through the text encoder
  every step, and, for SPL, the class prompt's batch too (no grad). Its `loss.item()` per step is kept
  (the example logs it every step); its data loader, grad clipping and LR scheduler are left out,
  which only makes the reference faster.

Each block (one variant, one fresh subprocess) loads the model, trains `--warmup + --steps` steps and
times the last `--steps` of them (a timestamp after each backward pass, with a CUDA sync on GPUs).
Blocks alternate between the variants for `--rounds` rounds; the table reports each block and the
median steps/s per variant. Peak RSS is read per subprocess (VmHWM), for the whole process and for the
timed loop alone (the high-water mark is reset after warm-up).

    python benchmarks/bench_train.py                                   # shapes, 64 px, batch 4
    python benchmarks/bench_train.py --model tiny-sd
    python benchmarks/bench_train.py --model sd15-random --resolution 256 --steps 3 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SD15_CONFIGS = REPO / "configs" / "sd15"
CLIP_VOCAB_SIZE = 49408
TOKEN = "<new1>"
VARIANTS = ("reference", "cdvideo")
MODEL_DEFAULTS = {  # resolution, class word (one the model's tokenizer spells as a word), steps, warmup
    "shapes": {"resolution": 64, "class_word": "star", "steps": 12, "warmup": 2},
    "tiny-sd": {"resolution": 64, "class_word": "dog", "steps": 40, "warmup": 2},
    "sd15-random": {"resolution": 256, "class_word": "star", "steps": 3, "warmup": 1},
}
TOKENIZER_NOTE = (
    "sd15-random: random weights; tokenizer = cdvideo.shapes.models.build_tokenizer() BPE padded to CLIP's "
    f"{CLIP_VOCAB_SIZE} entries (the real CLIP vocabulary cannot be downloaded here), so the embedding matrix, "
    "its gradient and its AdamW state have SD1.5's real size"
)


# --------------------------------------------------------------------------------------------------
# Workers (each runs in its own subprocess)
# --------------------------------------------------------------------------------------------------


def _read_vm_hwm_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mib() -> float:
    hwm = _read_vm_hwm_mib()
    if hwm is not None:
        return hwm
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class StepClock:
    """Timestamps after each backward pass; resets the memory high-water marks when warm-up ends."""

    def __init__(self, device, warmup: int, total: int):
        import torch

        self.torch, self.device, self.warmup, self.total = torch, device, warmup, total
        self.times: list[float] = []
        self.process_peak_mib = 0.0
        self.loop_peak_mib: float | None = None
        self.cuda_peak_mib: float | None = None

    def __call__(self, _models=None) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            self.torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())
        n = len(self.times)
        if n == self.warmup:  # warm-up done: start the loop's own peaks from here
            self.process_peak_mib = _peak_rss_mib()
            self._reset_ok = _reset_peak_rss()
            if cuda:
                self.torch.cuda.reset_peak_memory_stats(self.device)
        if n == self.total:
            peak = _peak_rss_mib()
            self.process_peak_mib = max(self.process_peak_mib, peak)
            self.loop_peak_mib = peak if getattr(self, "_reset_ok", False) else None
            if cuda:
                self.cuda_peak_mib = self.torch.cuda.max_memory_allocated(self.device) / 2**20

    def result(self) -> dict:
        timed = self.times[self.warmup - 1 :]
        steps = len(timed) - 1
        seconds = timed[-1] - timed[0]
        return {
            "steps_timed": steps,
            "seconds": seconds,
            "steps_per_s": steps / seconds,
            "step_times": [b - a for a, b in zip(timed, timed[1:])],
            "peak_rss_mib": self.process_peak_mib,
            "loop_peak_rss_mib": self.loop_peak_mib,
            "cuda_max_allocated_mib": self.cuda_peak_mib,
        }


def _train_config(args):
    from cdvideo.training import TrainConfig

    return TrainConfig(
        images=[args.photos],
        class_word=args.class_word,
        base=args.base,
        output=args.output,
        token=TOKEN,
        steps=args.warmup + args.steps,
        resolution=args.resolution,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        flip=True,
    ).resolved()


def worker_cdvideo(args) -> dict:
    """cdvideo's real training loop, timed per step through its after_backward hook."""
    from cdvideo import loading
    from cdvideo.training import train

    cfg = _train_config(args)
    clock = StepClock(loading.pick_device(cfg.device), args.warmup, cfg.steps)
    train(cfg, say=lambda _msg: None, progress=False, after_backward=clock)
    first = json.loads((Path(cfg.output) / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1, first
    return {
        **clock.result(),
        "batch_size": cfg.batch_size,
        "mse_step1": first["mse"],
        "spl_step1": first["spl"],
        "loss_step1": first["mse"] + cfg.spl_weight * first["spl"],
    }


def worker_reference(args) -> dict:
    """The DreamBooth-LoRA loop (diffusers' train_dreambooth_lora.py) with the same trainables and SPL."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from cdvideo import data, loading
    from cdvideo.loss import at_eos, eos_features, semantic_preservation_loss
    from cdvideo.objective import diffusion_target
    from cdvideo.prompts import add_token
    from cdvideo.training import make_trainable, seed_everything
    from cdvideo.training_inputs import tokenize

    cfg = _train_config(args)
    device = loading.pick_device(cfg.device)
    photos = data.load_photos(cfg.images, cfg.resolution)
    seed_everything(cfg.seed)
    pipe = loading.load_image_pipeline(cfg.base, torch.float32, config=cfg.base_config).to(device)
    tokenizer, text_encoder, vae, unet = pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    token_id, _ = add_token(tokenizer, text_encoder, cfg.token, cfg.class_word)

    # Same trainables and optimizer as cdvideo.training.train.
    embeddings, optimizer, _ = make_trainable(cfg, unet, text_encoder, vae, token_id)

    # The "dataset": the same photos (and flips) as tensors; DreamBooth would decode and transform
    # them in its DataLoader every step, which is left out here.
    pixels = data.photos_to_tensor(photos.images, flip=cfg.flip).to(device)
    concept_prompt = f"a photo of a {cfg.token} {cfg.class_word}"
    class_prompt = f"a photo of a {cfg.class_word}"
    eos_id = tokenizer.eos_token_id
    generator = torch.Generator(device).manual_seed(cfg.seed)
    clock = StepClock(device, args.warmup, cfg.steps)
    first: dict = {}
    for step in range(cfg.steps):
        picks = torch.randint(len(pixels), (cfg.batch_size,), generator=generator, device=device)
        pixel_values = pixels[picks]
        # DreamBooth: encode the pixel batch every step.
        latents = vae.encode(pixel_values).latent_dist.sample(generator) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator, device=device)
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (len(latents),), generator=generator, device=device
        )
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        # DreamBooth: the batch's prompts (tokenized by the dataset) through the text encoder every step.
        input_ids = tokenize(tokenizer, [concept_prompt] * cfg.batch_size, device)
        hidden = text_encoder(input_ids)[0]
        # SPL the same way: the class prompt's batch, every step (no grad: it is only the target).
        class_ids = tokenize(tokenizer, [class_prompt] * cfg.batch_size, device)
        with torch.no_grad():
            class_features = eos_features(text_encoder, class_ids, eos_id)
        prediction = unet(noisy, timesteps, hidden, return_dict=False)[0]
        target = diffusion_target(noise_scheduler, latents, noise, timesteps)
        mse = F.mse_loss(prediction.float(), target.float(), reduction="mean")
        spl = semantic_preservation_loss(at_eos(hidden, input_ids, eos_id), class_features)
        loss = mse + cfg.spl_weight * spl
        loss.backward()
        clock()
        optimizer.step()
        optimizer.zero_grad()
        logs = {"loss": loss.detach().item()}  # DreamBooth logs (and syncs) every step
        if step == 0:
            first = {"mse_step1": mse.item(), "spl_step1": spl.item(), "loss_step1": logs["loss"]}
    return {**clock.result(), "batch_size": cfg.batch_size, **first}


def padded_clip_tokenizer():
    """The Shapes BPE tokenizer with its vocabulary padded to CLIP's 49408 ids (BOS 49406, EOS 49407).

    Filler entries are never produced by its merges; they only give the text encoder's embedding
    matrix (and so its gradient and AdamW state) SD1.5's real size, as `add_token` resizes it.
    """
    from transformers import CLIPTokenizer

    from cdvideo.shapes.models import BOS, EOS, build_tokenizer

    base = build_tokenizer()
    model = json.loads(base.backend_tokenizer.to_str())["model"]
    vocab = {k: v for k, v in sorted(base.get_vocab().items(), key=lambda kv: kv[1]) if k not in (BOS, EOS)}
    for i in range(CLIP_VOCAB_SIZE - 2 - len(vocab)):
        vocab[f"<|filler{i}|>"] = len(vocab)
    vocab[BOS], vocab[EOS] = len(vocab), len(vocab) + 1
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    assert len(tokenizer) == CLIP_VOCAB_SIZE and tokenizer.eos_token_id == CLIP_VOCAB_SIZE - 1, len(tokenizer)
    return tokenizer


def build_sd15_random(folder: Path) -> Path:
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIGS / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIGS / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_json_file(SD15_CONFIGS / "text_encoder" / "config.json"))
    scheduler = PNDMScheduler.from_config(PNDMScheduler.load_config(SD15_CONFIGS / "scheduler"))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=padded_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def worker_build(args) -> dict:
    work = Path(args.output)
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_base, write_dog_photos

    photos = write_dog_photos(work / "photos", args.resolution)
    if args.model == "shapes":
        base = "shapes"
    elif args.model == "tiny-sd":
        base = str(build_tiny_base(work / "tiny-sd"))
    else:
        base = str(build_sd15_random(work / "sd15-random"))
    return {"base": base, "photos": str(photos)}


def machine_info(device: str | None) -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), cpu)
    except OSError:
        pass
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if use_cuda else "cpu",
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def serve_worker(args, workers: dict) -> None:
    """Run `workers[args.worker]` in this (worker) process and write its result as JSON."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    work = {**workers, "info": lambda a: machine_info(a.device)}[args.worker]
    result = work(args)
    Path(args.result).write_text(json.dumps(result))


def run_worker(args) -> None:
    serve_worker(args, {"cdvideo": worker_cdvideo, "reference": worker_reference, "build": worker_build})


# --------------------------------------------------------------------------------------------------
# Driver (never imports torch: its own memory stays out of the way)
# --------------------------------------------------------------------------------------------------


def _spawn(kind: str, args, tmp: Path, extra: list[str]) -> dict:
    result = tmp / f"{kind}-{time.monotonic_ns()}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--result",
        str(result),
        "--model",
        args.model,
        "--seed",
        str(args.seed),
        *extra,
    ]
    if args.device:
        cmd += ["--device", args.device]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONWARNINGS": "ignore",
    }
    if args.threads > 0:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{kind} worker failed (exit {proc.returncode})")
    return json.loads(result.read_text())


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODEL_DEFAULTS), default="shapes")
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--batch-size", type=int, help="default: the model family's training preset")
    parser.add_argument("--steps", type=int, help="timed steps per block")
    parser.add_argument("--warmup", type=int, help="untimed steps at the start of each block (>= 1)")
    parser.add_argument("--rounds", type=int, default=3, help="reference/cdvideo block pairs, interleaved")
    parser.add_argument("--class-word")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per worker (OMP_NUM_THREADS and torch); 0 = torch's default. Default 1: "
        "on a shared 2-core machine, 2 threads next to another job ran ~90x slower",
    )
    parser.add_argument("--json", help="write all results to this file")
    # worker-only
    parser.add_argument("--worker", choices=["cdvideo", "reference", "build", "info"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--photos", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = MODEL_DEFAULTS[args.model]
    for name in ("resolution", "class_word", "steps", "warmup"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    if args.worker:
        run_worker(args)
        return None
    if args.steps < 1 or args.warmup < 1 or args.rounds < 1:
        parser.error("--steps, --warmup and --rounds must be >= 1")

    with tempfile.TemporaryDirectory(prefix="cdvideo-bench-") as tmp_name:
        tmp = Path(tmp_name)
        started = time.perf_counter()
        info = _spawn("info", args, tmp, [])
        built = _spawn("build", args, tmp, ["--output", str(tmp), "--resolution", str(args.resolution)])
        common = [
            "--base",
            built["base"],
            "--photos",
            built["photos"],
            "--resolution",
            str(args.resolution),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--class-word",
            args.class_word,
        ]
        if args.batch_size:
            common += ["--batch-size", str(args.batch_size)]
        blocks = []
        for r in range(args.rounds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]  # ABBA...: no variant always goes first
            for variant in order:
                out = tmp / f"out-{variant}-{r}"
                res = _spawn(variant, args, tmp, [*common, "--output", str(out)])
                blocks.append({"variant": variant, "round": r + 1, **res})
                print(f"  round {r + 1} {variant:9s} {res['steps_per_s']:8.3f} steps/s", flush=True)
        wall = time.perf_counter() - started
        info["loadavg_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    batch = blocks[0]["batch_size"]
    summary = {}
    for variant in VARIANTS:
        mine = [b for b in blocks if b["variant"] == variant]

        def med(key, mine=mine):
            values = [b[key] for b in mine if b[key] is not None]
            return statistics.median(values) if values else None

        summary[variant] = {
            k: med(k)
            for k in (
                "steps_per_s",
                "peak_rss_mib",
                "loop_peak_rss_mib",
                "cuda_max_allocated_mib",
                "mse_step1",
                "spl_step1",
                "loss_step1",
            )
        }
    for variant in VARIANTS:  # robust to CPU-contention spikes: the median single step over all blocks
        pooled = [t for b in blocks if b["variant"] == variant for t in b["step_times"]]
        summary[variant]["median_step_s"] = statistics.median(pooled)
    ratio = summary["cdvideo"]["steps_per_s"] / summary["reference"]["steps_per_s"]
    ratio_median_step = summary["reference"]["median_step_s"] / summary["cdvideo"]["median_step_s"]
    device = "cpu" if info["device"] == "cpu" else "cuda"

    header = (
        f"{'variant':10s} {'round':>5s} {'steps/s':>9s} {'s/step':>8s} {'mse@1':>9s} {'spl@1':>9s} "
        f"{'loss@1':>9s} {'peakRSS MiB':>12s} {'loopRSS MiB':>12s} {'CUDA max MiB':>13s}"
    )
    print()
    print(
        f"model {args.model}, batch {batch}, {args.resolution}px, {args.steps} timed steps/block "
        f"(+{args.warmup} warm-up), {args.rounds} rounds, device {info['device']}, torch {info['torch']}, "
        f"{info['torch_threads']} threads, CPU {info['cpu']} x{info['cpu_count']}"
    )
    if args.model == "sd15-random":
        print(f"note: {TOKENIZER_NOTE}")
    print(header)
    print("-" * len(header))
    rows = blocks + [{"variant": v, "round": "med", **summary[v]} for v in VARIANTS]
    for b in rows:
        sps = b["steps_per_s"]
        print(
            f"{b['variant']:10s} {b['round']!s:>5s} {sps:9.3f} {1 / sps:8.3f} {_fmt(b['mse_step1'], '9.4f')} "
            f"{_fmt(b['spl_step1'], '9.4f')} {_fmt(b['loss_step1'], '9.4f')} {_fmt(b['peak_rss_mib'], '12.0f')} "
            f"{_fmt(b['loop_peak_rss_mib'], '12.0f')} {_fmt(b['cuda_max_allocated_mib'], '13.0f')}"
        )
    ref, cd = summary["reference"], summary["cdvideo"]
    spl_equal = abs(ref["spl_step1"] - cd["spl_step1"]) <= 1e-4 + 1e-3 * abs(ref["spl_step1"])
    mse_close = 1 / 3 <= cd["mse_step1"] / max(ref["mse_step1"], 1e-12) <= 3
    sanity = "OK" if spl_equal and mse_close else "CHECK"
    print(
        f"step-1 sanity ({sanity}): SPL equal {spl_equal} (same weights, same prompts); "
        f"MSE within 3x {mse_close} (different noise/timestep draws)"
    )
    line = f"cdvideo/reference steps/s = {ratio:.2f}x ({args.model}, batch {batch}, {args.resolution}px, {device})"
    print(line)
    print(
        f"(from the median single step over all blocks: {ratio_median_step:.2f}x; "
        f"reference {ref['median_step_s']:.3f} s, cdvideo {cd['median_step_s']:.3f} s)"
    )
    print(
        f"(total wall time {wall:.0f} s; 1-min load average {info['loadavg_1min']} at start, "
        f"{info['loadavg_1min_end']} at end, on {info['cpu_count']} CPUs)"
    )

    results = {
        "args": {
            k: v for k, v in vars(args).items() if k not in ("worker", "result", "base", "photos", "output", "json")
        },
        "batch_size": batch,
        "machine": info,
        "blocks": blocks,
        "median": summary,
        "ratio": ratio,
        "ratio_median_step": ratio_median_step,
        "sanity": sanity,
        "summary": line,
        "wall_s": wall,
        "notes": [TOKENIZER_NOTE] if args.model == "sd15-random" else [],
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
