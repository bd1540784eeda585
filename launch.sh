#!/usr/bin/env bash
# rnnreg_jax launcher: local venv runs, the test suite, and Cloud TPU VMs.
#
#   ./launch.sh setup                      create or reuse .venv and install the package
#   ./launch.sh test [pytest args]         setup, then run the test suite
#   ./launch.sh run <experiment> [flags]   setup, then python -m experiments.<experiment>
#   ./launch.sh tpu <command> [options]    Cloud TPU VMs: create, setup, run, logs, ssh, delete
#                                          (./launch.sh tpu help; docs/TPU.md)
#   ./launch.sh help                       this text
#
# Environment: VENV (default .venv), PYTHON (default python3).
set -euo pipefail

# Bash only up to the dispatch (no dirname): `tpu` must give its own errors on any PATH.
_here="${BASH_SOURCE[0]}"
[[ "$_here" == */* ]] || _here="./$_here"
ROOT="$(cd "${_here%/*}" && pwd)"
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
    "$VENV/bin/pip" install --quiet -e "${ROOT}[test,plot]"
    touch "$stamp"
  fi
}

usage() {
  # The comment block at the top of this file, without the shebang and the '# '.
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
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
    [[ -f "$ROOT/experiments/$exp.py" ]] || die "unknown experiment '$exp'; choose one of: $(cd "$ROOT/experiments" && printf '%s ' [a-z]*.py | sed 's/\.py//g')"
    setup
    cd "$ROOT"
    exec "$VENV/bin/python" -m "experiments.$exp" "$@"
    ;;
  tpu)
    # Its own script: it never touches the local venv (gcloud is all it needs).
    exec "$BASH" "$ROOT/scripts/tpu.sh" "$@"
    ;;
  -h|--help|help) usage ;;
  *) die "unknown command '$cmd'; use setup, test, run, tpu or help." ;;
esac
