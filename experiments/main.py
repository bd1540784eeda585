"""The body every experiment binary shares: config -> task -> train_and_evaluate.

    python -m experiments.ptb --config=zaremba_small --workdir=runs/zaremba_small
    python -m experiments.ptb --config=zoneout --config.train.num_epochs=3

Data errors, and a workdir that holds another run (another task, or another model,
data, regularization or training-trajectory config: `experiments.resume_check`), end
the run with one sentence and exit status 2.
"""

from __future__ import annotations

import json
import logging as py_logging
import os
import shutil
import sys
from typing import NoReturn

import jax
from absl import app, logging
from etils import epath

from experiments import cli, provenance, run_record
from experiments.configs.common import TASK_DATASETS, check_config, regularization
from experiments.flag_parsing import DATA_DIR_REMEDY, refuse_empty
from experiments.resume_check import resume_conflict


def _quiet_orbax() -> None:
    """Orbax logs every save step at INFO; keep its warnings, drop the chatter. Its futures
    also log, with a traceback, each failure of a writer thread (a full disk: one per
    thread) that it then raises to the caller, where it becomes the run's one error line."""
    def keep(record) -> bool:
        if "/orbax/" not in record.pathname:
            return True
        return record.levelno >= py_logging.WARNING and "/futures/" not in record.pathname

    py_logging.getLogger("absl").addFilter(keep)


def _fail(message) -> NoReturn:
    """End the binary with one line on stderr and exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _start_distributed(config) -> None:
    """Multi-host: connect the processes before anything reads data or devices."""
    from rnnreg_jax.train.mesh import maybe_initialize_distributed

    flags = cli.FLAGS
    # An explicit coordinator (local multi-process runs) or the `distributed` flag (Cloud
    # TPU, where everything is auto-detected) turns it on.
    enabled = bool(flags.coordinator_address) or bool(config.train.get("distributed", False))
    given = [f"--{name}" for name in ("num_processes", "process_id")
             if getattr(flags, name) is not None]
    if given and not enabled:  # the run went on as one process of one
        _fail(f"{' and '.join(given)} need --coordinator_address (or "
              "--config.train.distributed=True, where the coordinator is found).")
    _check_process_flags(flags.coordinator_address, flags.num_processes, flags.process_id)
    try:
        maybe_initialize_distributed(enabled, flags.coordinator_address, flags.num_processes,
                                     flags.process_id)
    except (ValueError, RuntimeError) as err:  # a missing count, a port already taken
        why = " ".join(str(err).split()).rstrip(".")
        _fail(f"jax.distributed could not start ({why}); check --coordinator_address, "
              "--num_processes and --process_id.")


def _check_process_flags(address: str | None, count: int | None, index: int | None) -> None:
    """One sentence for the multi-process flags that jax.distributed refuses with a
    traceback (an IndexError for an address without a port)."""
    if address:
        host, _, port = address.rpartition(":")
        if not (host and port.isdigit() and 0 < int(port) < 2 ** 16):
            _fail(f"--coordinator_address must be HOST:PORT with a port in 1..65535, got "
                  f"{address!r}.")
    if count is not None and count < 1:
        _fail(f"--num_processes must be at least 1, got {count}.")
    if index is not None and index < 0:
        _fail(f"--process_id must be a whole number >= 0, got {index}.")
    if index is not None and count is not None and index >= count:
        _fail(f"--process_id must be in [0, {count}) (one per process of --num_processes), "
              f"got {index}.")


def _lock(workdir: str) -> None:
    """One run per workdir (rnnreg_jax.train.workdir_lock), or a one-line exit 2."""
    from rnnreg_jax.train.workdir_lock import WorkdirInUseError, lock_workdir

    try:
        lock_workdir(workdir)
    except WorkdirInUseError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        # a file there made os.makedirs say only "File exists"
        why = ("it is a file, not a folder" if os.path.isfile(workdir)
               else err.strerror or str(err))
        print(f"error: cannot use {workdir} as the workdir: {why}.", file=sys.stderr)
        sys.exit(2)


def _forget_new_workdir(workdir: str, fresh: bool) -> None:
    """After a refused start: a workdir this start made (`fresh`) goes again where it holds
    only the lock and empty folders (TensorBoard's, the checkpoints'), so that what
    is left is what was there before; a workdir holding any other file stays."""
    from rnnreg_jax.train.workdir_lock import LOCK_NAME

    if not fresh or (jax.distributed.is_initialized() and jax.process_index() != 0):
        return
    for folder, _, files in os.walk(workdir):
        if any(folder != workdir or name != LOCK_NAME for name in files):
            return
    shutil.rmtree(workdir, ignore_errors=True)


# The scalar tags TensorBoard's HParams view shows beside each run's settings.
_HPARAM_METRICS = {"lm": ("ppl",), "classification": ("error",), "regression": ("rmse",)}


def _write_record(workdir: str, task_name: str, config, task, previous: str | None) -> None:
    """config.json (the config and what produced the run) and TensorBoard's hparams;
    `previous`: the text of the record the workdir held, or None."""
    from rnnreg_jax.train.logging import write_hparams

    earlier = None
    # a resume: keep the earlier starts' commits and devices
    if previous is not None and run_record.continues(workdir):
        try:
            earlier = run_record.parse(previous, run_record.path_of(workdir)).get("provenance")
        except run_record.NotARunRecord:
            earlier = None
    record = provenance.with_earlier_starts(provenance.provenance(), earlier)
    config_dict = json.loads(json.dumps(config.to_dict(), default=str))
    run_record.write(workdir, task_name, record["command"], record, config_dict)
    if config.train.get("tensorboard", True):
        metrics = [f"{split}/{name}" for split in task.evals
                   for name in _HPARAM_METRICS.get(task.kind, ())]
        write_hparams(workdir, provenance.hparams(config_dict, record), metrics)


def check_task_dataset(task_name: str, dataset: str) -> None:
    """A one-sentence ValueError where `dataset` is not one of `task_name`'s: another
    task's config (`--config=experiments/configs/pmnist.py:tiny` given to experiments.ptb)
    trained that task under this one's name and default workdir."""
    allowed = TASK_DATASETS.get(task_name)
    if allowed is not None and dataset not in allowed:
        owner = next((t for t, sets in TASK_DATASETS.items() if dataset in sets), None)
        hint = f"; run it with python -m experiments.{owner}" if owner else ""
        raise ValueError(f"config.data.dataset={dataset!r} is not experiments.{task_name}'s "
                         f"(it trains {', '.join(allowed)}){hint}.")


