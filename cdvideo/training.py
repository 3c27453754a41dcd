"""`cdvideo train`: a new token + UNet LoRA, with ClassDiffusion's semantic preservation loss.

Per step: noise-prediction MSE on the subject photos (+ prior loss on class images when
enabled) + spl_weight * SPL, where SPL = 1 - cos(e("a photo of a <tok> dog"), e("a photo of a
dog")) at the EOS position (`spl_pooling="token"`: where the official code pools). Trainable: LoRA
on the UNet (or, `finetune="full"`, the target layers' own weights) and the token's embedding row only.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from diffusers import DDPMScheduler
from peft import LoraConfig
from tqdm.auto import tqdm

from cdvideo import checkpoints, clip_composites, data, loading, memory, objective, presets, scaleout, tracking
from cdvideo import training_inputs as inputs
from cdvideo.atomic import ensure_writable_dir, write_json_atomic
from cdvideo.concept import Concept, save_concept, save_photos
from cdvideo.errors import UserError
from cdvideo.loss import (
    POOLINGS,
    concept_class_cosine,
    eos_features,
)
from cdvideo.prompts import add_token
from cdvideo.unet_weights import FINETUNES, FullWeights, LoraWeights

LOG_EVERY = 10  # metrics of every step are written, in batches of this many
CONFIG_FILE = "train_config.json"
PRIOR_TARGETS = ("images", "base")


@dataclass
class TrainConfig:
    images: list[str]
    class_word: str
    base: str = presets.SD15_BASE
    output: str = "cdvideo-concept"
    token: str = "<new1>"
    init_word: str | None = None  # the new token starts as this word's (or vocabulary entry's) embedding
    steps: int | None = None
    resolution: int | None = None
    rank: int | None = None
    alpha: float | None = None
    lora_targets: list[str] | None = None  # UNet module names the LoRA adapts (default: the preset's)
    lora_lr: float | None = None
    token_lr: float | None = None
    batch_size: int | None = None
    spl_weight: float | None = None
    spl_pooling: str | None = None  # eos (default) | token: where the official ClassDiffusion code pools
    recipe: str | None = None  # a published method's settings under the options given (presets.RECIPES)
    finetune: str | None = None  # lora (default) | full: the target layers' own weights
    max_grad_norm: float | None = None  # clip the gradient norm (default: no clipping)
    flip: bool = True
    # Subject masks from the photos' alpha channels: None = when every photo has one.
    masked_loss: bool | None = None
    caption_variety: float | None = None  # share of masked subject captions given a phrase after the class word
    # Outside the subject's mask, match the base model's prediction for the class phrase (0 = off).
    context_weight: float | None = None
    composites: float | None = None  # share of subject items that are scene composites (cdvideo/composites.py)
    num_composites: int | None = None  # base-model scenes the subject is fitted into
    # Weight of the loss on clip composites (cdvideo/clip_composites.py): the subject fitted into the
    # base video model's clips, taught through the frozen motion modules (0 = off).
    clip_composites: float | None = None
    num_clip_composites: int | None = None  # base-model clips the subject is fitted into
    # Also the bare class phrase in every motion the clips above did not give it (cdvideo/clip_composites.py).
    bare_clip_motions: bool | None = None
    # Teach a clip composite every N steps at N x its weight: the clip term costs about as much as the
    # image batch, so 2 trains about a quarter faster with the same clip weight per step on average.
    clip_every: int = 1
    seed: int = 0
    prior_weight: float | None = None  # > 0 enables prior preservation
    # What the prior items are taught: "images" (DreamBooth: their own noise) or "base" (the base
    # model's prediction at the same noisy latent: the LoRA is held to the base model off the token).
    prior_target: str | None = None
    class_images: str | None = None  # a `name.txt` beside `name.png` is that image's prompt (kohya style)
    num_class_images: int | None = None
    class_prompts: list[str] | None = None  # prompts for generated prior images (default: the preset's)
    checkpoint_every: int = 0
    keep_checkpoints: int = 2  # 0 = keep all (for `cdvideo eval --checkpoints`)
    validate_every: int = 0  # render a validation still every N steps (0 = never)
    validation_prompt: str | None = None  # default: "a photo of a <token> <class>"
    validation_steps: int | None = None  # sampler steps per validation still (default: the family's)
    resume: str | None = None
    device: str | None = None
    base_config: str | None = None  # local diffusers config folder for single-file checkpoints
    gradient_accumulation: int = 1  # batches per optimizer step
    mixed_precision: str = "no"  # no | fp16 | bf16 (autocast, frozen weights in half; trainable stay fp32)
    gradient_checkpointing: bool = False  # memory options: cdvideo/memory.py
    optimizer: str = "adamw"  # adamw | adamw8bit
    cache_latents: bool = False  # class images' latents kept on disk beside them

    def resolved(self) -> TrainConfig:
        """Fill unset fields from the recipe, then from the base model family's preset."""
        preset = presets.preset_for(self.base)
        values = presets.apply_recipe(dict(self.__dict__), scaleout.launched_processes())
        for name, default in (
            ("steps", preset.train_steps),
            ("resolution", preset.resolution),
            ("rank", preset.rank),
            ("lora_lr", preset.lora_lr),
            ("token_lr", preset.token_lr),
            ("batch_size", preset.batch_size),
            ("spl_weight", preset.spl_weight),
            ("prior_weight", preset.prior_weight),
            ("prior_target", preset.prior_target),
            ("num_class_images", preset.num_class_images),
            ("caption_variety", preset.caption_variety),
            ("context_weight", preset.context_weight),
            ("composites", preset.composites),
            ("num_composites", preset.num_composites),
            ("clip_composites", preset.clip_composites),
            ("num_clip_composites", preset.num_clip_composites),
            ("bare_clip_motions", False),
        ):
            if values[name] is None:
                values[name] = default
        if values["class_prompts"] is None:
            # A preset's bank guards the other classes; the subject's own class is guarded by the
            # class phrase alone, as in DreamBooth: captions of it with accessories taught the
            # prior to strip the subject from every accessory prompt (docs/ablation/).
            values["class_prompts"] = [
                p.format(class_word=self.class_word)
                for p in preset.prior_prompts
                if "{class_word}" in p or f" {self.class_word} " not in f" {p} "
            ]
        if values["alpha"] is None:
            values["alpha"] = float(values["rank"])
        if values["lora_targets"] is None:
            values["lora_targets"] = list(preset.lora_targets)
        values["spl_pooling"] = values["spl_pooling"] or "eos"
        values["finetune"] = values["finetune"] or "lora"
        return TrainConfig(**values)


