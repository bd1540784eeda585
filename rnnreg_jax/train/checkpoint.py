"""Checkpoints with orbax: `workdir/checkpoints` (the last N) and `workdir/best`.

Saves are synchronous (exact resume is simpler to reason about) and atomic:
orbax writes into a temporary directory and renames it when complete, so a
process killed mid-write leaves no step directory that `all_steps()` lists.
Pruning is not atomic: orbax deletes the oldest step in place after writing a new
one, so a process killed inside that deletion leaves the oldest step listed and
half deleted; the next prune removes it. Restore takes the newest step that
actually restores, falling back to older ones with a warning if the newest is
unreadable, so it never reaches that step while a newer one restores.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil

import jax
import orbax.checkpoint as ocp
from etils import epath


def _manager(directory: str, max_to_keep: int | None,
             read_only: bool = False) -> ocp.CheckpointManager:
    # A writing manager creates its folder and removes unfinished saves it finds, which a
    # reader beside a running training (experiments.evaluate) must do neither of.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else max_to_keep, create=not read_only,
        cleanup_tmp_directories=not read_only, read_only=read_only,
        save_interval_steps=0 if read_only else 1, enable_async_checkpointing=False)
    # Orbax takes local paths and URLs (gs://) alike; only local ones are made absolute.
    path = directory if "://" in directory else os.path.abspath(directory)
    # The handler named up front lets `item_metadata` read a step's shapes without its arrays.
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(_read_only_note)  # a warning for what was asked for
    try:
        return ocp.CheckpointManager(path, options=options,
                                     item_handlers=ocp.StandardCheckpointHandler())
    finally:
        absl_logger.removeFilter(_read_only_note)


def _read_only_note(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


class Checkpointer:
    """The run's two checkpoint managers (latest N and best)."""

    def __init__(self, workdir: str, keep: int = 3):
        self.latest = _manager(os.path.join(workdir, "checkpoints"), max(1, keep))
        self.best = _manager(os.path.join(workdir, "best"), 1)

    def save(self, state, step: int) -> None:
        """Save `state` as `step` (no-op if that step is already saved).

        Raises:
            CheckpointWriteError: the step could not be written (full disk, permissions).
        """
        _save(self.latest, state, step)

    def save_best(self, state, step: int) -> None:
        _save(self.best, state, step)

    def restore_latest(self, target):
        """Newest restorable state shaped like `target` (arrays or abstract), or None."""
        return restore_newest(self.latest, target)

    def restore_best(self, target):
        return restore_newest(self.best, target)

    def close(self) -> None:
        self.latest.close()
        self.best.close()


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message is one sentence with the fix."""


def os_error_reason(err: BaseException) -> str:
    """The operating system's words for why a write failed, e.g. "No space left on device".

    Orbax reports TensorStore's failures as a ValueError whose text holds the errno.
    """
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    code = re.search(r"os_error_code='(\d+)'", str(err))
    if code:
        return os.strerror(int(code.group(1)))
    return " ".join(str(err).split())[:200] or type(err).__name__


_ROOM_SLACK = 64 << 10  # metadata and manifest files of one step, with room to spare


def _check_room(manager: ocp.CheckpointManager, state, step: int) -> None:
    """Refuses a save that cannot fit on a local disk before a byte is written.

    A save that runs out of space fails inside orbax's writer threads, whose pending
    callbacks then print tracebacks after the error; this check makes the usual case
    (a disk already too full) one sentence. A disk that fills during the save still
    raises `CheckpointWriteError` from the save itself.
    """
    directory = str(manager.directory)
    if "://" in directory:
        return
    need = sum(int(getattr(leaf, "nbytes", 0)) for leaf in jax.tree.leaves(state))
    need += need // 10 + _ROOM_SLACK
    free = shutil.disk_usage(directory).free
    if free < need:
        raise CheckpointWriteError(
            f"Checkpoint step {step} needs about {need / 1e6:.2f} MB in {directory} but "
            f"{free / 1e6:.2f} MB are free; free space there or pass another --workdir, then "
            "rerun to resume from the newest complete checkpoint.")


def _save(manager: ocp.CheckpointManager, state, step: int) -> None:
    if step in manager.all_steps():
        return
    _check_room(manager, state, step)
    try:
        manager.save(step, args=ocp.args.StandardSave(state), force=True)
        manager.wait_until_finished()
    except Exception as err:  # noqa: BLE001 - orbax wraps I/O errors in several types
        raise CheckpointWriteError(
            f"Checkpoint step {step} could not be written to {manager.directory} "
            f"({os_error_reason(err)}); free space there or pass another --workdir, then "
            "rerun to resume from the newest complete checkpoint.") from err


def abstract(state):
    """ShapeDtypeStructs with shardings: the restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


