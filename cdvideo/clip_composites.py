"""Clip composites: the subject fitted into the base model's own moving clips, taught through the
frozen motion modules.

A concept learned from still photos (and still scene composites) pulls every frame towards the same
picture, and the clip freezes (docs/composition/). Here the base video model draws "a photo of a
circle wearing headphones moving right"; in every frame the locator finds the class object and the
subject's cut-out is fitted into it (cdvideo/composites.py), so the clip is the base model's motion
with the user's subject in it. Captioned with the token, it is taught whole through a UNetMotionModel
whose spatial layers are the trained UNet's own modules (LoRA included): the gradient reaches the
concept's LoRA and token row through the motion modules, which stay frozen and are not saved. This
is Still-Moving's idea (Chefer et al. 2024: train the spatial concept through the motion prior)
with moving clips in place of its frozen ones, so no extra motion-side adapter is needed.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from PIL import Image

from cdvideo import clip_bank, composites, directions, loading, motion, presets
from cdvideo.atomic import atomic_path, write_text_atomic
from cdvideo.clip_bank import ClipBank

# The base clips' prompts are shuffled, and clip i drawn, from this seed, not the training seed: they are
# the class's clips on the base model, shared by every subject of the class (and kept in cdvideo/clip_bank.py).
BASE_CLIP_SEED = 0
FRAMES = 8  # taught per clip, from the middle of the family's clip: half its frames, half the cost


@dataclass
class ClipComposites:
    clips: list[torch.Tensor]  # (F, 3, H, W) in [0, 1]
    captions: list[str]


def clip_prompts(
    class_word: str,
    phrases: tuple[str, ...],
    motions: tuple[str, ...],
    count: int,
    seed: int,
    bare_motions: bool = False,
) -> list[str]:
    """`count` prompts of the class with a scene phrase and a motion, each phrase and motion as often
    as the count allows, paired at random. `bare_motions` adds, after them, the bare class with every
    motion that no bare ("") phrase got, so that the bare concept prompt learns every direction."""
    rng = random.Random(seed)
    chosen = [phrases[i % len(phrases)] for i in range(count)]
    moves = [motions[i % len(motions)] for i in range(count)]
    rng.shuffle(chosen)
    rng.shuffle(moves)
    if bare_motions:
        given = {m for p, m in zip(chosen, moves, strict=True) if not p}
        extra = [m for m in motions if m not in given]
        chosen, moves = chosen + [""] * len(extra), moves + extra
    return [" ".join(w for w in (f"a photo of a {class_word}", p, m) if w) for p, m in zip(chosen, moves, strict=True)]


def shared_motion_unet(unet: UNet2DConditionModel, adapter: MotionAdapter) -> UNetMotionModel:
    """A UNetMotionModel with `adapter`'s motion modules around `unet`'s own spatial modules (the same
    objects, so a LoRA on them is trained by either model). The motion modules are frozen."""
    motion = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
    motion.load_motion_modules(adapter)
    motion.requires_grad_(False)
    for name, child in list(motion.named_children()):
        if name in ("down_blocks", "up_blocks"):
            for block, flat in zip(child, getattr(unet, name), strict=True):
                _share_block(block, flat)
        elif name == "mid_block":
            _share_block(child, unet.mid_block)
        elif hasattr(unet, name):
            setattr(motion, name, getattr(unet, name))
    return motion.to(unet.device)


def _share_block(block: torch.nn.Module, flat: torch.nn.Module) -> None:
    for name, _ in list(block.named_children()):
        if name != "motion_modules" and hasattr(flat, name):
            setattr(block, name, getattr(flat, name))


def render_base_clips(
    pipe,
    prompts: list[str],
    folder: Path,
    frames: int,
    resolution: int,
    steps: int,
    guidance: float,
    seed: int,
    say,
    motion_loras: dict[str, tuple[str, float]] | None = None,
    bank: ClipBank | None = None,
) -> None:
    """The base video model's clips of `prompts` (`frames` long: at fewer frames than it was trained
    on, the Shapes adapter barely moves) into `folder` as `clip-i.png` (frames side by side) with
    `clip-i.txt`, clip i drawn from seed `seed + i`; a resumed run keeps the clips already written.
    A prompt whose words ask for a motion in `motion_loras` (name -> (source, weight)) gets that
    motion LoRA, as `cdvideo animate` gives it. Clips found in `bank` are copied, not rendered; the
    rendered ones are put there."""
    folder.mkdir(parents=True, exist_ok=True)
    asked = [_asked_lora(p, motion_loras or {}) for p in prompts]
    settings = {
        "frames": frames, "resolution": resolution, "steps": steps, "guidance": guidance,
        "scheduler": presets.scheduler_record(pipe.scheduler), "dtype": str(pipe.unet.dtype),
    }  # fmt: skip
    todo = [i for i in range(len(prompts)) if not (folder / f"clip-{i:04d}.png").is_file()]
    keys = {i: bank.key(prompts[i], seed + i, asked[i], settings) for i in todo} if bank else {}
    found = {i: path for i in todo if bank and (path := bank.find(keys[i]))}
    for i, path in found.items():
        _write_clip(folder, i, prompts[i], lambda tmp, path=path: shutil.copyfile(path, tmp))
    render = [i for i in todo if i not in found]
    if found:
        say(f"took {len(found)} of {len(prompts)} base clips from the clip bank")
    if not render:
        return
    say(f"rendering {len(render)} base clips of {frames} frames into {folder}")
    pipe.set_progress_bar_config(disable=True)
    needed = [asked[i][0] for i in render if asked[i][0]]
    loaded = motion.load_motion_loras(pipe, [], needed) if needed else None
    for i in render:
        if loaded:
            loaded.activate(pipe, *asked[i])
        clip = pipe(
            prompts[i], num_frames=frames, height=resolution, width=resolution, num_inference_steps=steps,
            guidance_scale=guidance, generator=torch.Generator(pipe.device).manual_seed(seed + i), output_type="pt",
        ).frames[0]  # fmt: skip
        strip = composites.to_image(torch.cat(list(clip.float().cpu()), dim=2))
        png = _write_clip(folder, i, prompts[i], strip.save)
        if bank:
            bank.put(keys[i], png, prompts[i])


def _write_clip(folder: Path, index: int, prompt: str, write_png: Callable[[Path], object]) -> Path:
    write_text_atomic(folder / f"clip-{index:04d}.txt", prompt + "\n")
    with atomic_path(folder / f"clip-{index:04d}.png") as tmp:
        write_png(tmp)
    return folder / f"clip-{index:04d}.png"


def draw_base_clips(
    video,
    base: str,
    class_word: str,
    count: int,
    resolution: int,
    folder: Path,
    say,
    bank_folder: Path | None = None,
    bare_motions: bool = False,
) -> None:
    """`count` base clips of the class for clip composites into `folder`: one per scene phrase and one bare,
    each with a motion (and with `bare_motions` the bare class in every other motion too), at the family's clip
    settings, through the clip bank (new clips go to `bank_folder`, by default the user's cache)."""
    preset = presets.preset_for(base)
    phrases = ("", *preset.composite_phrases)
    prompts = clip_prompts(class_word, phrases, preset.motion_phrases, count, BASE_CLIP_SEED, bare_motions)
    bank = clip_bank.for_models(loading.resolve_base(base), loading.resolve_motion_adapter(preset.motion_adapter),
                                bank_folder)  # fmt: skip
    render_base_clips(
        video, prompts, folder, preset.frames, resolution, preset.steps, preset.guidance, BASE_CLIP_SEED, say,
        directions.family_loras(preset.name), bank,
    )  # fmt: skip


def _asked_lora(prompt: str, loras: dict[str, tuple[str, float]]) -> tuple[str | None, float | None]:
    said = directions.motion_in_prompt(prompt)
    return loras.get(said[0], (None, None)) if said else (None, None)


def read_clips(folder: Path, pattern: str = "clip-*.png") -> tuple[list[torch.Tensor], list[str]]:
    """Clips written as frames side by side (square frames), with their `.txt` captions."""
    clips, captions = [], []
    for path in sorted(folder.glob(pattern)):
        strip = composites.to_tensor(Image.open(path).convert("RGB"))
        size = strip.shape[1]
        clips.append(torch.stack(strip.split(size, dim=2)))
        captions.append(path.with_suffix(".txt").read_text(encoding="utf-8").strip())
    return clips, captions


def make_clip_composites(
    clips: list[torch.Tensor],
    captions: list[str],
    photos: list[Image.Image],
    masks: list[Image.Image],
    locate: composites.Locator,
    class_phrase: str,
    concept_phrase: str,
    read_motion: Callable[[torch.Tensor], str],
    motions: tuple[str, ...],
) -> ClipComposites:
    """Fit the photos' subjects (in turn) into the middle FRAMES frames of each clip; captions'
    `class_phrase` becomes `concept_phrase`, and their motion (one of `motions`, last) the one
    `read_motion` reads off the whole clip. Left out: clips that do not move (they would teach the
    concept to stand still) and clips with a frame that has no object to fit into."""
    out = ClipComposites([], [])
    for i, (clip, caption) in enumerate(zip(clips, captions, strict=True)):
        moved = read_motion(clip)
        if not moved:
            continue
        caption = next((caption[: -len(m)].rstrip() for m in motions if caption.endswith(m)), caption) + " " + moved
        start = max(0, (len(clip) - FRAMES) // 2)
        clip = clip[start : start + FRAMES]
        k = i % len(photos)
        fitted = composites.fit_into_clip(clip, locate, *composites.cut_out(photos[k], masks[k], tuple(clip.shape[2:])))
        if fitted is None or not caption.startswith(class_phrase):
            continue
        out.clips.append(fitted)
        out.captions.append(concept_phrase + caption[len(class_phrase) :])
    return out


def write_clips(folder: Path, made: ClipComposites) -> None:
    for i, (clip, caption) in enumerate(zip(made.clips, made.captions, strict=True)):
        write_text_atomic(folder / f"clip-composite-{i:04d}.txt", caption + "\n")
        with atomic_path(folder / f"clip-composite-{i:04d}.png") as tmp:
            composites.to_image(torch.cat(list(clip), dim=2)).save(tmp)


def clip_loss(
    motion_unet: UNetMotionModel,
    encode: Callable[[torch.Tensor], torch.Tensor],
    clips: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    noise_scheduler,
    target: Callable,
    generator: torch.Generator,
    scaling_factor: float,
) -> torch.Tensor:
    """Diffusion loss of one clip composite drawn at random, through the motion model.

    `clips` holds the clips' latent means and stds (N, F, C, h, w) and each clip's caption ids;
    `encode` turns ids into text states; `target` is the diffusion target for (latents, noise, t)."""
    mean, std, ids = clips
    device = mean.device
    pick = torch.randint(len(mean), (1,), generator=generator, device=device)
    latents = mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=generator, device=device)
    latents = latents.permute(0, 2, 1, 3, 4) * scaling_factor  # (1, C, F, h, w), as the motion model reads
    noise = torch.randn(latents.shape, generator=generator, device=device)
    timestep = torch.randint(0, noise_scheduler.config.num_train_timesteps, (1,), generator=generator, device=device)
    noisy = noise_scheduler.add_noise(latents, noise, timestep)
    hidden = encode(ids[pick]).repeat_interleave(latents.shape[2], dim=0)  # per frame, as the pipeline does
    prediction = motion_unet(noisy, timestep, hidden).sample
    return torch.nn.functional.mse_loss(prediction.float(), target(latents, noise, timestep).float())
