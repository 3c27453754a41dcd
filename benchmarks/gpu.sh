#!/usr/bin/env bash
# The limit on one GPU (issue 7), SD1.5-architecture random weights, no download:
#   training steps/s and peak memory at 512 px (cdvideo vs the DreamBooth-LoRA-style reference), and a
#   16-frame 512 px 25-step render with guidance, with model FLOP utilisation.
#   OUT=/tmp/out bash benchmarks/gpu.sh
set -u
. "$(dirname "$0")/../scripts/device_env.sh"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
timeout "${RENDER_S:-150}" python3 benchmarks/bench_render_limit.py --variants eager channels-last \
  --json "$OUT/render_limit.json" 2>&1 | grep -v "kept in float32"
timeout "${TRAIN_S:-80}" python3 benchmarks/bench_train.py --model sd15-random --resolution 512 --batch-size 4 \
  --steps 10 --warmup 3 --rounds 1 --device cuda --json "$OUT/train_512.json"
# Issue 17: peak memory of a 512 px, batch 1 training step with each memory option (max_memory_allocated).
timeout "${MEMORY_S:-200}" python3 benchmarks/bench_memory.py --resolution 512 --device cuda \
  --json "$OUT/memory_512.json" 2>&1 | grep -v "kept in float32"