_OTHER_MODEL = "another model's state"


class CheckpointMismatchError(ValueError):
    """Checkpoints exist but none restores into the current state's structure."""


def restore_newest(manager: ocp.CheckpointManager, target):
    """Restore the newest step that restores; None if there are no steps.

    Raises `CheckpointMismatchError` when there are steps and none restores
    (usually a workdir written by a different model or config): starting
    over there would silently replace that run's checkpoints.
    """
    manager.reload()
    steps = sorted(manager.all_steps(), reverse=True)
    reason = ""
    for step in steps:
        try:
            return _restore(manager, step, target)
        except Exception as err:  # noqa: BLE001 - an unreadable step: try an older one
            reason = " ".join(str(err).split())
            logging.warning("Checkpoint step %d in %s is unreadable (%s); trying an older one.",
                            step, manager.directory, reason)
    if steps:
        cause = f" (step {steps[-1]}: {reason})" if reason.startswith(_OTHER_MODEL) else ""
        raise CheckpointMismatchError(
            f"None of the checkpoints in {manager.directory} (steps {steps}) restores into "
            f"this model{cause}, probably written with another config; use a fresh --workdir "
            "or move them away.")
    return None


def _leaf_specs(tree) -> dict[tuple[str, ...], tuple[tuple[int, ...], str]]:
    """{path of names: (shape, dtype)} of the array leaves, for dataclass and dict trees alike."""
    def name(entry) -> str:
        for attr in ("name", "key", "idx"):
            if hasattr(entry, attr):
                return str(getattr(entry, attr))
        return str(entry)

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(name(e) for e in path): (tuple(leaf.shape), str(leaf.dtype))
            for path, leaf in leaves}


def shape_mismatch(manager: ocp.CheckpointManager, step: int, target) -> str | None:
    """The first difference between a step's stored arrays and `target`'s, or None.

    Read from the step's metadata alone: restoring arrays of the wrong shape fails
    inside orbax's reader threads, which then print tracebacks after the error.
    """
    return tree_difference(getattr(manager.item_metadata(step), "tree", None) or {},
                           abstract(target))


def tree_difference(stored, wanted) -> str | None:
    """The first difference in array paths, shapes or dtypes between the trees `stored`
    (a checkpoint's arrays, or their metadata) and `wanted` (a model's, or their
    `jax.ShapeDtypeStruct`s), in one clause, or None."""
    stored, wanted = _leaf_specs(stored), _leaf_specs(wanted)
    for path in sorted(wanted.keys() | stored.keys()):
        have, want = stored.get(path), wanted.get(path)
        if have != want:
            where = "/".join(path)
            if have is None:
                return f"it lacks {where}"
            if want is None:
                return f"it holds {where}, which this model lacks"
            return (f"{where} is {have[1]}{list(have[0])} there but {want[1]}{list(want[0])} "
                    "in this model")
    return None


def _restore(manager: ocp.CheckpointManager, step: int, target):
    mismatch = target is not None and shape_mismatch(manager, step, target)
    if mismatch:
        raise ValueError(f"{_OTHER_MODEL}: {mismatch}")
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(abstract(target)))
    except ValueError:
        # Checkpoints written before TrainState had `model_state` lack the field; a
        # target whose model_state is empty restores from them field by field.
        state = getattr(target, "model_state", None)
        if not (isinstance(state, dict) and not state and dataclasses.is_dataclass(target)
                and not isinstance(target, type)):
            raise
        fields = {f.name: getattr(target, f.name) for f in dataclasses.fields(target)
                  if f.name != "model_state"}
        restored = manager.restore(step, args=ocp.args.StandardRestore(abstract(fields)))
        return dataclasses.replace(target, **restored)  # what TrainState.replace calls


def restore_state(directory: str, target):
    """Restore the newest checkpoint under `directory` into the shape of `target`
    (e.g. `workdir/checkpoints` or `workdir/best`), for notebooks; None if there is none.
    Read only: a missing folder is not created, and another process's unfinished save is
    left alone."""
    with _manager(directory, None, read_only=True) as manager:
        restored = restore_newest(manager, target)
    if restored is None:
        _refuse_a_workdir(directory)
    return restored


def _refuse_a_workdir(directory: str) -> None:
    """A run's workdir in place of one of its checkpoint folders read as "no checkpoint"
    (None), as if the run had saved nothing."""
    folders = [name for name in ("checkpoints", "best") if (epath.Path(directory) / name).is_dir()]
    if folders:
        raise ValueError(f"{directory} is a run's workdir, not a checkpoint folder: pass "
                         + " or ".join(f"{directory.rstrip('/')}/{name}" for name in folders)
                         + ".")
