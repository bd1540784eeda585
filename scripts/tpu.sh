#!/usr/bin/env bash
# Cloud TPU VMs for rnnreg_jax, around `gcloud compute tpus tpu-vm` (called by ./launch.sh tpu).
#
#   ./launch.sh tpu create                      create the TPU VM (--spot: a Spot VM; --queued:
#                                               through a queued resource)
#   ./launch.sh tpu setup                       copy the package to every worker; a Python 3.11
#                                               venv there from requirements-lock.txt + the tpu extra
#   ./launch.sh tpu run <experiment> [flags]    check a gs:// workdir is writable, then start
#                                               python -m experiments.<experiment> on all workers
#                                               (--until-done: recreate, set up and resume after
#                                               each preemption until the run ends)
#   ./launch.sh tpu status                      on every worker: running or not, last step, metrics
#   ./launch.sh tpu stop                        SIGTERM the run on every worker (it checkpoints)
#   ./launch.sh tpu logs                        follow worker 0's log (--worker=N for another)
#   ./launch.sh tpu ssh                         open a shell on worker 0 (--worker=N for another)
#   ./launch.sh tpu delete                      delete the TPU VM (or its queued resource)
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
#   --queued                 create, delete: through a queued resource named NAME (waits for
#                                          capacity instead of failing when there is none)
#   --until-done             run: poll every TPU_POLL seconds (default 300); recreate the VM
#                                          when preempted, set it up and rerun (resuming)
#   --worker=N               logs, ssh: the worker (default 0)
#   --worktree               setup: ship the working tree instead of `git archive HEAD`
#   --dry-run                DRY_RUN=1     print the commands, one per line, and run nothing
#
# `run` passes --config.train.distributed=true (jax.distributed on every host) and
# --workdir (unless given); rerunning it resumes from the workdir's last checkpoint. With a
# gs:// workdir each worker's console log is copied to <workdir>/console-<host>.log every
# minute and at the end (scripts/tpu_worker.sh runs the worker side).
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
# The workers' venv (Python 3.11 from uv, as pyproject.toml's requires-python; TPU VM
# images ship 3.10) and uv itself, from `pip install --user`.
# shellcheck disable=SC2088
REMOTE_VENV='~/rnnreg_venv'
# shellcheck disable=SC2088
REMOTE_UV='~/.local/bin/uv'
WORKER_SCRIPT='scripts/tpu_worker.sh'

die() { echo "launch.sh tpu: $*" >&2; exit 2; }

usage() {
  # The comment block at the top of this file, without the shebang and the '# '.
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

# shellcheck source=scripts/launch_common.sh
source "$ROOT/scripts/launch_common.sh"

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
# An empty value is refused: gcloud would get `--zone=` and the like (or the default
# chosen silently), never what was meant.
take_value() {
  local opt="$1" word="$2" next="${3-}" has_next="$4"
  if [[ "$word" == "$opt="* ]]; then
    OPTVAL="${word#"$opt"=}"; SHIFTS=1
  elif [[ "$has_next" == 1 ]]; then
    OPTVAL="$next"; SHIFTS=2
  else
    die "$opt needs a value."
  fi
  [[ -n "$OPTVAL" ]] || die "$opt needs a value, got an empty one."
}

parse_args() {
  SUBCMD=""
  ARGS=()     # positional words and (for run) the experiment's flags, in order
  WORKER=0
  SPOT=0
  WORKTREE=0
  QUEUED=0
  UNTIL_DONE=0
  POLL="${TPU_POLL:-300}"
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
      --queued) QUEUED=1 ;;
      --until-done) UNTIL_DONE=1 ;;
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
  [[ "$POLL" =~ ^[0-9]+$ ]] || die "TPU_POLL must be a number of seconds, got '$POLL'."
  [[ "$UNTIL_DONE" == 0 || "$SUBCMD" == run ]] || die "--until-done goes with run only."
  if [[ "$DRY_RUN" != 1 ]] && ! command -v gcloud >/dev/null 2>&1; then
    die "gcloud is not on PATH; install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) or pass --dry-run."
  fi
}

