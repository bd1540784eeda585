#!/usr/bin/env bash
# The worker side of ./launch.sh tpu: run on every TPU VM worker from the shipped checkout.
#
#   tpu_worker.sh check-workdir URL      write and delete a probe file under URL through
#                                        etils.epath (gs:// goes through gcsfs), or exit 2
#   tpu_worker.sh start LOG_URL -- CMD   start CMD in the background, its console in the log;
#                                        every COPY_EVERY s (default 60) and at its end copy
#                                        the log to LOG_URL/console-<host>.log ("" for none)
#   tpu_worker.sh status                 running or not, the last step and metrics lines
#   tpu_worker.sh state                  one word: running, exit:N, stopped (exit 0 after a
#                                        SIGTERM or the time limit: a rerun resumes) or none
#   tpu_worker.sh stop                   SIGTERM (the run checkpoints and exits), then after
#                                        STOP_WAIT s (default 300) SIGKILL
#
# Files: RNNREG_RUN_DIR (default $HOME) holds rnnreg_run.log, .pid and .exit.
# Environment: PYTHON (default ~/rnnreg_venv/bin/python), GSUTIL (default gsutil).
set -euo pipefail

RUN_DIR="${RNNREG_RUN_DIR:-$HOME}"
LOG="$RUN_DIR/rnnreg_run.log"
PID_FILE="$RUN_DIR/rnnreg_run.pid"
EXIT_FILE="$RUN_DIR/rnnreg_run.exit"
PYTHON="${PYTHON:-$HOME/rnnreg_venv/bin/python}"
GSUTIL="${GSUTIL:-gsutil}"
HOST="$(hostname)"

die() { echo "tpu_worker.sh on $HOST: $*" >&2; exit 2; }

# The pid of the running training process, or nothing.
running_pid() {
  local pid
  [[ -f "$PID_FILE" ]] || return 0
  pid="$(<"$PID_FILE")"
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
    echo "$pid"
  fi
}