def validate(cfg: TrainConfig) -> None:
    if cfg.steps <= 0:
        raise UserError(f"--steps must be positive (got {cfg.steps})")
    if cfg.resolution % 8:
        raise UserError(f"--resolution must be a multiple of 8 (got {cfg.resolution})")
    if cfg.rank <= 0 or cfg.batch_size <= 0 or cfg.gradient_accumulation <= 0:
        raise UserError("--rank, --batch-size and --gradient-accumulation must be positive")
    if cfg.checkpoint_every < 0 or cfg.keep_checkpoints < 0 or cfg.validate_every < 0:
        raise UserError("--checkpoint-every, --keep-checkpoints and --validate-every must be >= 0")
    if not cfg.lora_targets:
        raise UserError("--lora-targets needs at least one module name, e.g. attn2.to_k attn2.to_v")
    if cfg.prior_weight > 0 and not cfg.class_images and not cfg.class_prompts:
        raise UserError("--class-prompt needs a prompt; give one, or drop it for 'a photo of a CLASS'")
    if cfg.prior_target not in PRIOR_TARGETS:
        raise UserError(f"--prior-target must be one of {', '.join(PRIOR_TARGETS)} (got {cfg.prior_target!r})")
    if cfg.spl_weight < 0 or cfg.prior_weight < 0:
        raise UserError("--spl-weight and --prior-weight must be >= 0")
    if cfg.context_weight < 0:
        raise UserError(f"--context-weight must be >= 0 (got {cfg.context_weight})")
    if not 0 <= cfg.composites <= 1:
        raise UserError(f"--composites is a share of subject items, from 0 to 1 (got {cfg.composites})")
    if cfg.num_composites < 1 or cfg.num_clip_composites < 1:
        raise UserError("--num-composites and --num-clip-composites must be at least 1")
    if cfg.clip_every < 1:
        raise UserError(f"--clip-every is a number of steps, 1 or more (got {cfg.clip_every})")
    if cfg.clip_composites < 0:
        raise UserError(f"--clip-composites is a loss weight, 0 or more (got {cfg.clip_composites})")
    if not 0 <= cfg.caption_variety <= 1:
        raise UserError(f"--caption-variety is a share of captions, from 0 to 1 (got {cfg.caption_variety})")
    if not cfg.class_word.strip():
        raise UserError("--class-word is empty; give the subject's class, such as dog")
    if cfg.spl_pooling not in POOLINGS:
        raise UserError(f"--spl-pooling must be one of {', '.join(POOLINGS)} (got {cfg.spl_pooling!r})")
    if cfg.finetune not in FINETUNES:
        raise UserError(f"--finetune must be one of {', '.join(FINETUNES)} (got {cfg.finetune!r})")
    if cfg.max_grad_norm is not None and cfg.max_grad_norm <= 0:
        raise UserError(f"--max-grad-norm must be positive (got {cfg.max_grad_norm})")
    memory.check_options(cfg.optimizer)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_trainable(cfg: TrainConfig, unet, text_encoder, vae, token_id: int):
    """Freeze everything but the UNet's LoRA (or target weights) and one embedding row;
    returns (embeddings, optimizer, the trained UNet weights)."""
    for module in (vae, text_encoder, unet):
        module.requires_grad_(False)
    weights = FullWeights(unet, cfg.lora_targets) if cfg.finetune == "full" else _add_lora(cfg, unet)
    embeddings = text_encoder.get_input_embeddings().weight
    embeddings.requires_grad_(True)
    row_mask = torch.zeros(len(embeddings), 1, device=embeddings.device)
    row_mask[token_id] = 1.0
    embeddings.register_hook(lambda grad: grad * row_mask)
    # Zero decay on the embedding group: AdamW's decay would move the masked rows too.
    optimizer = memory.make_optimizer(
        cfg.optimizer,
        [
            {"params": weights.params, "lr": cfg.lora_lr, "weight_decay": 1e-2},
            {"params": [embeddings], "lr": cfg.token_lr, "weight_decay": 0.0},
        ],
        fp32_state=[embeddings],
    )
    return embeddings, optimizer, weights


