"""Train a direction MotionLoRA for the Shapes family on the world's clips, as AnimateDiff's MotionLoRAs are:
LoRA on the motion modules' attention (peft through diffusers' adapter API), the rest frozen.

    nohup nice -n 15 python scripts/train_motion_lora.py --motion right --steps 300 > motion-right.log 2>&1 &
    python scripts/train_motion_lora.py --motion right --steps 300 --resume      # continue after a stop
    python scripts/train_motion_lora.py --motion right --frames 8 ...            # 8-frame clips: half the cost

It checkpoints into `--run-dir` every `--checkpoint-minutes` (and on SIGTERM/Ctrl-C), and at the end
writes `--output` (default RUN_DIR/lora): `pytorch_lora_weights.safetensors` (fp16, loadable by stock
diffusers `AnimateDiffPipeline.load_lora_weights(folder, adapter_name=...)`) and `TRAINING.json`.
After measuring it, ship it as cdvideo/shapes/weights/motion_loras/<motion>/, where `--motion <motion>`
finds it. Every step draws fresh clips of the asked motion from the world.

The loss adds MotionDirector's point (Zhao et al. 2023) to the plain one: the frame-to-frame change of
the prediction is matched too (`--temporal-weight`), and the low-noise steps, where the layout and the
path are already set, are skipped (`--min-timestep`). For "right", 300 steps of 4 clips: the plain
loss at lr 3e-4 moved clips right in 0.25 of 16 (0.62 at weight 3); this one in 0.81 at weight 1.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_shapes as kit  # noqa: E402

from cdvideo.atomic import atomic_dir, write_json_atomic  # noqa: E402
from cdvideo.directions import CAMERA, SHAPES_LORA_FILE, SHAPES_RECORD  # noqa: E402
from cdvideo.shapes import models, world  # noqa: E402

DIRECTIONS = ("left", "right", "up", "down")
# AnimateDiff's MotionLoRAs adapt the motion modules' attention projections.
TARGET_ENDS = (".to_q", ".to_k", ".to_v", ".to_out.0")
# Settings a resumed run must share with its checkpoint.
SHAPE_KEYS = ("motion", "frames", "clips", "rank", "temporal_weight", "min_timestep")


def build_models(device: torch.device):
    """The shipped Shapes family, fp32, as a frozen UNetMotionModel plus its text encoder and VAE."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    base = models.BASE_DIR
    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder", dtype=torch.float32).to(device).eval()
    vae = AutoencoderKL.from_pretrained(base / "vae", dtype=torch.float32).to(device).eval()
    unet2d = UNet2DConditionModel.from_pretrained(base / "unet", dtype=torch.float32)
    adapter = MotionAdapter.from_pretrained(models.MOTION_DIR, dtype=torch.float32)
    unet = UNetMotionModel.from_unet2d(unet2d, adapter).to(device)
    for module in (text_encoder, vae, unet):
        module.requires_grad_(False)
    return tokenizer, text_encoder, vae, unet


def add_motion_lora(unet, rank: int) -> list[torch.nn.Parameter]:
    from peft import LoraConfig

    targets = [n for n, _ in unet.named_modules() if "motion_modules" in n and n.endswith(TARGET_ENDS)]
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=True))
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def captions_for(scene, motion_index: int, generator: torch.Generator) -> list[str]:
    """Half the captions name the motion and a tenth are empty (guidance's unconditional pass), so
    the LoRA moves the clip whether or not the prompt says so."""
    out = []
    for i in range(len(scene)):
        draw = torch.rand(2, generator=generator)
        text = world.caption(
            int(scene.cls[i]),
            int(scene.colour[i]),
            int(scene.accessory[i]),
            int(scene.background[i]),
            motion_index if draw[0] < 0.5 else 0,
        )
        out.append("" if draw[1] < 0.1 else text)
    return out


