"""Asking for a motion: `--motion right` or the prompt's own words, mapped to each family's motion LoRAs.

Names describe where the picture's content goes in the frame, as the Shapes world's "moving right"
does: `right` means the subject (with the scene, for a camera move) travels towards the frame's
right edge. Camera words are read as a cinematographer means them: the camera pans left, so what it
films slides right. guoyww's MotionLoRAs are named after the camera (pan, tilt, zoom, roll), so
`right` maps to `pan-left`, `up` to `tilt-down`; zoom and roll keep their names.

Prompt grammar (case-insensitive, whole words; the prompt is rendered as written):
- subject: VERB [to the] left|right|up|down, VERB one of moving/moves/running/runs/walking/walks/
  flying/flies/going/goes/sliding/slides/drifting/drifts/heading/heads/travelling/traveling
- camera: [camera] pan(s/ning) [to the] left|right, [camera] tilt(s/ing) up|down,
  zoom(s/ing) in|out, roll(s/ing) clockwise|anticlockwise|counterclockwise
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from cdvideo.errors import UserError

MOTIONS = ("left", "right", "up", "down", "zoom-in", "zoom-out", "roll-clockwise", "roll-anticlockwise")
# The camera move that makes the content go each way (what guoyww's LoRAs are named after).
CAMERA = {
    "left": "pan-right",
    "right": "pan-left",
    "up": "tilt-down",
    "down": "tilt-up",
    "zoom-in": "zoom-in",
    "zoom-out": "zoom-out",
    "roll-clockwise": "rolling-clockwise",
    "roll-anticlockwise": "rolling-anticlockwise",
}
# Other spellings a flag may use; camera names resolve to the content's motion.
ALIASES = {
    **{camera: name for name, camera in CAMERA.items()},
    "roll-counterclockwise": "roll-anticlockwise",
    "rolling-counterclockwise": "roll-anticlockwise",
    "clockwise": "roll-clockwise",
    "anticlockwise": "roll-anticlockwise",
    "counterclockwise": "roll-anticlockwise",
}
NONE = "none"  # --motion none: no motion LoRA, whatever the prompt says

SD15_HUB_ORG = "guoyww"
# Trained for guoyww/animatediff-motion-adapter-v1-5-2 (AnimateDiff v2's motion modules).
SD15_LORAS = {name: f"animatediff-motion-lora-{camera}" for name, camera in CAMERA.items()}
SD15_DEFAULT_WEIGHT = 1.0  # the weight they were trained at
# A concept's LoRA damps the motion a direction LoRA asks for, and not every direction alike. With the
# demo's recipe concept the Shapes right LoRA at its recorded weight moved 0.69 of 16 "a <tok> circle
# wearing headphones moving right" clips right, at 1.5x 0.94 (plain prompts: 0.84 at 1x); each direction's
# factor is measured on the demo's concept (docs/motion/concept-weight.md; up stood still at 1.5x, so 2x). With a
# concept the default weight is the recorded one times its factor; SD1.5's are unmeasured and stay 1x.
CONCEPT_WEIGHT_FACTORS = {"shapes": {"right": 1.5, "left": 1.5, "up": 2.0, "down": 1.5}, "sd15": {}}
SHAPES_LORA_FILE = "pytorch_lora_weights.safetensors"
SHAPES_RECORD = "TRAINING.json"

_VERBS = (
    "moving|moves|running|runs|walking|walks|flying|flies|going|goes|sliding|slides|drifting|drifts|"
    "heading|heads|travelling|traveling"
)
_PATTERNS = (
    (re.compile(rf"\b(?:{_VERBS})\s+(?:to\s+the\s+)?(left|right|up|down)\b", re.I), lambda w: w),
    (re.compile(r"\b(?:camera\s+)?pan(?:s|ning)?\s+(?:to\s+the\s+)?(left|right)\b", re.I), lambda w: f"pan-{w}"),
    (re.compile(r"\b(?:camera\s+)?tilt(?:s|ing)?\s+(up|down)\b", re.I), lambda w: f"tilt-{w}"),
    (re.compile(r"\bzoom(?:s|ing)?\s+(in|out)\b", re.I), lambda w: f"zoom-{w}"),
    (
        re.compile(r"\broll(?:s|ing)?\s+(clockwise|anti-?clockwise|counter-?clockwise)\b", re.I),
        lambda w: f"roll-{w.replace('-', '')}",
    ),
)


def motion_name(text: str) -> str:
    """A flag's motion ('right', 'Pan Left', 'zoom_in', 'none') as a name in MOTIONS, or NONE."""
    key = re.sub(r"[\s_]+", "-", text.strip().lower())
    if key == NONE:
        return NONE
    key = ALIASES.get(key, key)
    if key not in MOTIONS:
        raise UserError(f"--motion {text!r} is unknown; choose one of {', '.join(MOTIONS)} (or none)")
    return key


def motion_in_prompt(prompt: str) -> tuple[str, str] | None:
    """(motion name, the words that asked for it) for a prompt that asks for one motion, else None."""
    found = {}
    for pattern, spell in _PATTERNS:
        for match in pattern.finditer(prompt):
            found.setdefault(motion_name(spell(match.group(1).lower())), match.group(0))
    if len(found) > 1:
        words = " and ".join(f"'{w}'" for w in found.values())
        raise UserError(f"prompt {prompt!r} asks for {len(found)} motions ({words}); keep one, or pass --motion NAME")
    return next(iter(found.items()), None)


