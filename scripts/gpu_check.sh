#!/usr/bin/env bash
# The GPU check of the `paper` profile (issue #14): on a CUDA machine with PyTorch and transformers installed
# and nothing else reachable (no hub, no PyPI), run the paper's architectures (openai-gpt 12 x 768 and
# bert-base-uncased, built with RANDOM weights: speed does not depend on the weights) in bf16 for a bounded time,
# and project the wall time of every notebook of the paper profile on this GPU.
#   scripts/gpu_check.sh [DATA_DIR] [OUT]      (DATA_DIR: a ConvAI2 folder, default P2BOT_DATA_DIR, else the sample)
# Measures: training tokens/s and MFU against a measured bf16 matmul peak, Hits@1 ranking turns/s, generation
# replies/s, self-play dialogues/s, one Receiver step; writes OUT/gpu_check.{json,md} (default
# results/paper-gpu-check/). The data it reads is never written there. Hard limit: 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-${P2BOT_DATA_DIR:-}}"
OUT="${2:-results/paper-gpu-check}"
PY="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device visible to PyTorch')"
export P2BOT_BACKBONE_WEIGHTS=random HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 480 "$PY" -m p2bot_utils.paper_scale gpu --out "$OUT" ${DATA:+--data-dir "$DATA"}
cat "$OUT/gpu_check.md"
