"""The training objective of one step: the ClassDiffusion loss on a batch of subject items (photos,
scene composites) and prior items, and the clip composites' loss through the motion modules."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cdvideo import clip_composites
from cdvideo.errors import UserError
from cdvideo.loss import at_eos, concept_class_cosine, pool, semantic_preservation_loss
from cdvideo.unet_weights import LoraWeights

if TYPE_CHECKING:
    pass


def diffusion_target(scheduler, latents, noise, timesteps) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise UserError(f"base model's scheduler predicts {kind!r}; cdvideo trains epsilon or v_prediction models")


def subject_captions(batch: dict, picks: torch.Tensor, generator) -> torch.Tensor:
    """Row of `batch["concept_ids"]` each subject item is captioned with: 0 is the plain concept
    phrase; with caption variety, a share of items get the phrase plus a composition phrase."""
    rows = torch.zeros_like(picks)
    if batch["variety"] > 0:
        vary = torch.rand(picks.shape, generator=generator, device=picks.device) < batch["variety"]
        phrase = torch.randint(1, batch["variety_rows"], picks.shape, generator=generator, device=picks.device)
        rows = torch.where(vary, phrase, rows)
    return rows


def masked_mean(errors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per item, the mean of `errors` (N, C, H, W) over the pixels `mask` (N, 1, H, W) weighs."""
    return (errors * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * errors.shape[1]).clamp_min(1e-6)


def draw_composites(share: float, batch: dict, latents, rows, mask, generator):
    """Swap a `share` of the subject items for scene composites, captioned with their scene and
    taught whole (mask 1)."""
    comp_mean, comp_std, comp_rows = batch["composites"]
    device = latents.device
    use = torch.rand(len(latents), generator=generator, device=device) < share
    picks = torch.randint(len(comp_mean), (len(latents),), generator=generator, device=device)
    drawn = comp_mean[picks] + comp_std[picks] * torch.randn(comp_mean[picks].shape, generator=generator, device=device)
    latents = torch.where(use[:, None, None, None], drawn, latents)
    mask = torch.where(use[:, None, None, None], torch.ones_like(mask), mask)
    return latents, torch.where(use, comp_rows[picks], rows), mask


