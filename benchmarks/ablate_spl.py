"""What ClassDiffusion's SPL buys on the Shapes world: identity and composition against training length.

    python benchmarks/ablate_spl.py --out docs/ablation            # all variants, seed 0
    python benchmarks/ablate_spl.py --variants spl0 spl1 --seeds 0 1 --snapshots 50 150 300

Each variant trains the striped subject (5 photos, `cdvideo.train` with the shapes defaults except
what the variant changes) once up to the last snapshot; the LoRA and token row are copied at every
snapshot step and each copy is saved as a real concept folder and rendered through the same
pipelines `cdvideo animate --base shapes --motion-adapter shapes` builds. The world's exact scorer
reads:

- identity: stripes present in "a <tok> circle" images;
- composition (image): stripes AND headphones AND circle in "a <tok> circle wearing headphones";
- composition (video): stripes AND headphones AND circle AND moving left in clips of
  "a <tok> circle wearing headphones moving left" (the photos show no headphones and no motion);
- motion: share of those clips whose trajectory reads "moving left";
- drift: cosine of "a photo of a <tok> circle" vs "a photo of a circle" at the EOS position.

The base model's rates for the class word alone ("a circle wearing headphones [moving left]") are
the ceiling. Results append to `OUT/results.jsonl` (a rerun skips what is done), then `OUT/table.md`
and `OUT/curves.png` are rewritten from everything measured so far.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cdvideo  # noqa: E402
from cdvideo import concept as concepts  # noqa: E402
from cdvideo import presets  # noqa: E402
from cdvideo.atomic import write_text_atomic  # noqa: E402
from cdvideo.demo import write_subject_photos  # noqa: E402
from cdvideo.errors import UserError  # noqa: E402
from cdvideo.loss import concept_class_cosine, eos_features  # noqa: E402
from cdvideo.shapes import scorer, world  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import composition_bars  # noqa: E402

CLASS_PRIOR = {"prior_weight": 1.0, "class_prompts": ["a photo of a circle"]}  # DreamBooth's prior
# A bank of seen captions: the class phrase interleaved with every (class, colour), circles included.
BANK_PRIOR = {
    "prior_weight": 1.0,
    "class_prompts": [p.format(class_word="circle") for p in world.prior_prompts()],
    "num_class_images": 32,
}
# The Shapes preset's prior: that bank without the subject's own class (class phrase only for it).
OTHERS_PRIOR = {"prior_weight": 1.0, "class_prompts": None, "num_class_images": 32}
KV_ONLY = {"lora_targets": ["attn2.to_k", "attn2.to_v"]}
VARIANTS = {  # name -> TrainConfig overrides (prior preservation off unless named)
    "spl0": {"spl_weight": 0.0},
    "spl0.1": {"spl_weight": 0.1},
    "spl1": {"spl_weight": 1.0},
    "spl10": {"spl_weight": 10.0},
    "spl100": {"spl_weight": 100.0},
    "prior": {"spl_weight": 0.0, **CLASS_PRIOR},
    "prior+spl0.1": {"spl_weight": 0.1, **CLASS_PRIOR},
    "prior+spl1": {"spl_weight": 1.0, **CLASS_PRIOR},
    "bank-prior": {"spl_weight": 0.0, **BANK_PRIOR},
    "bank-prior+spl1": {"spl_weight": 1.0, **BANK_PRIOR},
    "others-prior": {"spl_weight": 0.0, **OTHERS_PRIOR},
    "others-prior+spl1": {"spl_weight": 1.0, **OTHERS_PRIOR},
    "rare-init": {"spl_weight": 0.0, "init_word": "sks"},
    "rare-init+spl1": {"spl_weight": 1.0, "init_word": "sks"},
    # ClassDiffusion's own recipe (Custom Diffusion's): only cross-attention K/V adapt, no prior.
    "kv": {"spl_weight": 0.0, **KV_ONLY},
    "kv+spl1": {"spl_weight": 1.0, **KV_ONLY},
    "kv+spl10": {"spl_weight": 10.0, **KV_ONLY},
}
HEADPHONES = "wearing headphones"
IDENTITY_BAR = 0.75  # identity level at which variants' composition is compared


@dataclasses.dataclass
class Budget:
    images: int
    clips: int
    frames: int
    sample_steps: int
    guidance: float


def snapshotter(steps: list[int]):
    """An `after_backward` hook that copies the LoRA and token row once `s` optimizer steps are done."""
    from peft.utils import get_peft_model_state_dict

    taken: dict[int, tuple[dict, torch.Tensor]] = {}
    calls = [0]

    def hook(models: dict) -> None:
        done = calls[0]  # the hook runs before this call's optimizer step
        calls[0] += 1
        if done in steps:
            lora = {k: v.detach().clone().cpu() for k, v in get_peft_model_state_dict(models["unet"]).items()}
            row = models["text_encoder"].get_input_embeddings().weight[models["token_id"]].detach().clone().cpu()
            taken[done] = (lora, row)

    return hook, taken


@torch.no_grad()
def drift_cosine(pipe, token: str) -> float:
    tok, enc = pipe.tokenizer, pipe.text_encoder
    ids = tok(
        [f"a photo of a {token} circle", "a photo of a circle"],
        padding="max_length",
        max_length=tok.model_max_length,
        return_tensors="pt",
    ).input_ids
    features = eos_features(enc, ids, tok.eos_token_id)
    return float(concept_class_cosine(features[:1], features[1:]))


def score_images(pipe, prompt: str, budget: Budget, seed: int) -> list:
    return scorer.sample_and_score(
        pipe, prompt, budget.images, steps=budget.sample_steps, guidance=budget.guidance, seed=seed
    )


def score_videos(pipe, prompt: str, budget: Budget, seed: int) -> list:
    clips = pipe(
        [prompt] * budget.clips,
        num_frames=budget.frames,
        num_inference_steps=budget.sample_steps,
        guidance_scale=budget.guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
        height=64,
        width=64,
    ).frames
    return scorer.score_clips(clips.float(), expected_cls=["circle"] * budget.clips)


def composed(score, is_base: bool) -> bool:
    """The subject (stripes; for the base model any circle) with headphones, still a circle."""
    return (score.pattern or is_base) and score.accessory == HEADPHONES and score.cls == "circle"


def pipelines(folder: Path | None):
    """The ablation's pipelines: DDIM (its tables were measured with it), concept loaded if any."""
    return composition_bars.pipelines(folder, sampler="ddim")


