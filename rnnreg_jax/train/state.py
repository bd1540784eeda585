"""The training state: one pytree holding everything a resumed run needs."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import numpy as np


class TrainState(flax.struct.PyTreeNode):
    """Everything that defines a run at a step boundary.

    All leaves are arrays, so the whole state is checkpointed by orbax and
    passed through `jax.jit` in one piece.

    Attributes:
      step: global optimizer step (int32 scalar), number of updates done.
      epoch: current epoch, 0-based (int32).
      batch_in_epoch: the next batch of the epoch to train on (data position).
      params: model parameters (replicated).
      opt_state: optax state; holds the learning rate (`inject_hyperparams`).
      key: raw uint32[2] PRNG key of the run; step s uses `fold_in(key, s)`.
      carry: LM hidden state carried between windows (sharded on the batch
        axis), or an empty dict.
      best_metric: best validation metric so far (lower is better; inf).
      bad_epochs: epochs since the validation metric last improved.
      model_state: the model's variables other than parameters, by collection
        (`{"batch_stats": ...}` for `lstm_bn`'s population statistics;
        replicated), updated by every train step; an empty dict for models
        without any.
    """

    step: jax.Array
    epoch: jax.Array
    batch_in_epoch: jax.Array
    params: Any
    opt_state: Any
    key: jax.Array
    carry: Any
    best_metric: jax.Array
    bad_epochs: jax.Array
    model_state: Any = flax.struct.field(default_factory=dict)

    @property
    def learning_rate(self) -> jax.Array:
        """The current learning rate (lives in the optimizer state)."""
        return self.opt_state.hyperparams["learning_rate"]

    def with_learning_rate(self, lr: float) -> TrainState:
        """A copy with the learning rate set (same sharding and dtype)."""
        old = self.opt_state.hyperparams["learning_rate"]
        new = jax.device_put(np.asarray(lr, old.dtype), old.sharding)
        hyper = dict(self.opt_state.hyperparams, learning_rate=new)
        return self.replace(opt_state=self.opt_state._replace(hyperparams=hyper))

