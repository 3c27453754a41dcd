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