check_workdir() {
  [[ $# -eq 1 ]] || die "check-workdir takes one URL."
  [[ -x "$PYTHON" ]] || die "$PYTHON is missing; run ./launch.sh tpu setup first."
  # The binaries' own route to the workdir (etils.epath -> fsspec -> gcsfs), so a missing
  # backend or a missing permission shows here, before any TPU time is spent.
  "$PYTHON" - "$1" "$HOST" <<'EOF'
import sys
import uuid

from etils import epath

url, host = sys.argv[1], sys.argv[2]
probe = epath.Path(url) / f".rnnreg_write_check_{host}_{uuid.uuid4().hex[:8]}"
try:
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    probe.unlink()
except Exception as err:  # noqa: BLE001 - any failure means the run could not write there
    reason = " ".join(str(err).split()) or type(err).__name__
    print(f"tpu_worker.sh on {host}: cannot write to {url} ({type(err).__name__}: {reason}); "
          "check the bucket's name and this VM's service account permissions.",
          file=sys.stderr)
    sys.exit(2)
print(f"{url} is writable from {host}")
EOF
}

copy_log() {
  local dest="$1"
  [[ -n "$dest" && -f "$LOG" ]] || return 0
  "$GSUTIL" -q cp "$LOG" "${dest%/}/console-$HOST.log" >/dev/null 2>&1 \
    || echo "tpu_worker.sh: copying the log to $dest failed; will retry" >> "$LOG"
}

# Runs in the background (started by `start`): the training process is its child, so it
# learns the exit status, and it copies the log while the run goes on.
supervise() {
  local dest="$1" every="${COPY_EVERY:-60}" pid rc i; shift
  "$@" > "$LOG" 2>&1 < /dev/null &
  pid=$!
  echo "$pid" > "$PID_FILE"
  while kill -0 "$pid" 2>/dev/null; do
    for ((i = 0; i < every; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    copy_log "$dest"
  done
  rc=0
  wait "$pid" || rc=$?
  echo "$rc" > "$EXIT_FILE"
  copy_log "$dest"
}

start() {
  [[ $# -ge 3 && "$2" == -- ]] || die "start takes LOG_URL -- COMMAND..."
  local dest="$1" pid; shift 2
  pid="$(running_pid)"
  [[ -z "$pid" ]] || die "a run is already going (pid $pid); ./launch.sh tpu stop ends it."
  mkdir -p "$RUN_DIR"
  rm -f "$EXIT_FILE" "$PID_FILE"
  # setsid + nohup: the run outlives the ssh session that started it.
  setsid nohup "$BASH" "${BASH_SOURCE[0]}" supervise "$dest" "$@" > /dev/null 2>&1 < /dev/null &
  for _ in $(seq 50); do  # the pid file appears once the command has started
    [[ -f "$PID_FILE" ]] && break
    sleep 0.1
  done
  echo "$HOST: started (pid $(cat "$PID_FILE" 2>/dev/null || echo '?')), log $LOG${dest:+, copied to ${dest%/}/console-$HOST.log}"
}

state() {
  local pid
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    echo running
  elif [[ -f "$EXIT_FILE" ]]; then
    local rc
    rc="$(<"$EXIT_FILE")"
    # The training loop's line for a run that saved and stopped before its end.
    if [[ "$rc" == 0 ]] && grep -q '] Stopped by ' "$LOG" 2>/dev/null; then
      echo stopped
    else
      echo "exit:$rc"
    fi
  else
    echo none
  fi
}

status() {
  local now step metrics
  now="$(state)"
  case "$now" in
    running) echo "$HOST: running (pid $(running_pid))" ;;
    exit:0) echo "$HOST: finished (exit status 0)" ;;
    stopped) echo "$HOST: stopped with a checkpoint before the end (rerun \`run\` to resume)" ;;
    exit:*) echo "$HOST: ended with exit status ${now#exit:}" ;;
    *) echo "$HOST: no run started"; return 0 ;;
  esac
  [[ -f "$LOG" ]] || return 0
  # The training loop's console lines (rnnreg_jax.train): progress, then evaluations.
  step="$(grep -E 'epoch [0-9]+ step [0-9]+/' "$LOG" | tail -n 1 || true)"
  metrics="$(grep -E 'epoch [0-9]+ [a-z_]+: ' "$LOG" | tail -n 1 || true)"
  [[ -z "$step" ]] || echo "$HOST: last step: ${step#*] }"
  [[ -z "$metrics" ]] || echo "$HOST: last metrics: ${metrics#*] }"
  if [[ "$now" != running ]]; then
    echo "$HOST: last line: $(tail -n 1 "$LOG")"
  fi
}

stop() {
  local pid wait="${STOP_WAIT:-300}" i
  pid="$(running_pid)"
  if [[ -z "$pid" ]]; then
    echo "$HOST: no run going"
    return 0
  fi
  # SIGTERM: the training loop saves a checkpoint at the next step and exits, so a rerun
  # of the same `run` resumes there.
  kill -TERM "$pid"
  for ((i = 0; i < wait; i++)); do
    kill -0 "$pid" 2>/dev/null || { echo "$HOST: stopped (pid $pid)"; return 0; }
    sleep 1
  done
  kill -KILL "$pid" 2>/dev/null || true
  echo "$HOST: killed (pid $pid) after ${wait} s without exiting"
}

cmd="${1:-}"
[[ -n "$cmd" ]] || die "use check-workdir, start, status, state, stop."
shift
case "$cmd" in
  check-workdir) check_workdir "$@" ;;
  start) start "$@" ;;
  supervise) supervise "$@" ;;
  status) status ;;
  state) state ;;
  stop) stop ;;
  *) die "unknown command '$cmd'; use check-workdir, start, status, state, stop." ;;
esac
