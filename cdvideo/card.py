"""The concept's model card: README.md with the Hub's YAML front matter, written with every concept."""

from __future__ import annotations

import re
from pathlib import Path

from cdvideo import presets, strength
from cdvideo.atomic import write_text_atomic
from cdvideo.concept import EMBEDS_FILE, Concept

CARD_FILE = "README.md"
TAGS = [
    "text-to-image",
    "diffusers",
    "lora",
    "stable-diffusion",
    "stable-diffusion-diffusers",
    "text-to-video",
    "animatediff",
    "cdvideo",
    "classdiffusion",
]
# SD1.5 and its community derivatives carry the OpenRAIL-M use restrictions into every LoRA;
# the embedded Shapes model is cdvideo's own.
SD15_LICENSE = "creativeml-openrail-m"
SHAPES_LICENSE = "apache-2.0"
# Marks a card as cdvideo's own, which `cdvideo push` may rewrite; a card without it was edited.
GENERATED = "<!-- written by cdvideo; delete this line to keep your edits when pushing -->"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hub_model_id(base: str) -> str | None:
    """`base` if it names a Hub model: the Hub rejects a card whose base_model is a local path."""
    if base == "shapes" or Path(base).exists() or not HUB_ID.fullmatch(base):
        return None
    return base


def example_prompt(concept: Concept) -> str:
    # Headphones exist in both SD1.5's world and the Shapes world.
    return f"a {concept.token} {concept.class_word} wearing headphones"


def sample_gifs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.gif") if not p.name.startswith("."))


def _usage(concept: Concept, where: str, base: str, motion_adapter: str) -> str:
    if concept.base == "shapes":
        imports = "from cdvideo.loading import resolve_base, resolve_motion_adapter\n"
        base, adapter = 'resolve_base("shapes")', 'resolve_motion_adapter("shapes")'
    else:
        imports, base, adapter = "", repr(base), repr(motion_adapter)
    return (
        "```python\n"
        f"from diffusers import AnimateDiffPipeline, MotionAdapter\n{imports}\n"
        f"adapter = MotionAdapter.from_pretrained({adapter})\n"
        f"pipe = AnimateDiffPipeline.from_pretrained({base}, motion_adapter=adapter)\n"
        f"pipe.load_lora_weights({where!r})\n"
        f"pipe.load_textual_inversion({where!r}, weight_name={EMBEDS_FILE!r}, token={concept.token!r})\n"
        f"frames = pipe({example_prompt(concept)!r}, num_frames=16).frames[0]\n"
        "```\n"
    )


def model_card_text(folder: Path, concept: Concept, repo_id: str | None = None) -> str:
    """The card for concept folder `folder`; `repo_id` (when known) is used in the code examples."""
    from huggingface_hub import ModelCard, ModelCardData

    preset = presets.preset_for(concept.base)
    gifs = sample_gifs(folder)
    prompt = example_prompt(concept)
    extra = {}
    if gifs:
        extra["widget"] = [{"text": prompt, "output": {"url": gifs[0]}}]
    data = ModelCardData(
        base_model=hub_model_id(concept.base),
        license=SHAPES_LICENSE if concept.base == "shapes" else SD15_LICENSE,
        library_name="diffusers",
        tags=TAGS,
        instance_prompt=f"a {concept.token} {concept.class_word}",
        motion_adapter=preset.motion_adapter,
        example_prompt=prompt,
        concept_class_cosine=concept.drift,
        **extra,
    )
    # Local paths go in as bare names: the card may be published, the user's directory layout not.
    where = repo_id or folder.name
    base_ref = concept.base if hub_model_id(concept.base) else Path(concept.base).name
    base_name = "cdvideo's embedded Shapes model (`--base shapes`)" if concept.base == "shapes" else base_ref
    sample = f"![{prompt}]({gifs[0]})\n\n" if gifs else ""
    drift = "not measured" if concept.drift is None else f"{concept.drift:.3f}"
    rows = [
        ("base model", base_name),
        ("token / class word", f"`{concept.token}` / {concept.class_word}"),
        (
            ("full fine-tune, stored as an exact LoRA: rank / alpha", "min(out, in) / the same (scale 1)")
            if concept.finetune == "full"
            else ("LoRA rank / alpha", f"{concept.rank} / {concept.alpha:g}")
        ),
        ("LoRA targets", ", ".join(f"`{t}`" for t in concept.lora_targets)),
        ("steps / seed", f"{concept.steps} / {concept.seed}"),
        (
            "SPL weight / pooling / prior weight",
            f"{concept.spl_weight:g} / {concept.spl_pooling} / {concept.prior_weight:g}",
        ),
        ("concept-class cosine (1 = no drift)", drift),
    ]
    if concept.render_scale != 1.0 or concept.render_schedule:
        schedule = strength.parse_schedule(concept.render_schedule)
        rows.append(("rendered by `cdvideo animate` at", strength.describe(schedule, concept.render_scale)))
    table = "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    body = (
        f"# {concept.token} {concept.class_word}: a cdvideo concept\n\n"
        f"A personalized subject for text-to-video: the token `{concept.token}` (a {concept.class_word}) "
        "as a UNet LoRA plus a token embedding, trained by cdvideo with ClassDiffusion's semantic "
        "preservation loss, for AnimateDiff.\n\n"
        f"{sample}"
        "## Use\n\n"
        f"Recommended motion adapter: `{preset.motion_adapter}`. With diffusers alone:\n\n"
        f"{_usage(concept, where, base_ref, preset.motion_adapter)}\n"
        f'With cdvideo: `cdvideo animate "{prompt}" --concept {folder.name}`.\n\n'
        f"For AUTOMATIC1111 or ComfyUI: `cdvideo export {folder.name} --format kohya` (LoRA) and "
        f"`--format a1111` (embedding).\n\n"
        "## Training\n\n"
        f"{table}\n"
        f"{GENERATED}\n"
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def write_model_card(folder: Path, concept: Concept, repo_id: str | None = None) -> Path:
    return write_text_atomic(folder / CARD_FILE, model_card_text(folder, concept, repo_id))


def refresh_model_card(folder: Path, concept: Concept, repo_id: str | None = None) -> bool:
    """Rewrite the card unless the user has edited it (no GENERATED line); returns whether it was."""
    card = folder / CARD_FILE
    if card.exists() and GENERATED not in card.read_text(encoding="utf-8", errors="replace"):
        return False
    write_model_card(folder, concept, repo_id)
    return True
