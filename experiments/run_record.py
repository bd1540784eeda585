"""A run's record, `workdir/config.json`: the binary (`task`), the command, what produced
the run (`provenance`) and its config. Written at each start of the run; read by the resume
check, `experiments.evaluate`, `experiments.generate` and the report, all through `read`,
so that a torn or hand-made record is the same one sentence wherever it is met.

The workdir may be local or a URL (`gs://bucket/run`, through `etils.epath`).
"""

from __future__ import annotations

import errno
import json
import os
import uuid

from etils import epath

FILE = "config.json"


class NotARunFolder(ValueError):
    """`workdir` is a file, not a folder that could hold a run."""

    def __init__(self, workdir):
        self.workdir = workdir
        super().__init__(f"{workdir} is a file, not a run's folder.")


class NotARunRecord(ValueError):
    """`path` is not a run record (`why`): torn by a full disk or a kill before writes
    were atomic, or written by hand."""

    def __init__(self, path, why):
        self.path, self.why = path, why
        super().__init__(f"{path} is not a run record ({why}).")


def path_of(workdir) -> epath.Path:
    return epath.Path(workdir) / FILE


def has_checkpoint(workdir) -> bool:
    """Whether `workdir` holds a checkpoint (one listing of its folder)."""
    checkpoints = epath.Path(workdir) / "checkpoints"
    return checkpoints.exists() and any(checkpoints.iterdir())


def continues(workdir, checkpointed: bool | None = None) -> bool:
    """Whether a start in `workdir` continues a run there: one that left a checkpoint, or
    the log of one killed before its first (a record alone is no run: a refused start's).
    `checkpointed`: `has_checkpoint(workdir)` when the caller has it already (a listing
    of an object store is a request)."""
    if checkpointed is None:
        checkpointed = has_checkpoint(workdir)
    return checkpointed or (epath.Path(workdir) / "metrics.jsonl").exists()


def write(workdir, task: str, command: str, provenance: dict, config: dict) -> None:
    """The record of a run of binary `task` with `config` (a JSON-ready dict), whole or
    not at all: a local file goes through a temporary one and a rename, so a full disk or
    a kill leaves the old record or the new one (object stores write whole)."""
    path = path_of(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"task": task, "command": command, "provenance": provenance,
                       "config": config}, indent=2)
    if "://" in str(path):
        path.write_text(text)
        return
    # Not mkstemp, whose owner-only mode the rename would keep: the file gets the umask's
    # mode, as the workdir's logs do, for whoever reads them (TensorBoard, the report).
    tmp = os.path.join(str(path.parent), f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
    try:
        with open(tmp, "x") as f:
            f.write(text)
        os.replace(tmp, str(path))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read(workdir) -> dict:
    """The record in `workdir`: a dict whose "config" is a dict. FileNotFoundError where
    there is none (a path through a file included); `NotARunFolder` (a ValueError) where
    `workdir` is a file; `NotARunRecord` (a ValueError) where the record is a folder, not
    JSON, not an object, or holds no config object."""
    path = path_of(workdir)
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:  # bytes that are not UTF-8
        raise NotARunRecord(path, err) from None
    except IsADirectoryError:
        raise NotARunRecord(path, "a folder, not a file") from None
    except NotADirectoryError:  # workdir, or a folder above it, is a file
        # (etils' is_file at the floor of its range said True for a path through a file)
        local = "://" not in str(workdir)
        if os.path.isfile(workdir) if local else epath.Path(workdir).is_file():
            raise NotARunFolder(workdir) from None
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path)) from None
    return parse(text, path)


def parse(text: str, path) -> dict:
    """`read`'s checks on the `text` of the record at `path` (read already)."""
    try:
        record = json.loads(text)
    except ValueError as err:  # JSONDecodeError
        raise NotARunRecord(path, err) from None
    if not isinstance(record, dict):
        raise NotARunRecord(path, f"a JSON {type(record).__name__}, not an object")
    if "config" not in record:
        raise NotARunRecord(path, "no 'config' entry")
    if not isinstance(record["config"], dict):
        raise NotARunRecord(path, f"its config is a {type(record['config']).__name__}")
    return record
