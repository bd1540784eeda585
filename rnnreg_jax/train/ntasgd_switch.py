"""The training loop's host side of NT-ASGD (`optimizer="ntasgd"`): the epoch-end
validation history, the moment averaging starts, and the weights evaluation reads.

The optax transform (`ntasgd.ntasgd`) only averages once told to; the decision needs
the whole validation history, which lives on the host and, on resume, is read back
from the run's metrics (`evaluation.validation_history`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from rnnreg_jax.train import ntasgd


class AveragingSwitch:
    """Decides, after each epoch-end validation, whether averaging starts (AWD-LSTM's
    non-monotone trigger over `history`), and gives the weights to evaluate.

    Args:
      state: the run's `TrainState` (its optimizer state says whether averaging is on).
      shardings: the state's shardings (`steps.state_shardings`).
      nonmono: the trigger's n (`config.ntasgd_nonmono`).
      history: the validation values of the epochs before this one, oldest first.
    """

    def __init__(self, state, shardings, nonmono: int, history: Sequence[float] = ()):
        self.nonmono = nonmono
        self.averaging = bool(ntasgd.is_averaging(state.opt_state))
        self.history = [float(v) for v in history]
        self._averaged = jax.jit(ntasgd.averaged_params, out_shardings=shardings.params)
        self._start = jax.jit(lambda s: s.replace(opt_state=ntasgd.start_averaging(s.opt_state)),
                              out_shardings=shardings, donate_argnums=0)

    def eval_params(self, state):
        """The average once averaging is on (and has seen an update), else the
        parameters (the non-parameter `model_state` is never averaged)."""
        return self._averaged(state.opt_state, state.params)

    def after_validation(self, state, value: float):
        """Hear an epoch's validation `value`: (the state, with averaging switched on if
        the trigger fires now; whether it did)."""
        started = not self.averaging and ntasgd.nonmono_trigger(self.history, value,
                                                                self.nonmono)
        if started:
            state, self.averaging = self._start(state), True
        self.history.append(float(value))
        return state, started
