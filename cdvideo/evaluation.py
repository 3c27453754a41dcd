"""`cdvideo eval`: does the video look like the subject, follow the prompt, and still move?

For every prompt of a DreamBench-style set (configs/eval/) and seed, the concept's video and the base
model's video (same prompt with the class word alone, same seed) are rendered with `cdvideo.animate`,
or read from a folder of videos `cdvideo animate` wrote. Scores, all raw cosines in [-1, 1]:

    identity     CLIP-I and DINO-I: each frame against each of the concept's photos (mean, worst frame)
    prompt       CLIP-T and BLIP-T (BLIP ITC head, as ClassDiffusion's "BLIP2-T") on the prompt without the token
    video        frame-to-frame CLIP consistency; DINO subject consistency (VBench's: each frame against
                 the first and the previous); motion = mean absolute frame difference, against the base video's
    drift        concept phrase vs class phrase in the base text encoder, at the EOS position
    shapes       on the Shapes world, the world's exact scorer: subject, class, accessory, motion as asked

`evaluate_checkpoints` scores a run's saved checkpoints and marks the identity / prompt-following front.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cdvideo import concept as concepts
from cdvideo import loading, videofiles
from cdvideo.atomic import ensure_writable_dir, write_json_atomic, write_text_atomic
from cdvideo.errors import UserError

CLIP_ID = "openai/clip-vit-base-patch32"
DINO_ID = "facebook/dino-vits16"
BLIP_ID = "Salesforce/blip-itm-large-coco"
PROMPT_SETS = Path(__file__).resolve().parent.parent / "configs" / "eval"
REPORT = "report"
OFF = "none"  # as a backbone id: leave that backbone out

# A concept video moving less than this fraction of the base model's motion "freezes"; one whose
# frame-to-frame consistency falls this far below the base video's, or that moves this many times
# more, "breaks" motion (flicker, jumps).
FREEZE_RATIO = 0.5
BREAK_RATIO = 2.5
BREAK_CONSISTENCY_DROP = 0.1
# Below this mean frame difference the base video itself is still: no ratio to speak of.
STILL = 1e-3


@dataclass
class EvalConfig:
    concept: str | None = None
    prompts: str | None = None  # YAML prompt set; default configs/eval/{dreambench,shapes}.yaml
    videos: str | None = None  # read videos `cdvideo animate` wrote here; the rest are rendered
    output: str = "cdvideo-eval"
    checkpoints: str | None = None  # a run folder: score its saved checkpoints instead
    seeds: list[int] = field(default_factory=lambda: [0])
    frames: int | None = None
    steps: int | None = None
    guidance: float | None = None
    motion_adapter: str | None = None
    base_config: str | None = None
    precision: str | None = None
    device: str | None = None
    clip: str = CLIP_ID
    dino: str = DINO_ID
    blip: str = BLIP_ID


@dataclass
class PromptItem:
    category: str
    template: str  # with "{}" for the subject phrase

    def fill(self, subject: str) -> str:
        return self.template.replace("{}", subject)


# ---------------------------------------------------------------------------
# prompt sets


def default_prompt_set(base: str) -> Path:
    return PROMPT_SETS / ("shapes.yaml" if base == "shapes" else "dreambench.yaml")


def load_prompt_set(path: str | Path) -> list[PromptItem]:
    """A YAML mapping of category -> list of prompt templates, each with one `{}` for the subject."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompt set {path} not found; give --prompts FILE (see configs/eval/)")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"prompt set {path} does not parse as YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict) or not data:
        raise UserError(f"prompt set {path} must map categories to lists of prompts, e.g. 'accessory: [a {{}} ...]'")
    items = []
    for category, templates in data.items():
        if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
            raise UserError(f"prompt set {path}: category {category!r} must be a list of prompt strings")
        for template in templates:
            if template.count("{}") != 1:
                raise UserError(f"prompt set {path}: {template!r} needs exactly one {{}} where the subject goes")
            items.append(PromptItem(str(category), template.strip()))
    if not items:
        raise UserError(f"prompt set {path} has no prompts")
    return items


# ---------------------------------------------------------------------------
# backbones


def _from_pretrained(cls, name: str, what: str):
    try:
        return cls.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise loading.load_error(what, name, err, hint="check the id and network, or give a local folder") from err