def measure_identity(image, subject: str, budget: Budget, seed: int) -> float:
    return float(np.mean([s.pattern for s in score_images(image, f"a {subject}", budget, seed)]))


def measure_video(video, subject: str, budget: Budget, seed: int, is_base: bool) -> dict:
    clips = score_videos(video, f"a {subject} {HEADPHONES} moving left", budget, seed + 2)
    return {
        "composition_video": float(np.mean([composed(c, is_base) and c.motion == "moving left" for c in clips])),
        "motion_left": float(np.mean([c.motion == "moving left" for c in clips])),
        "still": float(np.mean([c.motion == "" for c in clips])),
        "clips": budget.clips,
    }


def measure(subject: str, budget: Budget, seed: int, folder: Path | None = None) -> dict:
    """Render and score one model: the base (folder None, subject 'circle') or a concept."""
    image, video = pipelines(folder)
    alone = score_images(image, f"a {subject}", budget, seed)
    with_hp = score_images(image, f"a {subject} {HEADPHONES}", budget, seed + 1)
    is_base = folder is None
    result = {
        "identity": float(np.mean([s.pattern for s in alone])),
        "circle": float(np.mean([s.cls == "circle" for s in alone])),
        "composition_image": float(np.mean([composed(s, is_base) for s in with_hp])),
        "headphones_image": float(np.mean([s.accessory == HEADPHONES for s in with_hp])),
        "composition_video": None,
        "motion_left": None,
        "still": None,
        "drift_cosine": drift_cosine(image, subject.split()[0]) if not is_base else 1.0,
        "plain_accuracy": scorer.plain_accuracy(
            image, budget.images, steps=budget.sample_steps, guidance=budget.guidance, seed=seed + 3
        ),
    }
    if budget.clips:  # clips cost 16x an image each: --clips 0 keeps a CPU sweep to the image metrics
        result.update(measure_video(video, subject, budget, seed, is_base))
    return result


