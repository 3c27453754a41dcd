"""SPL weights side by side from `composition_bars.py` runs: each cell with its 95% interval, and
whether the difference between two weights is outside the spread between training seeds.

    python benchmarks/spl_table.py 0=docs/composition/recipe-composites-v2 1=docs/composition/recipe-composites-v2-spl1
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

ROWS = {
    "identity": "identity: stripes in 'a <tok> circle'",
    "wearing headphones": "stripes + headphones + circle",
    "plain_accuracy": "plain prompts (class + colour + accessory)",
    "in the sky": "stripes + in the sky",
    "on grass": "stripes + on grass",
    "on sand": "stripes + on sand",
}


def wilson(hits: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a binomial rate `hits / n`."""
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def load(folder: Path) -> tuple[list[dict], int]:
    """Per-seed image rates of a bars folder, and the samples behind each (per prompt and seed)."""
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("seed-[0-9].json"))]
    if not runs:
        raise SystemExit(f"{folder}: no seed-N.json; run benchmarks/composition_bars.py --out {folder} first")
    return [r["rates"] for r in runs], runs[0]["settings"]["samples"]


def table(columns: dict[str, Path]) -> str:
    loaded = {name: load(folder) for name, folder in columns.items()}
    names = list(loaded)
    lines = [
        "| rate | " + " | ".join(f"SPL {n}: mean [95%] (per seed)" for n in names) + " | difference vs seed spread |",
        "|---" * (len(names) + 2) + "|",
    ]
    for key, label in ROWS.items():
        cells, means, spreads = [], [], []
        for name in names:
            runs, samples = loaded[name]
            # plain accuracy pools 4 prompts per sample count
            n = samples * len(runs) * (4 if key == "plain_accuracy" else 1)
            values = [r[key] for r in runs]
            mean = float(np.mean(values))
            low, high = wilson(mean * n, n)
            cells.append(f"{mean:.2f} [{low:.2f}, {high:.2f}] ({' / '.join(f'{v:.2f}' for v in values)})")
            means.append(mean)
            spreads.append(max(values) - min(values))
        gap = max(means) - min(means)
        verdict = "outside" if gap > max(spreads) else "within"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {gap:.2f} {verdict} (spread {max(spreads):.2f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("columns", nargs="+", metavar="WEIGHT=FOLDER")
    args = parser.parse_args()
    columns = {}
    for pair in args.columns:
        weight, sep, folder = pair.partition("=")
        if not sep:
            parser.error(f"{pair}: expected WEIGHT=FOLDER")
        columns[weight] = Path(folder)
    print(table(columns), end="")


if __name__ == "__main__":
    main()
