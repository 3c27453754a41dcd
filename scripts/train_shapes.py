"""Train the embedded Shapes model family: VAE, then text encoder + UNet, then motion adapter.

    python scripts/train_shapes.py --phase vae --seconds 600
    python scripts/train_shapes.py --phase base --seconds 3600      # resumable: run it again
    python scripts/train_shapes.py --phase motion --seconds 1800
    python scripts/train_shapes.py --phase export                   # -> cdvideo/shapes/weights/

Each phase trains for a wall-clock budget, checkpoints every `--checkpoint-minutes` into
`--run-dir`, and resumes from its latest checkpoint when started again, so training can span
several sittings on a CPU or one short session on a GPU. `log.jsonl` in the run dir records
commands, steps, losses and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline, UNetMotionModel
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cdvideo.shapes import models, world  # noqa: E402

FRAMES = 16
# bf16 autocast on GPUs; CDVIDEO_AUTOCAST=1 checks the same code path on a CPU.
AUTOCAST = torch.cuda.is_available() or os.environ.get("CDVIDEO_AUTOCAST") == "1"


def log(run_dir: Path, **record) -> None:
    record["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
    line = json.dumps(record)
    print(line, flush=True)
    with open(run_dir / "log.jsonl", "a") as f:
        f.write(line + "\n")


def save_checkpoint(path: Path, modules: dict[str, torch.nn.Module], state: dict) -> None:
    """Write the checkpoint folder `path` whole under a temp name, then swap it in.

    The previous checkpoint is kept as `PATH.old` (the one before it is dropped first: a folder
    cannot be renamed onto a non-empty one); it stays loadable until the new folder is in place."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)  # a half-written folder from a killed save
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(tensors, tmp / f"{name}.safetensors")
    torch.save(state, tmp / "state.pt")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)


def has_checkpoint(path: Path) -> bool:
    """Whether `path` holds a checkpoint; one killed between save_checkpoint's two renames is put back."""
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        os.replace(old, path)
    return path.exists()


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module]) -> dict:
    for name, module in modules.items():
        module.load_state_dict(load_file(path / f"{name}.safetensors"))
    return torch.load(path / "state.pt", weights_only=True)


class EMA:
    """Exponential moving average of parameters, the weights that get exported."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module = module
        self.decay = decay
        self.shadow = [p.detach().clone() for p in module.parameters()]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.module.parameters()], 1 - decay)

    def as_module_state(self) -> dict[str, torch.Tensor]:
        names = [n for n, _ in self.module.named_parameters()]
        state = dict(self.module.state_dict())
        state.update(dict(zip(names, self.shadow)))
        return state


_TOKEN_CACHE: dict[str, torch.Tensor] = {}


def tokenize(tokenizer, captions: list[str], device) -> torch.Tensor:
    """Token ids, cached per caption: the grammar has a few thousand captions, and tokenizing a
    batch of 512 every step cost more host time than the GPU's whole step."""
    missing = sorted({c for c in captions if c not in _TOKEN_CACHE})
    if missing:
        ids = tokenizer(missing, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        _TOKEN_CACHE.update(zip(missing, ids))
    return torch.stack([_TOKEN_CACHE[c] for c in captions]).to(device, non_blocking=True)


def sample_batch(n: int, device, generator: torch.Generator, with_subject: float = 0.0):
    """Random single frames of random clips, so still images carry a hint of their motion."""
    scene = world.sample_scenes(n, generator)
    motion = torch.randint(len(world.MOTIONS), (n,), generator=generator)
    index = torch.randint(FRAMES, (n,), generator=generator)
    scene = world.frame_scenes(scene, motion, FRAMES, index)
    if with_subject:
        subject = torch.rand(n, generator=generator) < with_subject
        scene.pattern = subject
    return scene.to(device), motion


def lr_at(step: int, base_lr: float, warmup: int = 500) -> float:
    return base_lr * min(1.0, (step + 1) / warmup)


def train_vae(args, run_dir: Path, device) -> None:
    vae = models.build_vae().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr or 1e-3, weight_decay=0.0)
    ckpt = run_dir / "vae"
    state = load_checkpoint(ckpt, {"vae": vae}) if has_checkpoint(ckpt) else {"step": 0, "seconds": 0.0}
    if "opt" in state:
        opt.load_state_dict(state["opt"])
    gen = torch.Generator().manual_seed(args.seed + state["step"])
    step, spent, start, last_save = state["step"], state["seconds"], time.time(), time.time()
    while time.time() - start < args.seconds:
        scene, _ = sample_batch(args.batch, device, gen, with_subject=0.15)
        x = world.render(scene) * 2 - 1
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=AUTOCAST):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
        recon = recon.float()
        kl = posterior.kl().mean() / x[0].numel()
        loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            log(run_dir, phase="vae", step=step, loss=round(loss.item(), 5), kl=round(kl.item(), 3))
        if time.time() - last_save > args.checkpoint_minutes * 60:
            save_checkpoint(
                ckpt, {"vae": vae}, {"step": step, "seconds": spent + time.time() - start, "opt": opt.state_dict()}
            )
            last_save = time.time()
    # The latent scale SD expects: unit variance of scaled latents.
    with torch.no_grad():
        scene, _ = sample_batch(512, device, gen, with_subject=0.15)
        latents = vae.encode(world.render(scene) * 2 - 1).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    save_checkpoint(
        ckpt,
        {"vae": vae},
        {
            "step": step,
            "seconds": spent + time.time() - start,
            "opt": opt.state_dict(),
            "scaling_factor": vae.config.scaling_factor,
        },
    )
    log(
        run_dir,
        phase="vae",
        step=step,
        done=True,
        scaling_factor=vae.config.scaling_factor,
        seconds=round(spent + time.time() - start),
    )