def add_video(folders: list[Path], rows: list[dict], budget: Budget, results: Path) -> None:
    """Score clips for concepts already measured on images (the snapshot folders a run leaves behind).

    A folder is matched to its row by name (`VARIANT-sSEED[-stepN]`) and checked by re-rendering its
    identity images, which must reproduce the row's figure exactly; a mismatch is skipped, not mixed in.
    """
    for folder in folders:
        try:
            manifest = concepts.load_concept(folder)
        except UserError as error:
            print(f"{folder}: {error}, skipped", flush=True)
            continue
        variant = folder.name.split("-step")[0].rsplit("-s", 1)[0]
        match = [r for r in rows if (r["variant"], r["seed"], r["step"]) == (variant, manifest.seed, manifest.steps)]
        if not match or match[0]["composition_video"] is not None:
            print(f"{folder}: no row waiting for video, skipped", flush=True)
            continue
        image, video = pipelines(folder)
        subject, seed = f"{manifest.token} circle", 1000 + manifest.seed
        if measure_identity(image, subject, budget, seed) != match[0]["identity"]:
            print(f"{folder}: identity does not reproduce its row (another run's concept?), skipped", flush=True)
            continue
        match[0].update(measure_video(video, subject, budget, seed, is_base=False))
        print(json.dumps(match[0]), flush=True)
        write_text_atomic(results, "".join(json.dumps(r) + "\n" for r in rows))


def run_variant(name: str, seed: int, snapshots: list[int], budget: Budget, work: Path) -> list[dict]:
    photos = work / "photos"
    if not photos.exists():
        write_subject_photos(photos, seed=0)
    hook, taken = snapshotter(snapshots)
    start = time.time()
    final = cdvideo.train(
        cdvideo.TrainConfig(
            images=[str(photos)],
            class_word="circle",
            base="shapes",
            output=str(work / f"{name}-s{seed}"),
            steps=max(snapshots),
            seed=seed,
            **{"prior_weight": 0.0, "num_class_images": 20, **VARIANTS[name]},
        ),
        say=lambda s: None,
        progress=False,
        after_backward=hook,
    )
    seconds = time.time() - start
    manifest = concepts.load_concept(final)
    rows = []
    for step in snapshots:
        folder = final if step == max(snapshots) else work / f"{name}-s{seed}-step{step}"
        if step != max(snapshots):
            lora, row = taken[step]
            concepts.save_concept(folder, dataclasses.replace(manifest, steps=step), lora, row)
        result = measure(f"{manifest.token} circle", budget, seed=1000 + seed, folder=folder)
        rows.append({"variant": name, "seed": seed, "step": step, "train_seconds": round(seconds, 1), **result})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _mean_cell(values: list) -> str:
    """Mean over the seeds that measured it (older rows lack newer metrics)."""
    known = [v for v in values if v is not None]
    return f"{np.mean(known):.2f}" if known else "n/a"


