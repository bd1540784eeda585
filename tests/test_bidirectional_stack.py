"""`unroll_bidirectional` as a stack: merges and stacking, the cells it runs, its fused,
autodiff and Pallas implementations agreeing, and its one-sentence errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest
from bidirectional_helpers import BF16, DIRS, B, F, H, T

import rnnreg_jax as rj
from rnnreg_jax import bidirectional as bd
from rnnreg_jax import cells


def test_sum_merge_and_stacking() -> None:
    """`merge="sum"` adds the directions' outputs (the concat halves); a two-layer stack
    is two one-layer stacks chained, under either merge."""
    cell = "rnn"
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    for merge, width in (("concat", 2 * H), ("sum", H)):
        params = bd.init_params(jax.random.key(0), cell, F, (H, H), merge=merge)
        assert params[1]["forward"]["w_x"].shape == (width, H)
        ys, carry = bd.unroll_bidirectional(cell, params, x, merge=merge)
        assert ys.shape == (B, T, width)
        first, c0 = bd.unroll_bidirectional(cell, params[:1], x, merge=merge)
        single = bd.unroll_bidirectional(cell, params[0], x, c0[0], merge=merge)
        assert set(single[1]) == set(DIRS)  # a single layer's dict in, its carry dict out
        second, c1 = bd.unroll_bidirectional(cell, params[1:], first, merge=merge)
        nm.assert_trees_close_f32((ys, carry), (second, c0 + c1))
        concat = bd.unroll_bidirectional(cell, params[:1], x)[0]
        if merge == "sum":
            nm.assert_close_f32(first, concat[..., :H] + concat[..., H:])
    time_major = bd.unroll_bidirectional(cell, params, jnp.swapaxes(x, 0, 1), merge="sum",
                                         time_major=True)[0]
    nm.assert_close_f32(jnp.swapaxes(time_major, 0, 1), ys)


def all_sites(cell: str):
    return (rj.variational(0.3, 0.2, 0.4, per_gate=True) + rj.recurrent_dropout(0.3)
            + rj.zoneout(0.2 if cell == "lstm" else 0.0, 0.2) + rj.stochastic_depth(0.1)
            + rj.weight_noise(0.05))


@pytest.mark.parametrize("cell,sizes", [
    ("lstm", (H,)), pytest.param("gru", (H, 2), marks=pytest.mark.slow),
    pytest.param("lstm", (H, 2), marks=pytest.mark.slow)])
def test_fused_equals_autodiff_jit_and_grad(cell: str, sizes) -> None:
    """Both backward passes give the same value and gradients (float64 to rounding,
    float32 to its tolerance) through a stack with every noise site on; the jitted
    gradients reach both directions of every layer."""
    reg = all_sites(cell)
    params = bd.init_params(jax.random.key(0), cell, F, sizes)
    x = jax.random.normal(jax.random.key(9), (B, T, F))
    carry = jax.tree.map(lambda a: a + 0.1, bd.initial_carry(cell, params, B, reg))
    key = jax.random.key(3)

    def loss_of(implementation):
        def loss(params, x, carry):
            ys, final = bd.unroll_bidirectional(cell, params, x, carry, reg=reg, key=key,
                                                deterministic=False,
                                                implementation=implementation)
            return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(v ** 3) for v in jax.tree.leaves(final))
        return loss

    out = nm.assert_fused_matches_autodiff(loss_of, params, x, carry)
    g_params = out["fused"][1][0]
    for layer in g_params:
        for d in DIRS:
            assert float(jnp.abs(layer[d]["w_h"]).max()) > 0, d


def test_lstm_ln_and_a_users_cell_fall_out() -> None:
    """The layer-normalized LSTM runs bidirectionally; cells with running statistics are
    refused."""
    params = bd.init_params(jax.random.key(0), "lstm_ln", F, H)
    ys, carry = bd.unroll_bidirectional("lstm_ln", params, jnp.ones((B, T, F)),
                                        reg=rj.zoneout(0.1, 0.1), key=jax.random.key(1),
                                        deterministic=False)
    assert ys.shape == (B, T, 2 * H) and np.all(np.isfinite(ys))
    assert set(carry[0]["backward"]) == {"h", "c"}
    with pytest.raises(ValueError, match="without running statistics"):
        bd.unroll_bidirectional("lstm_bn", params, jnp.ones((B, T, F)))


def test_pallas_directions_equal_the_scan_or_refuse_in_one_sentence() -> None:
    """`implementation="pallas"` (interpreted on CPU) runs both directions as the fused
    scan does, with noise; variable lengths and a compute dtype it refuses."""
    cell = "lstm"
    reg = rj.variational(0.3, 0.2, 0.3, per_gate=True) + rj.zoneout(0.2, 0.1)
    params = bd.init_params(jax.random.key(0), cell, F, H)
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    run = lambda implementation, **kw: bd.unroll_bidirectional(
        cell, params, x, reg=reg, key=jax.random.key(2), deterministic=False,
        implementation=implementation, **kw)
    nm.assert_trees_close_f32(jax.jit(lambda: run("pallas"))(), jax.jit(lambda: run("fused"))())
    with pytest.raises(ValueError, match="seq_lengths.*not supported by implementation='pallas'"):
        run("pallas", seq_lengths=np.array([6, 2, 3]))
    with pytest.raises(ValueError, match="dtype.*not supported by implementation='pallas'"):
        run("pallas", dtype=BF16)


def test_bad_inputs_are_one_sentence_errors() -> None:
    cell = "lstm"
    params = bd.init_params(jax.random.key(0), cell, F, (H, H))
    x = jnp.ones((B, T, F))
    carry = bd.initial_carry(cell, params, B)
    cases = [
        (dict(merge="mean"), "merge must be one of"),
        (dict(carry=carry[:1]), "Got 1 carries for 2 bidirectional layers"),
        (dict(carry=[c["forward"] for c in carry]), "carry must be a dict with keys"),
        (dict(params=[p["forward"] for p in params]), "params must be a dict with keys"),
        (dict(params=[]), "at least one layer"),
        (dict(merge="sum"), "Layer 1's forward w_x reads 6 features, but its input has 3"),
        (dict(x=jnp.ones((B, T, F + 1))), "Layer 0's forward w_x reads 4 features"),
        (dict(reg=rj.variational(0.3), deterministic=False), "PRNG key is required"),
        (dict(seq_lengths=np.array([1, 2])), r"shape \[B\] = \(3,\)"),
        (dict(seq_lengths=np.array([1, 2, 0])), r"in \[1, T\] = \[1, 6\]"),
        (dict(cell="transformer"), "transformer"),
    ]
    for overrides, match in cases:
        kwargs = dict(cell=cell, params=params, x=x, carry=None) | overrides
        with pytest.raises(ValueError, match=match):
            bd.unroll_bidirectional(kwargs.pop("cell"), kwargs.pop("params"), kwargs.pop("x"),
                                    kwargs.pop("carry"), **kwargs)
    unequal = bd.init_params(jax.random.key(0), cell, F, H)
    unequal[0]["backward"] = cells.init_params(jax.random.key(1), cell, F, H + 1)
    with pytest.raises(ValueError, match="merge='sum' needs both directions"):
        bd.unroll_bidirectional(cell, unequal, x, merge="sum")


def test_unroll_checks_apply_to_both_directions() -> None:
    """`unroll`'s argument, params and carry checks, made for each direction (a `[B, F]`
    input named the wrong width, a missing `reg` was an AttributeError, another cell's
    params a KeyError, integer inputs and `unroll=0` ran)."""
    cell = "lstm"
    params = bd.init_params(jax.random.key(0), cell, F, (H, H))
    x = jnp.ones((B, T, F))
    narrow = bd.initial_carry(cell, params, B)
    narrow[0]["backward"] = {"h": jnp.zeros((B, H + 1)), "c": jnp.zeros((B, H + 1))}
    cases = [
        (dict(x=jnp.ones((B, F))), r"inputs of unroll_bidirectional must be \[B, T, F\]"),
        (dict(x=jnp.ones((1, B, T, F))), r"must be \[B, T, F\], got shape \(1, "),
        (dict(x=jnp.ones((B, T, F), jnp.int32)), "inputs' dtype must be a floating dtype"),
        (dict(reg=None), "reg must be a regularizer"),
        (dict(reg=rj.zaremba), "call it: its result is the regularizer"),
        (dict(cell="gru"), r"Layer 0's params lack \['b_h'\], which a gru cell"),
        (dict(unroll=0), "unroll must be a whole number >= 1, got 0"),
        (dict(forget_bias="1"), "forget_bias must be a number"),
        (dict(deterministic="False"), "deterministic must be True or False"),
        (dict(carry=narrow), r"Layer 0 \(backward\)'s carry\['h'\] has 4 units, but its w_h "
                             "has 3"),
    ]
    for overrides, match in cases:
        kwargs = dict(cell=cell, params=params, x=x, carry=None) | overrides
        with pytest.raises(ValueError, match=match):
            bd.unroll_bidirectional(kwargs.pop("cell"), kwargs.pop("params"), kwargs.pop("x"),
                                    kwargs.pop("carry"), **kwargs)


def test_frozen_dict_params_are_one_layer() -> None:
    """A FrozenDict of directions is one layer, as a dict is."""
    from flax.core import freeze
    layer = bd.init_params(jax.random.key(0), "lstm", F, H)[0]
    x = jnp.ones((B, T, F))
    ys, carry = bd.unroll_bidirectional("lstm", freeze(layer), x)
    expected, _ = bd.unroll_bidirectional("lstm", layer, x)
    np.testing.assert_array_equal(ys, expected)
    assert set(carry) == set(DIRS)
