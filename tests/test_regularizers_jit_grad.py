"""Every regularizer under jit and grad: finite gradients through 100 steps, in training
and evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from regularizer_inputs import KEY, make_params

import rnnreg_jax
from rnnreg_jax import cells
from rnnreg_jax.regularizers import (
    NormStabilizer,
    naive_dropout,
    norm_stabilizer,
    norm_stabilizer_penalty,
    recurrent_dropout,
    stochastic_depth,
    variational,
    weight_noise,
    zaremba,
    zoneout,
)

# Every regularizer of each cell appears in some bundle; the first LSTM one also in eval mode.
GRAD_BUNDLES = {
    "lstm": [zaremba(0.3) + zoneout(0.3, 0.2) + recurrent_dropout(0.3, output_zoneout=True)
             + stochastic_depth(0.2) + weight_noise(0.05) + norm_stabilizer(1.0)
             + naive_dropout(recurrent=0.3, cell=0.2, per_gate=True),
             variational(0.3, 0.3, 0.3, cell=0.2, per_gate=True)
             + zoneout(0.3, 0.3, shared=True, tie="sequence")
             + recurrent_dropout(0.3, tie="sequence")],
    "gru": [zaremba(0.3) + naive_dropout(recurrent=0.3, per_gate=True) + zoneout(hiddens=0.2)
            + recurrent_dropout(0.3) + stochastic_depth(0.2) + weight_noise(0.05)
            + norm_stabilizer(1.0),
            variational(0.3, 0.3, 0.3) + zoneout(hiddens=0.2, tie="sequence")
            + recurrent_dropout(0.3, tie="sequence")],
    "rnn": [zaremba(0.3) + naive_dropout(recurrent=0.3) + zoneout(hiddens=0.2)
            + recurrent_dropout(0.3) + stochastic_depth(0.2) + weight_noise(0.05)
            + norm_stabilizer(1.0),
            variational(0.3, 0.3, 0.3, per_gate=True) + zoneout(hiddens=0.2, tie="sequence")
            + recurrent_dropout(0.3, tie="sequence")],
}


@pytest.mark.parametrize("cell", cells.CELL_TYPES)
def test_jit_grad_finite_through_100_steps(cell):
    """Every regularizer (in bundles), train and eval, under jit, gradients through 100 steps."""
    params = make_params(cell, (3, 5))
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 100, 3)), jnp.float32)
    regs = GRAD_BUNDLES[cell]

    @jax.jit
    def grads(params, x, key):
        out = []
        for reg, det in [(r, False) for r in regs] + [(regs[0], True)] * (cell == "lstm"):
            def loss(params, x, reg=reg, det=det):
                ys, _, hs = rnnreg_jax.unroll(cell, params, x, reg=reg, key=key,
                                              deterministic=det, return_hiddens=True)
                beta = (reg.find(NormStabilizer) or NormStabilizer()).weight
                pen = sum(norm_stabilizer_penalty(h, beta) for h in hs)
                return jnp.mean(ys[:, -1] ** 2) + jnp.mean(ys ** 2) + pen
            out.append(jax.grad(loss, argnums=(0, 1))(params, x))
        return out

    results = grads(params, x, KEY)
    assert len(results) == len(regs) + (cell == "lstm")
    for g in results:
        for leaf in jax.tree_util.tree_leaves(g):
            assert np.all(np.isfinite(leaf))
        # The first input step still gets a gradient after 100 steps.
        assert np.any(g[1][:, 0] != 0)
        assert all(np.any(leaf != 0) for leaf in jax.tree_util.tree_leaves(g[0]))