def training_step(args, parts, generator: torch.Generator, device) -> torch.Tensor:
    tokenizer, text_encoder, vae, unet, scheduler = parts
    motion_index = world.MOTIONS.index(f"moving {args.motion}")
    scene = world.sample_scenes(args.clips, generator).to(device)
    motion = torch.full((args.clips,), motion_index, device=device)
    video = world.render_clip(scene, motion, args.frames)  # (B, F, 3, H, W)
    latents = kit.encode(vae, video.flatten(0, 1)).unflatten(0, (args.clips, args.frames)).transpose(1, 2)
    with torch.no_grad():
        hidden = text_encoder(kit.tokenize(tokenizer, captions_for(scene, motion_index, generator), device))[0]
    hidden = hidden.repeat_interleave(args.frames, dim=0)  # one prompt embedding per frame, as the pipeline
    noise = torch.randn(latents.shape, generator=generator).to(device)
    high = scheduler.config.num_train_timesteps
    timesteps = torch.randint(args.min_timestep, high, (args.clips,), generator=generator).to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=kit.AUTOCAST):
        pred = unet(noisy, timesteps, hidden).sample.float()
    target = scheduler.get_velocity(latents, noise, timesteps).float()
    loss = F.mse_loss(pred, target)
    if args.temporal_weight:
        # MotionDirector's point: the per-frame loss is mostly appearance, which the frozen model
        # already has; the change from frame to frame is where the motion is.
        loss = loss + args.temporal_weight * F.mse_loss(pred.diff(dim=2), target.diff(dim=2))
    return loss


def shipped_lora(folder: Path) -> dict[str, torch.Tensor]:
    """A finished motion LoRA's layers as peft names them, fp32, to continue training from."""
    from safetensors.torch import load_file

    layers = load_file(folder / SHAPES_LORA_FILE)
    return {k.removeprefix("unet."): v.float() for k, v in layers.items()}


def export(args, unet, record: dict) -> Path:
    """fp16 diffusers LoRA file plus the training record, written into place whole."""
    from diffusers import AnimateDiffPipeline
    from peft.utils import get_peft_model_state_dict

    layers = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    with atomic_dir(args.output) as tmp:
        AnimateDiffPipeline.save_lora_weights(tmp, unet_lora_layers=layers, weight_name=SHAPES_LORA_FILE)
        write_json_atomic(tmp / SHAPES_RECORD, record)
    return Path(args.output)


