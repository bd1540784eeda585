"""Regularizers on bidirectional stacks: each family acts on both directions with their
own draws, input masks tied per direction, direction keys, evaluation mode, and penalties
as means over the directions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest
from bidirectional_helpers import DIRS, B, F, H, T

import rnnreg_jax as rj
from rnnreg_jax import bidirectional as bd
from rnnreg_jax import cells, noise, rnn
from rnnreg_jax.nn import Bidirectional
from rnnreg_jax.regularizers import penalties as pen


def run_directions(cell, params, x, reg, key, deterministic=False, **kwargs):
    """The stack's outputs and each layer's per-direction hiddens."""
    ys, carry, hiddens = bd.unroll_bidirectional(cell, params, x, reg=reg, key=key,
                                                 deterministic=deterministic,
                                                 return_hiddens=True, **kwargs)
    return ys, carry, hiddens


FAMILIES = {
    "variational": lambda cell: rj.variational(0.4, 0.3, per_gate=True),
    "naive": lambda cell: rj.naive_dropout(input=0.3, recurrent=0.3),
    "zaremba_hidden": lambda cell: rj.dropout("hidden", 0.4, tie="sequence"),
    "zoneout": lambda cell: rj.zoneout(0.3 if cell == "lstm" else 0.0, 0.3),
    "recurrent_dropout": lambda cell: rj.recurrent_dropout(0.4, output_zoneout=cell == "lstm"),
    "stochastic_depth": lambda cell: rj.stochastic_depth(0.3),
    "weight_drop": lambda cell: rj.weight_drop(0.5),
    "weight_noise": lambda cell: rj.weight_noise(0.3),
    "cell": lambda cell: rj.variational(cell=0.4),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_acts_on_both_directions_with_their_own_draws(family: str) -> None:
    """Both directions with the same parameters on a sequence constant in time compute the
    same hiddens, unless their noise differs: each regularizer family changes both
    directions' hiddens in training and draws different noise for the two."""
    cell = "lstm"
    reg = FAMILIES[family](cell)
    layer = cells.init_params(jax.random.key(0), cell, F, H, init_scale=0.5)
    upper = cells.init_params(jax.random.key(1), cell, H, H, init_scale=0.5)
    params = [{d: layer for d in DIRS}, {d: upper for d in DIRS}]
    x = jnp.broadcast_to(jax.random.normal(jax.random.key(2), (B, 1, F)), (B, T, F))
    # summed, layer 0's outputs read the same both ways in time, so layer 1's do too
    run = lambda reg, key, deterministic: run_directions(cell, params, x, reg, key,
                                                         deterministic, merge="sum")
    _, _, clean = run(rj.NONE, None, True)
    _, _, noisy = jax.jit(lambda k: run(reg, k, False))(jax.random.key(3))
    top = 1 if family == "zaremba_hidden" else 0  # "hidden" masks layer 1's input only
    for h in (clean[top], noisy[top]):
        assert h["forward"].shape == h["backward"].shape == (B, T, H)
    np.testing.assert_allclose(clean[top]["forward"], clean[top]["backward"][:, ::-1],
                               atol=1e-6)
    for d in DIRS:
        assert not np.allclose(noisy[top][d], clean[top][d], atol=1e-4), (family, d)
    assert not np.allclose(noisy[top]["forward"], noisy[top]["backward"][:, ::-1], atol=1e-4)


@pytest.mark.parametrize("tie", ["sequence", "step"])
def test_input_masks_tied_per_direction(tie: str) -> None:
    """The input masks read off a tanh RNN with `w_x = I`, `w_h = 0`, `b = 0` (so
    `h_t = tanh(x_t * m_t)`): tied masks are constant over time within each direction,
    per-step ones are not, and the two directions' masks differ."""
    eye = {"w_x": jnp.eye(H), "w_h": jnp.zeros((H, H)), "b": jnp.zeros(H)}
    params = [{d: eye for d in DIRS}]
    x = jnp.broadcast_to(jnp.linspace(0.2, 0.8, B * H).reshape(B, 1, H), (B, T, H))
    reg = rj.dropout("input", 0.5, tie=tie)
    _, _, hiddens = run_directions("rnn", params, x, reg, jax.random.key(7))
    masks = {d: np.arctanh(np.asarray(hiddens[0][d], np.float64)) / np.asarray(x)
             for d in DIRS}
    for d in DIRS:
        assert set(np.round(masks[d], 4).ravel()) <= {0.0, 2.0}, d
        constant = np.allclose(masks[d], masks[d][:, :1], atol=1e-4)
        assert constant == (tie == "sequence"), (d, tie)
    assert not np.allclose(masks["forward"], masks["backward"], atol=1e-4)


