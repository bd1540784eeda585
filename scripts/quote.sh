# shellcheck shell=bash
# Sourced by launch.sh and scripts/tpu.sh: shell-quoting for printed commands, and the
# run name of a --config value.

# One word for a POSIX shell: bare when safe, else in single quotes (like Python's shlex.quote).
quote() {
  local squote="'" escaped="'\\''"
  if [[ "$1" =~ ^[-A-Za-z0-9_./=:@,+%]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//$squote/$escaped}"
  fi
}

# The preset a --config value names, as experiments/cli.py records it: NAME, or
# FILE.py:ARG -> ARG, or FILE.py -> the file's stem. It names default workdirs.
preset_name() {
  local spec="$1"
  if [[ "$spec" == *.py:* ]]; then
    printf '%s' "${spec#*.py:}"
  elif [[ "$spec" == *.py ]]; then
    spec="${spec##*/}"
    printf '%s' "${spec%.py}"
  else
    printf '%s' "$spec"
  fi
}