class Backbones:
    """CLIP, DINO and BLIP image/text encoders from hub ids or local folders (transformers' own loaders).

    An id of "none" leaves that backbone out (its metrics are null): offline, on the Shapes world, the
    world's scorer and the motion and drift measures still stand.
    """

    def __init__(self, clip: str, dino: str, blip: str, device: torch.device):
        from transformers import AutoModel, AutoProcessor, BlipForImageTextRetrieval, CLIPModel

        self.ids = {"clip": clip, "dino": dino, "blip": blip}
        self.device = device

        def load(cls, name: str, what: str):
            if name == OFF:
                return None, None
            model = _from_pretrained(cls, name, f"{what} backbone").to(device).eval()
            return model, _from_pretrained(AutoProcessor, name, f"{what} processor")

        self.clip, self.clip_proc = load(CLIPModel, clip, "CLIP")
        self.dino, self.dino_proc = load(AutoModel, dino, "DINO")
        self.blip, self.blip_proc = load(BlipForImageTextRetrieval, blip, "BLIP")

    def describe(self) -> dict:
        def size(proc) -> str:
            proc = getattr(proc, "image_processor", proc)
            s = getattr(proc, "crop_size", None) if getattr(proc, "do_center_crop", False) else None
            s = s or proc.size
            s = {k: v for k, v in dict(s).items() if v}
            return f"{s['height']}x{s['width']}" if "height" in s else str(s)

        features = {"clip": "projected", "dino": "CLS", "blip": "ITC"}
        procs = {"clip": self.clip_proc, "dino": self.dino_proc, "blip": self.blip_proc}
        return {
            k: {
                "id": self.ids[k],
                "image_size": size(procs[k]) if procs[k] else None,
                "scale": "raw cosine in [-1, 1] (not 100x)",
                "features": features[k],
            }
            for k in procs
        }

    @torch.no_grad()
    def clip_images(self, images: list[Image.Image]) -> torch.Tensor:
        inputs = self.clip_proc(images=images, return_tensors="pt").to(self.device)
        return F.normalize(self.clip.get_image_features(**inputs).pooler_output.float(), dim=-1)

    @torch.no_grad()
    def clip_text(self, text: str) -> torch.Tensor:
        inputs = self.clip_proc(text=[text], return_tensors="pt", padding=True, truncation=True).to(self.device)
        return F.normalize(self.clip.get_text_features(**inputs).pooler_output.float(), dim=-1)[0]

    @torch.no_grad()
    def dino_images(self, images: list[Image.Image]) -> torch.Tensor:
        inputs = self.dino_proc(images=images, return_tensors="pt").to(self.device)
        return F.normalize(self.dino(**inputs).last_hidden_state[:, 0].float(), dim=-1)

    @torch.no_grad()
    def blip_cosines(self, images: list[Image.Image], text: str) -> torch.Tensor:
        inputs = self.blip_proc(images=images, text=[text], return_tensors="pt", padding=True).to(self.device)
        out = self.blip(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            pixel_values=inputs.pixel_values,
            use_itm_head=False,  # the ITC head: a cosine of projected features
        )
        return out.itm_score[:, 0].float()


# ---------------------------------------------------------------------------
# videos


@dataclass
class Clip:
    frames: np.ndarray  # (F, H, W, 3) uint8
    file: str


