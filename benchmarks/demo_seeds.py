"""`cdvideo demo` on several seeds, as a user runs it: wall time and the scorecard of each.

The demo bars (composition issue: stripes in at least 75% of frames plus headphones, with the
concept, on 3 of seeds 0-3; motion issue: the asked motion read on 3 of them; CPU-speed issue: each
run in at most 2 minutes) are read off this table.

    python benchmarks/demo_seeds.py --seeds 0 1 2 3 --work runs/demo-seeds --out docs/demo_seeds.md   # as shipped
    python benchmarks/demo_seeds.py --seeds 0 1 2 3 --recipe none --work runs/demo-family \
        --out docs/demo_seeds_family.md                                                      # plain defaults
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from cdvideo.atomic import write_text_atomic
from cdvideo.presets import DEMO_RECIPE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from composition_bars import parse_overrides  # noqa: E402

ROW = re.compile(r"^  (subject pattern \(frames\)|class|accessory|motion correct|motion)\s{2,}(\S.*?)\s{2,}(\S.*)$")


def run_demo(seed: int, folder: Path, recipe: str, settings: dict | None = None) -> tuple[float, dict]:
    if settings:  # no command-line flag takes training settings: the Python API does
        call = (f"import cdvideo; cdvideo.demo(output={str(folder)!r}, seed={seed}, recipe={recipe!r}, "
                f"train_settings={settings!r})")  # fmt: skip
        command = [sys.executable, "-c", call]
    else:
        command = [sys.executable, "-m", "cdvideo.cli", "demo", "--seed", str(seed), "--output", str(folder),
                   "--recipe", recipe]  # fmt: skip
    start = time.time()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.time() - start
    if result.returncode:
        sys.exit(f"demo seed {seed} failed: {result.stderr.strip().splitlines()[-1:]}")
    card = {}
    for line in result.stdout.splitlines():
        match = ROW.match(line)
        if match:
            card[match.group(1)] = (match.group(2).strip(), match.group(3).strip())
    return wall, card


def rerender(seed: int, folder: Path) -> dict:
    """The demo's two clips rendered again from the concept an earlier run trained in `folder` (for a change
    of rendering only: training is deterministic on CPU, so a full run would train the same concept)."""
    import cdvideo
    from cdvideo.demo import PROMPT, scorecard

    def card(kind: str, **where) -> dict:
        output = str(folder / "rerendered" / kind)
        config = cdvideo.AnimateConfig(prompts=[PROMPT], seeds=[seed], output=output, **where)
        return scorecard(cdvideo.animate(config, say=lambda _: None, progress=False)[0].frames)

    with_concept = card("with-concept", concept=str(folder / "concept"))
    without = card("without-concept", use_concept=False, base="shapes")
    return {key: (str(with_concept[key]), str(without[key])) for key in with_concept}


def verdict(card: dict) -> tuple[bool, bool]:
    """(subject and headphones right, motion right) with the concept."""
    pattern = float(card["subject pattern (frames)"][0].rstrip("%")) / 100
    return pattern >= 0.75 and card["accessory"][0] == "wearing headphones", card["motion correct"][0] == "True"


def clock(seconds: float) -> str:
    """m:ss, rounded to the second (539.7 s is 9:00, not 8:60)."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--work", type=Path, default=Path("runs/demo-seeds"))
    parser.add_argument("--out", type=Path, help="markdown table to write")
    parser.add_argument("--recipe", default=DEMO_RECIPE, help=f"the demo's --recipe (default {DEMO_RECIPE}; none)")
    parser.add_argument(
        "--rerender",
        action="store_true",
        help="score the clips again from the concepts already trained in --work (rendering changed)",
    )
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="training settings over the recipe's")
    args = parser.parse_args()
    settings = parse_overrides(args.set)
    lines = ["| seed | wall | stripes (frames) | accessory | motion | subject + headphones | motion right |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    composed = moved = 0
    for seed in args.seeds:
        # Each seed's result is kept beside its run, so seeds can run as separate jobs (one per core)
        # and a last call with every seed writes the table.
        kept = args.work / f"seed-{seed}.json"
        if args.rerender:
            wall, _ = json.loads(kept.read_text())  # training's wall; rendering's cost is unchanged
            card = rerender(seed, args.work / f"seed-{seed}")
        elif kept.is_file():
            wall, card = json.loads(kept.read_text())
        else:
            wall, card = run_demo(seed, args.work / f"seed-{seed}", args.recipe, settings)
            write_text_atomic(kept, json.dumps([wall, card]))
        subject_ok, motion_ok = verdict(card)
        composed, moved = composed + subject_ok, moved + motion_ok
        lines.append(f"| {seed} | {clock(wall)} | {card['subject pattern (frames)'][0]} "
                     f"| {card['accessory'][0]} | {card['motion'][0]} | {subject_ok} | {motion_ok} |")  # fmt: skip
        print(lines[-1], flush=True)
    command = f"python benchmarks/demo_seeds.py {shlex.join(sys.argv[1:])}"
    lines += ["", f"With the concept: subject + headphones on {composed} of {len(args.seeds)} seeds, "
              f"the asked motion on {moved}.", "", f"Command: `{command}`"]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
