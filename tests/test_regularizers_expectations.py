"""Evaluation mode as each regularizer's expectation (mixing by its rate, dropout as the
identity, update dropout's two scalings), and the rates' end points: 0 is the plain cell,
1 keeps the initial state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from regularizer_inputs import KEY, PARAMS, B, F, H, T, X, run

from rnnreg_jax import cells, noise
from rnnreg_jax.regularizers import (
    NONE,
    Dropout,
    MaskSpec,
    RecurrentDropout,
    embedding_dropout,
    naive_dropout,
    recurrent_dropout,
    stochastic_depth,
    variational,
    weight_noise,
    zaremba,
    zoneout,
)


def _plain_step_by_hand(cell, p, carry, x_t):
    return cells.get_step(cell)(p, carry, x_t @ p["w_x"] + p["b"])


@pytest.mark.parametrize("cell", cells.CELL_TYPES)
@pytest.mark.parametrize("kind", ["zoneout", "depth"])
def test_deterministic_mixing_is_the_expectation_of_the_plain_cell(cell, kind):
    """Eval: h_t = z h_{t-1} + (1 - z) h~ (c likewise), h~ and c~ from the plain cell."""
    lstm = cell == "lstm"
    if kind == "zoneout":
        zc, zh = (0.3 if lstm else 0.0), 0.6
        reg = zoneout(zc, zh)
    else:
        zc = zh = 0.6
        reg = stochastic_depth(0.6)
    p = PARAMS[cell][0]
    ys, final = run(cell, p, X, reg=reg, deterministic=True)
    zc, zh = noise.quantize_probability(zc), noise.quantize_probability(zh)  # as drawn
    carry = cells.init_carry(cell, B, H)
    for t in range(T):
        new, _ = _plain_step_by_hand(cell, p, carry, X[:, t])
        mixed = {"h": zh * carry["h"] + (1 - zh) * new["h"]}
        if lstm:
            mixed["c"] = zc * carry["c"] + (1 - zc) * new["c"]
        carry = mixed
        np.testing.assert_allclose(ys[:, t], carry["h"], rtol=1e-5, atol=1e-6)
    for name in carry:
        np.testing.assert_allclose(final[name], carry[name], rtol=1e-5, atol=1e-6)


def test_deterministic_output_zoneout_formula():
    """Eval: o_t = p o_{t-1} + (1 - p) o~_t, h_t = o_t tanh(c_t); c_t is the plain cell's."""
    p = PARAMS["lstm"][0]
    ys, final = run("lstm", p, X, reg=recurrent_dropout(0.4, output_zoneout=True))
    p_drop = noise.quantize_probability(0.4)  # as drawn
    h = c = o = jnp.zeros((B, H))
    for t in range(T):
        z = X[:, t] @ p["w_x"] + p["b"] + h @ p["w_h"]
        i, f, g, o_new = (z[:, k * H:(k + 1) * H] for k in range(4))
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        o = p_drop * o + (1 - p_drop) * jax.nn.sigmoid(o_new)
        h = o * jnp.tanh(c)
        np.testing.assert_allclose(ys[:, t], h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final["o"], o, rtol=1e-5, atol=1e-6)


# Every dropout site and weight noise (two specs, as Zaremba and Gal set `input` differently).
DROPOUT_ONLY = [zaremba(0.5) + naive_dropout(recurrent=0.5) + recurrent_dropout(0.5)
                + weight_noise(0.5),
                variational(0.5, 0.5, 0.5, per_gate=True, embedding=0.5)
                + recurrent_dropout(0.5, tie="sequence")]


@pytest.mark.parametrize("cell", cells.CELL_TYPES)
def test_deterministic_dropout_and_weight_noise_equal_the_plain_cell_exactly(cell):
    plain, plain_carry = run(cell, PARAMS[cell], X)
    for reg in DROPOUT_ONLY:
        if cell == "lstm":
            reg = reg + variational(cell=0.5)
        ys, carry = run(cell, PARAMS[cell], X, reg=reg, deterministic=True)
        np.testing.assert_array_equal(ys, plain)
        for a, b in zip(carry, plain_carry, strict=True):
            np.testing.assert_array_equal(a["h"], b["h"])


