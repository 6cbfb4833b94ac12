#!/usr/bin/env bash
# One short SPA round in bf16 with each generation backend on a CUDA GPU: tokens/s per stage, peak GPU
# memory and the first step's margins (must be 0). See scripts/gpu_check.py; about 3 minutes on one GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export TRANSFORMERS_VERBOSITY=error
exec python scripts/gpu_check.py "$@"
