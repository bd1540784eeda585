#!/usr/bin/env bash
# rnnreg_jax launcher: local venv runs, the test suite, and Cloud TPU VMs.
#
#   ./launch.sh setup                      create or reuse .venv, install the pinned packages of
#                                          requirements-lock.txt, then the package itself
#   ./launch.sh test [pytest args]         setup, then run the test suite
#   ./launch.sh run <experiment> [flags]   setup, then python -m experiments.<experiment>
#   ./launch.sh multihost N <experiment> [flags]
#                                          setup, then N local processes of the experiment joined
#                                          by jax.distributed on 127.0.0.1 (docs/TPU.md)
#   ./launch.sh tpu <command> [options]    Cloud TPU VMs: create, setup, run, status, stop, logs,
#                                          ssh, delete
#                                          (./launch.sh tpu help; docs/TPU.md)
#   ./launch.sh help                       this text
#
# Environment: VENV (default .venv), PYTHON (default python3), GLIBC_TUNABLES (default: keep
# malloc blocks up to 256 MB in the heap, which speeds up CPU training; see below).
# RNNREG_UNLOCKED=1: setup installs '.[test,plot,examples]' from pyproject.toml's ranges (the
# newest releases they allow) instead of the lock, e.g. on a platform the lock does not cover
# (it pins CPython 3.11 wheels for x86-64 Linux; scripts/lock.sh regenerates it).
# multihost: DEVICES_PER_PROCESS (default 2 CPU devices each), MULTIHOST_PORT (default: a
# free port; if another program takes it before the coordinator binds it, all start again
# on a new one, 3 tries in all), JAX_PLATFORMS (default cpu), DRY_RUN=1 or --dry-run (first,
# before N): print one command per process and run nothing. Process 0 writes to this
# terminal, process i to <workdir>/process_<i>.log; the exit status is the first failing
# process's (the others are then stopped), else 0.
set -euo pipefail

