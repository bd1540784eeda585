#!/usr/bin/env bash
# The lower bounds of pyproject.toml's ranges, tested: every direct dependency (and the test
# extra's) resolved at the lowest version its range allows, installed into a throwaway venv,
# then the test files that exercise each of them, run from the checkout.
#
#   scripts/check_lower_bounds.sh                 the default files below
#   scripts/check_lower_bounds.sh [pytest args]   other tests under the same venv
#
# Needs uv: from PATH, else pip-installed into the throwaway directory. PYTHON (default
# python3) must be the oldest Python requires-python accepts.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
PYTHON="${PYTHON:-python3}"
uv="$(command -v uv || true)"
if [[ -z "$uv" ]]; then
  "$PYTHON" -m venv "$work/tools"
  "$work/tools/bin/pip" install --quiet uv
  uv="$work/tools/bin/uv"
fi
python_version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
# lowest-direct: the declared packages at their floors, what they pull in at its newest.
# The examples extra (equinox, keras) stays out: its floors are the locked releases, which
# `./launch.sh test` runs tests/test_examples.py on (it skips where they are absent, here).
"$uv" pip compile --quiet pyproject.toml --extra test --resolution lowest-direct \
  --python-version "$python_version" --output-file "$work/lower.txt"
echo "check_lower_bounds.sh: $(grep -cE '^[a-z]' "$work/lower.txt") packages, direct ones at:" >&2
grep -E '^(jax|flax|optax|orbax-checkpoint|ml-collections|numpy|absl-py|etils|tensorboardx)==' \
  "$work/lower.txt" | tr '\n' ' ' >&2
echo >&2
"$uv" venv --quiet --python "$PYTHON" "$work/venv"
VIRTUAL_ENV="$work/venv" "$uv" pip install --quiet -r "$work/lower.txt"
# The checkout itself is on sys.path (python -m pytest from the root): nothing to install.
if [[ $# -eq 0 ]]; then
  # flax (nn, models), optax and orbax (training, checkpoints, resume; the learning rate
  # a step hands optax's inject_hyperparams through its state: variable windows),
  # tensorboardX and etils (logs, workdirs), absl and ml_collections (the binaries' flags
  # and configs); the checkpoint errors, which read orbax's own words for a mismatch.
  set -- -q tests/test_nn.py tests/test_models.py tests/test_train_units.py \
    tests/test_train_logging.py tests/test_train_resume.py tests/test_experiments_cli.py \
    tests/test_variable_windows.py tests/test_cli_input_checks.py
fi
"$work/venv/bin/python" -m pytest -p no:cacheprovider "$@"  # not exec: the trap cleans up