def test_directions_are_unidirectional_layers_with_direction_keys() -> None:
    """A one-layer stack's directions are `rnn.unroll` of each direction's parameters
    (the backward one on the reversed window) under `direction_key`, in training with
    every noise site on, and the output mask (network level) is the window key's."""
    cell = "lstm"
    params = bd.init_params(jax.random.key(0), cell, F, H)
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    carry = jax.tree.map(lambda a: a + 0.2, bd.initial_carry(cell, params, B))
    reg = (rj.variational(0.3, 0.2, per_gate=True) + rj.zoneout(0.2, 0.1)
           + rj.weight_drop(0.3) + rj.stochastic_depth(0.1))
    key = jax.random.key(4)

    @jax.jit
    def both(params, x, carry):
        ys, final = bd.unroll_bidirectional(cell, params, x, carry, reg=reg, key=key,
                                            deterministic=False)
        f, cf = rnn.unroll(cell, params[0]["forward"], x, carry[0]["forward"], reg=reg,
                           key=bd.direction_key(key, "forward"), deterministic=False)
        b, cb = rnn.unroll(cell, params[0]["backward"], x[:, ::-1], carry[0]["backward"],
                           reg=reg, key=bd.direction_key(key, "backward"),
                           deterministic=False)
        return ys, final, jnp.concatenate([f, b[:, ::-1]], -1), [{"forward": cf,
                                                                  "backward": cb}]

    ys, final, expected, expected_final = both(params, x, carry)
    nm.assert_trees_close_f32((ys, final), (expected, expected_final))

    out_reg = reg + rj.variational(output=0.5)
    dropped = bd.unroll_bidirectional(cell, params, x, carry, reg=out_reg, key=key,
                                      deterministic=False)[0]
    mask = noise.output_mask(out_reg, key, B, T, 2 * H, False)  # [B, 2H], tied
    nm.assert_close_f32(dropped, ys * mask[:, None, :])


def test_deterministic_mode_is_noise_free_and_needs_no_key() -> None:
    """Evaluation: dropout and weight noise are the identity (== no regularizer), and a
    regularizer whose expectation is not (zoneout) needs no key and repeats."""
    cell = "gru"
    params = bd.init_params(jax.random.key(0), cell, F, (H, H))
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    dropout_only = (rj.variational(0.3, 0.3, 0.3) + rj.dropout("hidden", 0.2)
                    + rj.weight_drop(0.4) + rj.weight_noise(0.2))
    clean = bd.unroll_bidirectional(cell, params, x)
    evaluated = bd.unroll_bidirectional(cell, params, x, reg=dropout_only, key=None)
    nm.assert_trees_close_f32(evaluated, clean)
    expectation = rj.zoneout(hiddens=0.3)
    first = bd.unroll_bidirectional(cell, params, x, reg=expectation)[0]
    again = bd.unroll_bidirectional(cell, params, x, reg=expectation,
                                    key=jax.random.key(9))[0]
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, clean[0], atol=1e-4)


def test_penalties_are_means_over_directions() -> None:
    """AR on the merged output, TAR and the norm stabilizer the mean over the two
    directions of their unidirectional values: as the module sows them in training."""
    cell = "lstm"
    reg = (rj.activation_regularization(2.0) + rj.temporal_activation_regularization(1.0)
           + rj.norm_stabilizer(3.0))
    module = Bidirectional((H, 2), cell=cell, reg=reg)
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    variables = module.init(jax.random.key(0), x)
    (ys, _), state = module.apply(variables, x, deterministic=False, mutable=["penalties"])
    sown = {name: value[0] for name, value in state["penalties"].items()}
    params = [variables["params"][f"layer_{i}"] for i in range(2)]
    ys_pure, _, hiddens = bd.unroll_bidirectional(cell, params, x, return_hiddens=True)
    nm.assert_close_f32(ys, ys_pure)
    top = hiddens[-1]
    expected = {
        "activation_reg": pen.activation_penalty(ys_pure, 2.0),
        "temporal_activation_reg": (pen.temporal_activation_penalty(top["forward"], 1.0)
                                    + pen.temporal_activation_penalty(top["backward"], 1.0)) / 2,
        "norm_stabilizer": sum(pen.norm_stabilizer_penalty(h[d], 3.0)
                               for h in hiddens for d in DIRS) / 2,
    }
    assert set(sown) == set(expected)
    for name, value in expected.items():
        nm.assert_close_f32(sown[name], value, err_msg=name)
        assert float(value) > 0, name
    nm.assert_trees_close_f32(bd.penalties(reg, params, hiddens, ys_pure, 1), expected)
    assert "penalties" not in module.apply(variables, x, mutable=["penalties"])[1]
