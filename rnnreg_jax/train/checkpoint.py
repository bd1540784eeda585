"""Checkpoints with orbax: `workdir/checkpoints` (the last N) and `workdir/best`.

Saves are synchronous (exact resume is simpler to reason about) and atomic:
orbax writes into a temporary directory and renames it when complete, so a
process killed mid-write leaves no step directory that `all_steps()` lists.
Pruning is not atomic: orbax deletes the oldest step in place after writing a new
one, so a process killed inside that deletion leaves the oldest step listed and
half deleted; the next prune removes it. Restore takes the newest step that
actually restores, falling back to older ones with a warning if the newest is
unreadable, so it never reaches that step while a newer one restores. Where no step
restores, the error tells damaged checkpoints (`CheckpointUnreadableError`: files
missing, truncated or garbled) from another model's (`CheckpointMismatchError`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import sys

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
# Orbax's words for a restore target shaped unlike the stored tree: a mismatch, not damage.
_ORBAX_MISMATCH = ("tree structures do not match", "is not compatible with the stored shape")


class CheckpointMismatchError(ValueError):
    """Checkpoints exist but none restores into the current state's structure (or, the
    subclass `CheckpointUnreadableError`, none can be read at all)."""


class CheckpointUnreadableError(CheckpointMismatchError):
    """Checkpoints exist but none can be read: files missing, truncated or garbled (a disk
    that failed, a copy cut short, a hand edit), not another model's state. A subclass of
    `CheckpointMismatchError`, so that whoever refuses to start over on top of another
    run's checkpoints refuses these too."""


def _is_mismatch(err: BaseException) -> bool:
    """Whether a failed restore says the step holds another model's state (its tree or
    shapes differ from the target's), rather than that its files could not be read. Only
    a step whose stored tree could be read can be found to differ, so anything else (a
    missing or truncated file, metadata that does not parse) is damage."""
    text = str(err)
    return text.startswith(_OTHER_MODEL) or any(words in text for words in _ORBAX_MISMATCH)


def _short_reason(err: BaseException, limit: int = 150) -> str:
    """Why a restore failed, in at most `limit` characters of one line (the error's
    first): TensorStore's own words where orbax wrapped them (its message then ends in a
    kilobyte-long spec), without the spec, the status code or the database path the
    message names anyway."""
    chain: list[BaseException] = []
    link: BaseException | None = err
    while link is not None and all(link is not e for e in chain):
        chain.append(link)
        link = link.__cause__ or link.__context__
    statuses = [e for e in chain if re.match(r"[A-Z_]{4,}: ", str(e))]
    err = statuses[0] if statuses else chain[0]
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    text = text.split(" [tensorstore_spec=")[0].split(" See full TensorStore details")[0]
    text = re.sub(r"^[A-Z_]{4,}: ", "", " ".join(text.split()))
    text = re.sub(r' in OCDBT database at [^"]*"[^"]*"', "", text)
    if isinstance(err, json.JSONDecodeError):
        text = f"a metadata file is not JSON: {text}"
    elif not text:
        text = type(err).__name__
    text = text.rstrip(".")  # the error's sentence goes on after it
    if len(text) > limit:
        sentence = text.find(". ")
        text = text[:sentence + 1] if 0 < sentence < limit else text[:limit - 3] + "..."
    return text


def _late_read(unraisable) -> bool:
    """Whether an unraisable exception is a TensorStore read ending after orbax closed the
    event loop of a failed restore (asyncio's `call_soon_threadsafe` on a closed loop)."""
    if unraisable.object is not None or not isinstance(unraisable.exc_value, RuntimeError):
        return False
    if str(unraisable.exc_value) != "Event loop is closed":
        return False
    tb, names = unraisable.exc_traceback, set()
    while tb is not None:
        names.add(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return "call_soon_threadsafe" in names


def _drop_late_reads() -> None:
    """Keeps quiet the reads of a step's other arrays that end after one failed (a
    damaged checkpoint): orbax has closed the restore's event loop by then, and each
    printed a traceback ("Event loop is closed", through `sys.unraisablehook`) around the
    one-line error, or the warning of a fallback to an older step. Other unraisable
    exceptions reach the hook that was there."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_late_reads", False):
        return

    def hook(unraisable) -> None:
        if not _late_read(unraisable):
            previous(unraisable)

    hook.drops_late_reads = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def restore_newest(manager: ocp.CheckpointManager, target):
    """Restore the newest step that restores; None if there are no steps.

    A step that fails (a torn one: a prune cut short, a damaged disk) is skipped, with a
    warning, for the next older one. Where every step fails:
    `CheckpointUnreadableError` when none could be read (corrupt or incomplete files),
    else `CheckpointMismatchError` (usually a workdir written by a different model or
    config). Either way starting over there would silently replace that run's
    checkpoints.
    """
    manager.reload()
    steps = sorted(manager.all_steps(), reverse=True)
    if steps:  # before a restore: a failed one's late reads may end before it raises
        _drop_late_reads()
    failures: list[tuple[int, str, bool]] = []  # (step, reason, another model's state)
    for i, step in enumerate(steps):
        try:
            return _restore(manager, step, target)
        except Exception as err:  # noqa: BLE001 - an unreadable step: try an older one
            mismatch, reason = _is_mismatch(err), _short_reason(err)
            failures.append((step, reason, mismatch))
            if i + 1 < len(steps):  # the last one's reason goes into the error
                logging.warning("Checkpoint step %d in %s %s (%s); trying step %d.", step,
                                manager.directory, "does not restore into this model"
                                if mismatch else "is unreadable", reason, steps[i + 1])
    if not steps:
        return None
    mismatches = [f for f in failures if f[2]]
    if not mismatches:
        step, reason, _ = failures[-1]
        if len(steps) == 1:
            raise CheckpointUnreadableError(
                f"The checkpoint in {manager.directory} (step {step}) is unreadable (corrupt "
                f"or incomplete: {reason}); restore it from a copy, or move it away to start "
                "the run over.")
        raise CheckpointUnreadableError(
            f"The checkpoints in {manager.directory} (steps {steps}) are unreadable (corrupt "
            f"or incomplete; step {step}: {reason}); restore them from a copy, or move them "
            "away to start the run over.")
    step, reason, _ = mismatches[-1]
    cause = f" (step {step}: {reason})" if reason.startswith(_OTHER_MODEL) else ""
    raise CheckpointMismatchError(
        f"None of the checkpoints in {manager.directory} (steps {steps}) restores into "
        f"this model{cause}, probably written with another config; use a fresh --workdir "
        "or move them away.")


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
    FileNotFoundError where the step has no array metadata (its `_METADATA` is gone).

    Read from the step's metadata alone: restoring arrays of the wrong shape fails
    inside orbax's reader threads, which then print tracebacks after the error.
    """
    stored = getattr(manager.item_metadata(step), "tree", None)
    if stored is None:  # orbax reads a step without its _METADATA as no metadata
        raise FileNotFoundError("its array metadata (_METADATA) is missing")
    return tree_difference(stored, abstract(target))


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