def base_predictions(
    unet, base_model, noisy, timesteps, taught: list[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """The base model's predictions (`base_model()`: the trained weights off), fp32, for each (rows, text
    states) in `taught`, in order."""
    if not taught:
        return noisy.new_zeros((0,))
    rows = torch.cat([r for r, _ in taught])
    with torch.no_grad(), base_model():
        return unet(noisy[rows], timesteps[rows], torch.cat([h for _, h in taught])).sample.float()


def batch_loss(cfg, batch, unet, text_encoder, noise_scheduler, generator, scaling_factor, weights=None):
    """One batch of the ClassDiffusion objective; returns (loss, its parts, the concept's EOS features).
    `weights` (what the run trains; default: the UNet's LoRA) gives the base model the teacher terms read.

    SPL reads both phrases at `cfg.spl_pooling`; the `cosine` part (the drift) is at the EOS either way."""
    instance_mean, instance_std = batch["instance"]
    device = instance_mean.device
    picks = torch.randint(len(instance_mean), (cfg.batch_size,), generator=generator, device=device)
    latents = instance_mean[picks] + instance_std[picks] * torch.randn(
        instance_mean[picks].shape, generator=generator, device=device
    )
    # Row 0 is the concept phrase SPL reads; the text encoder sees it once plus each other caption drawn.
    rows = subject_captions(batch, picks, generator)
    mask = batch["masks"][picks] if batch["masks"] is not None else None
    if batch["composites"] is not None:
        latents, rows, mask = draw_composites(cfg.composites, batch, latents, rows, mask, generator)
    latents = latents * scaling_factor
    unique, inverse = torch.unique(torch.cat([rows.new_zeros(1), rows]), return_inverse=True)
    encoded = text_encoder(batch["concept_ids"][unique])[0]
    concept_ids = batch["concept_ids"][:1]
    concept_features = at_eos(encoded[:1], concept_ids, batch["eos_id"])
    concept_spl = pool(encoded[:1], concept_ids, batch["eos_id"], cfg.spl_pooling)
    hidden = encoded[inverse[1:]]
    if batch["class"] is not None:
        class_mean, class_std = batch["class"]
        picks_c = torch.randint(len(class_mean), (cfg.batch_size,), generator=generator, device=device)
        prior = class_mean[picks_c] + class_std[picks_c] * torch.randn(
            class_mean[picks_c].shape, generator=generator, device=device
        )
        latents = torch.cat([latents, prior * scaling_factor])
        captions = batch["class_caption"][picks_c]
        if cfg.prior_target == "base":
            # The base model teaches, so any prior caption is true of any prior latent: drawing them
            # apart holds many more (caption, image) pairs to the base model than the images have.
            captions = torch.randint(len(batch["class_hidden"]), (cfg.batch_size,), generator=generator, device=device)
        hidden = torch.cat([hidden, batch["class_hidden"][captions]])
    noise = torch.randn(latents.shape, generator=generator, device=device)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (len(latents),), generator=generator, device=device
    )
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, hidden).sample
    target = diffusion_target(noise_scheduler, latents, noise, timesteps)
    errors = F.mse_loss(prediction.float(), target.float(), reduction="none")
    # Items the base model (LoRA off) teaches: the subject's surroundings, and with --prior-target base
    # the prior items; one no-grad pass serves both.
    around = torch.zeros(0, dtype=torch.long, device=device)
    if mask is not None and cfg.context_weight:
        around = (mask < 1).flatten(1).any(1).nonzero().flatten()
    taught = [(around, batch["teacher_hidden"][rows[around]])] if len(around) else []
    if batch["class"] is not None and cfg.prior_target == "base":
        taught.append((torch.arange(cfg.batch_size, len(latents), device=device), hidden[cfg.batch_size :]))
    teacher = base_predictions(unet, (weights or LoraWeights(unet)).base_model, noisy, timesteps, taught)
    context = torch.zeros((), device=device)
    if mask is not None:
        # The photos teach only the subject. Around it the concept prompt is taught what the base
        # model draws for the class prompt with the same words, so "on grass" or "wearing a hat"
        # keep their meaning next to the token. (Composites are true whole: no context.)
        mse = masked_mean(errors[: cfg.batch_size], mask).mean()
        if len(around):
            gap = (prediction[around].float() - teacher[: len(around)]) ** 2
            context = masked_mean(gap, 1 - mask[around]).sum() / cfg.batch_size
    else:
        mse = errors[: cfg.batch_size].mean()
    prior_loss = torch.zeros((), device=device)
    if batch["class"] is not None and cfg.prior_target == "base":
        prior_loss = F.mse_loss(prediction[cfg.batch_size :].float(), teacher[len(around) :])
    elif batch["class"] is not None:
        prior_loss = errors[cfg.batch_size :].mean()
    spl = semantic_preservation_loss(concept_spl, batch["class_spl"])
    loss = mse + cfg.prior_weight * prior_loss + cfg.spl_weight * spl + cfg.context_weight * context
    cosine = concept_class_cosine(concept_features.detach(), batch["class_features"]).mean()
    parts = {"mse": mse, "spl": spl, "prior": prior_loss, "cosine": cosine, "context": context}
    return loss, parts, concept_features


def clip_loss(motion_unet, text_encoder, clips, noise_scheduler, generator, scaling_factor) -> torch.Tensor:
    """One clip composite's diffusion loss through the motion modules (cdvideo/clip_composites.py)."""
    return clip_composites.clip_loss(
        motion_unet, lambda ids: text_encoder(ids)[0], clips, noise_scheduler,
        lambda *x: diffusion_target(noise_scheduler, *x), generator, scaling_factor,
    )  # fmt: skip
