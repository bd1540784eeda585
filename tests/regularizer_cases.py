"""One regularizer per family (and compositions touching every step-level site), as
functions of the cell (LSTM-only sites on cells with a memory cell), for the tests that
compare two implementations of the recurrence case by case (tests/test_fused.py and
tests/test_keras_cells.py: fused vs autodiff; tests/test_pallas.py: Pallas vs the scan),
so a family added here is checked by all of them; and the scalar those tests
differentiate."""

import jax
import jax.numpy as jnp

import rnnreg_jax as rj
from rnnreg_jax import cells, rnn


def _lstm(cell) -> bool:
    return cells.has_memory(cell)

REGS = {
    "none": lambda cell: rj.NONE,
    "zaremba": lambda cell: rj.zaremba(0.3),
    "variational_per_gate": lambda cell: rj.variational(0.3, 0.2, 0.4, per_gate=True),
    "variational_shared": lambda cell: rj.variational(0.3, 0.2, 0.4),
    "naive_per_gate": lambda cell: rj.naive_dropout(input=0.2, recurrent=0.3, per_gate=True),
    "naive_shared": lambda cell: rj.naive_dropout(input=0.2, recurrent=0.3),
    "zoneout": lambda cell: rj.zoneout(0.3 if _lstm(cell) else 0.0, 0.2),
    "zoneout_tied": lambda cell: rj.zoneout(0.3 if _lstm(cell) else 0.0, 0.2,
                                            tie="sequence"),
    "recurrent_dropout": lambda cell: rj.recurrent_dropout(0.3, output_zoneout=_lstm(cell)),
    "recurrent_dropout_eval_scaling": lambda cell: rj.recurrent_dropout(
        0.3, output_zoneout=_lstm(cell), eval_scaling=True),
    "variational_classic": lambda cell: rj.variational(0.3, 0.2, 0.4, embedding=0.0,
                                                       per_gate=True, eval_scaling=True),
    "stochastic_depth": lambda cell: rj.stochastic_depth(0.2),
    "weight_drop": lambda cell: rj.weight_drop(0.4),
    "weight_noise": lambda cell: rj.weight_noise(0.1),
    "cell_dropout": lambda cell: rj.variational(cell=0.3) if _lstm(cell) else rj.NONE,
    # every step-level site at once (per-gate recurrent masks)
    "all": lambda cell: (rj.variational(0.3, 0.2, 0.4, per_gate=True)
                         + rj.recurrent_dropout(0.3, output_zoneout=_lstm(cell))
                         + rj.zoneout(0.2 if _lstm(cell) else 0.0, 0.2)
                         + rj.stochastic_depth(0.1) + rj.weight_noise(0.05)),
    # and with a shared per-step recurrent mask, rnnDrop's cell mask and weight drop
    "all_shared": lambda cell: (rj.naive_dropout(input=0.2, recurrent=0.3)
                                + (rj.variational(cell=0.3) if _lstm(cell) else rj.NONE)
                                + rj.zoneout(0.2 if _lstm(cell) else 0.0, 0.2,
                                             tie="sequence")
                                + rj.weight_drop(0.3)),
}


def stack_loss(cell, reg, deterministic, implementation):
    """`(params, x, carry) -> scalar` of a stack's outputs and final states through
    `rnn.unroll` with `implementation`, every mask drawn from one fixed key."""
    key = jax.random.key(3)

    def loss(params, x, carry):
        ys, carry = rnn.unroll(cell, params, x, carry, reg=reg, key=key,
                               deterministic=deterministic, implementation=implementation)
        state = sum(jnp.sum(v**3) for c in carry for v in c.values())
        return jnp.sum(jnp.sin(ys)) + state

    return loss
