"""Render the base clips that clip composites fit a subject into, for the Shapes family's classes, into
the clip bank the package ships (cdvideo/shapes/clip_bank/; see cdvideo/clip_bank.py).

    python scripts/build_clip_bank.py                        # the demo's class, at the composites recipe's count
    python scripts/build_clip_bank.py --classes circle square --count 20

Run it again after the family's weights or motion LoRAs change (after emptying the folder): the old clips' keys
no longer match, and `tests/test_clip_bank.py` says so. Clips already in the bank are not rendered again.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from cdvideo import clip_bank, clip_composites, loading, presets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", nargs="+", default=["circle"])
    parser.add_argument("--count", type=int, default=presets.RECIPES["composites"].settings["num_clip_composites"])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = presets.SHAPES
    image = loading.load_image_pipeline("shapes")
    video = loading.video_pipeline(image, loading.load_motion_adapter(preset.motion_adapter))
    video.scheduler = presets.make_scheduler("shapes", None, image.scheduler.config)
    start = time.perf_counter()
    for class_word in args.classes:
        with tempfile.TemporaryDirectory() as scratch:
            clip_composites.draw_base_clips(
                video, "shapes", class_word, args.count, preset.resolution, Path(scratch), print, clip_bank.SHIPPED
            )
    print(f"{time.perf_counter() - start:.0f} s; the bank holds {len(list(clip_bank.SHIPPED.glob('*.png')))} clips")


if __name__ == "__main__":
    main()
