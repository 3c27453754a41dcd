"""ClassDiffusion's claim on SD1.5, DreamBench's way: 30 subjects x 25 prompts, SPL on / off / the official recipe.

    git clone https://github.com/google/dreambooth            # the subjects' photos and classes
    python benchmarks/dreambench_protocol.py --dataset dreambooth/dataset --dry-run   # the time it will take
    python benchmarks/dreambench_protocol.py --dataset dreambooth/dataset --precision bf16 --out dreambench

Needs the hub (SD1.5, the AnimateDiff motion adapter, CLIP/DINO/BLIP) and a GPU. Each subject of
`dataset/prompts_and_classes.txt` is trained once per variant and seed with `cdvideo.train`:

- spl1            cdvideo's SD1.5 defaults (UNet LoRA, token from the class word, SPL weight 1 at the EOS)
- spl0            the same without SPL
- classdiffusion  the official code's recipe (`--recipe classdiffusion`: full cross-attention K/V, token
                  from "ktn", lr 1e-5 x batch, 500 steps, SPL 1 where its code pools)

Each concept is scored by `cdvideo eval` on DreamBench's 25 prompts for its kind (objects, or live
subjects: the cats and dogs; configs/eval/dreambench_{objects,live}.yaml); the base model's videos
of each prompt with the class word alone are rendered once per class and reused. Rows go to
`OUT/results.jsonl` (a rerun skips what is done) and the table of means to `OUT/table.md`, in the
layout of benchmarks/ablate_spl.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import cdvideo  # noqa: E402
from cdvideo import presets  # noqa: E402
from cdvideo.atomic import write_text_atomic, write_yaml_atomic  # noqa: E402
from cdvideo.errors import UserError  # noqa: E402
from cdvideo.evaluation import EvalConfig, evaluate, load_prompt_set  # noqa: E402

PROMPT_SETS = {False: ROOT / "configs/eval/dreambench_objects.yaml", True: ROOT / "configs/eval/dreambench_live.yaml"}
LIVE_CLASSES = {"cat", "dog"}  # DreamBench's live subjects: its 9 pets
VARIANTS = {  # name -> TrainConfig overrides
    "spl1": {"spl_weight": 1.0},
    "spl0": {"spl_weight": 0.0},
    "classdiffusion": {"recipe": "classdiffusion"},
}
KEYS = ["clip_i", "dino_i", "clip_t", "blip_t", "drift", "motion_ratio", "flagged"]
# Stated costs per device (seconds), from docs/benchmarks.md (H200: a 512 px training step at batch 4
# takes 0.205 s, so ~0.11 s at batch 2; a 16-frame 512 px, 25-step render 4.15 s in bf16) plus a
# model load per trained concept and per eval. `--seconds-per-step/--seconds-per-render` override them.
COSTS = {
    "h200": {"step": 0.11, "render": 4.15, "load": 30.0},
}


@dataclass(frozen=True)
class Subject:
    name: str
    class_word: str
    photos: Path

    @property
    def live(self) -> bool:
        return self.class_word in LIVE_CLASSES


def read_subjects(dataset: Path) -> list[Subject]:
    """The subjects of a google/dreambooth `dataset/` folder, from its prompts_and_classes.txt."""
    listing = dataset / "prompts_and_classes.txt"
    if not listing.is_file():
        raise UserError(f"{listing} not found; --dataset is the `dataset/` folder of a google/dreambooth checkout")
    lines = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines()]
    if "subject_name,class" not in lines:
        raise UserError(f"{listing} has no 'subject_name,class' table; is it DreamBench's file?")
    subjects = []
    for line in lines[lines.index("subject_name,class") + 1 :]:
        if not line:
            break
        name, _, class_word = line.partition(",")
        folder = dataset / name
        if not folder.is_dir():
            raise UserError(f"subject {name} has no photo folder {folder}; is the checkout complete?")
        subjects.append(Subject(name, class_word.strip(), folder))
    return subjects


def prompt_file(live: bool, count: int, work: Path) -> Path:
    """The first `count` prompts of the subject kind's set, as a prompt file `cdvideo eval` reads."""
    if count >= 25:
        return PROMPT_SETS[live]
    chosen: dict[str, list[str]] = {}
    for item in load_prompt_set(PROMPT_SETS[live])[:count]:
        chosen.setdefault(item.category, []).append(item.template)
    path = work / f"prompts-{'live' if live else 'objects'}-{count}.yaml"
    return write_yaml_atomic(path, chosen)


def train_steps(variant: str, steps: int | None) -> int:
    overrides = {**VARIANTS[variant], **({"steps": steps} if steps else {})}
    return cdvideo.TrainConfig(images=[], class_word="x", **overrides).resolved().steps


def estimate(args, subjects: list[Subject]) -> tuple[float, str]:
    """Seconds the run will take with the device's stated costs, and how that adds up."""
    cost = dict(COSTS[args.device_profile])
    cost["step"] = args.seconds_per_step or cost["step"]
    cost["render"] = args.seconds_per_render or cost["render"]
    concepts = len(subjects) * len(args.variants) * len(args.seeds)
    steps = sum(train_steps(v, args.steps) for v in args.variants) * len(subjects) * len(args.seeds)
    renders = concepts * args.prompts
    base_renders = len({(s.class_word, s.live) for s in subjects}) * args.prompts * len(args.seeds)
    total = steps * cost["step"] + (renders + base_renders) * cost["render"] + 2 * concepts * cost["load"]
    how = (
        f"{concepts} concepts ({len(subjects)} subjects x {len(args.variants)} variants x {len(args.seeds)} seeds): "
        f"{steps} training steps x {cost['step']:g} s + {renders + base_renders} renders "
        f"({base_renders} of the base model) x {cost['render']:g} s + {2 * concepts} model loads x {cost['load']:g} s "
        f"[{args.device_profile} costs]"
    )
    return total, how


