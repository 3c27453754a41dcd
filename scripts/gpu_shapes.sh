#!/usr/bin/env bash
# Train the embedded Shapes models on one GPU in a single 9-minute session, then measure them.
# Used through the device tool (wheels in .whl/, results to $OUT); on your own GPU box:
#   OUT=/tmp/out bash scripts/gpu_shapes.sh
set -u
. "$(dirname "$0")/device_env.sh"
R=runs/gpu
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 scripts/train_shapes.py --phase vae --seconds "${VAE_S:-50}" --run-dir $R
python3 scripts/train_shapes.py --phase base --seconds "${BASE_S:-230}" --run-dir $R
python3 scripts/train_shapes.py --phase export --run-dir $R
tar cf - cdvideo/shapes/weights | split -b 15M - "$OUT/base.tar.part-"
python3 scripts/train_shapes.py --phase motion --seconds "${MOTION_S:-110}" --run-dir $R
python3 scripts/train_shapes.py --phase export --run-dir $R
tar cf - cdvideo/shapes/weights | split -b 15M - "$OUT/weights.tar.part-" && rm -f "$OUT"/base.tar.part-*
cp $R/log.jsonl "$OUT/train_log.jsonl"
timeout "${EVAL_S:-50}" python3 scripts/eval_shapes.py --samples 32 --clips 16 --guidance 1.5 3 5 --skip-motion \
  --out "$OUT/quality_images.json"
timeout "${EVAL_S:-50}" python3 scripts/eval_shapes.py --samples 32 --seen-prompts 4 --clips 24 --guidance 2 4 \
  --out "$OUT/quality_motion.json"
ls -la "$OUT"
