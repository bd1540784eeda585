"""SIGTERM as a flag the training loop reads between steps."""

from __future__ import annotations

import signal
import threading


class TerminationFlag:
    """Turns SIGTERM (a scheduler's or a deadline's) into a flag the loop reads at step
    boundaries, so the run saves and stops instead of dying mid-step. Only in the main
    thread, where Python allows handlers; the previous handler is put back on close."""

    def __init__(self):
        self.set = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.set = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
