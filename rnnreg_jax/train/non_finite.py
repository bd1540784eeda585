"""What a run does once its training loss or its state becomes NaN or infinite: record
why, then raise (`config.stop_on_nan`) or train on without saving again, so that the
newest checkpoint stays the last good one."""

from __future__ import annotations

import os

from rnnreg_jax.train.logging import MetricsLogger


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class NonFiniteStop:
    """The run's response to a non-finite loss or state.

    Args:
      logger: the run's logger (the `train` event with the message, the warning).
      workdir: the run's workdir, whose kept checkpoint the message names.
      stop_on_nan: raise `NonFiniteLossError`; else warn and set `halted`.

    `halted`: no checkpoint is to be saved any more.
    """

    def __init__(self, logger: MetricsLogger, workdir: str, stop_on_nan: bool):
        self.logger, self.workdir, self.stop_on_nan = logger, workdir, stop_on_nan
        self.halted = False

    def loss(self, value: float, step: int, epoch: int, last_saved: int | None) -> None:
        """The training loss of step `step` was `value` (NaN or infinite)."""
        message = (f"The training loss became {value} at step {step} (epoch {epoch + 1}); "
                   f"the run stopped and {self._kept(last_saved)}.")
        self._stop(message, {"objective": value, "error_message": message}, step, epoch)

    def state(self, step: int, epoch: int, last_saved: int | None) -> None:
        """The parameters or optimizer state at step `step` hold a NaN or infinity."""
        message = (f"The parameters or optimizer state became non-finite by step {step} "
                   f"(epoch {epoch + 1}); the run stopped and {self._kept(last_saved)}.")
        self._stop(message, {"error_message": message}, step, epoch)

    def _kept(self, last_saved: int | None) -> str:
        if last_saved is None:
            return "no checkpoint had been saved yet"
        return (f"the last good checkpoint (step {last_saved}) is kept in "
                f"{os.path.join(self.workdir, 'checkpoints')}")

    def _stop(self, message: str, event: dict, step: int, epoch: int) -> None:
        """Log why the run cannot go on; raise (`stop_on_nan`) or save nothing more."""
        self.logger.write("train", step, epoch, event)
        if self.stop_on_nan:
            raise NonFiniteLossError(message)
        self.logger.console("WARNING: " + message)
        self.halted = True
