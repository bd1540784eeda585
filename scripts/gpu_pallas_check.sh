#!/usr/bin/env bash
# The Pallas recurrence on a GPU in one command (< 5 min): compiles the kernels through
# Triton, checks outputs and gradients against the scan at the pMNIST and PTB-small
# shapes, times a pMNIST and a PTB-small training step against the scan and PyTorch's
# cuDNN nn.LSTM (benchmarks/gpu_pallas_check.py). Runs under the device image's own
# python3 (jax, flax, optax, torch; nothing to install); JSON to $OUT.
#
#   bash scripts/gpu_pallas_check.sh              # the whole check
#   bash scripts/gpu_pallas_check.sh --skip_correctness --rounds=5
#   CHECK_TIMEOUT_S=330 bash scripts/gpu_pallas_check.sh --sweep_only --sweep_budget_s=270
#                     # the crossover sweep alone (benchmarks/pallas_sweep.py)
set -euo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT="${OUT:-runs/pallas_check}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
# the JSON is rewritten after every section, so a run stopped at the limit keeps its part
timeout "${CHECK_TIMEOUT_S:-280}" python3 -m benchmarks.gpu_pallas_check --out="$OUT" "$@" \
  2>&1 | tee "$OUT/pallas_check.log"