def _add_lora(cfg: TrainConfig, unet) -> LoraWeights:
    try:
        unet.add_adapter(
            LoraConfig(
                r=cfg.rank,
                lora_alpha=cfg.alpha,
                init_lora_weights="gaussian",
                target_modules=list(cfg.lora_targets),
            )
        )
    except ValueError as error:
        if "not found" not in str(error):  # peft: "Target modules {...} not found in the base model"
            raise UserError(f"could not add a rank-{cfg.rank} LoRA to the UNet: {error}") from None
        raise UserError(
            f"--lora-targets {' '.join(cfg.lora_targets)} matches no UNet module; "
            "use names such as to_k, attn2.to_v, conv1"
        ) from None
    return LoraWeights(unet)


def concept_record(cfg: TrainConfig, steps: int, drift: float | None, metrics: dict) -> Concept:
    """The manifest of a concept trained with `cfg` for `steps` steps."""
    recipe = presets.RECIPES.get(cfg.recipe) if cfg.recipe else None
    return Concept(
        token=cfg.token,
        class_word=cfg.class_word,
        base=loading.base_identity(cfg.base),
        rank=cfg.rank,
        alpha=cfg.alpha,
        spl_weight=cfg.spl_weight,
        steps=steps,
        seed=cfg.seed,
        lora_targets=list(cfg.lora_targets),
        drift=drift,
        prior_weight=cfg.prior_weight,
        metrics=metrics,
        spl_pooling=cfg.spl_pooling,
        finetune=cfg.finetune,
        render_scale=recipe.render_scale if recipe else 1.0,
        render_schedule=recipe.render_schedule if recipe else None,
    )