def _video_index(folder: Path) -> dict[tuple[str, int, str | None], tuple[Path, dict]]:
    """(rendered prompt, seed, concept folder or None) -> (video file, settings), from the JSON beside each."""
    index = {}
    for meta in sorted(folder.rglob("*.json")):  # recursive: an earlier eval's output folder works too
        try:
            settings = json.loads(meta.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            continue  # not one of ours
        if not isinstance(settings, dict) or "rendered_prompt" not in settings or "seed" not in settings:
            continue
        video = next((meta.with_suffix(s) for s in (".mp4", ".gif") if meta.with_suffix(s).exists()), None)
        if video is None:
            continue
        owner = str(Path(settings["concept"]).resolve()) if settings.get("concept") else None
        index[(settings["rendered_prompt"], int(settings["seed"]), owner)] = (video, settings)
    return index


def read_clip(path: Path) -> Clip:
    try:
        frames = videofiles.read_video(path)
    except Exception as err:  # decord/imageio raise their own types for corrupt files
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UserError(f"video {path} does not decode ({first}); delete it and its .json to render it again") from err
    if frames.ndim != 4 or len(frames) == 0:
        raise UserError(f"video {path} has no frames; delete it and its .json to render it again")
    return Clip(np.ascontiguousarray(frames), str(path))


def _gather_clips(
    cfg: EvalConfig,
    prompts: list[str],
    concept_folder: Path | None,
    base: str,
    out: Path,
    say: Callable[[str], None],
) -> dict[tuple[str, int], Clip]:
    """Every (prompt, seed) clip: from --videos when there, else rendered into `out`."""
    from cdvideo.rendering import AnimateConfig, animate

    owner = str(concept_folder.resolve()) if concept_folder else None
    index = _video_index(Path(cfg.videos)) if cfg.videos else {}
    clips: dict[tuple[str, int], Clip] = {}
    missing: dict[int, list[str]] = {}
    for prompt in prompts:
        for seed in cfg.seeds:
            found = index.get((prompt, seed, owner))
            if found and (owner or loading.base_identity(found[1].get("base", "")) == base):
                clips[(prompt, seed)] = read_clip(found[0])
            else:
                missing.setdefault(seed, []).append(prompt)
    # One pipeline load per distinct prompt list (normally one for everything).
    groups: dict[tuple[str, ...], list[int]] = {}
    for seed, todo in missing.items():
        groups.setdefault(tuple(todo), []).append(seed)
    for todo, seeds in groups.items():
        videos = animate(
            AnimateConfig(
                prompts=list(todo),
                concept=str(concept_folder) if concept_folder else None,
                use_concept=concept_folder is not None,
                base=base,
                motion_adapter=cfg.motion_adapter,
                frames=cfg.frames,
                steps=cfg.steps,
                guidance=cfg.guidance,
                seeds=seeds,
                output=str(out),
                precision=cfg.precision,
                device=cfg.device,
                base_config=cfg.base_config,
            ),
            say=lambda _msg: None,
            progress=False,
        )
        for video in videos:
            # Scored as generated, not as re-decoded from the lossy mp4.
            clips[(video.prompt, video.seed)] = Clip(videofiles.to_uint8_frames(video.frames), str(video.files["mp4"]))
        say(f"rendered {len(videos)} {'concept' if concept_folder else 'base model'} videos into {out}")
    return clips


def _images(frames: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(f) for f in frames]


# ---------------------------------------------------------------------------
# scores


def _cos_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


def motion_amount(frames: np.ndarray) -> float:
    """Mean absolute difference of consecutive frames, pixels in [0, 1]."""
    if len(frames) < 2:
        return 0.0
    x = frames.astype(np.float32) / 255.0
    return float(np.abs(np.diff(x, axis=0)).mean())


def _video_scores(bb: Backbones, clip: Clip, photos: dict, text: str) -> dict:
    images = _images(clip.frames)
    n = len(images)
    scores: dict = dict.fromkeys(SCORE_KEYS)  # None: that backbone is left out
    scores["motion"] = motion_amount(clip.frames)
    if bb.clip:
        c = bb.clip_images(images)
        clip_i = (c @ photos["clip"].T).mean(1)
        scores["clip_i"], scores["clip_i_worst"] = clip_i.mean().item(), clip_i.min().item()
        scores["clip_t"] = (c @ bb.clip_text(text)).mean().item()
        scores["frame_consistency"] = _cos_pairs(c[1:], c[:-1]).mean().item() if n > 1 else 1.0
    if bb.dino:
        d = bb.dino_images(images)
        dino_i = (d @ photos["dino"].T).mean(1)
        scores["dino_i"], scores["dino_i_worst"] = dino_i.mean().item(), dino_i.min().item()
        subject = [(_cos_pairs(d[t], d[0]) + _cos_pairs(d[t], d[t - 1])) / 2 for t in range(1, n)]
        scores["subject_consistency"] = torch.stack(subject).mean().item() if subject else 1.0
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
def drift_scores(concept_folder: Path, concept: concepts.Concept, texts: list[tuple[str, str]], cfg: EvalConfig):
    """Concept-class cosine at the EOS position for the training phrase and each (with token, without) pair."""
    from cdvideo.loss import concept_class_cosine, eos_features

    pipe = loading.load_image_pipeline(concept.base, torch.float32, config=cfg.base_config)
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


def _parse_shapes_prompt(text: str) -> dict:
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
    """The world's exact scorer on a clip: is it the subject (or class), with what the prompt asks?"""
    from cdvideo.shapes import scorer

    asked = _parse_shapes_prompt(text)
    clip = scorer.score_clip(frames, expected_cls=class_word)
    pattern = sum(f.pattern for f in clip.frames) / len(clip.frames)
    is_subject = bool(clip.pattern and clip.cls == class_word) if subject else clip.cls == class_word
    accessory_ok = clip.accessory == asked["accessory"]
    background_ok = clip.background == asked["background"]
    motion_ok = None if asked["motion"] is None else clip.motion == asked["motion"]
    return {
        "pattern_frames": pattern,
        "class": clip.cls,
        "accessory": clip.accessory,
        "background": clip.background,
        "motion": clip.motion,
        "subject_ok": is_subject,
        "accessory_ok": accessory_ok,
        "background_ok": background_ok,
        "motion_ok": motion_ok,
        "composition": is_subject and accessory_ok and background_ok and motion_ok is not False,
    }


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def _round(d: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


# ---------------------------------------------------------------------------
# the report


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
)
USES = {"clip": "CLIP-I, CLIP-T, frame consistency", "dino": "DINO-I, subject consistency", "blip": "BLIP-T (ITC)"}
AXIS_NAMES = {
    "dino_i": "DINO-I (mean)",
    "clip_t": "CLIP-T (mean)",
    "subject": "subject rate (world scorer)",
    "composition": "composition rate (world scorer)",
}
SHAPES_RATES = ("subject_ok", "accessory_ok", "background_ok", "motion_ok", "composition")


def _summarise(rows: list[dict], key: str) -> dict:
    out = {}
    for k in SCORE_KEYS:
        values = [r[key][k] for r in rows if r[key][k] is not None]
        out[k] = (round(min(values), 4) if values else None) if k.endswith("_worst") else _mean(values)
    return out


def base_videos(
    cfg: EvalConfig, items: list[PromptItem], base: str, class_word: str, out: Path, say: Callable[[str], None]
) -> dict[tuple[str, int], Clip]:
    """The base model's videos (class word alone): what the concept's motion and composition compare with."""
    return _gather_clips(cfg, [item.fill(class_word) for item in items], None, base, out / "base-videos", say)


def evaluate_concept(
    cfg: EvalConfig,
    concept_folder: Path,
    out: Path,
    backbones: Backbones,
    items: list[PromptItem],
    base_clips: dict,
    say: Callable[[str], None] = print,
) -> dict:
    """Score one concept on the prompt set; writes report.json and report.md into `out`."""
    concept = concepts.load_concept(concept_folder)
    photo_images = concepts.load_photos(concept_folder)
    subject = f"{concept.token} {concept.class_word}"
    with_token = [item.fill(subject) for item in items]
    text = [item.fill(concept.class_word) for item in items]
    clips = _gather_clips(cfg, with_token, concept_folder, concept.base, out / "videos", say)
    photos = {
        "clip": backbones.clip_images(photo_images) if backbones.clip else None,
        "dino": backbones.dino_images(photo_images) if backbones.dino else None,
    }
    phrase_drift, prompt_drift = drift_scores(concept_folder, concept, list(zip(with_token, text)), cfg)
    shapes = concept.base == "shapes"

    rows = []
    for item, prompt, plain, drift in zip(items, with_token, text, prompt_drift):
        videos = []
        for seed in cfg.seeds:
            clip, base = clips[(prompt, seed)], base_clips[(plain, seed)]
            scores = _video_scores(backbones, clip, photos, plain)
            base_scores = _video_scores(backbones, base, photos, plain)
            video = {
                "seed": seed,
                "file": clip.file,
                "base_file": base.file,
                "frames": len(clip.frames),
                "scores": _round(scores),
                "base": _round(base_scores),
                "motion_ratio": round(scores["motion"] / base_scores["motion"], 4)
                if base_scores["motion"] >= STILL
                else None,
                "flag": motion_flag(scores, base_scores),
            }
            if shapes:
                video["shapes"] = _round(shapes_scores(clip.frames, concept.class_word, plain, subject=True))
                video["base_shapes"] = _round(shapes_scores(base.frames, concept.class_word, plain, subject=False))
            videos.append(video)
        row = {
            "category": item.category,
            "template": item.template,
            "prompt": prompt,
            "text_prompt": plain,
            "drift": round(drift, 4),
            "scores": _summarise(videos, "scores"),
            "base": _summarise(videos, "base"),
            "motion_ratio": _mean(v["motion_ratio"] for v in videos),
            "flags": sorted({v["flag"] for v in videos if v["flag"]}),
            "videos": videos,
        }
        if shapes:
            row["shapes"] = {k: _mean(v["shapes"][k] for v in videos) for k in SHAPES_RATES}
            row["base_shapes"] = {k: _mean(v["base_shapes"][k] for v in videos) for k in SHAPES_RATES}
        rows.append(row)

    overall = {
        "scores": _summarise(rows, "scores"),
        "base": _summarise(rows, "base"),
        "motion_ratio": _mean(r["motion_ratio"] for r in rows),
        "videos_flagged": sum(bool(v["flag"]) for r in rows for v in r["videos"]),
        "videos": sum(len(r["videos"]) for r in rows),
        "drift": round(phrase_drift, 4),
        "prompt_drift": _mean(r["drift"] for r in rows),
    }
    if shapes:
        overall["shapes"] = {k: _mean(r["shapes"][k] for r in rows) for k in SHAPES_RATES}
        overall["base_shapes"] = {k: _mean(r["base_shapes"][k] for r in rows) for k in SHAPES_RATES}
    report = {
        "concept": str(concept_folder),
        "token": concept.token,
        "class_word": concept.class_word,
        "base": concept.base,
        "steps": concept.steps,
        "spl_weight": concept.spl_weight,
        "prior_weight": concept.prior_weight,
        "seeds": list(cfg.seeds),
        "photos": len(photo_images),
        "backbones": backbones.describe(),
        "rules": {
            "freezes": f"motion < {FREEZE_RATIO} x the base video's",
            "breaks motion": f"frame consistency {BREAK_CONSISTENCY_DROP} below the base video's, "
            f"or motion > {BREAK_RATIO} x the base video's",
            "drift": "cosine of 'a photo of a <token> <class>' vs 'a photo of a <class>' (EOS, final layer norm)",
        },
        "overall": overall,
        "prompts": rows,
    }
    write_json_atomic(out / f"{REPORT}.json", report)
    write_text_atomic(out / f"{REPORT}.md", report_markdown(report))
    return report


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows),
    ]


