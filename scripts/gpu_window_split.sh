#!/usr/bin/env bash
# One GPU window's batch over two calls, for a batch longer than one call (10 minutes) but
# within the window: `start` launches scripts/gpu_window.sh in a session of its own
# (setsid), so it outlives the call, and watches it for WATCH_S seconds (default 570; it
# returns sooner if the batch ends); `collect`, the next call on the still-warm machine,
# waits up to WAIT_S seconds (default 400) for the bundle and copies it to $OUT; a batch
# still running then gets SIGTERM, which stops its runs with their checkpoints and writes
# the bundle, awaited STOP_WAIT_S more seconds (default 90). Either exits 1 where a run
# failed (the bundle still comes back). Give `start` a --budget_s of the first call's
# seconds plus what the window has left after it.
#
#   bash scripts/gpu_window_split.sh start --runs=ptb:zaremba_large --budget_s=780 \
#       --calibrate_s=0 --step_times=results/step_times_h200.json --stop_at_deadline
#   bash scripts/gpu_window_split.sh collect
set -euo pipefail
STATE="${WINDOW_DIR:-${TMPDIR:-/tmp}/rnnreg_window}"
OUT="${OUT:-runs/bundle}"

progress() {  # the runner's own lines and each run's latest training event
  grep -v '^[IWE][0-9]' "$STATE/window.log" | tail -n 30 || true
  local log
  for log in "$STATE"/runs/*/metrics.jsonl; do
    [[ -f "$log" ]] || continue
    echo "$(basename "$(dirname "$log")"): $(grep '"split": "train"' "$log" | tail -n 1)"
  done
}

case "${1:-}" in
  start)
    shift
    if [[ -f "$STATE/driver.pid" ]] && kill -0 "$(cat "$STATE/driver.pid")" 2>/dev/null; then
      # a second start deleted the running batch's runs under it
      echo "gpu_window_split.sh: the batch started earlier (pid $(cat "$STATE/driver.pid")) is" \
        "still running; run collect, or stop it first." >&2
      exit 2
    fi
    rm -rf "$STATE" && mkdir -p "$STATE"
    : >"$STATE/window.log"  # before the batch opens it: the progress below reads it at once
    started=$SECONDS
    setsid bash "$(dirname "$0")/gpu_window.sh" "$@" --root="$STATE/runs" \
      --out="$STATE/bundle" >>"$STATE/window.log" 2>&1 </dev/null &
    driver=$!
    echo "$driver" >"$STATE/driver.pid"
    while (( SECONDS - started < ${WATCH_S:-570} )) && kill -0 "$driver" 2>/dev/null; do
      sleep 5
    done
    progress
    mkdir -p "$OUT" && cp "$STATE/window.log" "$OUT/"
    if ! kill -0 "$driver" 2>/dev/null; then  # ended within the call: say how
      status=0
      wait "$driver" || status=$?
      if [[ -f "$STATE/bundle/bundle.json" ]]; then
        cp "$STATE"/bundle/* "$OUT/"
        exit "$status"  # 1 where a run failed: the bundle came back, and so does that
      elif (( status != 0 )); then  # a refused flag, say: collect would wait for nothing
        echo "gpu_window_split.sh: the batch ended with status $status and no bundle." >&2
        exit "$status"
      fi
    fi
    ;;
  collect)
    if [[ ! -f "$STATE/driver.pid" ]]; then  # no batch was started here: nothing to wait for
      echo "gpu_window_split.sh: no batch was started in $STATE (no driver.pid); run start" \
        "first." >&2
      exit 2
    fi
    # Read once: a pid of 0 or none would make `kill -0` signal this script's own process
    # group, which always succeeds, and collect would wait all of WAIT_S for nothing.
    driver="$(cat "$STATE/driver.pid")"
    [[ "$driver" =~ ^[1-9][0-9]*$ ]] || driver=""
    # The driver writes the bundle's manifest last and then exits: its exit, not the
    # manifest's appearance (which may be half written), says the bundle is whole.
    running() { [[ -n "$driver" ]] && kill -0 "$driver" 2>/dev/null; }
    started=$SECONDS
    while running && (( SECONDS - started <= ${WAIT_S:-400} )); do
      sleep 2
    done
    if running; then  # past WAIT_S: what the runs trained comes back only in a bundle
      echo "gpu_window_split.sh: the batch still runs after ${WAIT_S:-400} s; stopping it" \
        "(SIGTERM) for its bundle." >&2
      kill -TERM "$driver" 2>/dev/null || true
      stopped=$SECONDS
      while running && (( SECONDS - stopped < ${STOP_WAIT_S:-90} )); do
        sleep 2
      done
    fi
    progress
    mkdir -p "$OUT" && cp "$STATE/window.log" "$OUT/"
    if [[ -f "$STATE/bundle/bundle.json" ]]; then
      cp "$STATE"/bundle/* "$OUT/"
      # The driver is not this shell's child, so its exit status is not ours to read: the
      # manifest's statuses say what it would have (experiments/reproduce_outcome.py).
      failed=$(python3 -c 'import json, sys
print(" ".join(r["name"] for r in json.load(open(sys.argv[1]))["runs"]
               if r["status"] == "failed"))' "$STATE/bundle/bundle.json")
      if [[ -n "$failed" ]]; then
        echo "gpu_window_split.sh: the bundle came back with runs failed: $failed (each" \
          "run's console.log is in runs.tar.gz)." >&2
        exit 1
      fi
    else
      echo "gpu_window_split.sh: no bundle in $STATE/bundle (its driver ended, or" \
        "${WAIT_S:-400} s passed and it did not stop in ${STOP_WAIT_S:-90} s)." >&2
      exit 1
    fi
    ;;
  *)
    echo "usage: gpu_window_split.sh start [experiments.reproduce flags] | collect" >&2
    exit 2
    ;;
esac
