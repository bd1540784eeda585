#!/usr/bin/env bash
# One call of a GPU window: `python -m experiments.reproduce` under the device image's own
# python3 (it has jax, flax, optax, orbax and absl, not this project's venv). Installs the
# wheels of what it lacks from .whl/ (ml_collections, tensorboardX; WHEELS names another
# folder), points the data at .devdata/ (the layout of ../shared/data; both made here
# beforehand by scripts/gpu_prepare.sh), starts CUDA MPS where present so the runs' small kernels
# overlap, and passes every argument on; the bundle goes to $OUT.
#
#   bash scripts/gpu_window.sh --batches=medium --budget_s=540
#   bash scripts/gpu_window.sh --batches=pmnist --budget_s=540 --resume_from=bundle --stop_at_deadline
set -euo pipefail
SITE=$(mktemp -d)
WHEELS="${WHEELS:-.whl}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$SITE" "$WHEELS"/*.whl
fi
export PYTHONPATH="$SITE:$PWD" RNNREG_DATA_DIR="${RNNREG_DATA_DIR:-$PWD/.devdata}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d 2>/dev/null
then echo "MPS started"; else echo "MPS not started (absent or already running)"; fi
exec python3 -m experiments.reproduce --out="${OUT:-runs/bundle}" "$@"
