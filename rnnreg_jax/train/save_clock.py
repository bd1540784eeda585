"""When a run saves a checkpoint mid-epoch because time has passed since its last save
(`config.checkpoint_every_s`), so that a run killed without warning (SIGKILL, an
out-of-memory kill, a lost machine), which cannot save on its way out as it does on
SIGTERM, loses at most that much work even where one epoch takes hours (pMNIST or
character-level PTB on a CPU). Steps between saves are not a substitute: a step's time
differs a thousandfold between a laptop and a TPU pod, a save's cost does not."""

from __future__ import annotations

import time

import jax

from rnnreg_jax.train import mesh as mesh_lib


class SaveClock:
    """Whether a save is due after a training step.

    Args:
      every_s: seconds from one save to the next mid-epoch save (0 or None: none).
      log_every_steps: with several processes, the steps at which they decide together
        (a collective each: a save is one, so every process must save at the same step);
        0 leaves them no mid-epoch point to decide at, hence no time-based save.
    """

    def __init__(self, every_s: float | None, log_every_steps: int):
        self.every_s = every_s or 0.0
        self.log_every_steps = log_every_steps
        self.multihost = jax.process_count() > 1
        self.saved()

    def saved(self) -> None:
        """A checkpoint was just written (any save: the clock restarts)."""
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        """After training step `step`: `every_s` passed since the last save (with several
        processes: on any of them, decided at log steps only)."""
        if not self.every_s:
            return False
        up = time.monotonic() - self.last >= self.every_s
        if not self.multihost:
            return up
        if not (self.log_every_steps and step % self.log_every_steps == 0):
            return False
        return mesh_lib.on_any_process(up)