def run_one(args, subject: Subject, variant: str, seed: int, work: Path) -> dict:
    folder = work / "concepts" / f"{variant}-{subject.name}-seed{seed}"
    started = time.perf_counter()
    overrides = {**VARIANTS[variant], **({"steps": args.steps} if args.steps else {})}
    if args.resolution:
        overrides["resolution"] = args.resolution
    cdvideo.train(
        cdvideo.TrainConfig(
            images=[str(subject.photos)],
            class_word=subject.class_word,
            base=args.base,
            output=str(folder),
            seed=seed,
            device=args.device,
            **overrides,
        ),
        say=lambda _msg: None,
        progress=False,
    )
    trained = time.perf_counter() - started
    report = evaluate(
        EvalConfig(
            concept=str(folder),
            prompts=str(prompt_file(subject.live, args.prompts, work)),
            output=str(work / "evals" / folder.name),
            videos=str(work / "evals"),  # base-model videos already rendered for this class are reused
            seeds=[seed],
            frames=args.frames,
            width=args.resolution,
            height=args.resolution,
            steps=args.sample_steps,
            motion_adapter=args.motion_adapter,
            precision=args.precision,
            device=args.device,
            clip=args.clip,
            dino=args.dino,
            blip=args.blip,
        ),
        say=lambda _msg: None,
    )
    overall = report["overall"]
    return {
        "variant": variant,
        "subject": subject.name,
        "class_word": subject.class_word,
        "seed": seed,
        "step": report["steps"],
        **{k: overall["scores"].get(k) for k in ("clip_i", "dino_i", "clip_t", "blip_t")},
        "drift": overall["drift"],
        "motion_ratio": overall["motion_ratio"],
        "flagged": overall["videos_flagged"] / max(overall["videos"], 1),
        "prompts": args.prompts,
        "train_seconds": round(trained, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
    }


def write_table(out: Path, rows: list[dict], command: str) -> Path:
    from ablate_spl import variant_table

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["step"]), []).append(r)
    order = [v for v in VARIANTS if any(key[0] == v for key in groups)]
    lines = [
        f"Command: `{command}`",
        "",
        "Means over subjects and seeds (n = concepts) of `cdvideo eval`'s overall scores: identity "
        "(CLIP-I, DINO-I), prompt following (CLIP-T, BLIP-T), drift (EOS cosine), motion against the "
        "base model's video, share of clips flagged (freezes / breaks motion).",
        "",
        *variant_table(groups, KEYS, order, count="n"),
    ]
    return write_text_atomic(out / "table.md", "\n".join(lines) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True, help="google/dreambooth's dataset/ folder")
    parser.add_argument("--subjects", nargs="+", help="subject names (default: all 30)")
    parser.add_argument("--max-subjects", type=int, help="the first N subjects")
    parser.add_argument("--prompts", type=int, default=25, help="the first N of each kind's 25 prompts")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--base", default=presets.SD15_BASE)
    parser.add_argument("--motion-adapter")
    parser.add_argument("--steps", type=int, help="training steps for every variant (default: each one's own)")
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--sample-steps", type=int)
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--device")
    parser.add_argument("--clip")
    parser.add_argument("--dino")
    parser.add_argument("--blip")
    parser.add_argument("--device-profile", choices=list(COSTS), default="h200", help="stated costs for the estimate")
    parser.add_argument("--seconds-per-step", type=float, help="measured training step cost, for the estimate")
    parser.add_argument("--seconds-per-render", type=float, help="measured render cost, for the estimate")
    parser.add_argument("--out", type=Path, default=Path("dreambench"))
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its time estimate only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        subjects = read_subjects(args.dataset)
        if args.subjects:
            unknown = sorted(set(args.subjects) - {s.name for s in subjects})
            if unknown:
                raise UserError(f"--subjects {' '.join(unknown)}: not in {args.dataset}/prompts_and_classes.txt")
            subjects = [s for s in subjects if s.name in args.subjects]
        subjects = subjects[: args.max_subjects] if args.max_subjects else subjects
        if not 1 <= args.prompts <= 25:
            raise UserError(f"--prompts takes 1 to 25 (DreamBench has 25 per subject; got {args.prompts})")
        seconds, how = estimate(args, subjects)
        print(f"estimate: {seconds / 3600:.1f} h ({seconds:.0f} s): {how}", flush=True)
        if args.dry_run:
            return 0
        for key in ("clip", "dino", "blip"):  # EvalConfig's defaults (the DreamBench backbones) unless given
            if getattr(args, key) is None:
                setattr(args, key, EvalConfig.__dataclass_fields__[key].default)
        args.out.mkdir(parents=True, exist_ok=True)
        results = args.out / "results.jsonl"
        rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
        command = "python benchmarks/dreambench_protocol.py " + " ".join(argv if argv is not None else sys.argv[1:])
        for seed in args.seeds:
            for variant in args.variants:
                for subject in subjects:
                    done = (variant, subject.name, seed, args.prompts)
                    if any((r["variant"], r["subject"], r["seed"], r["prompts"]) == done for r in rows):
                        continue
                    row = run_one(args, subject, variant, seed, args.out)
                    rows.append(row)
                    write_text_atomic(results, "".join(json.dumps(r) + "\n" for r in rows))
                    print(json.dumps(row), flush=True)
                    write_table(args.out, rows, command)
        print(write_table(args.out, rows, command).read_text())
    except UserError as err:
        print(f"dreambench_protocol: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
