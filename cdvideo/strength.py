"""The concept over the denoising steps: its LoRA's strength (CustomCrafter's dynamic weighted
sampling), or the class prompt first (FastComposer's delayed subject conditioning).

Layout and motion are decided in the first, noisiest steps and appearance in the later ones, so a
concept can run weak early (leaving the motion to the base model and its motion modules) and at
full strength after. `--concept-schedule 0.4:0.5` runs the concept's LoRA at 0.4 for the first half
of the steps, then at `--lora-scale`. `--concept-schedule class:0.5` goes further: the first half
renders the class prompt ("a dog running" for "a <new1> dog running") with the concept's LoRA off, so
the base model lays out the scene and its motion, and the concept draws the subject into it. A
concept's recipe may name both for it (`Concept.render_scale`, `render_schedule`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from cdvideo.errors import UserError
from cdvideo.prompts import unbind_prompt

CLASS_PROMPT = "class"


@dataclass(frozen=True)
class Schedule:
    early_scale: float  # the concept LoRA's weight in the early steps
    early_share: float  # the share of the denoising steps that run at `early_scale`
    class_prompt: bool = False  # the early steps render the prompt without the concept's token (LoRA off)

    def early_steps(self, steps: int) -> int:
        return round(self.early_share * steps)


def parse_schedule(text: str | None) -> Schedule | None:
    """'SCALE:SHARE' (e.g. '0.4:0.5'), 'class:SHARE', or None (or "none") for the concept throughout."""
    if text is None or text == "none":
        return None
    scale, sep, share = text.partition(":")
    try:
        if scale == CLASS_PROMPT:
            schedule = Schedule(0.0, float(share), class_prompt=True) if sep else None
        else:
            schedule = Schedule(float(scale), float(share)) if sep else None
    except ValueError:
        schedule = None
    if schedule is None or not 0 <= schedule.early_share <= 1:
        raise UserError(
            f"--concept-schedule {text!r}: expected SCALE:SHARE, the concept's weight in the first SHARE (0-1) "
            "of the denoising steps, e.g. 0.4:0.5, or class:SHARE (the class prompt first), or none"
        )
    return schedule


def describe(schedule: Schedule | None, full_scale: float) -> str:
    """What the concept's weight does over the steps, in words: 'LoRA weight 1.25 (0.8 in the first 50% of
    the steps)'."""
    said = f"LoRA weight {full_scale:g}"
    if schedule is None:
        return said
    if schedule.class_prompt:
        return f"{said} (the class prompt, without the concept, in the first {schedule.early_share:.0%} of the steps)"
    return f"{said} ({schedule.early_scale:g} in the first {schedule.early_share:.0%} of the steps)"


def concept_sets_motion(schedule: Schedule | None) -> bool:
    """Whether the concept is in the early steps, where the motion is laid out (so motion LoRAs run at their
    with-concept weights); a class-prompt schedule leaves them to the class prompt."""
    return not (schedule and schedule.class_prompt and schedule.early_share > 0)


def set_adapter_scale(model, adapter: str, scale: float) -> None:
    """Weight `scale` for `adapter`'s LoRA layers in `model`, leaving every other adapter as it is."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.set_scale(adapter, scale)


@contextmanager
def scheduled(
    pipe,
    adapter: str,
    schedule: Schedule | None,
    steps: int,
    full_scale: float,
    prompts: str | list[str],
    token: str | None = None,
    negative_prompt: str | None = None,
) -> Iterator[dict]:
    """The keyword arguments that make a pipeline call render `prompts` with the concept `adapter` following
    `schedule`: within the block the adapter starts at its early weight, and the call's `callback_on_step_end`
    raises it to `full_scale` once the early steps are done (it is left at `full_scale` after). A class-prompt
    schedule also starts the prompts without `token` and swaps the concept's prompts in at that step."""
    if isinstance(prompts, str):  # as given: FreeNoise's context windows take one prompt string
        call = {"prompt": prompts, "negative_prompt": negative_prompt}
    else:
        call = {"prompt": prompts, "negative_prompt": [negative_prompt] * len(prompts) if negative_prompt else None}
    if schedule is None:
        yield call
        return
    early = schedule.early_steps(steps)
    set_adapter_scale(pipe.unet, adapter, schedule.early_scale if early else full_scale)
    swap: list[tuple] = []
    if schedule.class_prompt and early and token:
        if getattr(pipe, "free_noise_enabled", False):
            raise UserError(
                "--concept-schedule class:SHARE cannot run with context windows (diffusers' FreeNoise takes no "
                "prompt embeddings); render at most the motion adapter's frames, or use SCALE:SHARE"
            )
        listed = [prompts] if isinstance(prompts, str) else prompts
        call, swap = _class_prompt_call(pipe, listed, token, negative_prompt)

    def after_step(pipeline, index: int, timestep, callback_kwargs: dict) -> dict:
        if index + 1 == early:
            set_adapter_scale(pipeline.unet, adapter, full_scale)
            if swap:
                callback_kwargs["prompt_embeds"] = _swap_rows(callback_kwargs["prompt_embeds"], swap)
        return callback_kwargs

    try:
        yield {**call, "callback_on_step_end": after_step}
    finally:
        set_adapter_scale(pipe.unet, adapter, full_scale)


@torch.no_grad()
def _class_prompt_call(pipe, prompts: list[str], token: str, negative_prompt: str | None) -> tuple[dict, list]:
    """Pipeline arguments that start from the class prompts' embeddings, and the (class row, concept row) pairs to
    swap. The pipeline lays the rows out itself (guidance halves, one per frame), so rows are swapped by value."""
    device = pipe._execution_device
    concept, negative = pipe.encode_prompt(prompts, device, 1, True, [negative_prompt or ""] * len(prompts))
    plain, _ = pipe.encode_prompt([unbind_prompt(p, token) for p in prompts], device, 1, True)
    call = {
        "prompt_embeds": plain,
        "negative_prompt_embeds": negative,
        "callback_on_step_end_tensor_inputs": ["prompt_embeds"],
    }
    return call, list(zip(plain, concept, strict=True))


def _swap_rows(embeds: torch.Tensor, pairs: list[tuple]) -> torch.Tensor:
    out = embeds.clone()
    for before, after in pairs:
        out[(embeds == before.to(embeds.dtype)).flatten(1).all(1)] = after.to(embeds.dtype)
    return out
