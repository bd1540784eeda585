#!/usr/bin/env bash
# rnnreg_jax launcher: local venv runs, the test suite, and (see `tpu`) Cloud TPU VMs.
#
#   ./launch.sh setup                      create or reuse .venv and install the package
#   ./launch.sh test [pytest args]         setup, then run the test suite
#   ./launch.sh run <experiment> [flags]   setup, then python -m experiments.<experiment>
#
# Environment: VENV (default .venv), PYTHON (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

die() { echo "launch.sh: $*" >&2; exit 2; }

setup() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "launch.sh: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
  fi
  # Reinstall only when pyproject.toml changed since the last install.
  local stamp="$VENV/.rnnreg_installed"
  if [[ ! -f "$stamp" || "$ROOT/pyproject.toml" -nt "$stamp" ]]; then
    echo "launch.sh: installing rnnreg_jax[test,plot] into $VENV" >&2
    "$VENV/bin/pip" install --quiet -e "$ROOT[test,plot]"
    touch "$stamp"
  fi
}

usage() {
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

cmd="${1:-}"
[[ -n "$cmd" ]] || { usage; exit 2; }
shift
case "$cmd" in
  setup) setup ;;
  test)
    setup
    cd "$ROOT"
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  run)
    [[ $# -ge 1 ]] || die "run needs an experiment name, e.g. ./launch.sh run ptb --config=tiny."
    exp="$1"; shift
    [[ -f "$ROOT/experiments/$exp.py" ]] || die "unknown experiment '$exp'; choose one of: $(cd "$ROOT/experiments" && ls -1 [a-z]*.py | sed 's/\.py$//' | tr '\n' ' ')"
    setup
    cd "$ROOT"
    exec "$VENV/bin/python" -m "experiments.$exp" "$@"
    ;;
  -h|--help|help) usage ;;
  *) die "unknown command '$cmd'; use setup, test or run." ;;
esac