def load_vae(run_dir: Path, device):
    vae = models.build_vae()
    state = load_checkpoint(run_dir / "vae", {"vae": vae})
    vae.register_to_config(scaling_factor=state["scaling_factor"])
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode(vae, images: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    parts = [vae.encode(c * 2 - 1).latent_dist.sample() for c in images.split(chunk)]
    return torch.cat(parts) * vae.config.scaling_factor


def diffusion_loss(model_pred: torch.Tensor, scheduler, latents, noise, timesteps) -> torch.Tensor:
    target = scheduler.get_velocity(latents, noise, timesteps)
    return F.mse_loss(model_pred.float(), target.float())


def train_base(args, run_dir: Path, device) -> None:
    tokenizer = models.build_tokenizer()
    text_encoder = models.build_text_encoder(len(tokenizer)).to(device)
    unet = models.build_unet().to(device)
    vae = load_vae(run_dir, device)
    scheduler = models.train_scheduler()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr or 4e-4, weight_decay=1e-2)
    ema_unet, ema_text = EMA(unet, 0.999), EMA(text_encoder, 0.999)
    ckpt = run_dir / "base"
    modules = {"unet": unet, "text_encoder": text_encoder}
    state = {"step": 0, "seconds": 0.0}
    if has_checkpoint(ckpt):
        state = load_checkpoint(ckpt, modules)
        if "opt" in state:
            opt.load_state_dict(state["opt"])
        ema_unet.shadow = [t.to(device) for t in state["ema_unet"]]
        ema_text.shadow = [t.to(device) for t in state["ema_text"]]
    gen = torch.Generator().manual_seed(args.seed + state["step"])
    step, spent, start, last_save = state["step"], state["seconds"], time.time(), time.time()

    def checkpoint():
        save_checkpoint(
            ckpt,
            modules,
            {
                "step": step,
                "seconds": spent + time.time() - start,
                "opt": opt.state_dict(),
                "ema_unet": ema_unet.shadow,
                "ema_text": ema_text.shadow,
            },
        )

    while time.time() - start < args.seconds:
        scene, motion = sample_batch(args.batch, device, gen)
        captions = world.random_captions(scene, motion, gen, drop=0.1)
        latents = encode(vae, world.render(scene))
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (len(latents),), device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr or 4e-4)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=AUTOCAST):
            hidden = text_encoder(tokenize(tokenizer, captions, device))[0]
            pred = unet(noisy, timesteps, hidden).sample
        loss = diffusion_loss(pred, scheduler, latents, noise, timesteps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(step)
        ema_text.update(step)
        step += 1
        if step % 100 == 0:
            log(
                run_dir, phase="base", step=step, loss=round(loss.item(), 5), seconds=round(spent + time.time() - start)
            )
        if time.time() - last_save > args.checkpoint_minutes * 60:
            checkpoint()
            last_save = time.time()
    checkpoint()
    log(run_dir, phase="base", step=step, done=True, seconds=round(spent + time.time() - start))


def load_base(run_dir: Path, device):
    """Tokenizer, text encoder and UNet with their EMA weights."""
    tokenizer = models.build_tokenizer()
    text_encoder = models.build_text_encoder(len(tokenizer))
    unet = models.build_unet()
    state = torch.load(run_dir / "base" / "state.pt", weights_only=True, map_location="cpu")
    for module, shadow in ((unet, state["ema_unet"]), (text_encoder, state["ema_text"])):
        names = [n for n, _ in module.named_parameters()]
        full = dict(module.state_dict())
        full.update(dict(zip(names, shadow)))
        module.load_state_dict(full)
    return tokenizer, text_encoder.to(device).eval(), unet.to(device).eval()


def train_motion(args, run_dir: Path, device) -> None:
    tokenizer, text_encoder, unet = load_base(run_dir, device)
    text_encoder.requires_grad_(False)
    vae = load_vae(run_dir, device)
    adapter = models.build_motion_adapter()
    ckpt = run_dir / "motion"
    state = {"step": 0, "seconds": 0.0}
    if has_checkpoint(ckpt):
        state = load_checkpoint(ckpt, {"motion_adapter": adapter})
    motion_unet = UNetMotionModel.from_unet2d(unet, adapter).to(device)
    motion_unet.freeze_unet2d_params()
    params = [p for p in motion_unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr or 3e-4, weight_decay=1e-2)
    if "opt" in state:
        opt.load_state_dict(state["opt"])
    scheduler = models.train_scheduler()
    gen = torch.Generator().manual_seed(args.seed + state["step"])
    clips = max(1, args.batch // FRAMES)
    step, spent, start, last_save = state["step"], state["seconds"], time.time(), time.time()

    def checkpoint():
        fresh = models.build_motion_adapter()
        prefix_map = _adapter_state(motion_unet)
        fresh.load_state_dict(prefix_map)
        save_checkpoint(
            ckpt,
            {"motion_adapter": fresh},
            {"step": step, "seconds": spent + time.time() - start, "opt": opt.state_dict()},
        )

    while time.time() - start < args.seconds:
        scene = world.sample_scenes(clips, gen).to(device)
        motion = torch.randint(len(world.MOTIONS), (clips,), generator=gen)
        video = world.render_clip(scene, motion.to(device), FRAMES)  # (B, F, 3, H, W)
        latents = encode(vae, video.flatten(0, 1)).unflatten(0, (clips, FRAMES)).transpose(1, 2)
        captions = [
            world.caption(
                int(scene.cls[i]),
                int(scene.colour[i]),
                int(scene.accessory[i]),
                int(scene.background[i]),
                int(motion[i]),
            )
            for i in range(clips)
        ]
        captions = ["" if torch.rand(1, generator=gen).item() < 0.1 else c for c in captions]
        with torch.no_grad():
            hidden = text_encoder(tokenize(tokenizer, captions, device))[0]
        # UNetMotionModel takes one prompt embedding per frame, as AnimateDiffPipeline passes it.
        hidden = hidden.repeat_interleave(FRAMES, dim=0)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (clips,), device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr or 3e-4, warmup=200)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=AUTOCAST):
            pred = motion_unet(noisy, timesteps, hidden).sample
        target = scheduler.get_velocity(latents, noise, timesteps)
        loss = F.mse_loss(pred.float(), target.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            log(
                run_dir,
                phase="motion",
                step=step,
                loss=round(loss.item(), 5),
                seconds=round(spent + time.time() - start),
            )
        if time.time() - last_save > args.checkpoint_minutes * 60:
            checkpoint()
            last_save = time.time()
    checkpoint()
    log(run_dir, phase="motion", step=step, done=True, seconds=round(spent + time.time() - start))


def _adapter_state(motion_unet: UNetMotionModel) -> dict[str, torch.Tensor]:
    """The motion-module weights of a UNetMotionModel, keyed as in MotionAdapter."""
    state = {}
    for name, tensor in motion_unet.state_dict().items():
        if "motion_modules" in name:
            state[name] = tensor.detach().cpu()
    return state


def export(args, run_dir: Path) -> None:
    tokenizer, text_encoder, unet = load_base(run_dir, "cpu")
    vae = load_vae(run_dir, "cpu")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=models.sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # fp16 on disk keeps the package small; cdvideo loads it in the dtype it computes in.
    pipe.to(torch.float16).save_pretrained(models.BASE_DIR, safe_serialization=True)
    adapter = models.build_motion_adapter()
    if (run_dir / "motion").exists():
        load_checkpoint(run_dir / "motion", {"motion_adapter": adapter})
        adapter.to(torch.float16).save_pretrained(models.MOTION_DIR, safe_serialization=True)
    provenance = [json.loads(line) for line in open(run_dir / "log.jsonl")]
    done = [r for r in provenance if r.get("done") or r.get("command")]
    (models.WEIGHTS_DIR / "TRAINING.json").write_text(json.dumps({"phases": done}, indent=2) + "\n")
    log(run_dir, phase="export", to=str(models.WEIGHTS_DIR))


def seed_run_from_shipped_weights(run_dir: Path) -> None:
    """Start a run from the weights in the package (to train them further on another machine)."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextModel

    history = json.loads((models.WEIGHTS_DIR / "TRAINING.json").read_text())["phases"]
    steps = {r["phase"]: r for r in history if r.get("done")}
    if not (run_dir / "base").exists():
        for record in history:  # keep the earlier sittings' provenance in this run's log
            kept = {k: v for k, v in record.items() if k not in ("time", "earlier_sitting")}
            log(run_dir, **kept, earlier_sitting=record.get("earlier_sitting", record.get("time")))
    base = models.BASE_DIR
    if not (run_dir / "vae").exists():
        vae = AutoencoderKL.from_pretrained(base / "vae", dtype=torch.float32)
        save_checkpoint(
            run_dir / "vae",
            {"vae": vae},
            {
                "step": steps["vae"]["step"],
                "seconds": steps["vae"]["seconds"],
                "scaling_factor": vae.config.scaling_factor,
            },
        )
    if not (run_dir / "base").exists():
        unet = UNet2DConditionModel.from_pretrained(base / "unet", dtype=torch.float32)
        text = CLIPTextModel.from_pretrained(base / "text_encoder", dtype=torch.float32)
        save_checkpoint(
            run_dir / "base",
            {"unet": unet, "text_encoder": text},
            {
                "step": steps["base"]["step"],
                "seconds": steps["base"]["seconds"],
                "ema_unet": [p.detach().clone() for p in unet.parameters()],
                "ema_text": [p.detach().clone() for p in text.parameters()],
            },
        )
    if not (run_dir / "motion").exists() and "motion" in steps:
        adapter = MotionAdapter.from_pretrained(models.MOTION_DIR, dtype=torch.float32)
        save_checkpoint(
            run_dir / "motion",
            {"motion_adapter": adapter},
            {"step": steps["motion"]["step"], "seconds": steps["motion"]["seconds"]},
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["vae", "base", "motion", "export"], required=True)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/shapes"))
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-minutes", type=float, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--init-from-weights",
        action="store_true",
        help="start from the weights shipped in the package when the run dir has no checkpoint",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    args.batch = args.batch or (512 if device.type == "cuda" else 32)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    log(args.run_dir, command=" ".join(sys.argv), device=str(device), batch=args.batch)
    if args.init_from_weights:
        seed_run_from_shipped_weights(args.run_dir)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    {"vae": train_vae, "base": train_base, "motion": train_motion}.get(args.phase, lambda a, r, d: export(a, r))(
        args, args.run_dir, device
    )


if __name__ == "__main__":
    main()