def _with_masks(cfg: TrainConfig, photos: data.PhotoSet, say) -> TrainConfig:
    """Settle masked loss, caption variety and composites for these photos; the run records what
    it applied."""
    missing = sum(m is None for m in photos.masks)
    if cfg.masked_loss and missing:
        raise UserError(
            f"--masked-loss needs every photo to carry the subject's mask as transparency (PNG with alpha); "
            f"{missing} of {len(photos.masks)} have none"
        )
    masked = not missing if cfg.masked_loss is None else cfg.masked_loss
    variety = cfg.caption_variety
    if variety and not masked:
        say("note: caption variety is off: it needs the subject's mask (photos with transparency)")
        variety = 0.0
    preset = presets.preset_for(cfg.base)
    if variety and not preset.caption_phrases:
        raise UserError("--caption-variety needs composition phrases, and this model family has none")
    shares = {"composites": cfg.composites, "clip_composites": cfg.clip_composites}
    for flag, share in shares.items():
        option = "--" + flag.replace("_", "-")
        readers = preset.locate_object and preset.composite_phrases and (flag == "composites" or preset.read_motion)
        if share and not readers:
            raise UserError(
                f"{option} needs a locator for the class object in the base model's pictures, and this "
                f"model family has none; train without it ({option} 0)"
            )
        if share and not masked:
            what = "scene composites" if flag == "composites" else "clip composites"
            say(f"note: {what} are off: they need the subject's mask (photos with transparency)")
            shares[flag] = 0.0
    return replace(cfg, masked_loss=masked, caption_variety=variety, **shares)


def _validation_hook(cfg: TrainConfig, pipe, out: Path) -> Callable[[int], None]:
    preset = presets.preset_for(cfg.base)
    prompt = cfg.validation_prompt or f"a photo of a {cfg.token} {cfg.class_word}"

    def validate_at(step: int) -> None:
        steps = cfg.validation_steps or preset.steps
        tracking.render_validation(pipe, prompt, out, step, cfg.resolution, steps, preset.guidance)
        tracking.plot_curves(out, title=f"{cfg.token} {cfg.class_word}")

    return validate_at


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """One process: a plain loop on the chosen device. Under `accelerate launch`: data parallel,
    mixed precision and gradient accumulation, as launched."""
    if cfg.device:
        loading.pick_device(cfg.device)  # a clear error for an unavailable device
    if cfg.mixed_precision not in ("no", "fp16", "bf16"):
        raise UserError(f"--mixed-precision must be no, fp16 or bf16 (got {cfg.mixed_precision!r})")
    cpu = scaleout.on_cpu(cfg.device)
    if cfg.mixed_precision == "fp16" and cpu:
        raise UserError("--mixed-precision fp16 needs a CUDA GPU; use bf16 or no on the CPU")
    if scaleout.launched_processes() <= 1:
        # accelerate keeps its settings process-wide; a second train() in one Python session
        # (a notebook) may ask for another precision or accumulation.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        if cfg.device and cfg.device.startswith("cuda:"):
            torch.cuda.set_device(cfg.device)  # accelerate's "cuda" is the current device
    # Trainable LoRA and embedding stay fp32 (fp16 parameters cannot be unscaled); autocast
    # computes in the lower precision.
    return Accelerator(
        cpu=cpu, mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation
    )