def train(args) -> Path:
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    device = torch.device(args.device)
    run_dir, ckpt = args.run_dir, args.run_dir / "checkpoint"
    run_dir.mkdir(parents=True, exist_ok=True)
    shape = {k: getattr(args, k) for k in SHAPE_KEYS}
    if ckpt.exists() and not args.resume:
        sys.exit(f"{ckpt} exists: pass --resume to continue it, or another --run-dir")
    tokenizer, text_encoder, vae, unet = build_models(device)
    params = add_motion_lora(unet, args.rank)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(args.seed)
    state = {"step": 0, "seconds": 0.0, "losses": []}
    if args.resume and ckpt.exists():
        state = kit.load_checkpoint(ckpt, {})
        if state["shape"] != shape:
            sys.exit(f"{ckpt} was trained with {state['shape']}, not {shape}; use another --run-dir")
        set_peft_model_state_dict(unet, state["lora"])
        opt.load_state_dict(state["opt"])
        generator.set_state(state["generator"])
    elif args.init_from:
        set_peft_model_state_dict(unet, shipped_lora(args.init_from))
        state["steps_before"] = json.loads((args.init_from / SHAPES_RECORD).read_text())["steps"]
    kit.log(run_dir, command=" ".join(sys.argv), device=str(device), **shape, resumed_at=state["step"])
    parts = (tokenizer, text_encoder, vae, unet, models.train_scheduler())
    step, spent, losses = state["step"], state["seconds"], state["losses"]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append("SIGTERM"))

    def checkpoint() -> None:
        lora = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(unet).items()}
        kit.save_checkpoint(
            ckpt,
            {},
            {
                "step": step,
                "seconds": spent,
                "losses": losses,
                "shape": shape,
                "lora": lora,
                "opt": opt.state_dict(),
                "generator": generator.get_state(),
                **({"steps_before": state["steps_before"]} if "steps_before" in state else {}),
            },  # fmt: skip
        )

    unet.train()
    last_save = time.time()
    try:
        while step < args.steps and not stop:
            start = time.time()
            for group in opt.param_groups:
                group["lr"] = kit.lr_at(step, args.lr, warmup=args.warmup)
            loss = training_step(args, parts, generator, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            took = time.time() - start
            step, spent = step + 1, spent + took
            losses.append(round(loss.item(), 5))
            if step == state["step"] + 1:
                left = args.steps - step
                print(f"time per step: {took:.2f} s ({args.clips} clips x {args.frames} frames on {device}); "
                      f"{left} steps left = about {left * took / 60:.1f} min", flush=True)  # fmt: skip
            if step <= state["step"] + 3 or step % args.log_every == 0:
                kit.log(run_dir, step=step, loss=losses[-1], step_seconds=round(took, 3), seconds=round(spent, 1))
            if time.time() - last_save > args.checkpoint_minutes * 60:
                checkpoint()
                last_save = time.time()
    except KeyboardInterrupt:
        stop.append("interrupt")
    checkpoint()
    if stop:
        kit.log(run_dir, step=step, stopped=stop[0], seconds=round(spent, 1), note="continue with --resume")
        sys.exit(130)
    tail = losses[-20:]
    record = {
        "motion": args.motion,
        "camera": CAMERA[args.motion],
        "weight": 1.0,
        "base": "shapes",
        "motion_adapter": "shapes",
        "targets": "motion modules' attention (to_q, to_k, to_v, to_out.0)",
        "rank": args.rank,
        "alpha": args.rank,
        "steps": state.get("steps_before", 0) + step,
        **({"continued_from_step": state["steps_before"]} if "steps_before" in state else {}),
        "clips_per_step": args.clips,
        "frames": args.frames,
        "lr": args.lr,
        "temporal_weight": args.temporal_weight,
        "min_timestep": args.min_timestep,
        "seed": args.seed,
        "device": str(device),
        "seconds": round(spent, 1),
        "seconds_per_step": round(spent / max(step, 1), 3),
        "final_loss": round(sum(tail) / max(len(tail), 1), 5),
        "losses_every_10": losses[::10],
        "command": " ".join(sys.argv),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = export(args, unet, record)
    kit.log(run_dir, step=step, done=True, seconds=round(spent, 1), output=str(out))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--motion", choices=DIRECTIONS, required=True, help="where the object moves in the frame")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--clips", type=int, default=4, help="clips per step (fresh from the world each step)")
    parser.add_argument("--frames", type=int, default=16, choices=(8, 16), help="frames per clip")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--temporal-weight", type=float, default=1.0, help="weight of the frame-difference loss")
    parser.add_argument("--min-timestep", type=int, default=200, help="train on noise levels from here up")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=20, help="steps of linear learning-rate warm-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path, help="checkpoints and log (default runs/motion-lora-<motion>)")
    parser.add_argument("--output", type=Path, help="finished LoRA folder (default RUN_DIR/lora)")
    parser.add_argument("--resume", action="store_true", help="continue the run dir's checkpoint")
    parser.add_argument("--init-from", type=Path, help="a finished motion LoRA folder to continue training")
    parser.add_argument("--checkpoint-minutes", type=float, default=3)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    args.run_dir = args.run_dir or Path(f"runs/motion-lora-{args.motion}")
    args.output = args.output or args.run_dir / "lora"
    return args


def main(argv: list[str] | None = None) -> Path:
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