def run(task_name: str, config) -> dict:
    """Train and evaluate one config; returns the final metrics."""
    from rnnreg_jax.data import DataError
    from rnnreg_jax.tasks import build_task, check_data
    from rnnreg_jax.train import NonFiniteLossError, StartRefusedError, train_and_evaluate
    from rnnreg_jax.train.checkpoint import (
        CheckpointMismatchError,
        CheckpointWriteError,
        os_error_reason,
    )
    from rnnreg_jax.train.config import check_for_task

    _quiet_orbax()
    default = os.path.join("runs", f"{task_name}_{config.preset}")
    refuse_empty({"workdir": (cli.FLAGS.workdir, "pass a folder, or leave the flag out for "
                                                 f"the default {default}"),
                  "data_dir": (cli.FLAGS.data_dir, DATA_DIR_REMEDY)})
    _start_distributed(config)
    workdir = cli.FLAGS.workdir or default
    try:  # the config and the data's checksums first: then a refusal changes no workdir
        check_config(config)
        check_task_dataset(task_name, config.data.dataset)
        reg = regularization(config.reg)
        check_data(config, cli.FLAGS.data_dir)
    except (ValueError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    # Process 0 only: the other processes of a multi-host run share the workdir. Without
    # jax.distributed this is the only process; asking jax would start the backend first.
    fresh = "://" not in workdir and not os.path.exists(workdir)
    if not jax.distributed.is_initialized() or jax.process_index() == 0:
        _lock(workdir)
    conflict = resume_conflict(workdir, config.to_dict(), task_name)  # before loading data
    if conflict:
        print(f"error: {conflict}", file=sys.stderr)
        sys.exit(2)
    try:
        task = build_task(config, reg, cli.FLAGS.data_dir)
        check_for_task(config.train, task, "config.train")
    except (DataError, ValueError) as err:  # data, or settings that do not go together
        _forget_new_workdir(workdir, fresh)
        _fail(err)
    batch = config.data.batch_size
    logging.info("process %d of %d, %d local devices of %d; global batch %d, per host %d",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count(), batch, batch // jax.process_count())
    logging.info("regularization: %s", reg)
    record = previous = None
    tb = epath.Path(workdir) / "tb"
    tb_before: set | None = None
    try:
        if jax.process_index() == 0:  # the workdir may be local or a URL (gs://)
            record = run_record.path_of(workdir)
            previous = record.read_text() if record.exists() else None
            tb_before = set(tb.iterdir()) if tb.exists() else set()
            _write_record(workdir, task_name, config, task, previous)
        return train_and_evaluate(task, config.train, workdir)
    except (CheckpointMismatchError, StartRefusedError) as err:
        # The checkpoints are another run's (a workdir without config.json, so nothing
        # could refuse it earlier), or the run cannot start (a batch that does not divide
        # over the devices): leave the record and TensorBoard's files as they were.
        if record is not None:
            if previous is None:
                record.unlink(missing_ok=True)
            else:
                record.write_text(previous)
        if tb_before is not None and tb.exists():
            for path in set(tb.iterdir()) - tb_before:  # this start's hparams and events
                path.unlink(missing_ok=True)
        _forget_new_workdir(workdir, fresh)
        _fail(err)
    except NonFiniteLossError as err:
        _fail(err)
    except CheckpointWriteError as err:
        _fail(err)
    except OSError as err:  # metrics, TensorBoard or config.json: a full or read-only disk
        _fail(f"Writing to the workdir {workdir} failed ({os_error_reason(err)}); free space "
              "there or pass another --workdir, then rerun to resume from the newest "
              "complete checkpoint.")


def main_for(task_name: str, presets: cli.Presets) -> None:
    """absl entry point of one experiment binary."""
    holder: dict = {}

    def main(argv):
        if len(argv) > 1:
            print(f"error: unexpected arguments {argv[1:]}.", file=sys.stderr)
            sys.exit(2)
        metrics = run(task_name, holder["config"])
        print(json.dumps({k: v for k, v in metrics.items()
                          if isinstance(v, int | float | str)}, indent=1, default=str))

    app.run(main, flags_parser=cli.make_flags_parser(presets, holder))
