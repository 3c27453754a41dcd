"""`cdvideo animate`: a personalized AnimateDiff render, written as mp4 + gif + settings JSON."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from cdvideo import concept as concepts
from cdvideo import controls, directions, loading, motion, presets, scaleout, sheets, strength, videofiles
from cdvideo.atomic import ensure_writable_dir, write_json_atomic, write_yaml_atomic
from cdvideo.errors import UserError
from cdvideo.prompts import bind_prompt, token_count_warning

DEFAULT_CONCEPT = "cdvideo-concept"
RESOLVED_FILE = "prompts.resolved.yaml"


@dataclass
class AnimateConfig:
    prompts: list[str]
    concept: str | None = None  # None: ./cdvideo-concept when it exists
    use_concept: bool = True
    base: str | None = None  # None: the concept's base, else SD1.5
    motion_adapter: str | None = None
    negative_prompt: str | None = None
    frames: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    fps: int | None = None
    output: str = "cdvideo-out"
    lora_scale: float | None = None  # None: the concept's own render_scale (its recipe's), else 1
    # "SCALE:SHARE": the concept's weight in the early steps (strength.py); None: the concept's own; "none": off
    concept_schedule: str | None = None
    decode_chunk_size: int = 16
    precision: str | None = None
    device: str | None = None
    base_config: str | None = None
    motion_adapter_config: str | None = None  # architecture of a single-file motion module
    motion_loras: list[str] = field(default_factory=list)  # "PATH[:WEIGHT]" each
    motion: str | None = None  # "right", "zoom-in", ... (cdvideo/directions.py); None: the prompt's words
    motion_weight: float | None = None  # None: the family's default for its motion LoRAs
    motion_lora_dir: str | None = None  # local copies of the family's motion LoRAs
    sampler: str | None = None  # None: the family's sampler; "lightning": AnimateDiff-Lightning's
    # Memory and speed controls (cdvideo/controls.py)
    context_length: int | None = None  # FreeNoise windows; automatic when frames > the adapter's length
    context_stride: int | None = None
    forward_chunk: int | None = None
    cpu_offload: bool = False
    channels_last: bool = False
    compile: bool = False


@dataclass
class Video:
    prompt: str
    rendered_prompt: str
    seed: int
    files: dict[str, Path]
    frames: object  # (F, H, W, 3) float array in [0, 1]
    seconds: float


def _find_concept(cfg: AnimateConfig, say) -> tuple[Path, concepts.Concept] | None:
    if not cfg.use_concept:
        return None
    if cfg.concept is None:
        if not (Path(DEFAULT_CONCEPT) / concepts.MANIFEST).exists():
            return None
        say(f"using concept ./{DEFAULT_CONCEPT} (pass --concept PATH for another, --no-concept for none)")
        folder = Path(DEFAULT_CONCEPT)
    else:
        folder = Path(cfg.concept)
    return folder, concepts.load_concept(folder)


def resolve(cfg: AnimateConfig, concept: concepts.Concept | None) -> AnimateConfig:
    """Fill unset settings from the concept's base model and that family's preset."""
    base = cfg.base or (concept.base if concept else presets.SD15_BASE)
    if concept and loading.base_identity(base) != concept.base:
        raise UserError(
            f"concept was trained on base '{concept.base}', not '{base}'; pass --base {concept.base} or --no-concept"
        )
    preset = presets.preset_for(base)
    sampler = presets.pick_sampler(cfg.sampler, preset)
    values = dict(cfg.__dict__)
    values["base"] = base
    values["sampler"] = sampler.name
    if values["lora_scale"] is None:
        values["lora_scale"] = concept.render_scale if concept else 1.0
    if values["concept_schedule"] is None and concept:
        values["concept_schedule"] = concept.render_schedule
    if values["steps"] is None:
        values["steps"] = presets.sampler_steps(preset, sampler)
    if values["guidance"] is None and sampler.guidance is not None:
        values["guidance"] = sampler.guidance  # a distilled adapter's own
    for name, default in (
        ("motion_adapter", preset.motion_adapter),
        ("negative_prompt", preset.negative_prompt),
        ("frames", preset.frames),
        ("width", preset.resolution),
        ("height", preset.resolution),
        ("guidance", preset.guidance),
        ("fps", preset.fps),
    ):
        if values[name] is None:
            values[name] = default
    return AnimateConfig(**values)


def validate(cfg: AnimateConfig) -> None:
    if not cfg.prompts or not all(p.strip() for p in cfg.prompts):
        raise UserError("give at least one non-empty prompt")
    if cfg.width % 8 or cfg.height % 8:
        raise UserError(f"--width and --height must be multiples of 8 (got {cfg.width}x{cfg.height})")
    if cfg.steps <= 0 or cfg.frames <= 0 or cfg.fps <= 0:
        raise UserError("--steps, --frames and --fps must be positive")
    for spec in cfg.motion_loras:
        motion.parse_motion_lora(spec)
    strength.parse_schedule(cfg.concept_schedule)
    if cfg.decode_chunk_size <= 0:
        raise UserError(f"--decode-chunk-size must be positive (got {cfg.decode_chunk_size})")


def build_pipeline(cfg: AnimateConfig, dtype: torch.dtype):
    """Base model + motion adapter as one AnimateDiffPipeline with the family's sampler, on the CPU.

    `controls.apply` places it on the device (or offloads it) once everything is loaded and fused.
    """
    image = loading.load_image_pipeline(cfg.base, dtype, config=cfg.base_config)
    adapter = loading.load_motion_adapter(cfg.motion_adapter, dtype, config=cfg.motion_adapter_config)
    pipe = loading.video_pipeline(image, adapter)
    pipe.scheduler = presets.make_scheduler(cfg.base, cfg.sampler, pipe.scheduler.config)
    return pipe


def render_clip(
    pipe,
    cfg: AnimateConfig,
    prompt: str,
    seed: int,
    schedule: strength.Schedule | None = None,
    token: str | None = None,
):
    """One clip of `prompt` at `cfg`'s settings: (frames, H, W, 3) floats in [0, 1].

    `schedule`: the (unfused) concept `token`'s weight over the steps; it ends at `cfg.lora_scale`."""
    negative = cfg.negative_prompt or None
    with strength.scheduled(
        pipe, concepts.ADAPTER_NAME, schedule, cfg.steps, cfg.lora_scale, prompt, token, negative
    ) as call:
        return pipe(
            **call,
            num_frames=cfg.frames,
            height=cfg.height,
            width=cfg.width,
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
            decode_chunk_size=cfg.decode_chunk_size,
        ).frames[0]


