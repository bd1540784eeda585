#!/usr/bin/env bash
# Regenerate requirements-lock.txt: every package that `pip install -e '.[test,plot,examples]'`
# installs, pinned with the sha256 of each of its files, for CPython 3.11 on x86-64 Linux
# (manylinux 2.28, the reference machine). `./launch.sh setup` installs from it.
#
#   scripts/lock.sh            re-resolve from pyproject.toml's ranges (newest releases)
#   scripts/lock.sh --upgrade-package jax
#                              extra arguments go to `uv pip compile`
#
# Needs uv on PATH (`pip install uv`). Run the test suite on the new lock before committing it.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null || { echo "lock.sh: uv is not on PATH; pip install uv" >&2; exit 2; }
# Without --upgrade, uv keeps the versions already in the output file where the ranges allow.
exec uv pip compile pyproject.toml --extra test --extra plot --extra examples --generate-hashes \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --custom-compile-command scripts/lock.sh --output-file requirements-lock.txt "$@"
