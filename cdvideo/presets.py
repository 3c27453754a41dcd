"""Defaults per model family: what a user of that family already expects."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import diffusers

from cdvideo.errors import UserError
from cdvideo.shapes import scorer, world

SD15_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"


@dataclass(frozen=True)
class Preset:
    name: str
    base: str
    motion_adapter: str
    resolution: int
    frames: int
    steps: int  # of the family's sampler
    guidance: float
    fps: int
    # Sampler settings laid over the base model's scheduler config.
    scheduler: dict = field(default_factory=dict)
    sampler: str = "ddim"  # the family's sampler (a SAMPLERS name)
    sampler_steps: dict = field(default_factory=dict)  # steps of the other samplers on this family
    negative_prompt: str = ""
    # Render in bf16 by default on CPUs with bf16 units (`loading.pick_precision`): only where the scorer
    # measured the family's videos equal in bf16.
    cpu_bf16: bool = False
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
    prior_target: str = "images"  # or "base": the prior items follow the base model's prediction
    num_class_images: int = 50
    # Prompts the prior images are drawn from; "{class_word}" is filled in.
    prior_prompts: tuple[str, ...] = ("a photo of a {class_word}",)
    # Caption variety on masked photos: this share of subject captions gets one of these phrases
    # after the class word, so the concept cannot live in the sentence-final text states.
    caption_variety: float = 0.0
    caption_phrases: tuple[str, ...] = ()
    # Masked photos: weight of matching the base model's class prediction around the subject.
    context_weight: float = 0.0
    # Scene composites (cdvideo/composites.py): this share of subject items is the subject fitted
    # into the base model's pictures of its class with these phrases, found by `locate_object`.
    composites: float = 0.0
    num_composites: int = 48
    # Clip composites (cdvideo/clip_composites.py): weight of their loss through the motion modules,
    # how many base clips, and the motions the clips' prompts ask for.
    clip_composites: float = 0.0
    num_clip_composites: int = 16
    motion_phrases: tuple[str, ...] = ()
    read_motion: Callable | None = None  # frames (F, 3, H, W) in [0, 1] -> the motion phrase they show, or ""
    composite_phrases: tuple[str, ...] = ()
    locate_object: Callable | None = None


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
    sampler_steps={"euler": 25, "dpm++": 20, "unipc": 20},
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
    # Euler at 8 steps: images as right as DDIM at 25 (0.97 vs 0.96 of 128 samples) in a third of the
    # time (docs/benchmarks.md); `--sampler ddim` gives AnimateDiff's DDIM at 25.
    steps=8,
    guidance=3.0,
    fps=8,
    sampler="euler",
    sampler_steps={"ddim": 25, "dpm++": 10, "unipc": 8},
    # bf16 draws the world's scenes, concepts and motions as right as fp32 (docs/benchmarks.md, "bf16 by
    # default"), 1.4x (AVX512-BF16) to 1.9x (AMX) faster.
    cpu_bf16=True,
    # 150 steps: at 300 with scene composites two of three seeds drew the subject with headphones in
    # 0.88-1.00 of samples, but the plain prompts fell to 0.49-0.83 (docs/composition/).
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
    # Cut-out photos (PNG with alpha) teach only the subject, and around it the concept prompt
    # follows the base model's class prediction: the accessories and plain prompts stay the base's
    # (docs/composition/). Caption variety stays off: it kept the stripes under any phrase but
    # taught the token to drop the phrase's accessory. Scene composites show the subject with the
    # phrase's accessory or background, so both are taught together; their scenes join the prior.
    caption_variety=0.0,
    caption_phrases=world.composition_phrases(),
    context_weight=1.0,
    # Scene composites stay off: over 3 seeds they raised headphones on two and cost the plain
    # prompts on all (0.49-0.84 against 0.94 without; docs/composition/).
    composites=0.0,
    composite_phrases=world.scene_phrases(),
    locate_object=scorer.object_masks,
    motion_phrases=tuple(m for m in world.MOTIONS if m),
    read_motion=scorer.clip_motion,
)


@dataclass(frozen=True)
class Sampler:
    """A sampler: scheduler class and settings laid over the family's; steps and guidance it was
    made for, where they differ from the family's."""

    name: str
    scheduler_class: str
    scheduler: dict = field(default_factory=dict)
    steps: int | None = None
    guidance: float | None = None


SAMPLERS = {
    sampler.name: sampler
    for sampler in (
        Sampler("ddim", "DDIMScheduler"),
        Sampler("euler", "EulerDiscreteScheduler"),
        # Zero-terminal-SNR schedules end at sigma 0, which DPM++ and UniPC must step to exactly.
        Sampler("dpm++", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "final_sigmas_type": "zero"}),
        Sampler("unipc", "UniPCMultistepScheduler", {"final_sigmas_type": "zero"}),
        # AnimateDiff-Lightning (ByteDance): distilled adapters sample with Euler, trailing timesteps,
        # linear betas and no classifier-free guidance; 4 steps for the 4-step adapter (1/2/8 exist too).
        Sampler(
            "lightning",
            "EulerDiscreteScheduler",
            {"timestep_spacing": "trailing", "beta_schedule": "linear"},
            steps=4,
            guidance=1.0,
        ),
    )
}


