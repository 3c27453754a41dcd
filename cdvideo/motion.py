"""Motion LoRAs (AnimateDiff's camera pan/zoom/tilt/roll LoRAs) stacked with a concept at chosen weights.

They are diffusers-format LoRAs on the motion modules (e.g. `guoyww/animatediff-motion-lora-zoom-out`),
loaded with diffusers' own `load_lora_weights` as named adapters and weighted with `set_adapters`.
The concept's LoRA names exact spatial module paths, so the two never touch the same layers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from cdvideo.concept import ADAPTER_NAME as CONCEPT_ADAPTER
from cdvideo.errors import UserError


def parse_motion_lora(spec: str) -> tuple[str, float]:
    """'zoom-out.safetensors:0.8' -> (path, 0.8); a spec without a numeric ':WEIGHT' has weight 1.0."""
    source, sep, tail = spec.rpartition(":")
    if sep:
        try:
            weight = float(tail)
        except ValueError:
            source, weight = spec, 1.0
    else:
        source, weight = spec, 1.0
    if not source.strip():
        raise UserError(f"--motion-lora {spec!r} names no file; use PATH[:WEIGHT], e.g. zoom-out.safetensors:0.8")
    return source, weight


def _load_arguments(source: str) -> tuple[str, dict]:
    path = Path(source)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise UserError(f"motion LoRA {source} is not a .safetensors file; cdvideo loads no pickled LoRAs")
        return str(path.parent), {"weight_name": path.name}
    if path.is_dir() and not any(path.glob("*.safetensors")):
        raise UserError(f"motion LoRA folder {source} has no .safetensors file")
    # A folder or a hub id such as guoyww/animatediff-motion-lora-zoom-out (one .safetensors file in it).
    return source, {}


def _load(pipe, source: str, name: str) -> None:
    from diffusers.utils import logging as diffusers_logging

    location, kwargs = _load_arguments(source)
    # A motion LoRA holds no text-encoder keys by design, and several adapters on one UNet are the
    # point: diffusers and peft warn about both on every load.
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            pipe.load_lora_weights(location, adapter_name=name, use_safetensors=True, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(f"could not load motion LoRA '{source}': {first}") from err
    finally:
        diffusers_logging.set_verbosity(verbosity)


@dataclass
class MotionAdapters:
    """The adapters loaded on a pipeline: --motion-lora ones (always on), named motions (one per prompt)."""

    fixed: list[tuple[str, float]] = field(default_factory=list)  # (adapter, weight)
    named: dict[str, str] = field(default_factory=dict)  # LoRA source -> adapter
    concept_scale: float | None = None

    def activate(self, pipe, source: str | None = None, weight: float | None = None) -> None:
        """Turn on the fixed adapters, the concept and `source`'s LoRA at `weight`; the other named ones off.

        Weight 0 renders exactly as without the adapter, so one set_adapters call switches per prompt."""
        names = [name for name, _ in self.fixed] + list(self.named.values())
        weights = [w for _, w in self.fixed] + [
            (weight if weight is not None else 1.0) if lora == source else 0.0 for lora in self.named
        ]
        if self.concept_scale is not None:
            names.insert(0, CONCEPT_ADAPTER)
            weights.insert(0, self.concept_scale)
        if names:
            pipe.set_adapters(names, adapter_weights=weights)


def load_motion_loras(
    pipe, specs: list[str], sources: list[str] = (), concept_scale: float | None = None
) -> MotionAdapters:
    """Load each --motion-lora spec and each named motion's LoRA `sources` as its own adapter.

    `concept_scale` is the concept LoRA's weight when it is loaded unfused as adapter "concept"."""
    adapters = MotionAdapters(concept_scale=concept_scale)
    for index, spec in enumerate(specs):
        source, weight = parse_motion_lora(spec)
        _load(pipe, source, f"motion-{index}")
        adapters.fixed.append((f"motion-{index}", weight))
    for index, source in enumerate(dict.fromkeys(sources)):
        name = f"direction-{index}"
        _load(pipe, source, name)
        adapters.named[source] = name
    return adapters


def apply_motion_loras(pipe, specs: list[str], concept_scale: float | None = None) -> list[tuple[str, float]]:
    """Load each motion LoRA as its own adapter and activate them (with the concept, if loaded).

    Returns (source, weight) per motion LoRA.
    """
    adapters = load_motion_loras(pipe, specs, concept_scale=concept_scale)
    adapters.activate(pipe)
    return [parse_motion_lora(spec) for spec in specs]
