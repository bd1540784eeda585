"""Tests of `rnnreg_jax.rnn.unroll`: jit/grad, carried state, layouts, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest

from rnnreg_jax import cells, rnn
from rnnreg_jax.regularizers import (
    NONE,
    Regularizer,
    recurrent_dropout,
    stochastic_depth,
    variational,
    zoneout,
)

B, T, F, H = 3, 6, 5, 4
ALL_CELLS = ("lstm", "gru", "rnn")


# Test data comes from numpy: every eager JAX op compiles a tiny program, which
# dominates the run time of small tests on a 2-core machine.


def make_params(cell: str, num_layers: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Layers of widths H, H + 1, ... with weights uniform in [-0.5, 0.5]."""
    rng = np.random.default_rng(seed)
    sizes = [F] + [H + k for k in range(num_layers)]  # distinct widths per layer
    gates = cells.NUM_GATES[cell]
    layers = []
    for k in range(num_layers):
        width = gates * sizes[k + 1]
        shapes = {"w_x": (sizes[k], width), "w_h": (sizes[k + 1], width), "b": (width,)}
        if cell == "gru":
            shapes["b_h"] = (width,)
        layers.append({name: rng.uniform(-0.5, 0.5, shape).astype(np.float32)
                       for name, shape in shapes.items()})
    return layers


