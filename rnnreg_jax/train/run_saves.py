"""When and what a training run checkpoints: mid-epoch saves as they fall due, every
epoch's end (an improvement on the validation metric also as the best checkpoint), never
a non-finite state; and the repair of a best checkpoint an older engine lost."""

from __future__ import annotations

import jax

from rnnreg_jax.train import steps
from rnnreg_jax.train.checkpoint import Checkpointer
from rnnreg_jax.train.logging import MetricsLogger
from rnnreg_jax.train.non_finite import NonFiniteStop
from rnnreg_jax.train.save_clock import SaveClock


class RunSaves:
    """The checkpoint bookkeeping of one run.

    Args:
      ckpt: the run's `Checkpointer`.
      config: the run's train config (`checkpoint_every_s`, `checkpoint_every_steps`,
        `log_every_steps`).
      logger: the run's logger.
      non_finite: told of a non-finite state; once it has `halted`, nothing is saved.
      last_saved: the step of the newest checkpoint (a resumed run's), None: none yet.
    """

    def __init__(self, ckpt: Checkpointer, config, logger: MetricsLogger,
                 non_finite: NonFiniteStop, last_saved: int | None):
        self.ckpt, self.config, self.logger = ckpt, config, logger
        self.non_finite = non_finite
        self.last_saved = last_saved
        self.state_is_finite = jax.jit(steps.all_finite)
        self.clock = SaveClock(config.checkpoint_every_s, config.log_every_steps)

    def due(self, step: int) -> bool:
        """A mid-epoch save after step `step`: every `checkpoint_every_steps` steps, and
        `checkpoint_every_s` seconds after the last save (the same answer on every
        process: the step rule needs none, the clock's is a collective all make)."""
        every = self.config.checkpoint_every_steps
        by_steps = bool(every) and step % every == 0
        return self.clock.due(step) or by_steps

    def save(self, state, step: int, epoch: int, best: bool = False) -> None:
        """Checkpoint `state` as step `step`; `best`: also as the best one, written first.
        A kill between the two writes then leaves best/ at this step and the latest
        checkpoint one epoch back, whose resumed run ends the epoch in the same state again."""
        if self.non_finite.halted:
            return
        # The loss lags the update by a step, so the state itself is checked too.
        if not bool(self.state_is_finite(state.params, state.opt_state)):
            self.non_finite.state(step, epoch, self.last_saved)
            return
        if best:
            self.ckpt.save_best(state, step)
        self.ckpt.save(state, step)
        self.last_saved = step
        self.clock.saved()

    def repair_best(self, state, step: int, has_validation: bool) -> None:
        """A resumed epoch-end checkpoint that improved on the validation metric
        (`bad_epochs` 0) is the best state: write it to best/ if a kill between the two
        epoch-end writes of an earlier version of this engine (latest first) lost it."""
        if (not has_validation or int(state.batch_in_epoch) != 0
                or int(state.epoch) == 0 or int(state.bad_epochs) != 0):
            return
        if max(self.ckpt.best.all_steps(), default=-1) >= step:
            return
        self.ckpt.save_best(state, step)
        self.logger.console(f"Wrote best/{step}: the checkpoint of step {step} is "
                            "the best validation one and best/ lacked it.")
