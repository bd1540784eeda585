"""The run processes of a reproduction batch: each started in a session of its own (a
Ctrl-C at the driver's terminal reaches the driver only, which decides what the runs
get), waited for up to a deadline, then stopped: SIGTERM, on which a run saves and
stops, and SIGKILL after a grace period for one still evaluating."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

POLL_S = 2.0
STOPPED_CODES = (0, -signal.SIGTERM, -signal.SIGKILL)  # finished, or stopped by `wait_all`


def start(command: list[str], workdir: Path, env: dict) -> subprocess.Popen:
    """`command` with its stderr appended to `workdir/console.log` and its stdout (the
    binary's final metrics) in `.<workdir name>.stdout` beside the workdir."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "console.log", "a")  # noqa: SIM115 - closed with the process
    out = open(workdir.parent / f".{workdir.name}.stdout", "w")  # noqa: SIM115
    proc = subprocess.Popen(command, stdout=out, stderr=log, env=env, start_new_session=True)
    proc.files = (log, out)  # type: ignore[attr-defined]
    return proc


def wait_all(procs: dict, deadline: float, grace_s: float = 15.0,
             stop_now: Callable[[], bool] = lambda: False) -> dict[str, int]:
    """Waits for the processes and returns their exit codes by name. Past `deadline`, or
    once `stop_now()` (the driver itself was told to stop), SIGTERM to those still
    running, and SIGKILL to any still running `grace_s` later."""
    codes: dict[str, int] = {}
    termed_at: float | None = None
    while len(codes) < len(procs):
        for name, proc in procs.items():
            if name not in codes and proc.poll() is not None:
                codes[name] = proc.returncode
        now = time.monotonic()
        if termed_at is None and (now >= deadline or stop_now()):
            for name, proc in procs.items():
                if name not in codes:
                    proc.send_signal(signal.SIGTERM)
            termed_at = now
        if termed_at is not None and now >= termed_at + grace_s:
            for name, proc in procs.items():
                if name not in codes:
                    proc.kill()
                    codes[name] = proc.wait()
        time.sleep(0.2 if termed_at is not None else POLL_S)
    for proc in procs.values():
        for f in proc.files:
            f.close()
    return codes
