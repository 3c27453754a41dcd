"""Defaults per model family: what a user of that family already expects."""

from __future__ import annotations

from dataclasses import dataclass, field

from cdvideo.shapes import world

SD15_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"


@dataclass(frozen=True)
class Preset:
    name: str
    base: str
    motion_adapter: str
    resolution: int
    frames: int
    steps: int
    guidance: float
    fps: int
    # Sampler settings laid over the base model's scheduler config.
    scheduler: dict = field(default_factory=dict)
    negative_prompt: str = ""
    # Training
    train_steps: int = 500
    batch_size: int = 2
    rank: int = 4
    alpha: float = 4.0
    lora_lr: float = 1e-4
    token_lr: float = 5e-4
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    spl_weight: float = 1.0
    prior_weight: float = 0.0  # > 0: prior preservation on images of the class word
    num_class_images: int = 50
    # Prompts the prior images are drawn from; "{class_word}" is filled in.
    prior_prompts: tuple[str, ...] = ("a photo of a {class_word}",)


SD15 = Preset(
    name="sd15",
    base=SD15_BASE,
    motion_adapter=SD15_MOTION_ADAPTER,
    resolution=512,
    frames=16,
    steps=25,
    guidance=7.5,
    fps=8,
    # AnimateDiff's sampler: its motion modules were trained against this schedule.
    scheduler={
        "beta_schedule": "linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "steps_offset": 1,
        "clip_sample": False,
        "timestep_spacing": "linspace",
    },
    negative_prompt="low quality, worst quality, blurry",
)

# The embedded model ships its own (v-prediction, zero-terminal-SNR) scheduler config, which is
# kept as is. LoRA reaches the convolutions too: attention-only adaptation never learned a new
# pattern on this model family (issue 3's probe).
SHAPES = Preset(
    name="shapes",
    base="shapes",
    motion_adapter="shapes",
    resolution=64,
    frames=16,
    steps=25,
    guidance=3.0,
    fps=8,
    train_steps=150,
    batch_size=4,
    rank=16,
    alpha=16.0,
    lora_lr=1e-3,
    token_lr=5e-3,
    lora_targets=("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2"),
    # Measured on this world (docs/ablation/): prior preservation on a bank of seen captions keeps
    # the subject and the plain prompts; SPL on top of it lost both, so it is off here.
    spl_weight=0.0,
    prior_weight=1.0,
    num_class_images=32,
    prior_prompts=world.prior_prompts(),
)


@dataclass(frozen=True)
class Sampler:
    """A sampler preset: scheduler class and settings, and the steps/guidance it was distilled for."""

    name: str
    scheduler_class: str
    scheduler: dict
    steps: int
    guidance: float


# AnimateDiff-Lightning (ByteDance): distilled adapters sample with Euler, trailing timesteps,
# linear betas and no classifier-free guidance; 4 steps for the 4-step adapter (1/2/8 exist too).
LIGHTNING = Sampler(
    name="lightning",
    scheduler_class="EulerDiscreteScheduler",
    scheduler={"timestep_spacing": "trailing", "beta_schedule": "linear"},
    steps=4,
    guidance=1.0,
)
SAMPLERS = {"lightning": LIGHTNING}


def preset_for(base: str) -> Preset:
    return SHAPES if base == "shapes" else SD15


@dataclass(frozen=True)
class Recipe:
    """A published method's training settings, laid over the family preset; options given explicitly win."""

    name: str
    settings: dict
    # Learning rate per sample, scaled by batch size x processes x gradient accumulation (the
    # diffusers scripts' --scale_lr) for the UNet weights and the token row, unless given.
    lr_per_sample: float | None = None


# The official ClassDiffusion code (Rbrq03/ClassDiffusion: train_class_diffusion.py,
# scripts/train_single.sh): Custom Diffusion's full cross-attention K/V fine-tune, the token
# initialised from "ktn", one AdamW group at 1e-5 x batch x processes x accumulation (the token row
# gets the same rate), batch 2, 500 steps, gradient norm clipped at 1, SPL weight 1 pooled where its
# `pooler_output` pools, and no prior (the script skips SPL when prior preservation is on).
# The same numbers on every family: the recipe exists to compare with the official code, so only
# the family's resolution and sampler are kept (the Shapes world is 64 px).
CLASSDIFFUSION = Recipe(
    name="classdiffusion",
    settings={
        "finetune": "full",
        "lora_targets": ["attn2.to_k", "attn2.to_v"],
        "init_word": "ktn",
        "batch_size": 2,
        "steps": 500,
        "spl_weight": 1.0,
        "spl_pooling": "token",
        "prior_weight": 0.0,
        "max_grad_norm": 1.0,
    },
    lr_per_sample=1e-5,
)
RECIPES = {recipe.name: recipe for recipe in (CLASSDIFFUSION,)}


def apply_recipe(values: dict, processes: int) -> dict:
    """Training settings `values` (TrainConfig fields) with the named recipe filling the unset ones."""
    from cdvideo.errors import UserError

    name = values.get("recipe")
    if name is None:
        return values
    if name not in RECIPES:
        raise UserError(f"--recipe {name!r} is unknown; known: {', '.join(sorted(RECIPES))}")
    recipe = RECIPES[name]
    values = {**values, **{k: v for k, v in recipe.settings.items() if values.get(k) is None}}
    if recipe.lr_per_sample is not None:
        lr = recipe.lr_per_sample * values["batch_size"] * processes * values.get("gradient_accumulation", 1)
        for key in ("lora_lr", "token_lr"):
            values[key] = lr if values.get(key) is None else values[key]
    return values