def sampler_steps(preset: Preset, sampler: Sampler) -> int:
    """Default steps of `sampler` on `preset`'s family."""
    if sampler.name == preset.sampler:
        return preset.steps
    return preset.sampler_steps.get(sampler.name) or sampler.steps or preset.steps


def preset_for(base: str) -> Preset:
    return SHAPES if base == "shapes" else SD15


def pick_sampler(name: str | None, preset: Preset) -> Sampler:
    """The named sampler, or the family's own for None/"default"."""
    if name in (None, "default"):
        return SAMPLERS[preset.sampler]
    if name not in SAMPLERS:
        raise UserError(f"--sampler {name!r} is unknown; choose one of {['default', *SAMPLERS]}")
    return SAMPLERS[name]


def make_scheduler(base: str, sampler_name: str | None, base_scheduler_config, video: bool = True):
    """A scheduler for `base`'s family: its sampler (AnimateDiff's DDIM for SD1.5) or a named one,
    laid over the base model's own config (so v-prediction and zero terminal SNR carry over).
    `video=False` (stills: prior images, validation) leaves out the motion adapter's schedule."""
    preset = preset_for(base)
    sampler = pick_sampler(sampler_name, preset)
    scheduler_class = getattr(diffusers, sampler.scheduler_class)
    overrides = {**(preset.scheduler if video else {}), **sampler.scheduler}
    return scheduler_class.from_config(base_scheduler_config, **overrides)


@dataclass(frozen=True)
class Recipe:
    """A published method's training settings, laid over the family preset; options given explicitly win."""

    name: str
    settings: dict
    # Learning rate per sample, scaled by batch size x processes x gradient accumulation (the
    # diffusers scripts' --scale_lr) for the UNet weights and the token row, unless given.
    lr_per_sample: float | None = None
    # How its concepts render unless the user says otherwise (Concept.render_scale / render_schedule).
    render_scale: float = 1.0
    render_schedule: str | None = None


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
# Scene composites taught with the base model as the prior's teacher (docs/composition/): the subject
# composes with headphones and backgrounds and keeps its stripes, and plain prompts pay for it. The LoRA
# leaves out conv1/conv2 (text-independent: they shift every prompt's colours). The token row learns at
# 1e-3, not the family's 5e-3: at 5e-3 it drifted far from the class and one training seed in four lost
# the subject (demo seed 2: stripes in 0.56 of "a <tok> circle"; at 1e-3 1.00 on seeds 0-3, 16
# samples; stripes in 0.88-1.00 of "... wearing headphones"). Clip composites at weight 4 teach the
# subject through the motion modules on the base model's moving clips: trained on stills alone, the
# recipe's clips jittered and froze (docs/composition/, "Clip composites"). Needs a family with a
# subject locator (Shapes); elsewhere --composites says so.
COMPOSITES = Recipe(
    name="composites",
    settings={
        "composites": 0.5,
        "steps": 300,
        "prior_target": "base",
        "prior_weight": 3.0,
        "lora_targets": ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out"],
        "token_lr": 1e-3,
        "clip_composites": 4.0,
        # one base clip per scene phrase and one bare ("a photo of a circle moving right"), so that the bare
        # concept prompt moves too
        "num_clip_composites": 20,
    },
    # At 300 steps the subject's stripes are faint in a third of the clips' frames, and a clip can freeze. Its
    # concepts render a little weak in the first half of the steps, where layout and motion are set, and
    # strong in the second, where the stripes are drawn: the demo's seeds 2 and 3 went from 69% and 62% of
    # frames with stripes to 88% and 94%, with the headphones, and seed 3's clip moves again
    # (docs/composition/, "The concept's weight over the steps").
    render_scale=1.25,
    render_schedule="0.8:0.5",
)
RECIPES = {recipe.name: recipe for recipe in (CLASSDIFFUSION, COMPOSITES)}
# `cdvideo demo` trains with it: the family's plain defaults keep the subject's pattern only in the bare
# prompt, the composites recipe beside the headphones and in motion (docs/demo_seeds.md).
DEMO_RECIPE = "composites"


def apply_recipe(values: dict, processes: int) -> dict:
    """Training settings `values` (TrainConfig fields) with the named recipe filling the unset ones."""
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


def scheduler_record(scheduler) -> dict:
    """A scheduler's class and config, without diffusers' bookkeeping keys (its version, its name)."""
    return {"class": type(scheduler).__name__, **{k: v for k, v in scheduler.config.items() if not k.startswith("_")}}
