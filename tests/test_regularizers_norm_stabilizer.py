"""The norm stabilizer's penalty: by hand, its gradient at a zero state, and the linen
stack sowing it in training only."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
from regularizer_inputs import KEY, H, X

from rnnreg_jax import rnn
from rnnreg_jax.nn import StackedRNN
from rnnreg_jax.regularizers import norm_stabilizer, norm_stabilizer_penalty


def test_norm_stabilizer_penalty_by_hand():
    # norms: example 0: 5, 0, 10 -> diffs -5, 10; example 1: 1, 1, 2 -> 0, 1.
    h = jnp.array([[[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]],
                   [[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]]])
    expected = 2.0 * (25 + 100 + 0 + 1) / 4
    np.testing.assert_allclose(norm_stabilizer_penalty(h, 2.0), expected, rtol=1e-6)
    np.testing.assert_allclose(norm_stabilizer_penalty(jnp.swapaxes(h, 0, 1), 2.0, time_axis=0),
                               expected, rtol=1e-6)
    # Differences are taken within the window: a constant norm costs nothing.
    np.testing.assert_array_equal(norm_stabilizer_penalty(jnp.ones((2, 4, 3)), 5.0), 0.0)


def test_norm_stabilizer_gradient_at_a_zero_state_is_finite():
    """A zero h_t (kept initial state) used to give NaN through jnp.linalg.norm."""
    h = jnp.array([[[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]]])
    np.testing.assert_allclose(norm_stabilizer_penalty(h, 1.0), 25.0)
    grad = jax.grad(norm_stabilizer_penalty)(h, 1.0)
    assert np.all(np.isfinite(grad))
    # d/dh_1 of (|h_1| - 0)^2 + (0 - |h_1|)^2 = 4 |h_1| h_1/|h_1| / 2 terms = 2 h_1.
    np.testing.assert_allclose(grad[0, 1], [6.0, 8.0], rtol=1e-6)
    np.testing.assert_array_equal(grad[0, 0], 0.0)


def test_stacked_rnn_sows_the_penalty_only_in_training():
    reg = norm_stabilizer(3.0)
    model = StackedRNN((H, H), cell="gru", reg=reg)
    variables = model.init(KEY, X)
    _, state = model.apply(variables, X, deterministic=False, mutable=["penalties"])
    penalty = jax.tree_util.tree_leaves(state["penalties"])
    assert len(penalty) == 1
    layers = [variables["params"][f"layer_{i}"] for i in range(2)]
    _, _, hs = rnn.unroll("gru", layers, X, return_hiddens=True)
    expected = sum(norm_stabilizer_penalty(h, 3.0) for h in hs)
    np.testing.assert_allclose(penalty[0], expected, rtol=1e-5)
    assert penalty[0] > 0
    _, state = model.apply(variables, X, deterministic=True, mutable=["penalties"])
    assert not jax.tree_util.tree_leaves(flax.core.unfreeze(state).get("penalties", {}))


def test_penalties_of_a_one_step_window_are_zero():
    """A window of one step has no differences: the norm stabilizer and TAR are 0, as
    with `seq_lengths` of 1 (the plain mean over nothing was NaN, poisoning the loss)."""
    from rnnreg_jax.regularizers import temporal_activation_penalty
    one_step = X[:, :1]
    for penalty in (norm_stabilizer_penalty, temporal_activation_penalty):
        assert float(penalty(one_step, 1.0)) == 0.0
        lengths = np.ones(X.shape[0], np.int32)
        assert float(penalty(one_step, 1.0, seq_lengths=lengths)) == 0.0
    model = StackedRNN((H,), reg=norm_stabilizer(1.0))
    variables = model.init(KEY, one_step)
    _, state = model.apply(variables, one_step, deterministic=False, mutable=["penalties"],
                           rngs={"dropout": KEY})
    sown = jax.tree.leaves(state["penalties"])
    assert sown and all(float(v) == 0.0 for v in sown)
