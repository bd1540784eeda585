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

LOCK_NAME = ".lock"


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
        holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise WorkdirInUseError(f"{workdir} is in use by {holder}; wait for that run to end "
                                "or pass another --workdir.") from None
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} (started {started})"
              .encode(), 0)
    _held[key] = fd
    return True


def unlock_workdir(workdir: str) -> None:
    """Release this process's lock on `workdir`, if it holds it."""
    fd = _held.pop(os.path.realpath(workdir), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock
