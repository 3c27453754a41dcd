"""Where a concept breaks the plain prompts: for each prompt without the token, the share of samples
with the class, the colour and the accessory right, and the share that wear the subject's stripes
(the concept leaking into prompts that never name it).

`composition_bars.py` reports one number for the plain prompts; this splits it, to say how SPL at
long training loses them (docs/composition/README.md, "SPL 0 / 1 at 10x the training").

    python benchmarks/plain_leak.py base spl0=runs/bars-v4-10x-spl0/s1-d571dcb7 \
        spl1=runs/bars-v4-10x-spl1/s1-5a311a19 --samples 64 --json docs/composition/plain-leak-10x-seed1.json

`--concept-prompts` splits the concept's own composition prompts the same way ("a <tok> circle with a
scarf": class, accessory, background, stripes, all right), to say which part of a failed bar is lost;
the base model is asked the same prompts without the token. With `--without-token` the concept is
asked them without its token too ("a circle with a scarf", the concept loaded): what its LoRA alone does
to the scene prompts that the recipe's prior holds to the base model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import composition_bars
import numpy as np

from cdvideo import concept as concepts
from cdvideo import presets
from cdvideo.atomic import write_json_atomic
from cdvideo.shapes import scorer, world

# The concept's prompts split here: each accessory and each background alone (the pairs add no new part).
CONCEPT_PHRASES = tuple(p for p in (*world.ACCESSORIES, *world.BACKGROUNDS) if p)


def _plain_hits(scores, cls: str, colour: str, accessory: str) -> dict[str, list[bool]]:
    hits = {
        "class": [s.cls == cls for s in scores],
        "colour": [s.colour == colour for s in scores],
        "accessory": [s.accessory == accessory for s in scores],
        "stripes": [s.pattern for s in scores],
    }
    hits["all right"] = [a and b and c for a, b, c in zip(hits["class"], hits["colour"], hits["accessory"])]
    return hits


def _concept_hits(scores, phrase: str, is_concept: bool) -> dict[str, list[bool]]:
    asked = composition_bars.asked_parts(phrase)
    return {
        "class": [s.cls == "circle" for s in scores],
        "accessory": [s.accessory == asked["accessory"] for s in scores],
        "background": [(s.background or "") == asked["background"] for s in scores],
        "stripes": [s.pattern for s in scores],
        "all right": [composition_bars.right(s, phrase, is_concept) for s in scores],
    }


def breakdown(
    folder: Path | None, samples: int, seed: int = 300, concept_prompts: bool = False, with_token: bool = True
) -> dict:
    """Per prompt, the rate of each column, sampled as `composition_bars.py` samples them: the plain
    prompts, or with `concept_prompts` the concept's own ("a <tok> circle PHRASE"; for the base model, or
    without `with_token`, the class phrase alone), keyed by the prompt without the token."""
    pipe, _ = composition_bars.pipelines(folder, video=False)  # as the bars sample: same sampler, fused concept
    with_token = bool(folder and concept_prompts and with_token)
    subject = f"{concepts.load_concept(folder).token} circle" if with_token else "circle"

    def rates(prompt: str, hits_of) -> dict[str, float]:
        scores = scorer.sample_and_score(
            pipe, prompt, samples, steps=presets.SHAPES.steps, guidance=presets.SHAPES.guidance, seed=seed
        )
        return {column: float(np.mean(hits)) for column, hits in hits_of(scores).items()}

    if concept_prompts:
        return {
            f"a circle {phrase}": rates(f"a {subject} {phrase}", lambda s, p=phrase: _concept_hits(s, p, with_token))
            for phrase in CONCEPT_PHRASES
        }
    plain = scorer.PLAIN_PROMPTS
    return {prompt: rates(prompt, lambda s, e=expected: _plain_hits(s, *e)) for prompt, *expected in plain}


def markdown(tables: dict[str, dict[str, dict[str, float]]]) -> str:
    names = list(tables)
    head = "| prompt | column | " + " | ".join(names) + " |"
    rows = [head, "|" + "---|" * (len(names) + 2)]
    first = tables[names[0]]
    for prompt in first:
        for column in first[prompt]:
            cells = " | ".join(f"{tables[n][prompt][column]:.2f}" for n in names)
            rows.append(f"| {prompt} | {column} | {cells} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="'base', or NAME=CONCEPT_FOLDER")
    parser.add_argument("--samples", type=int, default=64, help="images per prompt")
    parser.add_argument("--json", help="also write the rates here")
    parser.add_argument(
        "--concept-prompts", action="store_true", help="split the concept's composition prompts instead"
    )
    parser.add_argument(
        "--without-token", action="store_true", help="with --concept-prompts: ask the concepts without their token"
    )
    args = parser.parse_args()
    if args.without_token and not args.concept_prompts:
        raise SystemExit("--without-token splits the concept's own prompts: give --concept-prompts too")
    tables = {}
    for model in args.models:
        name, _, folder = model.partition("=")
        if folder and not Path(folder).is_dir():
            raise SystemExit(f"{folder}: no such concept folder; give NAME=FOLDER of a trained concept")
        tables[name] = breakdown(Path(folder) if folder else None, args.samples, concept_prompts=args.concept_prompts,
                                 with_token=not args.without_token)  # fmt: skip
        print(f"{name} done", flush=True)
    print(markdown(tables))
    if args.json:
        models = dict(model.partition("=")[::2] for model in args.models)
        record = {"samples": args.samples, "concept_prompts": args.concept_prompts, "models": models}
        record |= {"without_token": True} if args.without_token else {}
        write_json_atomic(Path(args.json), record | {"rates": tables})


if __name__ == "__main__":
    main()
