"""One run per workdir: an advisory `fcntl` lock on `<workdir>/.lock`.

Two processes training into one workdir race inside orbax (both save and prune the same
steps) and interleave their metrics. The lock is taken before anything in the workdir is
read or written and held until the process exits; the kernel drops it when the process
dies, so a killed run leaves no stale lock. The file names the holder (pid, host, start
time) for the refusal message. Remote workdirs (gs://...) have no such lock: there, one
run per workdir is the user's to ensure.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
import time

LOCK_NAME = ".lock"
_HOLDER_BYTES = 256  # the holder's line, padded: written whole in one write


class WorkdirInUseError(RuntimeError):
    """Another live process holds the workdir; the message is one sentence."""


_held: dict[str, int] = {}  # realpath -> open descriptor, kept for the process's life


def lock_workdir(workdir: str) -> bool:
    """Take `workdir`'s lock for this process (idempotent). False for remote workdirs.

    Raises:
      WorkdirInUseError: another process holds it.
      OSError: the workdir cannot be created or written.
    """
    if "://" in str(workdir):
        return False
    os.makedirs(workdir, exist_ok=True)
    key = os.path.realpath(workdir)
    if key in _held:
        return True
    path = os.path.join(workdir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd) or "another process"
        os.close(fd)
        raise WorkdirInUseError(f"{workdir} is in use by {holder}; wait for that run to end "
                                "or pass another --workdir.") from None
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    # One write of a fixed width replaces the previous holder's line whole: a reader never
    # sees a truncated file or a mix of two lines.
    line = f"process {os.getpid()} on {socket.gethostname()} (started {started})".encode()
    os.pwrite(fd, line[:_HOLDER_BYTES].ljust(_HOLDER_BYTES), 0)
    os.ftruncate(fd, _HOLDER_BYTES)
    _held[key] = fd
    return True


def _holder(fd: int, wait_s: float = 1.0) -> str:
    """The holder's line; a lock just taken may not have it yet (a fresh file is empty
    until its holder writes it, microseconds later), so an empty one is read again."""
    deadline = time.monotonic() + wait_s
    while True:
        holder = os.pread(fd, _HOLDER_BYTES, 0).decode("utf-8", "replace").strip()
        if holder or time.monotonic() > deadline:
            return holder
        time.sleep(0.01)


def unlock_workdir(workdir: str) -> None:
    """Release this process's lock on `workdir`, if it holds it."""
    fd = _held.pop(os.path.realpath(workdir), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock
