#!/usr/bin/env bash
# Cloud TPU VMs for rnnreg_jax, around `gcloud compute tpus tpu-vm` (called by ./launch.sh tpu).
#
#   ./launch.sh tpu create                      create the TPU VM (--spot: a Spot VM)
#   ./launch.sh tpu setup                       copy the package to every worker and pip install it
#   ./launch.sh tpu run <experiment> [flags]    start python -m experiments.<experiment> on all workers
#   ./launch.sh tpu logs                        follow worker 0's log (--worker=N for another)
#   ./launch.sh tpu ssh                         open a shell on worker 0 (--worker=N for another)
#   ./launch.sh tpu delete                      delete the TPU VM
#
# Options (anywhere after `tpu`; `--` ends them) and the environment variables they override:
#   --name=NAME              TPU_NAME      TPU VM name (default rnnreg)
#   --zone=ZONE              TPU_ZONE      zone (default us-central2-b)
#   --accelerator-type=TYPE  TPU_TYPE      accelerator type (default v4-8)
#   --version=VERSION        TPU_VERSION   runtime version (default tpu-ubuntu2204-base)
#   --project=PROJECT        TPU_PROJECT, then CLOUDSDK_CORE_PROJECT: GCP project (required)
#   --bucket=BUCKET          TPU_BUCKET    GCS bucket: workdirs in gs://BUCKET/NAME/<experiment>-<preset>,
#                                          data synced from gs://BUCKET/data, TFDS from gs://BUCKET/tfds
#   --spot                   create: a Spot (preemptible) VM
#   --worker=N               logs, ssh: the worker (default 0)
#   --worktree               setup: ship the working tree instead of `git archive HEAD`
#   --dry-run                DRY_RUN=1     print the commands, one per line, and run nothing
#
# `run` passes --config.train.distributed=true (jax.distributed on every host) and
# --workdir (unless given); rerunning it resumes from the workdir's last checkpoint.
# Exit status 2 with one sentence on stderr for a usage error.
set -euo pipefail

# No external commands before the settings are checked: the error messages must work with
# any PATH (the tests run it with gcloud and everything else missing).
_here="${BASH_SOURCE[0]}"
[[ "$_here" == */* ]] || _here="./$_here"
ROOT="$(cd "${_here%/*}/.." && pwd)"

# Fixed paths on the workers: the checkout, the uploaded tarball and the log. The tildes
# are for the worker's shell to expand, inside --command strings.
# shellcheck disable=SC2088
REMOTE_DIR='~/rnnreg_jax'
REMOTE_TARBALL='rnnreg_jax.tar.gz' # scp destinations are relative to the remote home
# shellcheck disable=SC2088
REMOTE_LOG='~/rnnreg_run.log'

die() { echo "launch.sh tpu: $*" >&2; exit 2; }

usage() {
  # The comment block at the top of this file, without the shebang and the '# '.
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

# shellcheck source=scripts/quote.sh
source "$ROOT/scripts/quote.sh"

# One command: printed shell-quoted (pasteable) in a dry run, else echoed to stderr and run.
run_cmd() {
  local line="" word
  for word in "$@"; do
    line+="${line:+ }$(quote "$word")"
  done
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "$line"
  else
    echo "+ $line" >&2
    "$@"
  fi
}

# `gcloud compute tpus tpu-vm <verb> <args...>` with zone and project always explicit, so the
# user's gcloud defaults never send a command to another project than the one printed.
tpu_vm() {
  local verb="$1"; shift
  run_cmd gcloud compute tpus tpu-vm "$verb" "$@" --zone="$ZONE" --project="$PROJECT"
}

# `--opt=value` or `--opt value`: sets OPTVAL and SHIFTS (how many words the option used).
take_value() {
  local opt="$1" word="$2" next="${3-}" has_next="$4"
  if [[ "$word" == "$opt="* ]]; then
    OPTVAL="${word#"$opt"=}"; SHIFTS=1
  elif [[ "$has_next" == 1 ]]; then
    OPTVAL="$next"; SHIFTS=2
  else
    die "$opt needs a value."
  fi
}

parse_args() {
  SUBCMD=""
  ARGS=()     # positional words and (for run) the experiment's flags, in order
  WORKER=0
  SPOT=0
  WORKTREE=0
  case "${DRY_RUN:-0}" in 1|true|yes) DRY_RUN=1 ;; *) DRY_RUN=0 ;; esac
  NAME="${TPU_NAME:-rnnreg}"
  ZONE="${TPU_ZONE:-us-central2-b}"
  TYPE="${TPU_TYPE:-v4-8}"
  VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
  PROJECT="${TPU_PROJECT:-${CLOUDSDK_CORE_PROJECT:-}}"
  BUCKET="${TPU_BUCKET:-}"

  local passthrough=0
  while [[ $# -gt 0 ]]; do
    local word="$1" has_next=0
    [[ $# -ge 2 ]] && has_next=1
    if [[ "$passthrough" == 1 ]]; then
      ARGS+=("$word"); shift; continue
    fi
    SHIFTS=1
    case "$word" in
      --) passthrough=1 ;;
      --dry-run) DRY_RUN=1 ;;
      --spot) SPOT=1 ;;
      --worktree) WORKTREE=1 ;;
      --name|--name=*) take_value --name "$word" "${2-}" "$has_next"; NAME="$OPTVAL" ;;
      --zone|--zone=*) take_value --zone "$word" "${2-}" "$has_next"; ZONE="$OPTVAL" ;;
      --accelerator-type|--accelerator-type=*)
        take_value --accelerator-type "$word" "${2-}" "$has_next"; TYPE="$OPTVAL" ;;
      --version|--version=*) take_value --version "$word" "${2-}" "$has_next"; VERSION="$OPTVAL" ;;
      --project|--project=*) take_value --project "$word" "${2-}" "$has_next"; PROJECT="$OPTVAL" ;;
      --bucket|--bucket=*) take_value --bucket "$word" "${2-}" "$has_next"; BUCKET="$OPTVAL" ;;
      --worker|--worker=*) take_value --worker "$word" "${2-}" "$has_next"; WORKER="$OPTVAL" ;;
      *)
        if [[ -z "$SUBCMD" && "$word" != -* ]]; then SUBCMD="$word"; else ARGS+=("$word"); fi
        ;;
    esac
    shift "$SHIFTS"
  done
}

# Settings every subcommand needs, checked before anything runs.
check_settings() {
  [[ -n "$PROJECT" ]] || die "no GCP project: pass --project=PROJECT or set TPU_PROJECT (or CLOUDSDK_CORE_PROJECT)."
  # The name and bucket end up inside remote shell commands and GCS paths: allow only GCP's
  # own spellings, so nothing needs quoting there.
  [[ "$NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
    || die "bad TPU name '$NAME': use lowercase letters, digits and hyphens, starting with a letter."
  BUCKET="${BUCKET#gs://}"
  BUCKET="${BUCKET%/}"
  [[ -z "$BUCKET" || "$BUCKET" =~ ^[a-z0-9][-a-z0-9_.]*[a-z0-9]$ ]] \
    || die "bad bucket name '$BUCKET': give the bare name, e.g. --bucket=my-bucket."
  [[ "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be a worker number (0, 1, ...), got '$WORKER'."
  if [[ "$DRY_RUN" != 1 ]] && ! command -v gcloud >/dev/null 2>&1; then
    die "gcloud is not on PATH; install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) or pass --dry-run."
  fi
}

no_extra_args() {
  [[ ${#ARGS[@]} -eq 0 ]] || die "tpu $SUBCMD takes no argument '${ARGS[0]}'; see ./launch.sh help."
}

cmd_create() {
  no_extra_args
  local extra=()
  # Spot VMs cost less and can be preempted at any time: resume with `run` on a new VM.
  [[ "$SPOT" == 1 ]] && extra+=(--spot)
  tpu_vm create "$NAME" --accelerator-type="$TYPE" --version="$VERSION" ${extra[@]+"${extra[@]}"}
}

cmd_setup() {
  no_extra_args
  local tarball="${TMPDIR:-/tmp}/rnnreg_jax-$NAME.tar.gz"
  if [[ "$WORKTREE" == 1 ]]; then
    # Uncommitted edits included; local venvs, runs and caches left behind.
    run_cmd tar -czf "$tarball" --exclude-vcs --exclude=./.venv --exclude=./runs \
      --exclude=__pycache__ --exclude='*.egg-info' -C "$ROOT" .
  else
    # Exactly the committed tree: what gets shipped is what `git log` says.
    run_cmd git -C "$ROOT" archive --format=tar.gz --output="$tarball" HEAD
  fi
  # One copy per worker: every host of a pod slice runs the same code.
  tpu_vm scp "$tarball" "$NAME:$REMOTE_TARBALL" --worker=all --recurse
  # A clean checkout each time (no files left over from an older version), installed
  # editable with the TFDS extra and the TPU build of jax (libtpu).
  tpu_vm ssh "$NAME" --worker=all --command="rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf ~/$REMOTE_TARBALL -C $REMOTE_DIR && cd $REMOTE_DIR && python3 -m pip install -e \".[tfds]\" \"jax[tpu]\""
  if [[ -n "$BUCKET" ]]; then
    # Our loaders read local files, not gs:// paths: copy the data folder to every worker.
    tpu_vm ssh "$NAME" --worker=all --command="mkdir -p ~/data && gsutil -m rsync -r gs://$BUCKET/data ~/data"
  fi
}

# The experiment binaries: experiments/<name>.py, without the shared cli.py.
experiment_names() {
  local f names=()
  for f in "$ROOT"/experiments/[a-z]*.py; do
    [[ -f "$f" && "$f" != */cli.py ]] && f="${f##*/}"; names+=("${f%.py}")
  done
  echo "${names[*]-}"
}

