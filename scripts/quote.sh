# shellcheck shell=bash
# Sourced by launch.sh and scripts/tpu.sh: shell-quoting for printed commands.

# One word for a POSIX shell: bare when safe, else in single quotes (like Python's shlex.quote).
quote() {
  local squote="'" escaped="'\\''"
  if [[ "$1" =~ ^[-A-Za-z0-9_./=:@,+%]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//$squote/$escaped}"
  fi
}