# Bash only up to the dispatch (no dirname): `tpu` must give its own errors on any PATH.
_here="${BASH_SOURCE[0]}"
[[ "$_here" == */* ]] || _here="./$_here"
ROOT="$(cd "${_here%/*}" && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
# glibc maps every malloc block above its mmap threshold (at most 32 MB) afresh and
# unmaps it on free, so a CPU training step page-faults its big buffers in again every
# time (a 10k-vocabulary model's logits are 45 MB). Keeping blocks up to 256 MB in the
# heap made JAX's CPU steps up to 29% faster (PTB small; within 4% on PTB medium,
# BENCHMARKS.md). Other C libraries ignore it;
# a GLIBC_TUNABLES of your own is kept.
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.mmap_threshold=268435456:glibc.malloc.trim_threshold=4294967296}"

die() { echo "launch.sh: $*" >&2; exit 2; }

setup() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    # pyproject.toml's requires-python: older interpreters would resolve an older,
    # untested jax and flax.
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
      || die "$PYTHON is not Python >= 3.11 (jax and flax need it); set PYTHON=python3.11 or newer."
    echo "launch.sh: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
  fi
  # Reinstall only when pyproject.toml or the lock changed since the last install, or the
  # mode did (the stamp holds "unlocked" after an unlocked install).
  local stamp="$VENV/.rnnreg_installed" lock="$ROOT/requirements-lock.txt" mode=locked
  [[ "${RNNREG_UNLOCKED:-0}" == 1 ]] && mode=unlocked
  local last=locked
  [[ -f "$stamp" && "$(<"$stamp")" == unlocked ]] && last=unlocked
  if [[ ! -f "$stamp" || "$ROOT/pyproject.toml" -nt "$stamp" || "$lock" -nt "$stamp"
        || "$mode" != "$last" ]]; then
    if [[ "$mode" == locked ]]; then
      [[ -f "$lock" ]] || die "$lock is missing; run scripts/lock.sh, or set RNNREG_UNLOCKED=1."
      echo "launch.sh: installing requirements-lock.txt and rnnreg_jax into $VENV" >&2
      # --require-hashes: every file must match the sha256 the lock recorded.
      "$VENV/bin/pip" install --quiet --require-hashes -r "$lock" \
        || die "installing requirements-lock.txt failed (it pins CPython 3.11 wheels for x86-64 Linux); RNNREG_UNLOCKED=1 installs from pyproject.toml's ranges instead."
      "$VENV/bin/pip" install --quiet --no-deps -e "$ROOT"
    else
      echo "launch.sh: installing rnnreg_jax[test,plot,examples] (unlocked) into $VENV" >&2
      "$VENV/bin/pip" install --quiet -e "${ROOT}[test,plot,examples]"
    fi
    echo "$mode" > "$stamp"
  fi
}

# shellcheck source=scripts/launch_common.sh
source "$ROOT/scripts/launch_common.sh"

check_experiment() {
  is_experiment "$ROOT" "$1" || die "unknown experiment '$1'; choose one of: $(experiment_names "$ROOT")."
}

# A free TCP port (the kernel's pick), for the jax.distributed coordinator. Probed on every
# address, not 127.0.0.1 alone: the coordinator listens on all of them (gRPC binds [::]:PORT).
free_port() {
  "$1" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

# Whether process 0's stderr, file $1, says that its coordinator could not bind port $2.
# gRPC logs "Failed to add port to server: ... '[::]:PORT'"; then jax.distributed.initialize
# raises JaxRuntimeError "UNKNOWN: Failed to start RPC server" (experiments/main.py ends
# with it in one line, exit status 2) or, as often (jax 0.10), the process dies of SIGSEGV
# (139). Either way it has not yet read data nor touched the workdir (experiments/main.py
# starts jax.distributed first): starting over is safe.
bind_failed() {
  grep -qE "Failed to add port to server.*:$2([^0-9]|\$)|Failed to start RPC server" "$1"
}

# Wait (5 s at most) for tee, pid $1, to copy the last of process 0's stderr: it ends when
# that closes, unless a child of process 0 still holds it. Always succeeds.
tee_done() {
  local i=0
  while ((i++ < 50)) && kill -0 "$1" 2>/dev/null; do sleep 0.1; done
}

# ./launch.sh multihost N <experiment> [flags]: N local processes through jax.distributed.
multihost() {
  local dry="${DRY_RUN:-0}"
  if [[ "${1:-}" == --dry-run ]]; then dry=1; shift; fi
  [[ $# -ge 2 ]] || die "multihost needs a process count and an experiment name, e.g. ./launch.sh multihost 2 ptb --config=tiny."
  local n="$1" exp="$2"; shift 2
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "multihost: the process count must be a positive integer, not '$n'."
  check_experiment "$exp"
  local per="${DEVICES_PER_PROCESS:-2}"
  [[ "$per" =~ ^[1-9][0-9]*$ ]] || die "DEVICES_PER_PROCESS must be a positive integer, not '$per'."
  local flags=("$@") arg
  for arg in ${flags[@]+"${flags[@]}"}; do
    case "$arg" in
      # after N it reached the experiment as a flag, and the processes started
      --dry-run) die "multihost: --dry-run goes first, before N: ./launch.sh multihost --dry-run $n $exp ..." ;;
      # launch.sh passes its own after the user's; absl kept the last, silently
      --coordinator_address*|--num_processes*|--process_id*)
        die "multihost sets --coordinator_address, --num_processes and --process_id itself; leave out '$arg'." ;;
      --workdir=) die "multihost: --workdir is empty; pass a folder, or leave the flag out for the default runs/${exp}_PRESET." ;;
    esac
  done
  local preset workdir
  preset="$(preset_name "$(flag_value --config ${flags[@]+"${flags[@]}"})")"
  workdir="$(flag_value --workdir ${flags[@]+"${flags[@]}"})"
  if [[ -z "$workdir" ]]; then
    # The experiment's own default (experiments/main.py), made explicit: every process
    # must see the same workdir, and the logs of processes 1.. go there.
    [[ -n "$preset" ]] || die "multihost needs --config=PRESET (or --workdir=DIR), e.g. ./launch.sh multihost $n $exp --config=tiny."
    workdir="runs/${exp}_${preset}"
    flags+=("--workdir=$workdir")
  fi
  local python="$VENV/bin/python"
  if [[ "$dry" != 1 ]]; then
    setup
  fi
  cd "$ROOT"
  local port="${MULTIHOST_PORT:-}"
  if [[ -z "$port" ]]; then
    if [[ "$dry" == 1 ]]; then port=PORT; else port="$(free_port "$python")"; fi
  fi
  local xla="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$per"
  local platforms="${JAX_PLATFORMS:-cpu}"
  local i line word argv log pids=()
  if [[ "$dry" == 1 ]]; then
    for ((i = 0; i < n; i++)); do
      argv=(env "XLA_FLAGS=$xla" "JAX_PLATFORMS=$platforms" "$python" -m "experiments.$exp"
            ${flags[@]+"${flags[@]}"} "--coordinator_address=127.0.0.1:$port"
            "--num_processes=$n" "--process_id=$i")
      line=""
      for word in "${argv[@]}"; do line+="${line:+ }$(quote "$word")"; done
      ((i == 0)) || line+=" > $(quote "$workdir/process_$i.log") 2>&1"
      echo "$line"
    done
    return 0
  fi
  mkdir -p "$workdir"
  echo "launch.sh: $n processes x $per devices, coordinator 127.0.0.1:$port, workdir $workdir" >&2
  # The probe lets go of the port before process 0's coordinator binds it, so another
  # program can take it in between: then all start again on a new port. A port the user
  # chose is theirs to fix.
  local tries=3
  [[ -z "${MULTIHOST_PORT:-}" ]] || tries=1
  # Process 0's stderr reaches this terminal through tee, which keeps a copy here: the
  # only place a failed bind shows. Global: the EXIT trap runs after this function returns.
  _mh_tmp="$(mktemp -d "${TMPDIR:-/tmp}/rnnreg_multihost.XXXXXX")"
  trap 'rm -rf "$_mh_tmp"' EXIT
  # Stop every process that is still running (on a failure, Ctrl-C or kill).
  stop_all() {
    local pid
    for pid in ${pids[@]+"${pids[@]}"}; do
      [[ -z "$pid" ]] || kill "$pid" 2>/dev/null || true
    done
  }
  trap 'stop_all; exit 130' INT
  trap 'stop_all; exit 143' TERM
  local attempt status rc left retry fifo err tee_pid old
  for ((attempt = 1; ; attempt++)); do
    fifo="$_mh_tmp/stderr_0.$attempt" err="$_mh_tmp/process_0.$attempt.log"
    mkfifo "$fifo"
    # -i: Ctrl-C must not end tee before process 0 has logged how it stopped.
    tee -i "$err" < "$fifo" >&2 &
    tee_pid=$!
    pids=()
    for ((i = 0; i < n; i++)); do
      argv=("$python" -m "experiments.$exp" ${flags[@]+"${flags[@]}"}
            "--coordinator_address=127.0.0.1:$port" "--num_processes=$n" "--process_id=$i")
      if ((i == 0)); then
        XLA_FLAGS="$xla" JAX_PLATFORMS="$platforms" "${argv[@]}" 2> "$fifo" &
      else
        log="$workdir/process_$i.log"
        ((attempt > 1)) || echo "launch.sh: process $i logs to $log" >&2
        XLA_FLAGS="$xla" JAX_PLATFORMS="$platforms" "${argv[@]}" > "$log" 2>&1 &
      fi
      pids+=("$!")
    done
    # Wait for all; the first failure stops the others (they would wait for it forever).
    # Polling, not `wait -n -p` (bash 5.1): bash reaps each child when it exits and keeps
    # its status for `wait PID`.
    status=0 retry=0 left="$n"
    while ((left > 0)); do
      for i in "${!pids[@]}"; do
        if [[ -z "${pids[$i]}" ]] || kill -0 "${pids[$i]}" 2>/dev/null; then
          continue  # reaped already, or still running
        fi
        rc=0
        wait "${pids[$i]}" || rc=$?
        pids[i]=""
        left=$((left - 1))
        if ((rc != 0 && status == 0)); then
          status=$rc
          if ((i == 0)) && tee_done "$tee_pid" && bind_failed "$err" "$port"; then
            if ((attempt < tries)); then
              retry=1
            elif [[ -n "${MULTIHOST_PORT:-}" ]]; then
              echo "launch.sh: the coordinator could not bind MULTIHOST_PORT=$port (another program is likely using it); stopping the others." >&2
            else
              echo "launch.sh: the coordinator could not bind any of the $tries ports tried (the last $port); stopping the others." >&2
            fi
          else
            echo "launch.sh: process $i exited with status $rc; stopping the others." >&2
          fi
          stop_all
        fi
      done
      ((left == 0)) || sleep 0.5
    done
    tee_done "$tee_pid"
    ((retry)) || break
    old="$port"
    port="$(free_port "$python")"
    echo "launch.sh: port $old was taken before the coordinator could bind it; starting all $n processes again on port $port (try $((attempt + 1)) of $tries)." >&2
  done
  trap - INT TERM
  return "$status"
}

usage() {
  # The comment block at the top of this file, without the shebang and the '# '.
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

cmd="${1:-}"
[[ -n "$cmd" ]] || die "a command is needed: setup, test, run, multihost, tpu or help (./launch.sh help)."
shift
case "$cmd" in
  setup)
    [[ $# -eq 0 ]] || die "setup takes no argument, got '$1'."
    setup
    ;;
  test)
    setup
    cd "$ROOT"
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  run)
    [[ $# -ge 1 ]] || die "run needs an experiment name, e.g. ./launch.sh run ptb --config=tiny."
    exp="$1"; shift
    check_experiment "$exp"
    setup
    cd "$ROOT"
    exec "$VENV/bin/python" -m "experiments.$exp" "$@"
    ;;
  multihost) multihost "$@" ;;
  tpu)
    # Its own script: it never touches the local venv (gcloud is all it needs).
    exec "$BASH" "$ROOT/scripts/tpu.sh" "$@"
    ;;
  -h|--help|help)
    [[ $# -eq 0 ]] || die "help takes no argument, got '$1' (./launch.sh tpu help for the TPU commands)."
    usage
    ;;
  *) die "unknown command '$cmd'; use setup, test, run, multihost, tpu or help." ;;
esac