ZERO_RATE = [zaremba(0.0), variational(0.0, 0.0, 0.0, cell=0.0, per_gate=True),
             naive_dropout(input=0.0), zoneout(0.0, 0.0), recurrent_dropout(0.0),
             stochastic_depth(0.0), weight_noise(0.0), embedding_dropout(0.0),
             Dropout(input=MaskSpec(0.0, "step"), recurrent=MaskSpec(0.0))]


@pytest.mark.parametrize("cell", cells.CELL_TYPES)
def test_rate_zero_equals_the_plain_cell_bit_for_bit(cell):
    plain, _ = run(cell, PARAMS[cell], X)
    for reg in ZERO_RATE:
        ys, _ = run(cell, PARAMS[cell], X, reg=reg, key=KEY, deterministic=False)
        np.testing.assert_array_equal(ys, plain)


@pytest.mark.parametrize("cell", cells.CELL_TYPES)
@pytest.mark.parametrize("kind", ["zoneout", "depth"])
def test_probability_one_keeps_the_initial_state_forever(cell, kind):
    lstm = cell == "lstm"
    if kind == "zoneout":
        reg = zoneout(1.0 if lstm else 0.0, 1.0)
    else:
        reg = stochastic_depth(1.0)
    rng = np.random.default_rng(3)
    carry = {"h": jnp.asarray(rng.normal(size=(B, H)), jnp.float32)}
    if lstm:
        carry["c"] = jnp.asarray(rng.normal(size=(B, H)), jnp.float32)
    x = jnp.tile(X, (1, 8, 1))  # 40 steps
    ys, final = run(cell, PARAMS[cell][0], x, carry, reg=reg, key=KEY, deterministic=False)
    # `cells.mix` is d * prev + (1 - d) * new: with d = 1 it keeps prev bit for bit, over
    # 40 steps, on any CPU (1 * x + 0 * y is x in IEEE arithmetic, fused or not).
    np.testing.assert_array_equal(ys, jnp.broadcast_to(carry["h"][:, None], ys.shape))
    for name in carry:
        np.testing.assert_array_equal(final[name], carry[name])
    # Zero state stays exactly zero.
    ys, _ = run(cell, PARAMS[cell][0], x, cells.init_carry(cell, B, H), reg=reg, key=KEY,
                deterministic=False)
    np.testing.assert_array_equal(ys, 0.0)


@pytest.mark.parametrize("eval_scaling", [False, True])
def test_update_dropout_scaling_in_training_and_evaluation(eval_scaling):
    """Inverted dropout: masks {0, 1/q}, identity at evaluation. The zoneout authors'
    form: masks {0, 1}, the update times q at evaluation. Both have E[mask] = q."""
    rate = 0.5
    reg = recurrent_dropout(rate, eval_scaling=eval_scaling)
    train = noise.layer_noise(reg, KEY, 0, "lstm", 64, T, F, H, deterministic=False)
    q = noise.quantize_probability(1 - rate)
    values = np.unique(np.asarray(train.per_step.update))
    np.testing.assert_allclose(values, [0.0, 1.0] if eval_scaling else [0.0, 1.0 / q])
    p = PARAMS["lstm"][0]
    ys, _ = run("lstm", p, X, reg=reg, deterministic=True)
    h = c = jnp.zeros((B, H))
    for t in range(T):
        z = X[:, t] @ p["w_x"] + p["b"] + h @ p["w_h"]
        i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
        update = jnp.tanh(g) * (q if eval_scaling else 1.0)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * update
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        np.testing.assert_allclose(ys[:, t], h, rtol=1e-5, atol=1e-6)


def test_update_eval_scaling_needs_update_dropout():
    with pytest.raises(ValueError, match="update_eval_scaling needs"):
        RecurrentDropout(eval_scaling=True)
    assert recurrent_dropout(0.0, eval_scaling=True) == NONE