def _weights_nonfinite(optimizer) -> torch.Tensor:
    """Whether any trained weight is NaN or infinite, as a tensor (no host sync until it is read)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return torch.stack([~torch.isfinite(p).all() for p in params]).any()


def _nonfinite_message(step: int, last_good: Path | None) -> str:
    where = (
        f"the last good checkpoint is {last_good}: --resume latest with lower rates"
        if last_good
        else "no checkpoint was written before it (--checkpoint-every N keeps some)"
    )
    return f"loss became NaN or infinite by step {step}; lower --lora-lr/--token-lr ({where})"


@dataclass
class _Run:
    """What the training loop works on, built once before it: the pipeline, the trainables, the
    precomputed batch inputs and the clip composites."""

    pipe: object
    noise_scheduler: DDPMScheduler
    token_id: int
    embeddings: torch.Tensor
    original_rows: torch.Tensor
    optimizer: torch.optim.Optimizer
    unet_weights: LoraWeights | FullWeights
    batch: dict
    clips: tuple | None
    motion_unet: object | None


def _build_run(cfg: TrainConfig, photos: data.PhotoSet, out: Path, accelerator, say) -> _Run:
    """Load the base model, draw what training reads (prior images, scene and clip composites), add
    the token and the trainable weights, and precompute the batch inputs."""
    device = accelerator.device
    seed_everything(cfg.seed)  # same LoRA initialisation in every process
    pipe = loading.load_image_pipeline(cfg.base, torch.float32, config=cfg.base_config).to(device)
    tokenizer, text_encoder, vae, unet = pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    # Prior images and validation stills: the family's sampler, at its steps.
    pipe.scheduler = presets.make_scheduler(cfg.base, None, pipe.scheduler.config, video=False)

    class_data = inputs.prior_images(cfg, pipe, out, accelerator, say)
    scene_composites = inputs.scene_composites(cfg, pipe, photos, out, accelerator, say)
    clip_set, motion_adapter = inputs.clip_composite_set(cfg, pipe, photos, out, accelerator, say)

    token_id, notes = add_token(
        tokenizer, text_encoder, cfg.token, cfg.init_word or cfg.class_word, vocab_entry=cfg.init_word is not None
    )
    for note in notes:
        say(f"note: {note}")
    embeddings, optimizer, unet_weights = make_trainable(cfg, unet, text_encoder, vae, token_id)
    original_rows = embeddings.detach().clone()

    batch = inputs.precompute(cfg, tokenizer, text_encoder, vae, photos, class_data, scene_composites, device, say)
    # Built after the LoRA is added: its spatial modules are the UNet's own, LoRA included.
    motion_unet = clip_composites.shared_motion_unet(unet, motion_adapter) if clip_set else None
    clips = inputs.clip_latents(clip_set, tokenizer, vae, device) if clip_set else None
    memory.prepare_models(cfg, unet, text_encoder, vae)  # after the fp32 precomputation above
    return _Run(
        pipe=pipe,
        noise_scheduler=noise_scheduler,
        token_id=token_id,
        embeddings=embeddings,
        original_rows=original_rows,
        optimizer=optimizer,
        unet_weights=unet_weights,
        batch=batch,
        clips=clips,
        motion_unet=motion_unet,
    )


def _write_run_files(folder: Path, cfg: TrainConfig, photos: data.PhotoSet, processes: int) -> None:
    """The run's settings and photos, beside each checkpoint and the finished concept."""
    save_photos(folder, photos.images)
    write_json_atomic(folder / CONFIG_FILE, {**asdict(cfg), "num_processes": processes})


