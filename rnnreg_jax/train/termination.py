"""SIGTERM and Ctrl-C (SIGINT) as a flag the training loop reads between steps."""

from __future__ import annotations

import signal
import sys
import threading

HANDLED = (signal.SIGTERM, signal.SIGINT)


class TerminationFlag:
    """Turns SIGTERM (a scheduler's or a deadline's) and a first Ctrl-C into a flag the
    loop reads at step boundaries, so the run saves and stops instead of dying mid-step
    (Ctrl-C raised KeyboardInterrupt wherever it fell, losing the steps since the last
    checkpoint); a second Ctrl-C aborts at once, without saving. Only in the main
    thread, where Python allows handlers; the previous handlers are put back on close.

    `name`: the first signal's name ("SIGTERM" or "SIGINT"), None before any.
    """

    def __init__(self) -> None:
        self.set = False
        self.name: str | None = None
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            if self.name == "SIGINT":  # the second Ctrl-C: the user will not wait
                self._put_back(signal.SIGINT)
                raise KeyboardInterrupt
            sys.stderr.write("\nCtrl-C: the run saves a checkpoint and stops after this "
                             "step; Ctrl-C again aborts without saving.\n")
        self.set = True
        self.name = self.name or signal.Signals(signum).name

    def _put_back(self, signum: int) -> None:
        previous = self._previous.pop(signum, None)
        if previous is not None:
            signal.signal(signum, previous)  # type: ignore[arg-type]

    def restore(self) -> None:
        for signum in list(self._previous):
            self._put_back(signum)
