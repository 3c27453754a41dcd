"""How a concept's clips of the bars' video prompt move: the world's motion reading of N clips and the
share of frames with the subject's stripes (a quick probe beside `composition_bars.py`).

    python benchmarks/clip_motions.py CONCEPT_FOLDER --clips 16 --seed 400   # or '-' for the base model
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from composition_bars import VIDEO_PROMPT, pipelines, render_clips, with_asked_motion

from cdvideo import concept as concepts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("concept", help="a concept folder, or - for the base model")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seed", type=int, default=400, help="first clip's seed")
    args = parser.parse_args()
    folder = None if args.concept == "-" else Path(args.concept)
    _, video = pipelines(folder, image=False)
    subject = f"a {concepts.load_concept(folder).token} circle" if folder else "a circle"
    prompt = VIDEO_PROMPT.format(subject)
    with_asked_motion(video, prompt)
    scored = render_clips(video, [prompt] * args.clips, ["circle"] * args.clips, args.seed)
    frames = [f for clip in scored for f in clip.frames]
    motions = collections.Counter(clip.motion or "still" for clip in scored)
    print(json.dumps({"concept": args.concept, "clips": args.clips, "seed": args.seed, "motions": motions,
                      "stripes_frames": round(sum(f.pattern for f in frames) / len(frames), 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