def train(
    cfg: TrainConfig,
    say: Callable[[str], None] = print,
    progress: bool = True,
    after_backward: Callable[[dict], None] | None = None,
) -> Path:
    """Train a concept and write its folder; returns the folder.

    Runs as one process, or as several under `accelerate launch` (each draws its own batches;
    the gradients are averaged; the main process alone writes files). `after_backward`, if given,
    sees the models after each synchronised backward pass (tests check there that gradients
    reach only the LoRA and the token row).
    """
    cfg = cfg.resolved()
    validate(cfg)
    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process
    say = say if main else _silent
    out = ensure_writable_dir(Path(cfg.output))
    cfg, photos = _photos(cfg, say)
    write_run_files = partial(_write_run_files, cfg=cfg, photos=photos, processes=accelerator.num_processes)
    say(f"training '{cfg.token} {cfg.class_word}' on {len(photos.images)} photos, base {cfg.base}, {cfg.steps} steps")
    if accelerator.num_processes > 1 or cfg.gradient_accumulation > 1:
        per_step = cfg.batch_size * accelerator.num_processes * cfg.gradient_accumulation
        say(f"{accelerator.num_processes} processes x {cfg.gradient_accumulation} accumulated: {per_step} per step")

    run = _build_run(cfg, photos, out, accelerator, say)
    unet, text_encoder, vae = run.pipe.unet, run.pipe.text_encoder, run.pipe.vae
    state = _resumed(cfg, out, run.unet_weights, run.embeddings, run.token_id, run.optimizer, say)
    generator = _batch_generator(cfg, state, accelerator)
    models = {
        "unet": unet,
        "text_encoder": text_encoder,
        "vae": vae,
        "token_id": run.token_id,
        "weights": run.unet_weights,
    }
    ddp_unet, ddp_text_encoder, optimizer = accelerator.prepare(unet, text_encoder, run.optimizer)
    log = tracking.MetricsLog(out, state.step) if main else None
    validate_at = _validation_hook(cfg, run.pipe, out) if cfg.validate_every and main else None
    bar = tqdm(total=cfg.steps, initial=state.step, desc="train", disable=not (progress and main))
    nonfinite = torch.zeros((), dtype=torch.bool, device=accelerator.device)
    noise_scheduler, scaling = run.noise_scheduler, vae.config.scaling_factor
    for step in range(state.step, cfg.steps):
        for micro in range(cfg.gradient_accumulation):
            with accelerator.accumulate(ddp_unet, ddp_text_encoder), accelerator.autocast():
                loss, parts, _ = objective.batch_loss(
                    cfg, run.batch, ddp_unet, ddp_text_encoder, noise_scheduler, generator, scaling, run.unet_weights
                )
                if run.clips is not None and step % cfg.clip_every == 0:
                    draw = _clip_generator(cfg, step * cfg.gradient_accumulation + micro, accelerator)
                    loss = loss + cfg.clip_every * cfg.clip_composites * objective.clip_loss(
                        run.motion_unet, ddp_text_encoder, run.clips, noise_scheduler, draw, scaling
                    )
                accelerator.backward(loss)
                if after_backward and accelerator.sync_gradients:
                    after_backward(models)
                if cfg.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_([*run.unet_weights.params, run.embeddings], cfg.max_grad_norm)
                optimizer.step()  # a no-op until the accumulation is complete
                optimizer.zero_grad(set_to_none=True)
            nonfinite |= ~torch.isfinite(loss)  # checked when we sync anyway: logging and checkpoints
        if log:
            log.add(step + 1, parts["mse"], parts["spl"], parts["prior"], parts["cosine"])
        bar.update(1)
        due_checkpoint = cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps
        due_log = (step + 1) % LOG_EVERY == 0 or step + 1 == cfg.steps or step == 0
        if due_checkpoint:
            # A finite loss can still come with a non-finite update: never checkpoint broken weights.
            nonfinite |= _weights_nonfinite(optimizer)
        if (due_log or due_checkpoint) and bool(nonfinite):
            raise UserError(_nonfinite_message(step + 1, checkpoints.latest(out)))
        if due_log and log:
            record = log.flush()
            bar.set_postfix(mse=f"{record['mse']:.4f}", spl=f"{record['spl']:.4f}", cos=f"{record['cosine']:.3f}")
        if due_checkpoint and main:
            weights, token_row = run.unet_weights.state(), run.embeddings[run.token_id]
            checkpoints.save(
                out, step + 1, weights, token_row, optimizer, generator, cfg.keep_checkpoints, write_run_files
            )
        if validate_at and ((step + 1) % cfg.validate_every == 0 or step + 1 == cfg.steps):
            with accelerator.autocast():  # frozen weights may be in half precision
                validate_at(step + 1)
    bar.close()
    if bool(_weights_nonfinite(optimizer)):  # the last update, which no loss has seen yet
        raise UserError(_nonfinite_message(cfg.steps, checkpoints.latest(out)))
    if log:
        log.flush()
        tracking.plot_curves(out, title=f"{cfg.token} {cfg.class_word}")
    accelerator.wait_for_everyone()
    _check_only_token_moved(run.embeddings, run.original_rows, run.token_id)
    if main:
        _save(cfg, run, out, log.last, accelerator, write_run_files, say)
    return out