@dataclass(frozen=True)
class MotionChoice:
    """What one prompt's render applies; `lora` None when the family has no weights for it."""

    name: str
    asked_by: str  # "flag" or "prompt"
    words: str | None  # the prompt's words that asked, if any
    lora: str | None
    weight: float | None

    def record(self) -> dict:
        return {**asdict(self), "camera": CAMERA[self.name]}

    def describe(self) -> str:
        applied = f"{self.lora} at weight {self.weight}" if self.lora else "no motion LoRA"
        return f"motion {self.name} (camera {CAMERA[self.name]}; from the {self.asked_by}): {applied}"


def shapes_lora_dir() -> Path:
    from cdvideo.shapes.models import WEIGHTS_DIR

    return WEIGHTS_DIR / "motion_loras"


def shipped_shapes_loras(folder: Path | None = None) -> dict[str, Path]:
    """Motion name -> folder of each trained Shapes motion LoRA (weights plus training record)."""
    folder = folder or shapes_lora_dir()
    if not folder.is_dir():
        return {}
    return {
        sub.name: sub
        for sub in sorted(folder.iterdir())
        if sub.name in MOTIONS and (sub / SHAPES_LORA_FILE).is_file() and (sub / SHAPES_RECORD).is_file()
    }


def family_loras(family: str, local_dir: str | None = None) -> dict[str, tuple[str, float]]:
    """Motion name -> (LoRA source, default weight) for a family ('sd15' or 'shapes').

    `local_dir` replaces where they come from: for SD1.5 a folder holding guoyww's repos by name
    (`hf download guoyww/animatediff-motion-lora-pan-left --local-dir DIR/animatediff-motion-lora-pan-left`),
    for Shapes a folder laid out as the package's `weights/motion_loras/<motion>/`.
    """
    if family == "shapes":
        loras = shipped_shapes_loras(Path(local_dir) if local_dir else None)
        return {name: (str(path), _shapes_weight(path)) for name, path in loras.items()}
    if local_dir:
        found = {name: Path(local_dir) / repo for name, repo in SD15_LORAS.items()}
        return {name: (str(path), SD15_DEFAULT_WEIGHT) for name, path in found.items() if path.is_dir()}
    return {name: (f"{SD15_HUB_ORG}/{repo}", SD15_DEFAULT_WEIGHT) for name, repo in SD15_LORAS.items()}


def _shapes_weight(folder: Path) -> float:
    try:
        return float(json.loads((folder / SHAPES_RECORD).read_text()).get("weight", 1.0))
    except (OSError, ValueError, AttributeError) as err:
        raise UserError(f"motion LoRA record {folder / SHAPES_RECORD} is unreadable: {err}") from err


def concept_weight_factor(family: str, motion: str) -> float:
    """How much stronger than its recorded weight `family`'s LoRA for `motion` runs beside a concept."""
    return CONCEPT_WEIGHT_FACTORS.get(family, {}).get(motion, 1.0)


def plan_motions(
    prompts: list[str],
    flag: str | None,
    weight: float | None,
    family: str,
    local_dir: str | None = None,
    with_concept: bool = False,
) -> tuple[list[MotionChoice | None], list[str]]:
    """The motion each prompt gets, and the lines to print about it. `weight` None: each LoRA's default,
    times its `concept_weight_factor` when rendered `with_concept`.

    The flag wins over the prompt's words (said in a line when they disagree). A flag naming a
    motion the family has no weights for is an error; prompt words are then only a note, since the
    words stay in the prompt and are the family's own way of asking (the Shapes grammar's)."""
    asked = motion_name(flag) if flag is not None else None
    loras = family_loras(family, local_dir) if asked != NONE else {}
    if asked not in (None, NONE) and asked not in loras:
        have = ", ".join(sorted(loras)) or "none"
        hint = "scripts/train_motion_lora.py trains one" if family == "shapes" else "check --motion-lora-dir"
        raise UserError(
            f"the {family} family has no motion LoRA for '{asked}' (it has: {have}); {hint}, or give a file "
            "with --motion-lora PATH[:WEIGHT]"
        )
    choices, lines = [], []
    for prompt in prompts:
        said = motion_in_prompt(prompt) if asked != NONE else None
        if asked == NONE:
            choices.append(None)
            continue
        if asked is not None:
            if said and said[0] != asked:
                lines.append(f"--motion {asked} overrides '{said[1]}' ({said[0]}) in the prompt {prompt!r}")
            name, by, words = asked, "flag", said[1] if said else None
        elif said:
            name, by, words = said[0], "prompt", said[1]
        else:
            choices.append(None)
            continue
        source, default = loras.get(name, (None, None))
        if source is None:
            have = ", ".join(sorted(loras)) or "none"
            lines.append(
                f"note: '{words}' asks for {name}; the {family} family has no motion LoRA for it "
                f"(it has: {have}), so the words alone steer the motion"
            )
        factor = concept_weight_factor(family, name) if with_concept else 1.0
        chosen_weight = (weight if weight is not None else default * factor) if source else None
        choices.append(MotionChoice(name, by, words, source, chosen_weight))
    return choices, lines
