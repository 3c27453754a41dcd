"""Motion LoRAs (AnimateDiff's camera pan/zoom/tilt/roll LoRAs) stacked with a concept at chosen weights.

They are diffusers-format LoRAs on the motion modules (e.g. `guoyww/animatediff-motion-lora-zoom-out`),
loaded with diffusers' own `load_lora_weights` as named adapters and weighted with `set_adapters`.
The concept's LoRA names exact spatial module paths, so the two never touch the same layers.
"""

from __future__ import annotations

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


def apply_motion_loras(pipe, specs: list[str], concept_scale: float | None = None) -> list[tuple[str, float]]:
    """Load each motion LoRA as its own adapter and activate them (with the concept, if loaded).

    `concept_scale` is the concept LoRA's weight when it is loaded unfused as adapter "concept".
    Returns (source, weight) per motion LoRA.
    """
    names, weights, loaded = [], [], []
    for index, spec in enumerate(specs):
        source, weight = parse_motion_lora(spec)
        location, kwargs = _load_arguments(source)
        name = f"motion-{index}"
        try:
            pipe.load_lora_weights(location, adapter_name=name, use_safetensors=True, **kwargs)
        except (OSError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise UserError(f"could not load motion LoRA '{source}': {first}") from err
        names.append(name)
        weights.append(weight)
        loaded.append((source, weight))
    if concept_scale is not None:
        names.insert(0, CONCEPT_ADAPTER)
        weights.insert(0, concept_scale)
    pipe.set_adapters(names, adapter_weights=weights)
    return loaded