def variant_table(groups: dict[tuple, list[dict]], keys: list[str], order: list[str], count: str = "seeds") -> list:
    """One row per (variant, steps) group, variants in `order`: each key's mean over the group's rows."""
    lines = [f"| variant | steps | {count} | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for (variant, step), group in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        cells = [_mean_cell([g.get(k) for g in group]) for k in keys]
        lines.append(f"| {variant} | {step} | {len(group)} | " + " | ".join(cells) + " |")
    return lines


def equal_identity_table(groups: dict[tuple, list[dict]], order: list[str], bar: float = IDENTITY_BAR) -> list[str]:
    """Each variant at the first snapshot whose mean identity reaches `bar`: composition at equal identity."""
    lines = [
        f"At equal identity: each variant at its first snapshot with identity >= {bar:.2f} "
        "(variants that never reach it are left out).",
        "",
        "| variant | steps | identity | composition_image | plain_kept | drift_cosine |",
        "|---|---|---|---|---|---|",
    ]
    for variant in order:
        for step in sorted(s for v, s in groups if v == variant):
            group = groups[(variant, step)]
            if np.mean([g["identity"] for g in group]) >= bar:
                keys = ("identity", "composition_image", "plain_kept", "drift_cosine")
                lines.append(
                    f"| {variant} | {step} | " + " | ".join(_mean_cell([g[k] for g in group]) for k in keys) + " |"
                )
                break
    return lines


def write_report(out: Path, rows: list[dict], base: dict, command: str) -> None:
    keys = ["identity", "composition_image", "composition_video", "motion_left", "drift_cosine", "plain_kept"]
    for r in rows:  # plain prompts' accuracy with the concept, as a share of the base model's
        plain = r.get("plain_accuracy")
        r["plain_kept"] = None if plain is None else plain / max(base["plain_accuracy"], 1e-9)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["step"]), []).append(r)
    lines = [
        f"Commands: `{command}`",
        "",
        f"Base model, class word alone (the ceiling): composition image {_mean_cell([base['composition_image']])}, "
        f"video {_mean_cell([base['composition_video']])}, moving left {_mean_cell([base['motion_left']])}, "
        f"headphones {_mean_cell([base['headphones_image']])}; plain prompts' accuracy "
        f"{_mean_cell([base['plain_accuracy']])}.",
        "",
    ]
    order = list(VARIANTS)
    lines += variant_table(groups, keys, order)
    lines += ["", *equal_identity_table(groups, order)]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["identity", "composition_image", "plain_kept", "composition_video"]
    fig, axes = plt.subplots(1, len(panels), figsize=(19, 4.4), sharex=True)
    for variant in order:
        steps = sorted({s for v, s in groups if v == variant})
        for ax, key in zip(axes, panels):
            points = [(s, [g[key] for g in groups[(variant, s)] if g.get(key) is not None]) for s in steps]
            points = [(s, np.mean(v)) for s, v in points if v]
            if points:  # one colour per variant in every panel; SPL variants dashed
                style = "--" if "spl" in variant and variant != "spl0" else "-"
                color = plt.cm.tab20(order.index(variant) % 20)
                ax.plot(*zip(*points), marker="o", linestyle=style, color=color, label=variant)
    for ax, key in zip(axes, panels):
        ceiling = 1.0 if key == "plain_kept" else base.get(key)
        if key != "identity" and ceiling is not None:
            ax.axhline(ceiling, color="black", linestyle="--", label="base, class word")
        ax.set_title(key.replace("_", " "))
        if ax.lines:
            ax.set_xscale("log")
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
        ax.set_xlabel("training steps")
        ax.set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--snapshots", nargs="+", type=int, default=[50, 150, 300])
    parser.add_argument("--images", type=int, default=16, help="images per prompt per snapshot")
    parser.add_argument("--clips", type=int, default=6, help="clips per snapshot")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=presets.SHAPES.guidance)
    parser.add_argument("--out", type=Path, default=Path("docs/ablation"))
    parser.add_argument("--report-only", action="store_true", help="rewrite table and plot from results.jsonl")
    parser.add_argument(
        "--video-for", nargs="+", type=Path, metavar="CONCEPT", help="add --clips clips to these snapshots' rows"
    )
    args = parser.parse_args()
    if args.video_for and not args.clips:
        parser.error("--video-for needs --clips N (N > 0)")
    torch.set_grad_enabled(True)
    budget = Budget(args.images, args.clips, args.frames, args.sample_steps, args.guidance)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    base_file = args.out / "base.json"
    base = json.loads(base_file.read_text()) if base_file.exists() else {}
    if "plain_accuracy" not in base and not args.report_only:  # a new file, or one from before the plain-prompt metric
        fresh = measure("circle", budget, seed=1000)
        base = {**base, **{k: v for k, v in fresh.items() if v is not None or k not in base}}
        base_file.write_text(json.dumps(base, indent=1) + "\n")
    if args.clips and base.get("composition_video") is None and not args.report_only:  # the video ceiling
        base.update(measure_video(pipelines(None)[1], "circle", budget, seed=1000, is_base=True))
        base_file.write_text(json.dumps(base, indent=1) + "\n")
    commands = args.out / "commands.txt"  # every run that added rows, in order
    if not args.report_only:
        with open(commands, "a") as f:
            f.write("python benchmarks/ablate_spl.py " + " ".join(sys.argv[1:]) + "\n")
    command = "`, then `".join(commands.read_text().splitlines()) if commands.exists() else "n/a"
    if args.video_for:
        add_video(args.video_for, rows, budget, results)
    if args.report_only or args.video_for:
        write_report(args.out, rows, base, command)
        return
    work = Path(tempfile.mkdtemp(prefix="cdvideo-ablation-"))
    for seed in args.seeds:
        for name in args.variants:
            if any(r["variant"] == name and r["seed"] == seed for r in rows):
                continue
            new = run_variant(name, seed, sorted(args.snapshots), budget, work)
            with open(results, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in new)
            rows += new
            write_report(args.out, rows, base, command)
    write_report(args.out, rows, base, command)


if __name__ == "__main__":
    main()
