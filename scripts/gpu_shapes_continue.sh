#!/usr/bin/env bash
# Continue training the shipped Shapes weights on one GPU for a few more minutes, then measure them.
#   OUT=/tmp/out BASE_S=180 MOTION_S=100 bash scripts/gpu_shapes_continue.sh
set -u
. "$(dirname "$0")/device_env.sh"
R=${RUN_DIR:-runs/gpu-continue}
python3 scripts/train_shapes.py --phase base --seconds "${BASE_S:-115}" --batch "${BASE_BATCH:-1024}" --run-dir $R \
  --init-from-weights
python3 scripts/train_shapes.py --phase export --run-dir $R
tar cf - cdvideo/shapes/weights | split -b 15M - "$OUT/base.tar.part-"
cp $R/log.jsonl "$OUT/train_log.jsonl"
python3 scripts/train_shapes.py --phase motion --seconds "${MOTION_S:-45}" --batch "${MOTION_BATCH:-512}" \
  ${MOTION_LR:+--lr $MOTION_LR} --run-dir $R
python3 scripts/train_shapes.py --phase export --run-dir $R
tar cf - cdvideo/shapes/weights | split -b 15M - "$OUT/weights.tar.part-" && rm -f "$OUT"/base.tar.part-*
cp $R/log.jsonl "$OUT/train_log.jsonl"
if [ "${EVAL_S:-0}" -gt 0 ]; then
  timeout "$EVAL_S" python3 scripts/eval_shapes.py --samples 64 --skip-motion --out "$OUT/quality_images.json"
  timeout "$EVAL_S" python3 scripts/eval_shapes.py --samples 16 --seen-prompts 2 --clips 64 \
    --out "$OUT/quality_motion.json"
fi
if [ "${PERSONALIZATION_S:-0}" -gt 0 ]; then
  timeout "$PERSONALIZATION_S" python3 scripts/eval_personalization.py --samples 64 --out "$OUT/personalization.json"
fi
ls -la "$OUT"
