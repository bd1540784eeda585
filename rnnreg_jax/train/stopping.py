"""When a training run stops before its end: SIGTERM, Ctrl-C (SIGINT) or its time
limit, on any of its processes. Every process of a multi-host run must stop at the
same point (one left alone would wait in a collective forever), so with several the
decision is a collective that all make together, at points they all reach."""

from __future__ import annotations

import contextlib
import time

import jax
import numpy as np

from rnnreg_jax.train import mesh as mesh_lib
from rnnreg_jax.train.termination import TerminationFlag

# With several processes, how many evaluation batches go between two checks that all
# of them make together (a collective each) of whether SIGTERM reached any of them.
EVAL_CHECK_BATCHES = 8


class RunStop:
    """The loop's stop rules.

    Args:
      time_limit_s: seconds from now after which training stops (0 or None: none).
      log_every_steps: with several processes, training checks at these steps only.
      eval_check_batches: with several processes, an evaluation pass checks every this
        many batches.
    """

    def __init__(self, time_limit_s: float | None, log_every_steps: int,
                 eval_check_batches: int = EVAL_CHECK_BATCHES):
        self.time_limit_s = time_limit_s
        self.deadline = (time.monotonic() + time_limit_s) if time_limit_s else None
        self.log_every_steps = log_every_steps
        self.eval_check_batches = eval_check_batches
        self.signal = TerminationFlag()
        self.multihost = jax.process_count() > 1

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def in_training(self, step: int, epoch_end: bool = False) -> bool:
        """After training step `step`: SIGTERM arrived or the time limit passed (with
        several processes: on any, decided at log steps and at an epoch's end, points
        every process reaches)."""
        up = self.signal.set or self._past_deadline()
        if not self.multihost:
            return up
        if not (epoch_end or (self.log_every_steps and step % self.log_every_steps == 0)):
            return False
        return mesh_lib.on_any_process(up)

    def between_passes(self) -> bool:
        """Before an evaluation pass: SIGTERM arrived (on any process)."""
        if not self.multihost:
            return self.signal.set
        return mesh_lib.on_any_process(self.signal.set)

    @contextlib.contextmanager
    def passes_stop_on_sigterm(self, evaluator):
        """Within it, SIGTERM ends `evaluator`'s pass at its next batch (`PassStopped`);
        with several processes at the next batch where all check together, every
        `eval_check_batches`."""
        if not self.multihost:
            evaluator.should_stop = lambda: self.signal.set
        else:
            evaluator.should_stop = mesh_lib.agreed_every(self.eval_check_batches,
                                                          lambda: self.signal.set)
        try:
            yield
        finally:
            evaluator.should_stop = None

    def reason(self) -> str:
        """Why the run stopped, as every process agrees (a collective with several): a
        process may have stopped for what reached another one only."""
        flags = np.array([self.signal.set, self._past_deadline()])
        if self.multihost:
            flags = mesh_lib.on_any_process_each(flags)
        if flags[0] or not self.time_limit_s:  # another process's signal: its name is its own
            return self.signal.name or "SIGTERM"
        return f"the time limit ({self.time_limit_s:g} s)"

    def close(self) -> None:
        self.signal.restore()
