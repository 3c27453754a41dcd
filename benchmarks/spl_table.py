"""SPL weights side by side from `composition_bars.py` runs: each cell with its 95% interval, and
whether the difference between two weights is outside the spread between training seeds.

Each training seed trains both weights on the same photos from the same start, so the weights are also
compared seed by seed: the mean of the per-seed differences from the first weight, with a 95% t interval
over the seeds. Where that interval excludes 0 the difference holds on these seeds beyond their own
sampling noise, even when the seeds' spread (which moves both weights alike) is larger than the gap.

    python benchmarks/spl_table.py 0=docs/composition/recipe-composites-v2 1=docs/composition/recipe-composites-v2-spl1

Any other training setting compares the same way, with `--what` naming it in the headers:

    python benchmarks/spl_table.py --what clip_every 1=docs/composition/recipe-composites-v6-bf16 \
        2=docs/composition/recipe-composites-v6-ce2
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
    "wearing a hat": "stripes + hat",
    "with a scarf": "stripes + scarf",
    "at night": "stripes + at night",
}


def wilson(hits: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a binomial rate `hits / n`."""
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# two-sided 95% quantiles of Student's t by degrees of freedom
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def load(folder: Path) -> tuple[dict[str, dict], int]:
    """Image rates of a bars folder by training seed, and the samples behind each (per prompt and seed)."""
    paths = sorted(p for p in folder.glob("seed-*.json") if p.stem.removeprefix("seed-").isdigit())
    if not paths:
        raise SystemExit(f"{folder}: no seed-N.json; run benchmarks/composition_bars.py --out {folder} first")
    runs = {p.stem.removeprefix("seed-"): json.loads(p.read_text()) for p in paths}
    return {seed: r["rates"] for seed, r in runs.items()}, next(iter(runs.values()))["settings"]["samples"]


def paired(reference: dict[str, float], other: dict[str, float], n: int) -> str:
    """Mean per-seed difference `other - reference` over the seeds both have, with its 95% interval.

    The interval is the wider of two: Student's t over the seeds' differences, and the normal interval of
    the two rates' binomial sampling noise at `n` samples a seed (each rate shrunk towards 1/2 by one success
    and one failure, so 0 and 1 count too). Three seeds can differ by exactly the same amount (one sample in
    32 each); the t interval alone would then have no width."""
    seeds = sorted(reference.keys() & other.keys())
    if len(seeds) < 2:
        return "n/a (fewer than 2 shared seeds)"
    gaps = np.array([other[s] - reference[s] for s in seeds])
    shrunk = [(rates[s] * n + 1) / (n + 2) for rates in (reference, other) for s in seeds]
    sampling = 2 * float(np.mean([p * (1 - p) / n for p in shrunk]))
    root = math.sqrt(len(gaps))
    half = max(T95[min(len(gaps) - 1, max(T95))] * gaps.std(ddof=1) / root, 1.96 * math.sqrt(sampling) / root)
    low, high = gaps.mean() - half, gaps.mean() + half
    verdict = "excludes 0" if low > 0 or high < 0 else "includes 0"
    return f"{gaps.mean():+.2f} [{low:+.2f}, {high:+.2f}] {verdict}"


def table(columns: dict[str, Path], what: str = "SPL") -> str:
    loaded = {name: load(folder) for name, folder in columns.items()}
    names = list(loaded)
    lines = [
        "| rate | "
        + " | ".join(f"{what} {n}: mean [95%] (per seed)" for n in names)
        + " | difference vs seed spread | "
        + " | ".join(f"{what} {n} - {what} {names[0]}, paired by seed: mean [95%]" for n in names[1:])
        + " |",
        "|---" * (2 * len(names) + 1) + "|",
    ]
    for key, label in ROWS.items():
        cells, means, spreads = [], [], []
        for name in names:
            runs, samples = loaded[name]
            # plain accuracy pools 4 prompts per sample count
            n = samples * len(runs) * (4 if key == "plain_accuracy" else 1)
            values = [r[key] for r in runs.values()]
            mean = float(np.mean(values))
            low, high = wilson(mean * n, n)
            cells.append(f"{mean:.2f} [{low:.2f}, {high:.2f}] ({' / '.join(f'{v:.2f}' for v in values)})")
            means.append(mean)
            spreads.append(max(values) - min(values))
        gap = max(means) - min(means)
        verdict = "outside" if gap > max(spreads) else "within"
        per_seed = {name: {seed: rates[key] for seed, rates in loaded[name][0].items()} for name in names}
        per_rate = loaded[names[0]][1] * (4 if key == "plain_accuracy" else 1)
        pairs = [paired(per_seed[names[0]], per_seed[name], per_rate) for name in names[1:]]
        lines.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {gap:.2f} {verdict} (spread {max(spreads):.2f}) | "
            + " | ".join(pairs)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("columns", nargs="+", metavar="WEIGHT=FOLDER")
    parser.add_argument("--what", default="SPL", help="what the columns vary, for their headers (default: SPL)")
    args = parser.parse_args()
    columns = {}
    for pair in args.columns:
        weight, sep, folder = pair.partition("=")
        if not sep:
            parser.error(f"{pair}: expected WEIGHT=FOLDER")
        columns[weight] = Path(folder)
    print(table(columns, args.what), end="")


if __name__ == "__main__":
    main()
