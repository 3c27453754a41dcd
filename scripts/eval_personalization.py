"""Personalization on the Shapes world: is the subject learned, and is the base model intact?

    python scripts/eval_personalization.py --samples 64 --seed 0

Trains a concept on 5 subject photos with the shapes defaults of `cdvideo train`, then samples
"a <tok> circle" (subject pattern present?), "a <tok> circle wearing headphones" (composition),
and plain prompts with and without the concept (accuracy kept?). Scored by the world's scorer.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cdvideo  # noqa: E402
from cdvideo import concept as concepts  # noqa: E402
from cdvideo import loading, presets  # noqa: E402
from cdvideo.demo import write_subject_photos  # noqa: E402
from cdvideo.shapes import scorer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: shapes preset)")
    parser.add_argument("--spl-weight", type=float, default=None, help="default: shapes preset")
    parser.add_argument("--sample-steps", type=int, default=presets.SHAPES.steps)
    parser.add_argument("--guidance", type=float, default=presets.SHAPES.guidance)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", default="{}", help="JSON dict of other TrainConfig fields")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cdvideo-pers-"))
    write_subject_photos(work / "photos", seed=args.seed)
    start = time.time()
    folder = cdvideo.train(
        cdvideo.TrainConfig(
            images=[str(work / "photos")],
            class_word="circle",
            base="shapes",
            output=str(work / "concept"),
            steps=args.steps,
            seed=args.seed,
            spl_weight=args.spl_weight,
            **json.loads(args.extra),
        ),
        say=lambda s: None,
        progress=False,
    )
    train_seconds = time.time() - start
    concept = concepts.load_concept(folder)
    pipe = loading.load_image_pipeline("shapes")
    pipe.set_progress_bar_config(disable=True)
    n, st, g, seed = args.samples, args.sample_steps, args.guidance, args.seed + 100
    base_plain = scorer.plain_accuracy(pipe, n, steps=st, guidance=g, seed=seed)
    concepts.apply_concept(pipe, folder, concept)
    draw = {"steps": st, "guidance": g, "seed": seed}
    subject = scorer.sample_and_score(pipe, f"a {concept.token} circle", n, **draw)
    composed = scorer.sample_and_score(pipe, f"a {concept.token} circle wearing headphones", n, **draw)
    tuned_plain = scorer.plain_accuracy(pipe, n, steps=st, guidance=g, seed=seed)
    result = {
        "train_steps": concept.steps,
        "spl_weight": concept.spl_weight,
        "prior_weight": concept.prior_weight,
        "train_seconds": round(train_seconds, 1),
        "drift_cosine": concept.drift,
        "subject_pattern": float(np.mean([s.pattern for s in subject])),
        "subject_is_circle": float(np.mean([s.cls == "circle" for s in subject])),
        "composed_pattern_and_headphones": float(
            np.mean([s.pattern and s.accessory == "wearing headphones" for s in composed])
        ),
        "plain_accuracy_base": base_plain,
        "plain_accuracy_with_concept": tuned_plain,
        "plain_kept": tuned_plain / max(base_plain, 1e-9),
        "samples": n,
        "command": " ".join(sys.argv),
    }
    print(json.dumps(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