def _batch_generator(cfg: TrainConfig, state: checkpoints.TrainState, accelerator) -> torch.Generator:
    """The batches' random stream: each process draws its own; one process continues a checkpoint's exact
    stream."""
    generator = torch.Generator(accelerator.device).manual_seed(cfg.seed + accelerator.process_index)
    if state.generator_state is not None and accelerator.num_processes == 1:
        generator.set_state(state.generator_state)
    elif state.step:
        generator.manual_seed(cfg.seed + accelerator.process_index + 7919 * state.step)
    return generator


def _save(cfg: TrainConfig, run: _Run, out: Path, metrics: dict, accelerator, write_run_files, say) -> None:
    """The finished concept, with its final concept-class cosine, then the run's settings and photos."""
    with torch.no_grad(), accelerator.autocast():
        concept = eos_features(run.pipe.text_encoder, run.batch["concept_ids"][:1], run.batch["eos_id"])
        final_cosine = concept_class_cosine(concept, run.batch["class_features"]).item()
    record = concept_record(cfg, cfg.steps, round(final_cosine, 6), metrics)
    save_concept(out, record, run.unet_weights.state(), run.embeddings[run.token_id])
    # After the concept: a run that fails while saving leaves the earlier concept's files as they were.
    write_run_files(out)
    say(f"wrote concept to {out} (token {cfg.token}, concept-class cosine {final_cosine:.3f})")


def _photos(cfg: TrainConfig, say) -> tuple[TrainConfig, data.PhotoSet]:
    """The run's photos, with what was skipped and how they are read said; cut-outs turn on the masked loss."""
    photos = data.load_photos(cfg.images, cfg.resolution)
    for path, reason in photos.skipped:
        say(f"skipped {path}: {reason}")
    cfg = _with_masks(cfg, photos, say)
    for note in photos.grouped_notes():
        if cfg.masked_loss and note.endswith(data.COMPOSITED_NOTE):
            note = note.replace(data.COMPOSITED_NOTE, "cut-outs: their transparency is the subject's mask for the loss")
        say(f"note: {note}")
    return cfg, photos


def _check_only_token_moved(embeddings: torch.Tensor, original_rows: torch.Tensor, token_id: int) -> None:
    moved = (embeddings.detach() - original_rows).abs().sum(dim=1).nonzero().flatten().tolist()
    if any(i != token_id for i in moved):
        raise RuntimeError(f"embedding rows other than the token moved: {moved[:5]}")


def _resumed(cfg: TrainConfig, out: Path, unet_weights, embeddings, token_id: int, optimizer, say):
    """Step 0, or the state of the checkpoint `cfg.resume` names, loaded into the weights and optimizer."""
    if not cfg.resume:
        return checkpoints.TrainState(step=0)
    state = checkpoints.resume(out, cfg.resume, unet_weights, embeddings, token_id, optimizer)
    # The optimizer state carries the earlier run's learning rates; the ones asked for now win,
    # so a run that went NaN can resume with lower --lora-lr/--token-lr.
    for group, lr in zip(optimizer.param_groups, (cfg.lora_lr, cfg.token_lr), strict=True):
        group["lr"] = lr
    say(f"resumed from step {state.step}")
    return state


def _clip_generator(cfg: TrainConfig, draw: int, accelerator) -> torch.Generator:
    """The clip composites' draws of one step and process: seeded by (seed, step, process), so no
    generator state needs keeping for a resume, and each process draws its own clip."""
    seed = cfg.seed * 1_000_003 + draw + (accelerator.process_index << 40)
    return torch.Generator(accelerator.device).manual_seed(seed)


def _silent(message: str) -> None:
    """Other processes of a multi-process run keep quiet: the main process reports."""
