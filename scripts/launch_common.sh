# shellcheck shell=bash
# Sourced by launch.sh and scripts/tpu.sh, what both read of a command line: shell-quoting
# for printed commands, a flag's value, the run name of a --config value, and the names of
# the experiment binaries.

# One word for a POSIX shell: bare when safe, else in single quotes (like Python's shlex.quote).
quote() {
  local squote="'" escaped="'\\''"
  if [[ "$1" =~ ^[-A-Za-z0-9_./=:@,+%]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//$squote/$escaped}"
  fi
}

# The value of flag $1 (--flag=V or --flag V) among the rest of the arguments, or "".
flag_value() {
  local flag="$1" prev="" arg; shift
  for arg in "$@"; do
    [[ "$prev" == "$flag" ]] && { echo "$arg"; return; }
    [[ "$arg" == "$flag="* ]] && { echo "${arg#"$flag"=}"; return; }
    prev="$arg"
  done
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

# Whether experiments/$2.py under root $1 is a binary: a module with a __main__ block (the
# others, cli.py, main.py, report_notes.py, ..., are its parts and run nothing). Bash only:
# `tpu` errors must come out on any PATH.
is_experiment() {
  local file="$1/experiments/$2.py" line main="^if __name__ == [\"']__main__[\"']:"
  [[ "$2" =~ ^[a-z_][a-z0-9_]*$ && -f "$file" ]] || return 1
  while IFS= read -r line || [[ -n "$line" ]]; do
    [[ "$line" =~ $main ]] && return 0
  done < "$file"
  return 1
}

# The experiment binaries under root $1, space-separated.
experiment_names() {
  local f name names=()
  for f in "$1"/experiments/[a-z]*.py; do
    name="${f##*/}"
    name="${name%.py}"
    if is_experiment "$1" "$name"; then names+=("$name"); fi
  done
  echo "${names[*]-}"
}
