"""The concept's LoRA strength over the denoising steps (CustomCrafter's dynamic weighted sampling).

Layout and motion are decided in the first, noisiest steps and appearance in the later ones, so a
concept can run weak early (leaving the motion to the base model and its motion modules) and at
full strength after. `--concept-schedule 0.4:0.5` runs the concept's LoRA at 0.4 for the first half
of the steps, then at `--lora-scale`. A concept's recipe may name both for it (`Concept.render_scale`,
`render_schedule`): the composites recipe's concepts render at 0.8, then 1.25.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from peft.tuners.tuners_utils import BaseTunerLayer

from cdvideo.errors import UserError


@dataclass(frozen=True)
class Schedule:
    early_scale: float  # the concept LoRA's weight in the early steps
    early_share: float  # the share of the denoising steps that run at `early_scale`

    def early_steps(self, steps: int) -> int:
        return round(self.early_share * steps)


def parse_schedule(text: str | None) -> Schedule | None:
    """'SCALE:SHARE' (e.g. '0.4:0.5'), or None (or "none") for the concept at one strength throughout."""
    if text is None or text == "none":
        return None
    scale, sep, share = text.partition(":")
    try:
        schedule = Schedule(float(scale), float(share)) if sep else None
    except ValueError:
        schedule = None
    if schedule is None or not 0 <= schedule.early_share <= 1:
        raise UserError(
            f"--concept-schedule {text!r}: expected SCALE:SHARE, the concept's weight in the first SHARE (0-1) "
            "of the denoising steps, e.g. 0.4:0.5, or none"
        )
    return schedule


def describe(schedule: Schedule | None, full_scale: float) -> str:
    """What the concept's weight does over the steps, in words: 'LoRA weight 1.25 (0.8 in the first 50% of
    the steps)'."""
    said = f"LoRA weight {full_scale:g}"
    if schedule is None:
        return said
    return f"{said} ({schedule.early_scale:g} in the first {schedule.early_share:.0%} of the steps)"


def set_adapter_scale(model, adapter: str, scale: float) -> None:
    """Weight `scale` for `adapter`'s LoRA layers in `model`, leaving every other adapter as it is."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.set_scale(adapter, scale)


@contextmanager
def scheduled(
    pipe, adapter: str, schedule: Schedule | None, steps: int, full_scale: float
) -> Iterator[Callable | None]:
    """Within the block `adapter` starts at its early weight, and the yielded `callback_on_step_end`
    raises it to `full_scale` once the early steps are done; it is left at `full_scale` after.
    With no schedule, nothing changes and the callback is None."""
    if schedule is None:
        yield None
        return
    early = schedule.early_steps(steps)
    set_adapter_scale(pipe.unet, adapter, schedule.early_scale if early else full_scale)

    def after_step(pipeline, index: int, timestep, callback_kwargs: dict) -> dict:
        if index + 1 == early:
            set_adapter_scale(pipeline.unet, adapter, full_scale)
        return callback_kwargs

    try:
        yield after_step
    finally:
        set_adapter_scale(pipe.unet, adapter, full_scale)