no_extra_args() {
  [[ ${#ARGS[@]} -eq 0 ]] || die "tpu $SUBCMD takes no argument '${ARGS[0]}'; see ./launch.sh help."
}

# `gcloud compute tpus queued-resources <verb> <args...>`, zone and project explicit.
queued() {
  local verb="$1"; shift
  run_cmd gcloud compute tpus queued-resources "$verb" "$@" --zone="$ZONE" --project="$PROJECT"
}

cmd_create() {
  local extra=()
  # Spot VMs cost less and can be preempted at any time: resume with `run` on a new VM.
  [[ "$SPOT" == 1 ]] && extra+=(--spot)
  if [[ "$QUEUED" == 1 ]]; then
    # A queued resource waits for capacity; the VM (node NAME) appears once granted.
    queued create "$NAME" --node-id="$NAME" --accelerator-type="$TYPE" \
      --runtime-version="$VERSION" ${extra[@]+"${extra[@]}"}
  else
    tpu_vm create "$NAME" --accelerator-type="$TYPE" --version="$VERSION" \
      ${extra[@]+"${extra[@]}"}
  fi
}

cmd_setup() {
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
  # A clean checkout and venv each time (nothing left over from an older version). The
  # lock's hash-checked pins first (the CPython 3.11 stack the tests pass on), then the
  # package with the tpu extra (libtpu for that jax, gcsfs and google-cloud-storage for
  # gs:// workdirs and TensorBoard) and tfds; uv keeps the pinned versions installed.
  local py="$REMOTE_VENV/bin/python"
  tpu_vm ssh "$NAME" --worker=all --command="rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf ~/$REMOTE_TARBALL -C $REMOTE_DIR && cd $REMOTE_DIR && python3 -m pip install --user --quiet uv && rm -rf $REMOTE_VENV && $REMOTE_UV venv --quiet --python 3.11 $REMOTE_VENV && $REMOTE_UV pip install --quiet --python $py --require-hashes -r requirements-lock.txt && $REMOTE_UV pip install --quiet --python $py -e \".[tpu,tfds]\""
  if [[ -n "$BUCKET" ]]; then
    # Our loaders read local files, not gs:// paths: copy the data folder to every worker.
    tpu_vm ssh "$NAME" --worker=all --command="mkdir -p ~/data && gsutil -m rsync -r gs://$BUCKET/data ~/data"
  fi
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
  is_experiment "$ROOT" "$exp" \
    || die "unknown experiment '$exp'; choose one of: $(experiment_names "$ROOT")."
  local preset
  preset="$(preset_name "$(flag_value --config ${flags[@]+"${flags[@]}"})")"
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
  local workdir
  workdir="$(flag_value --workdir ${flags[@]+"${flags[@]}"})"
  if ! has_flag --workdir ${flags[@]+"${flags[@]}"}; then
    if [[ -n "$BUCKET" ]]; then
      workdir="gs://$BUCKET/$NAME/$exp-$preset"
      remote_args+=("$(quote "--workdir=$workdir")")
    else
      remote_args+=("--workdir=\$HOME/runs/$(quote "$exp-$preset")")
    fi
  fi
  # A bucket workdir: the console logs go there too, so a preemption loses none of them.
  local log_url=""
  [[ "$workdir" == gs://* ]] && log_url="$workdir"
  # Raw data files come from ~/data on each worker when it exists (the copy `setup` makes
  # from the bucket, or one you scp'd there), else from the download cache; TFDS (MNIST,
  # IMDB with --config.data.source=tfds) reads its prepared dir on GCS.
  local env="if [ -d ~/data ]; then export RNNREG_DATA_DIR=\$HOME/data; fi; "
  [[ -z "$BUCKET" ]] || env+="export TFDS_DATA_DIR=gs://$BUCKET/tfds; "
  RUN_CHECK=()
  if [[ -n "$log_url" ]]; then
    # Through the venv's etils.epath and gcsfs, as the run will write: a wrong bucket, a
    # missing permission or a missing package fails here, before the TPUs start.
    RUN_CHECK=(ssh "$NAME" --worker=0 "--command=cd $REMOTE_DIR && bash $WORKER_SCRIPT check-workdir $(quote "$log_url")")
  fi
  # The worker script starts it detached (the ssh returns at once and training survives
  # the disconnect) and copies the log to the bucket.
  RUN_START=(ssh "$NAME" --worker=all "--command=cd $REMOTE_DIR || exit 1; ${env}bash $WORKER_SCRIPT start $(quote "$log_url") -- $REMOTE_VENV/bin/python -m experiments.$exp ${remote_args[*]}")
  if [[ "$UNTIL_DONE" == 1 ]]; then
    until_done
  else
    start_run
  fi
}

start_run() {
  [[ ${#RUN_CHECK[@]} -eq 0 ]] || tpu_vm "${RUN_CHECK[@]}"
  tpu_vm "${RUN_START[@]}"
}

# The VM's state (READY, PREEMPTED, ...), MISSING when there is none, "" in a dry run.
vm_state() {
  local out
  if out="$(tpu_vm describe "$NAME" --format="value(state)" 2>/dev/null)"; then
    echo "${out:-MISSING}"
  else
    echo MISSING
  fi
}

# The run's state on worker 0 (tpu_worker.sh state), or "unknown" when ssh fails.
run_state() {
  local out
  out="$(tpu_vm ssh "$NAME" --worker=0 --command="bash $REMOTE_DIR/$WORKER_SCRIPT state" \
         2>/dev/null)" || out=unknown
  echo "${out:-unknown}" | tail -n 1
}

# run --until-done: start, then poll; a preempted (or vanished) VM is deleted, created again
# with the same options, set up and started again, which resumes from the workdir's last
# checkpoint. Ends 0 when the run finishes, with its status when it fails on a live VM.
until_done() {
  start_run
  if [[ "$DRY_RUN" == 1 ]]; then  # the commands of one poll; recovery runs delete, create,
    tpu_vm describe "$NAME" --format="value(state)"  # setup and the two above
    tpu_vm ssh "$NAME" --worker=0 --command="bash $REMOTE_DIR/$WORKER_SCRIPT state"
    return 0
  fi
  local vm now
  while true; do
    sleep "$POLL"
    vm="$(vm_state)"
    case "$vm" in
      READY)
        now="$(run_state)"
        case "$now" in
          running|unknown) continue ;;
          exit:0) echo "launch.sh tpu: the run finished." >&2; return 0 ;;
          exit:*)
            echo "launch.sh tpu: the run failed with exit status ${now#exit:}; see ./launch.sh tpu status." >&2
            return "${now#exit:}" ;;
          *)  # stopped by the time limit or SIGTERM, or never started on this VM: resume
            echo "launch.sh tpu: run state '$now': starting it again (it resumes)." >&2
            ( start_run ) & wait "$!" || true ;;
        esac
        ;;
      PREEMPTED|TERMINATED|MISSING|SUSPENDED)
        echo "launch.sh tpu: the VM is $vm: recreating it and resuming." >&2
        recreate ;;
      *) ;;  # CREATING, STARTING, REPAIRING, ...: wait
    esac
  done
}

# Each step in a background subshell, then `wait`: bash ignores errexit inside anything
# run as part of an `||` list, so `cmd_setup || ...` would go on past a failed copy.
# A failed step (no capacity yet, a VM half gone) is retried at the next poll.
recreate() {
  ( cmd_delete ) & wait "$!" || true
  ( cmd_create ) & wait "$!" || return 0
  wait_ready
  ( cmd_setup ) & wait "$!" || return 0
  ( start_run ) & wait "$!" || true
}

# Until the VM is READY (a queued resource may wait for capacity for a long time).
wait_ready() {
  while [[ "$(vm_state)" != READY ]]; do
    sleep "$POLL"
  done
}

cmd_status() {
  tpu_vm ssh "$NAME" --worker=all --command="bash $REMOTE_DIR/$WORKER_SCRIPT status"
}

cmd_stop() {
  tpu_vm ssh "$NAME" --worker=all --command="bash $REMOTE_DIR/$WORKER_SCRIPT stop"
}

cmd_logs() {
  tpu_vm ssh "$NAME" --worker="$WORKER" --command="tail -f $REMOTE_LOG"
}

cmd_ssh() {
  tpu_vm ssh "$NAME" --worker="$WORKER"
}

cmd_delete() {
  if [[ "$QUEUED" == 1 ]]; then
    queued delete "$NAME" --force --quiet  # --force: the VM it holds goes too
  else
    tpu_vm delete "$NAME" --quiet
  fi
}

main() {
  parse_args "$@"
  case "$SUBCMD" in
    create|setup|run|status|stop|logs|ssh|delete) ;;
    help) usage; exit 0 ;;
    "") die "a tpu command is needed: create, setup, run, status, stop, logs, ssh or delete (./launch.sh tpu help)." ;;
    *) die "unknown tpu command '$SUBCMD'; use create, setup, run, status, stop, logs, ssh or delete." ;;
  esac
  check_settings
  [[ "$SUBCMD" == run ]] || no_extra_args
  "cmd_$SUBCMD"
}

main "$@"