def animate(
    cfg: AnimateConfig,
    say: Callable[[str], None] = print,
    progress: bool = True,
    on_video: Callable[[Video], None] | None = None,
) -> list[Video]:
    """Render every prompt x seed with one pipeline; returns the videos with the paths written.

    `on_video` is called as each video is written (eval's progress bar counts clips with it)."""
    found = _find_concept(cfg, say)
    folder, concept = found if found else (None, None)
    cfg = resolve(cfg, concept)
    validate(cfg)
    # Under `accelerate launch`/torchrun each process renders its share of the prompt x seed jobs.
    share = scaleout.current_share(cfg.device)
    device = share.device or loading.pick_device(cfg.device)
    preset = presets.preset_for(cfg.base)
    # The precision it renders in is recorded in each video's settings, default or not.
    cfg = replace(cfg, precision=loading.pick_precision(device, cfg.precision, preset.cpu_bf16))
    dtype = loading.DTYPES[cfg.precision]
    if dtype == torch.bfloat16 and device.type == "cpu" and not loading.cpu_bf16_units():
        say("note: this CPU has no bf16 units (AMX or AVX512-BF16): --precision bf16 renders slower here than fp32")
    out = ensure_writable_dir(Path(cfg.output))
    schedule = strength.parse_schedule(cfg.concept_schedule) if concept else None
    with_concept = concept is not None and strength.concept_sets_motion(schedule)
    asked, notes = directions.plan_motions(
        cfg.prompts, cfg.motion, cfg.motion_weight, preset.name, cfg.motion_lora_dir, with_concept=with_concept
    )
    for line in notes:
        say(line)
    named = [choice.lora for choice in asked if choice and choice.lora]
    if named and preset.name == "sd15" and cfg.motion_adapter != presets.SD15_MOTION_ADAPTER:
        say(f"warning: guoyww's motion LoRAs were trained for {presets.SD15_MOTION_ADAPTER}, not {cfg.motion_adapter}")
    if cfg.concept_schedule not in (None, "none") and not concept:
        say("note: --concept-schedule has no effect without a concept")
    pipe = build_pipeline(cfg, dtype)
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    if concept:
        # Fused weights are fastest, but stacking motion LoRAs or scheduling the concept's weight
        # needs the concept as a live adapter.
        fuse = not (cfg.motion_loras or named or schedule)
        concepts.apply_concept(pipe, folder, concept, scale=cfg.lora_scale, fuse=fuse)
        weight = strength.describe(schedule, cfg.lora_scale)
        say(f"concept {concept.token} ({concept.class_word}) from {folder}, {weight}")
    adapters = None
    if cfg.motion_loras or named:
        adapters = motion.load_motion_loras(pipe, cfg.motion_loras, named, cfg.lora_scale if concept else None)
        for spec in cfg.motion_loras:
            say("motion LoRA {} at weight {}".format(*motion.parse_motion_lora(spec)))
    controls.apply(pipe, cfg, device, say)
    scheduler_settings = presets.scheduler_record(pipe.scheduler)
    videos = []
    jobs = iter(range(len(cfg.prompts) * len(cfg.seeds)))
    for prompt, choice in zip(cfg.prompts, asked, strict=True):
        rendered = prompt
        if adapters:
            adapters.activate(pipe, choice.lora if choice else None, choice.weight if choice else None)
        if concept:
            rendered, warning = bind_prompt(prompt, concept.token, concept.class_word)
            if warning:
                say(f"warning: {warning}")
            if rendered != prompt and not choice:
                say(f"prompt: {rendered}")
        if choice:
            say(f"prompt: {rendered} | {choice.describe()}")
        warning = token_count_warning(pipe.tokenizer, rendered)
        if warning:
            say(f"warning: {warning}")
        for seed in cfg.seeds:
            if not share.mine(next(jobs)):
                continue
            start = time.time()
            frames = render_clip(pipe, cfg, rendered, seed, schedule, concept.token if concept else None)
            stem = videofiles.video_stem(prompt, seed)
            files = videofiles.write_video(frames, out, stem, fps=cfg.fps)
            settings = {
                **asdict(cfg),
                "prompt": prompt,
                "rendered_prompt": rendered,
                "seed": seed,
                "concept": str(folder) if folder else None,
                "concept_token": concept.token if concept else None,
                "motion": choice.record() if choice else None,
                "scheduler": scheduler_settings,
            }
            settings.pop("prompts")
            settings.pop("seeds")
            files["json"] = out / f"{stem}.json"
            write_json_atomic(files["json"], settings)
            videos.append(Video(prompt, rendered, seed, files, frames, time.time() - start))
            say(f"wrote {files['mp4']} and {files['gif']}")
            if on_video:
                on_video(videos[-1])
    share.wait_for_everyone()
    # A process split holds only its own share of the frames, so sheets come from one-process runs.
    if share.count == 1 and len(videos) > 1:
        sheet = sheets.write_contact_sheets([v.frames for v in videos], len(cfg.seeds), out, fps=cfg.fps)
        say(f"wrote contact sheets {sheet['png']} and {sheet['gif']} (rows: prompts, columns: seeds)")
    if share.index == 0:
        resolved = {**asdict(cfg), "concept": str(folder) if folder else None}
        write_yaml_atomic(out / RESOLVED_FILE, resolved, header="# rerun: cdvideo animate --prompt-file THIS\n")
    return videos
