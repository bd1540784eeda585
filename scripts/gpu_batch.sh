#!/usr/bin/env bash
# Several experiment runs side by side on one GPU machine that has jax, flax, optax and
# orbax but not this project's venv (how the `fb0_*`, `fb1_*` and `s4_*` runs of
# results/ablations/zoneout_word were made on an NVIDIA H100): each run is a background
# process (CUDA MPS is started when available, so the small kernels of different runs
# overlap), all are stopped at a deadline, and their config.json,
# metrics.jsonl, TensorBoard events and console logs (no checkpoints) are tarred into
# $OUT/runs.tar.gz. Workdirs go to $RUNS/<name> (default runs/gpu_batch, relative to the
# repository root, where this is run from); $OUT defaults to runs/.
#
#   bash scripts/gpu_batch.sh DEADLINE_S "task:preset:name[:flag;flag...]" ...
#   e.g. bash scripts/gpu_batch.sh 530 ptb:zoneout:zw "ptb:baseline:zb_s1:--config.train.seed=1"
#
# Before: wheels of the missing packages in .whl/ (ml_collections, tensorboardX: pip
# download --only-binary=:all: --python-version 3.12 ...) and the data sets in .devdata/
# (the layout of ../shared/data), both listed in .git/info/exclude and carried along.
set -u
deadline=$1; shift
OUT=${OUT:-runs}; RUNS=${RUNS:-runs/gpu_batch}; mkdir -p "$OUT" "$RUNS"
SITE=$(mktemp -d)  # the wheels' install target
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || exit 1
fi
export PYTHONPATH=$SITE:$PWD RNNREG_DATA_DIR=${RNNREG_DATA_DIR:-$PWD/.devdata}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d 2>/dev/null
then echo "MPS started"; else echo "MPS not started (absent or already running)"; fi
start=$(date +%s); pids=()
for spec in "$@"; do
  IFS=: read -r task preset name flags <<<"$spec"
  # shellcheck disable=SC2086  # the flags are meant to split
  python3 -m "experiments.$task" --config="$preset" --workdir="$RUNS/$name" ${flags//;/ } \
    >"$RUNS/$name.log" 2>&1 &
  pids+=($!); echo "started $name: $task --config=$preset ${flags//;/ }"
done
while (( $(date +%s) - start < deadline )); do
  alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  (( alive )) || break; sleep 5
done
for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null; done; sleep 5
for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
echo "elapsed $(( $(date +%s) - start )) s"
for log in "$RUNS"/*.log; do
  echo "== $log"; grep -E "valid:|test:|final|Error" "$log" | tail -3
done
tar -C "$RUNS" --exclude=checkpoints --exclude=best -czf "$OUT/runs.tar.gz" .
