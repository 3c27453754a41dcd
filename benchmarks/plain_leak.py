"""Where a concept breaks the plain prompts: for each prompt without the token, the share of samples
with the class, the colour and the accessory right, and the share that wear the subject's stripes
(the concept leaking into prompts that never name it).

`composition_bars.py` reports one number for the plain prompts; this splits it, to say how SPL at
long training loses them (docs/composition/README.md, "SPL 0 / 1 at 10x the training").

    python benchmarks/plain_leak.py base spl0=runs/bars-v4-10x-spl0/s1-d571dcb7 \
        spl1=runs/bars-v4-10x-spl1/s1-5a311a19 --samples 64 --json docs/composition/plain-leak-10x-seed1.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import composition_bars
import numpy as np

from cdvideo import presets
from cdvideo.atomic import write_json_atomic
from cdvideo.shapes import scorer

COLUMNS = ("class", "colour", "accessory", "all right", "stripes")


def breakdown(folder: Path | None, samples: int, seed: int = 300) -> dict[str, dict[str, float]]:
    """Per plain prompt, the rate of each column, sampled as `composition_bars.py` samples them."""
    pipe, _ = composition_bars.pipelines(folder, video=False)  # as the bars sample: same sampler, fused concept
    table = {}
    for prompt, cls, colour, accessory in scorer.PLAIN_PROMPTS:
        scores = scorer.sample_and_score(
            pipe, prompt, samples, steps=presets.SHAPES.steps, guidance=presets.SHAPES.guidance, seed=seed
        )
        hits = {
            "class": [s.cls == cls for s in scores],
            "colour": [s.colour == colour for s in scores],
            "accessory": [s.accessory == accessory for s in scores],
            "stripes": [s.pattern for s in scores],
        }
        hits["all right"] = [a and b and c for a, b, c in zip(hits["class"], hits["colour"], hits["accessory"])]
        table[prompt] = {k: float(np.mean(hits[k])) for k in COLUMNS}
    return table


def markdown(tables: dict[str, dict[str, dict[str, float]]]) -> str:
    names = list(tables)
    head = "| prompt | column | " + " | ".join(names) + " |"
    rows = [head, "|" + "---|" * (len(names) + 2)]
    for prompt, *_ in scorer.PLAIN_PROMPTS:
        for column in COLUMNS:
            cells = " | ".join(f"{tables[n][prompt][column]:.2f}" for n in names)
            rows.append(f"| {prompt} | {column} | {cells} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="'base', or NAME=CONCEPT_FOLDER")
    parser.add_argument("--samples", type=int, default=64, help="images per prompt")
    parser.add_argument("--json", help="also write the rates here")
    args = parser.parse_args()
    tables = {}
    for model in args.models:
        name, _, folder = model.partition("=")
        if folder and not Path(folder).is_dir():
            raise SystemExit(f"{folder}: no such concept folder; give NAME=FOLDER of a trained concept")
        tables[name] = breakdown(Path(folder) if folder else None, args.samples)
        print(f"{name} done", flush=True)
    print(markdown(tables))
    if args.json:
        models = dict(model.partition("=")[::2] for model in args.models)
        write_json_atomic(Path(args.json), {"samples": args.samples, "models": models, "rates": tables})


if __name__ == "__main__":
    main()