# The value of --config (the preset name) among the experiment's flags, or "".
preset_of() {
  local prev=""
  for arg in "$@"; do
    [[ "$prev" == --config ]] && { echo "$arg"; return; }
    [[ "$arg" == --config=* ]] && { echo "${arg#--config=}"; return; }
    prev="$arg"
  done
}

has_flag() {
  local flag="$1"; shift
  local arg
  for arg in "$@"; do
    [[ "$arg" == "$flag" || "$arg" == "$flag="* ]] && return 0
  done
  return 1
}

cmd_run() {
  [[ ${#ARGS[@]} -ge 1 ]] || die "tpu run needs an experiment name, e.g. ./launch.sh tpu run ptb --config=zaremba_small."
  local exp="${ARGS[0]}"
  local flags=("${ARGS[@]:1}")
  [[ "$exp" =~ ^[a-z_][a-z0-9_]*$ && -f "$ROOT/experiments/$exp.py" ]] \
    || die "unknown experiment '$exp'; choose one of: $(experiment_names)."
  local preset
  preset="$(preset_of ${flags[@]+"${flags[@]}"})"
  [[ -n "$preset" ]] || die "tpu run needs --config=PRESET (it names the workdir), e.g. ./launch.sh tpu run $exp --config=NAME."

  # Every host joins one jax.distributed job; the mesh then spans all chips of the slice.
  has_flag --config.train.distributed ${flags[@]+"${flags[@]}"} \
    || flags+=(--config.train.distributed=true)
  local remote_args=() arg
  for arg in ${flags[@]+"${flags[@]}"}; do
    remote_args+=("$(quote "$arg")")
  done
  # The same workdir on every run of this experiment and preset: a rerun (after a
  # preemption, or to train longer) resumes from its latest checkpoint. Multi-host
  # checkpoints need storage all workers share, hence the bucket.
  if ! has_flag --workdir ${flags[@]+"${flags[@]}"}; then
    if [[ -n "$BUCKET" ]]; then
      remote_args+=("$(quote "--workdir=gs://$BUCKET/$NAME/$exp-$preset")")
    else
      remote_args+=("--workdir=\$HOME/runs/$(quote "$exp-$preset")")
    fi
  fi
  # Raw data files come from ~/data on each worker when it exists (the copy `setup` makes
  # from the bucket, or one you scp'd there), else from the download cache; TFDS (MNIST,
  # IMDB with --config.data.source=tfds) reads its prepared dir on GCS.
  local env="if [ -d ~/data ]; then export RNNREG_DATA_DIR=\$HOME/data; fi; "
  [[ -z "$BUCKET" ]] || env+="export TFDS_DATA_DIR=gs://$BUCKET/tfds; "
  # nohup + redirects + & so the ssh returns at once and training survives the disconnect.
  local command="cd $REMOTE_DIR || exit 1; ${env}nohup python3 -m experiments.$exp ${remote_args[*]} > $REMOTE_LOG 2>&1 < /dev/null &"
  tpu_vm ssh "$NAME" --worker=all --command="$command"
}

cmd_logs() {
  no_extra_args
  tpu_vm ssh "$NAME" --worker="$WORKER" --command="tail -f $REMOTE_LOG"
}

cmd_ssh() {
  no_extra_args
  tpu_vm ssh "$NAME" --worker="$WORKER"
}

cmd_delete() {
  no_extra_args
  tpu_vm delete "$NAME" --quiet
}

main() {
  parse_args "$@"
  case "$SUBCMD" in
    create|setup|run|logs|ssh|delete) ;;
    help) usage; exit 0 ;;
    "") usage >&2; exit 2 ;;
    *) die "unknown tpu command '$SUBCMD'; use create, setup, run, logs, ssh or delete." ;;
  esac
  check_settings
  "cmd_$SUBCMD"
}

main "$@"
