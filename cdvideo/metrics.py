"""What `cdvideo eval` measures on one clip: backbone cosines, motion, VBench's video scores, the Shapes
world's exact scorer, and the concept's drift in the text encoder. Scores only; no rendering or report.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cdvideo import concept as concepts
from cdvideo import loading
from cdvideo.backbones import Backbones
from cdvideo.flow import FlowEstimator, dynamic_degree

# A concept video moving less than this fraction of the base model's motion "freezes"; one whose
# frame-to-frame consistency falls this far below the base video's, or that moves this many times
# more, "breaks" motion (flicker, jumps).
FREEZE_RATIO = 0.5
BREAK_RATIO = 2.5
BREAK_CONSISTENCY_DROP = 0.1
# Below this mean frame difference the base video itself is still: no ratio to speak of.
STILL = 1e-3

SCORE_KEYS = (
    "clip_i",
    "clip_i_worst",
    "dino_i",
    "dino_i_worst",
    "clip_t",
    "blip_t",
    "frame_consistency",
    "subject_consistency",
    "motion",
    "dynamic",  # VBench dynamic degree: the share of clips that move
    "flow",  # mean optical-flow magnitude, pixels per frame
)
SHAPES_RATES = ("subject_ok", "class_kept", "accessory_ok", "background_ok", "motion_ok", "composition")


def _cos_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


def motion_amount(frames: np.ndarray) -> float:
    """Mean absolute difference of consecutive frames, pixels in [0, 1]."""
    if len(frames) < 2:
        return 0.0
    x = frames.astype(np.float32) / 255.0
    return float(np.abs(np.diff(x, axis=0)).mean())


def subject_consistency(features: torch.Tensor) -> float:
    """VBench's subject consistency on unit features (F, D): for each frame after the first, the mean of
    its cosine to the first and to the previous frame, each floored at 0; averaged over those frames."""
    if len(features) < 2:
        return 1.0
    to_first = _cos_pairs(features[1:], features[:1]).clamp_min(0)
    to_previous = _cos_pairs(features[1:], features[:-1]).clamp_min(0)
    return ((to_first + to_previous) / 2).mean().item()


def frame_consistency(features: torch.Tensor) -> float:
    """Mean cosine of each frame's unit features to the next frame's."""
    return _cos_pairs(features[1:], features[:-1]).mean().item() if len(features) > 1 else 1.0


def video_scores(bb: Backbones, frames: np.ndarray, photos: dict, text: str, flow: FlowEstimator | None = None) -> dict:
    """Every score of one clip; None where its backbone (or the flow estimator) is left out."""
    images = [Image.fromarray(f) for f in frames]
    scores: dict = dict.fromkeys(SCORE_KEYS)
    scores["motion"] = motion_amount(frames)
    if flow is not None:
        scores.update(dynamic_degree(frames, flow))
    if bb.clip:
        c = bb.clip_images(images)
        clip_i = (c @ photos["clip"].T).mean(1)
        scores["clip_i"], scores["clip_i_worst"] = clip_i.mean().item(), clip_i.min().item()
        scores["clip_t"] = (c @ bb.clip_text(text)).mean().item()
        scores["frame_consistency"] = frame_consistency(c)
    if bb.dino:
        d = bb.dino_images(images)
        dino_i = (d @ photos["dino"].T).mean(1)
        scores["dino_i"], scores["dino_i_worst"] = dino_i.mean().item(), dino_i.min().item()
        scores["subject_consistency"] = subject_consistency(d)
    if bb.blip:
        scores["blip_t"] = bb.blip_cosines(images, text).mean().item()
    return scores


def motion_flag(scores: dict, base: dict) -> str:
    """'' when motion looks like the base model's, else what went wrong."""
    if base["motion"] >= STILL and scores["motion"] < FREEZE_RATIO * base["motion"]:
        return "freezes"
    consistency = scores["frame_consistency"], base["frame_consistency"]
    if (None not in consistency and consistency[0] < consistency[1] - BREAK_CONSISTENCY_DROP) or (
        base["motion"] >= STILL and scores["motion"] > BREAK_RATIO * base["motion"]
    ):
        return "breaks motion"
    return ""


@torch.no_grad()
def drift_scores(
    concept_folder: Path, concept: concepts.Concept, texts: list[tuple[str, str]], base_config: str | None = None
) -> tuple[float, list[float]]:
    """Concept-class cosine at the EOS position for the training phrase and each (with token, without) pair."""
    from cdvideo.loss import concept_class_cosine, eos_features

    pipe = loading.load_image_pipeline(concept.base, torch.float32, config=base_config)
    pipe.load_textual_inversion(str(concept_folder / concepts.EMBEDS_FILE), token=concept.token)
    tok, enc = pipe.tokenizer, pipe.text_encoder.eval()
    phrase = (f"a photo of a {concept.token} {concept.class_word}", f"a photo of a {concept.class_word}")
    pairs = [phrase, *texts]

    def ids(strings: list[str]) -> torch.Tensor:
        return tok(strings, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")

    with_token = eos_features(enc, ids([a for a, _ in pairs]).input_ids, tok.eos_token_id)
    without = eos_features(enc, ids([b for _, b in pairs]).input_ids, tok.eos_token_id)
    cos = concept_class_cosine(with_token, without).tolist()
    return cos[0], cos[1:]


def parse_shapes_prompt(text: str) -> dict:
    """What a Shapes-world prompt asks for, read with the world's own vocabulary."""
    from cdvideo.shapes import world

    def phrase(options) -> str:
        found = [p for p in options if p and re.search(rf"\b{re.escape(p)}\b", text)]
        return max(found, key=len) if found else ""

    motion = phrase(world.MOTIONS)
    return {
        "accessory": phrase(world.ACCESSORIES),
        "background": phrase(world.BACKGROUNDS),
        "motion": motion or None,  # a prompt that names no motion asks for none in particular
    }


def shapes_scores(frames: np.ndarray, class_word: str, text: str, subject: bool) -> dict:
    """The world's exact scorer on a clip: is it the subject (or class), with what the prompt asks?

    travel_px: how far the object's centre moves per frame (the world's own motion amount)."""
    from cdvideo.shapes import scorer

    asked = parse_shapes_prompt(text)
    clip = scorer.score_clip(frames, expected_cls=class_word)
    pattern = sum(f.pattern for f in clip.frames) / len(clip.frames)
    is_subject = bool(clip.pattern and clip.cls == class_word) if subject else clip.cls == class_word
    accessory_ok = clip.accessory == asked["accessory"]
    background_ok = clip.background == asked["background"]
    motion_ok = None if asked["motion"] is None else clip.motion == asked["motion"]
    centres = [(f.x, f.y) for f in clip.frames]
    steps = [np.hypot(b[0] - a[0], b[1] - a[1]) for a, b in zip(centres, centres[1:]) if None not in (*a, *b)]
    return {
        "pattern_frames": pattern,
        "class": clip.cls,
        "accessory": clip.accessory,
        "background": clip.background,
        "motion": clip.motion,
        "travel_px": float(np.mean(steps)) if steps else 0.0,
        "subject_ok": is_subject,
        "class_kept": clip.class_kept,
        "accessory_ok": accessory_ok,
        "background_ok": background_ok,
        "motion_ok": motion_ok,
        "composition": is_subject and accessory_ok and background_ok and motion_ok is not False,
    }