def inputs(time_major: bool = False, steps: int = T, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((B, steps, F)).astype(np.float32)
    return np.swapaxes(x, 0, 1) if time_major else x


unroll = jax.jit(rnn.unroll, static_argnums=0, static_argnames=(
    "reg", "deterministic", "time_major", "unroll", "return_hiddens"))


def eval_reg(cell: str) -> Regularizer:
    """A regularizer whose deterministic mode is not the identity (zoneout + depth)."""
    reg = zoneout(cells=0.3, hiddens=0.2) if cell == "lstm" else zoneout(hiddens=0.2)
    return reg + stochastic_depth(0.1)


def assert_tree_close(a, b) -> None:
    """float32, leaf by leaf: rtol 1e-5 plus 100 ulps of the leaf's largest magnitude."""
    nm.assert_trees_close_f32(a, b)


# Every cell meets all four (layers, layout) pairs, and each of the
# unregularized / eval-mode-regularized settings meets both layer counts and
# both layouts: a covering table, half the compiles of the full product.
ROUND_TRIP_CASES = [
    (cell, num_layers, time_major, regularized)
    for cell in ALL_CELLS
    for num_layers, time_major, regularized in [
        (1, False, False), (2, True, False), (1, True, True), (2, False, True)]
]


@pytest.mark.parametrize("cell,num_layers,time_major,regularized", ROUND_TRIP_CASES)
def test_carry_round_trip(cell: str, num_layers: int, time_major: bool,
                          regularized: bool) -> None:
    """Unrolling T steps equals unrolling T1 then T2 steps from the carried state."""
    reg = eval_reg(cell) if regularized else NONE
    params = make_params(cell, num_layers)
    axis = 0 if time_major else 1
    first, second = np.split(inputs(time_major), [T // 2], axis=axis)

    @jax.jit  # one compile per case: the whole window, both halves, a reset second half
    def run(first, second):
        run = lambda x, c: rnn.unroll(cell, params, x, c, reg=reg, time_major=time_major)
        carry0 = rnn.initial_carry(cell, params, B, reg)
        ys, final = run(jnp.concatenate([first, second], axis=axis), carry0)
        ys1, mid = run(first, carry0)
        ys2, final2 = run(second, mid)
        return ys, final, jnp.concatenate([ys1, ys2], axis=axis), final2, run(second, carry0)[0]

    ys, final, ys_halves, final2, ys_reset = run(first, second)
    width = H + num_layers - 1
    assert ys.shape == ((T, B, width) if time_major else (B, T, width))
    assert_tree_close(ys_halves, ys)
    assert_tree_close(final2, final)
    # The carry matters: restarting the second half from zeros gives other outputs.
    assert not np.allclose(ys_reset, np.split(ys, [T // 2], axis=axis)[1], atol=1e-4)


def test_carry_round_trip_output_zoneout_in_eval() -> None:
    """The LSTM's previous output gate travels in the carry (output zoneout)."""
    reg = recurrent_dropout(0.3, output_zoneout=True)
    params = make_params("lstm", 2)
    run = jax.jit(lambda x, c: rnn.unroll("lstm", params, x, c, reg=reg))
    carry0 = rnn.initial_carry("lstm", params, B, reg)
    assert all(set(c) == {"h", "c", "o"} for c in carry0)
    x = inputs()
    ys, final = run(x, carry0)
    ys1, mid = run(x[:, :3], carry0)
    ys2, final2 = run(x[:, 3:], mid)
    assert_tree_close(np.concatenate([ys1, ys2], axis=1), ys)
    assert_tree_close(final2, final)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_jit_and_grad(cell: str) -> None:
    """`unroll` under jit and grad: the gradient reaches every weight and the input."""
    params = make_params(cell, 2 if cell == "lstm" else 1)
    x = inputs()
    reg = variational(input=0.2, recurrent=0.2, output=0.2)
    key = jax.random.key(7)

    def loss(params, x):
        ys, carry = rnn.unroll(cell, params, x, reg=reg, key=key, deterministic=False)
        return jnp.sum(ys**2) + sum(jnp.sum(c["h"]) for c in carry)

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    value, (g_params, g_x) = value_and_grad(params, x)
    assert np.isfinite(value)
    for g in jax.tree.leaves(g_params) + [g_x]:
        assert np.all(np.isfinite(g)) and np.any(g != 0)
    # A central finite difference agrees with the gradient along one direction.
    direction = jax.tree.map(lambda p: np.sign(p) * 1e-3, params)
    plus, _ = value_and_grad(jax.tree.map(np.add, params, direction), x)
    minus, _ = value_and_grad(jax.tree.map(np.subtract, params, direction), x)
    analytic = 2 * sum(float(np.vdot(g, d)) for g, d in
                       zip(jax.tree.leaves(g_params), jax.tree.leaves(direction), strict=True))
    np.testing.assert_allclose(float(plus - minus), analytic, rtol=2e-2)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_stack_equals_layer_by_layer(cell: str) -> None:
    """A stack is the layers run in sequence; one dict in, one dict carry out."""
    params = make_params(cell, 2)
    x = inputs()
    ys, carry, hiddens = unroll(cell, params, x, return_hiddens=True)
    y0, c0 = unroll(cell, params[0], x)
    y1, c1 = unroll(cell, params[1], y0)
    assert isinstance(c0, dict) and isinstance(carry, list) and len(carry) == 2
    assert_tree_close([y0, y1], hiddens)
    assert_tree_close(y1, ys)
    assert_tree_close([c0, c1], carry)


def test_time_major_is_a_transpose() -> None:
    """`time_major=True` transposes inputs and outputs; eager equals jit."""
    params = make_params("lstm", 2)
    x = inputs()
    ys, carry = rnn.unroll("lstm", params, x)  # eager
    assert_tree_close(unroll("lstm", params, x), (ys, carry))
    ys_tm, carry_tm = unroll("lstm", params, np.swapaxes(x, 0, 1), time_major=True)
    assert_tree_close(np.swapaxes(ys_tm, 0, 1), ys)
    assert_tree_close(carry_tm, carry)


def test_keys_and_modes() -> None:
    """Same key same output; another key differs; eval dropout is the identity."""
    params = make_params("lstm", 2)
    x = inputs()
    reg = variational(input=0.3, recurrent=0.3, output=0.3)
    run = lambda key: unroll("lstm", params, x, reg=reg, key=key, deterministic=False)[0]
    a, b, c = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    plain, _ = unroll("lstm", params, x)
    assert not np.allclose(a, plain)
    evaluated, _ = unroll("lstm", params, x, reg=reg, deterministic=True)
    assert_tree_close(evaluated, plain)


def test_errors() -> None:
    """Missing key in training, carry/layer mismatch, unknown cell, LSTM-only sites."""
    params = make_params("gru", 2)
    x = inputs()
    with pytest.raises(ValueError, match="PRNG key is required"):
        rnn.unroll("gru", params, x, reg=zoneout(hiddens=0.1), deterministic=False)
    with pytest.raises(ValueError, match="1 carries for 2 layers"):
        rnn.unroll("gru", params, x, [cells.init_carry("gru", B, H)])
    with pytest.raises(ValueError, match="Unknown cell type"):
        rnn.unroll("lstm2", params, x)
    with pytest.raises(ValueError, match="needs an LSTM cell state"):
        rnn.unroll("gru", params, x, reg=zoneout(cells=0.1))


def test_shape_mistakes_are_one_sentence_value_errors() -> None:
    """Inputs without a batch or time axis, inputs or a layer of the wrong width, and a
    carry of another batch size are named before any product (they were XLA TypeErrors
    about dot_general or broadcasting)."""
    params = make_params("lstm", 2)
    x = inputs()
    with pytest.raises(ValueError, match=r"inputs of unroll must be \[B, T, F\], got shape \(6, 5"):
        rnn.unroll("lstm", params, x[0])
    with pytest.raises(ValueError, match=r"Layer 0's w_x reads 5 features, but its input "
                                         r"\(the inputs\) has 4"):
        rnn.unroll("lstm", params, x[..., :4])
    stacked_wrong = [params[0], cells.init_params(jax.random.key(3), "lstm", H + 1, H)]
    with pytest.raises(ValueError, match=r"Layer 1's w_x reads 5 features, but its input "
                                         r"\(layer 0's outputs\) has 4"):
        rnn.unroll("lstm", stacked_wrong, x)
    other_batch = [cells.init_carry("lstm", B + 1, H)] * 2
    with pytest.raises(ValueError, match="Layer 0's carry has batch size 4, but the inputs have 3"):
        rnn.unroll("lstm", params, x, other_batch)
    with pytest.raises(ValueError, match=r"inputs of unroll must be \[B, T, F\]"):
        rnn.unroll("lstm", params, x[None])


@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": jnp.int32}, "dtype must be a floating dtype"),
    ({"dtype": "flaot16"}, "dtype must be a floating dtype .* got 'flaot16'"),
    ({"forget_bias": "1"}, "forget_bias must be a number, got '1'"),
    ({"unroll": 0}, "unroll must be a whole number >= 1, got 0"),  # was taken
    ({"unroll": True}, "unroll must be a whole number >= 1, got True"),  # taken as 1
    ({"forget_bias": float("nan")}, "forget_bias must be finite, got nan"),  # NaN logits
])
def test_settings_of_another_type_are_one_sentence_value_errors(kwargs, message) -> None:
    """An integer or misspelt compute dtype and a string forget bias (they failed in the
    first sigmoid, inside numpy, or in an addition)."""
    with pytest.raises(ValueError, match=message):
        rnn.unroll("lstm", make_params("lstm", 1), inputs(), **kwargs)


def test_integer_inputs_are_named() -> None:
    """Token ids given where features belong (the embedding forgotten)."""
    ids = jnp.zeros((B, T, F), jnp.int32)
    with pytest.raises(ValueError, match="inputs' dtype must be a floating dtype"):
        rnn.unroll("lstm", make_params("lstm", 1), ids)


def test_parameters_and_states_that_do_not_fit_the_cell_are_named() -> None:
    """Another cell's parameters, a carry without `c`, an empty stack and sizes that are
    not whole numbers are one sentence each (they were a KeyError inside the scan, a
    failed product, the inputs returned unchanged, an MLIR or ZeroDivisionError)."""
    x = inputs()
    lstm, gru = make_params("lstm", 1), make_params("gru", 1)
    with pytest.raises(ValueError, match=r"Layer 0's params lack \['b_h'\], which a gru cell"):
        rnn.unroll("gru", lstm, x)
    with pytest.raises(ValueError, match=r"w_h has shape \(4, 12\), but a lstm cell of 4 "
                                         r"units needs \(4, 16\)"):
        rnn.unroll("lstm", gru, x)
    with pytest.raises(ValueError, match=r"Layer 0's carry lacks \['c'\]"):
        rnn.unroll("lstm", lstm, x, [cells.init_carry("gru", B, H)])
    with pytest.raises(ValueError, match=r"carry lacks \['o'\]"):
        rnn.unroll("lstm", lstm, x, [cells.init_carry("lstm", B, H)],
                   reg=recurrent_dropout(0.2, output_zoneout=True))
    with pytest.raises(ValueError, match="at least one layer"):
        rnn.unroll("lstm", [], x)
    for size, match in ((0, "hidden_size must be a whole number >= 1, got 0"),
                        (-4, "got -4"), (4.0, "got 4.0")):
        with pytest.raises(ValueError, match=match):
            cells.init_params(jax.random.key(0), "lstm", F, size)
    for scale in (-0.1, "0.1", float("nan")):
        with pytest.raises(ValueError, match="init_scale must be a finite number >= 0"):
            cells.init_params(jax.random.key(0), "lstm", F, H, init_scale=scale)
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 0, got -2"):
        rnn.initial_carry("lstm", lstm, -2)
    numpy_sizes = cells.init_params(jax.random.key(0), "lstm", np.int64(F), np.int32(H))
    assert numpy_sizes["w_h"].shape == (H, 4 * H)


def test_carries_that_do_not_fit_are_named() -> None:
    """A carry of another width, rank, dtype or structure is one sentence (they were a
    failed product, a multi-line scan carry-type or pytree error, an AttributeError, or,
    for an integer carry, a run whose state stayed zero)."""
    x = inputs()
    lstm = make_params("lstm", 1)[0]
    zeros = np.zeros((B, H), np.float32)
    cases = [
        ({"h": zeros.astype(np.int32), "c": zeros.astype(np.int32)},
         r"dtype of layer 0's carry\['h'\] must be a floating dtype"),
        ({"h": np.zeros((B, H + 1), np.float32), "c": zeros},
         r"Layer 0's carry\['h'\] has 5 units, but its w_h has 4"),
        ({"h": zeros, "c": np.zeros((B, H + 1), np.float32)}, r"carry\['c'\] has 5 units"),
        ({"h": np.zeros(H, np.float32), "c": zeros},
         r"carry\['h'\] must be \[B, H\], got shape \(4,\)"),
        ({"h": zeros, "c": np.zeros((B + 1, H), np.float32)}, "carry has batch size 4"),
        ({"h": zeros, "c": zeros, "extra": zeros}, r"carry holds \['extra'\], which a lstm"),
        ({"h": zeros, "c": zeros, "o": zeros}, "'o' is kept with output zoneout only"),
        ([{"h": zeros, "c": zeros}], "carry must be a dict of arrays .* got a list"),
        ((zeros, zeros), "carry must be a dict of arrays .* got a tuple"),
    ]
    for carry, message in cases:
        with pytest.raises(ValueError, match=message):
            rnn.unroll("lstm", lstm, x, carry)
    ys, final = rnn.unroll("lstm", lstm, x, {"h": zeros, "c": zeros})
    assert ys.shape == (B, T, H) and final["h"].dtype == jnp.float32


def test_frozen_dict_params_are_one_layer() -> None:
    """Flax's FrozenDict is a Mapping: one layer, as a dict is (it was iterated as a
    stack of its keys: 'string indices must be integers')."""
    from flax.core import freeze
    lstm = make_params("lstm", 1)[0]
    ys, carry = rnn.unroll("lstm", freeze(lstm), inputs())
    expected, expected_carry = rnn.unroll("lstm", lstm, inputs())
    np.testing.assert_array_equal(ys, expected)
    assert set(carry) == {"h", "c"}


@pytest.mark.parametrize("value", ["False", None, "yes"])
def test_deterministic_must_be_a_bool(value) -> None:
    """`deterministic="False"` from a config meant evaluation (a truthy string)."""
    with pytest.raises(ValueError, match="deterministic must be True or False"):
        rnn.unroll("lstm", make_params("lstm", 1), inputs(), deterministic=value)


def test_scan_layer_checks_its_arguments() -> None:
    """`scan_layer`, called alone, names the same mistakes as `unroll` (a `[T, F]`
    sequence was broadcast over the carry's batch without a word; another cell's
    params and a carry without `c` were KeyErrors)."""
    lstm = make_params("lstm", 1)[0]
    carry = {"h": np.zeros((B, H), np.float32), "c": np.zeros((B, H), np.float32)}
    xs = inputs(time_major=True)
    with pytest.raises(ValueError, match=r"inputs of scan_layer must be \[T, B, F\], got "
                                         r"shape \(6, 5\)"):
        rnn.scan_layer("lstm", lstm, xs[:, 0], carry)
    with pytest.raises(ValueError, match=r"params lack \['b_h'\], which a gru cell"):
        rnn.scan_layer("gru", lstm, xs, {"h": carry["h"]})
    with pytest.raises(ValueError, match=r"carry lacks \['c'\]"):
        rnn.scan_layer("lstm", lstm, xs, {"h": carry["h"]})
    with pytest.raises(ValueError, match=r"carry\['h'\] has 5 units"):
        rnn.scan_layer("lstm", lstm, xs, dict(carry, h=np.zeros((B, H + 1), np.float32)))
    with pytest.raises(ValueError, match="inputs' dtype must be a floating dtype"):
        rnn.scan_layer("lstm", lstm, xs.astype(np.int32), carry)
    ys, _ = rnn.scan_layer("lstm", lstm, xs, carry)
    assert ys.shape == (T, B, H)
