#!/usr/bin/env bash
# Continue training the shipped Shapes weights on one GPU for a few more minutes (second sitting).
set -u
. "$(dirname "$0")/device_env.sh"
R=runs/gpu2
python3 scripts/train_shapes.py --phase base --seconds "${BASE_S:-115}" --batch 1024 --run-dir $R --init-from-weights
python3 scripts/train_shapes.py --phase export --run-dir $R
tar cf - cdvideo/shapes/weights | split -b 15M - "$OUT/base.tar.part-"
cp $R/log.jsonl "$OUT/train_log.jsonl"
python3 scripts/train_shapes.py --phase motion --seconds "${MOTION_S:-45}" --run-dir $R
python3 scripts/train_shapes.py --phase export --run-dir $R
tar cf - cdvideo/shapes/weights | split -b 15M - "$OUT/weights.tar.part-" && rm -f "$OUT"/base.tar.part-*
cp $R/log.jsonl "$OUT/train_log.jsonl"
ls -la "$OUT"