def report_markdown(report: dict) -> str:
    o = report["overall"]
    lines = [
        f"# cdvideo eval: {report['token']} {report['class_word']}",
        "",
        f"Concept `{report['concept']}` (base `{report['base']}`, {report['steps']} steps, SPL weight "
        f"{report['spl_weight']}, prior weight {report['prior_weight']}); {report['photos']} photos; "
        f"seeds {report['seeds']}; {o['videos']} videos, {o['videos_flagged']} flagged.",
        "",
        "All scores are raw cosines in [-1, 1]. Base = the base model's video for the same prompt with the "
        "class word alone and the same seed.",
        "",
        *_table(
            ["metric", "backbone", "image size"],
            [[USES[k], b["id"], b["image_size"]] for k, b in report["backbones"].items()],
        ),
        "",
        "## Overall",
        "",
        *_table(
            ["", *SCORE_KEYS],
            [["concept", *(o["scores"][k] for k in SCORE_KEYS)], ["base", *(o["base"][k] for k in SCORE_KEYS)]],
        ),
        "",
        f"Drift (concept-class cosine, EOS): {_fmt(o['drift'])} for the training phrase, "
        f"{_fmt(o['prompt_drift'])} mean over prompts. Motion vs base: {_fmt(o['motion_ratio'])}x.",
    ]
    if "shapes" in o:
        lines += [
            "",
            "World scorer (rates; base = the class word alone, the ceiling for composition):",
            "",
            *_table(
                ["", *SHAPES_RATES],
                [
                    ["concept", *(o["shapes"][k] for k in SHAPES_RATES)],
                    ["base", *(o["base_shapes"][k] for k in SHAPES_RATES)],
                ],
            ),
        ]
    header = ["category", "prompt", "CLIP-I", "worst", "DINO-I", "worst", "CLIP-T", "BLIP-T", "frame c.", "subj. c."]
    header += ["motion x base", "drift", "flags"]
    body = []
    for r in report["prompts"]:
        s = r["scores"]
        body.append(
            [r["category"], r["prompt"], s["clip_i"], s["clip_i_worst"], s["dino_i"], s["dino_i_worst"], s["clip_t"]]
            + [s["blip_t"], s["frame_consistency"], s["subject_consistency"], r["motion_ratio"], r["drift"]]
            + [", ".join(r["flags"]) or "ok"]
        )
    lines += ["", "## Per prompt", "", *_table(header, body)]
    if "shapes" in o:
        body = [[r["prompt"], *(r["shapes"][k] for k in SHAPES_RATES)] for r in report["prompts"]]
        lines += ["", "World scorer per prompt (rates over seeds):", "", *_table(["prompt", *SHAPES_RATES], body)]
    lines += ["", "Rules: " + "; ".join(f"{k}: {v}" for k, v in report["rules"].items()), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# entry points


def _setup(cfg: EvalConfig, base: str) -> tuple[list[PromptItem], Path, Backbones]:
    """Cheap checks first (prompt set, output folder), then the backbones."""
    items = load_prompt_set(cfg.prompts or default_prompt_set(base))
    if not cfg.seeds:
        raise UserError("give at least one --seed")
    out = ensure_writable_dir(cfg.output)
    return items, out, Backbones(cfg.clip, cfg.dino, cfg.blip, loading.pick_device(cfg.device))


def evaluate(cfg: EvalConfig, say: Callable[[str], None] = print) -> dict:
    """Score a concept folder; returns the report (also written as report.json / report.md in cfg.output)."""
    if cfg.checkpoints and cfg.concept:
        raise UserError("give a concept folder or --checkpoints RUN_DIR, not both")
    if cfg.checkpoints:
        return evaluate_checkpoints(cfg, say)
    if not cfg.concept:
        raise UserError("give a concept folder (or --checkpoints RUN_DIR)")
    folder = Path(cfg.concept)
    concept = concepts.load_concept(folder)
    concepts.load_photos(folder)  # before any model loads: a concept without photos fails fast
    items, out, backbones = _setup(cfg, concept.base)
    base_clips = base_videos(cfg, items, concept.base, concept.class_word, out, say)
    report = evaluate_concept(cfg, folder, out, backbones, items, base_clips, say=say)
    o = report["overall"]["scores"]
    names = {"clip_i": "CLIP-I", "dino_i": "DINO-I", "clip_t": "CLIP-T", "blip_t": "BLIP-T"}
    shown = "  ".join(f"{v} {_fmt(o[k])}" for k, v in names.items())
    say(f"{shown}  drift {_fmt(report['overall']['drift'])}; report in {out / (REPORT + '.md')}")
    return report


# ---------------------------------------------------------------------------
# checkpoints


def _run_folder(run: Path) -> Path:
    """Where a run's settings and photos are: the finished concept, else its newest checkpoint."""
    from cdvideo import checkpoints
    from cdvideo.training import CONFIG_FILE

    newest = checkpoints.latest(run)
    return newest if not (run / CONFIG_FILE).exists() and newest is not None else run


def _run_config(run: Path):
    from cdvideo.training import CONFIG_FILE, TrainConfig

    path = _run_folder(run) / CONFIG_FILE
    try:
        values = json.loads(path.read_text())
        return TrainConfig(**{k: v for k, v in values.items() if k in TrainConfig.__dataclass_fields__})
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise UserError(f"{path} is missing or unreadable ({err}); is {run} the --output of `cdvideo train`?") from err


def checkpoint_concept(run: Path, checkpoint: Path, folder: Path) -> Path:
    """Turn a training checkpoint into a loadable concept folder (same files `cdvideo train` writes)."""
    from cdvideo import checkpoints, tracking
    from cdvideo.training import concept_record

    cfg = _run_config(run)
    step = int(checkpoint.name.split("-")[1])
    lora, token_row = checkpoints.weights(checkpoint, hint="delete it or train again")
    row = next((r for r in tracking.read_metrics(run) if r.get("step") == step), {})
    concepts.save_concept(folder, concept_record(cfg, step, row.get("cosine"), row), lora, token_row)
    concepts.save_photos(folder, concepts.load_photos(_run_folder(run)))
    return folder


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both axes (higher is better on each)."""
    front = []
    for i, (a, b) in enumerate(points):
        dominated = any((c >= a and d >= b) and (c > a or d > b) for j, (c, d) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def best_tradeoff(points: list[tuple[float, float]]) -> int:
    """On the front, the largest sum of both axes after scaling each to [0, 1] across all points; ties: earliest."""
    front = pareto_front(points)

    def scaled(axis: int, v: float) -> float:
        values = [p[axis] for p in points]
        span = max(values) - min(values)
        return (v - min(values)) / span if span > 0 else 1.0

    return max(front, key=lambda i: (scaled(0, points[i][0]) + scaled(1, points[i][1]), -i))


def evaluate_checkpoints(cfg: EvalConfig, say: Callable[[str], None] = print) -> dict:
    """Score every saved checkpoint of a run (and its final concept); mark the identity / prompt front."""
    from cdvideo import checkpoints

    run = Path(cfg.checkpoints)
    if not run.is_dir():
        raise UserError(f"run folder {run} does not exist; give the --output folder of `cdvideo train`")
    concepts.load_photos(_run_folder(run))
    found = checkpoints.saved(run)
    candidates = [(int(p.name.split("-")[1]), p) for p in found]
    if (run / concepts.MANIFEST).exists():
        candidates.append((concepts.load_concept(run).steps, None))
    if not candidates:
        raise UserError(
            f"{run} has no checkpoints; train with --checkpoint-every N --keep-checkpoints 0 to keep them all"
        )
    candidates.sort(key=lambda c: (c[0], c[1] is None))
    if found:
        config = _run_config(run)
        base, class_word = loading.base_identity(config.base), config.class_word
    else:
        final = concepts.load_concept(run)
        base, class_word = final.base, final.class_word
    if base != "shapes" and OFF in (cfg.dino, cfg.clip):
        raise UserError("comparing checkpoints needs DINO-I and CLIP-T: do not set --dino or --clip to none")
    items, out, backbones = _setup(cfg, base)
    # Every checkpoint is compared with the same base-model videos: rendered once.
    base_clips = base_videos(cfg, items, base, class_word, out, say)
    entries = []
    for step, path in candidates:
        name = f"step-{step:06d}" if path else "final"
        folder = checkpoint_concept(run, path, out / name / "concept") if path else run
        say(f"scoring {name}")
        report = evaluate_concept(cfg, folder, out / name, backbones, items, base_clips, say=say)
        o = report["overall"]
        entry = {"name": name, "step": step, **o["scores"], "drift": o["drift"], "flagged": o["videos_flagged"]}
        if "shapes" in o:
            entry["composition"] = o["shapes"]["composition"]
            entry["subject"] = o["shapes"]["subject_ok"]
        entries.append(entry)
    # The world's exact scorer, where there is one, beats any learned proxy for both axes.
    axes = ("subject", "composition") if "composition" in entries[0] else ("dino_i", "clip_t")
    points = [(e[axes[0]], e[axes[1]]) for e in entries]
    front = pareto_front(points)
    best = best_tradeoff(points)
    for i, e in enumerate(entries):
        e["pareto"] = i in front
        e["best"] = i == best
    summary = {
        "run": str(run),
        "axes": {"identity": AXIS_NAMES[axes[0]], "prompt following": AXIS_NAMES[axes[1]]},
        "rule": f"best = on the Pareto front of ({AXIS_NAMES[axes[0]]}, {AXIS_NAMES[axes[1]]}), the largest sum "
        "of both after scaling each to [0, 1] across the checkpoints",
        "best": entries[best]["name"],
        "checkpoints": entries,
    }
    write_json_atomic(out / "checkpoints.json", summary)
    write_text_atomic(out / "checkpoints.md", checkpoints_markdown(summary))
    say(f"best trade-off: {summary['best']}; table in {out / 'checkpoints.md'}")
    return summary


def checkpoints_markdown(summary: dict) -> str:
    entries = summary["checkpoints"]
    extra = [k for k in ("subject", "composition") if k in entries[0]]
    header = ["checkpoint", "CLIP-I", "DINO-I", "CLIP-T", "BLIP-T", "drift", *extra, "flagged", "front", "best"]
    rows = [
        [e["name"], e["clip_i"], e["dino_i"], e["clip_t"], e["blip_t"], e["drift"]]
        + [e[k] for k in extra]
        + [e["flagged"], "●" if e["pareto"] else "", "★" if e["best"] else ""]
        for e in entries
    ]
    return "\n".join(
        [
            f"# cdvideo eval --checkpoints {summary['run']}",
            "",
            f"Identity: {summary['axes']['identity']}; prompt following: {summary['axes']['prompt following']}. "
            f"● = on the Pareto front; ★ = {summary['rule']}. Per-checkpoint reports: <checkpoint>/report.md.",
            "",
            *_table(header, rows),
            "",
        ]
    )
