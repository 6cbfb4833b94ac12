#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py), runnable from a bare clone on an offline node:
#
#   bash scripts/gpu-check.sh [--wheels DIR] [gpu_check.py options]
#
# --wheels DIR installs the wheels in DIR into a private folder (nothing in the environment changes) and
# runs spreadpref from src/. Make DIR where there is a network, for the node's Python, e.g. 3.12:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -r scripts/gpu-check-wheels.txt -d DIR
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--wheels" ]]; then
    site="${TMPDIR:-/tmp}/spreadpref-gpu-check-site"
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$2"/*.whl
    export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    shift 2
fi
export TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
exec python3 scripts/gpu_check.py "$@"
