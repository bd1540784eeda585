"""Tests of the Flax wrappers `StackedRNN` and `RecurrentLayer`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest

from rnnreg_jax import cells, rnn
from rnnreg_jax.nn import RecurrentLayer, StackedRNN
from rnnreg_jax.regularizers import (
    NONE,
    Regularizer,
    norm_stabilizer,
    recurrent_dropout,
    stochastic_depth,
    variational,
    zoneout,
)

B, T, F = 2, 6, 5
SIZES = (4, 3)


def inputs(steps: int = T, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((B, steps, F)).astype(np.float32)


def eval_reg(cell: str) -> Regularizer:
    """Deterministic mode of zoneout/depth is not the identity: a real check."""
    reg = zoneout(cells=0.3, hiddens=0.2) if cell == "lstm" else zoneout(hiddens=0.2)
    return reg + stochastic_depth(0.1)


def init(module, x: np.ndarray) -> dict:
    return jax.jit(module.init)(jax.random.key(0), x)


def close(a, b) -> None:
    """float32, leaf by leaf: rtol 1e-5 plus 100 ulps of the leaf's largest magnitude."""
    nm.assert_trees_close_f32(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stacked_rnn_params_are_what_unroll_takes(cell: str) -> None:
    """Param tree `layer_i: {w_x, w_h, b(, b_h)}`; apply == `rnn.unroll` on those dicts."""
    reg = eval_reg(cell)
    module = StackedRNN(SIZES, cell=cell, reg=reg, init_scale=0.3)
    x = inputs()

    @jax.jit  # init, apply and the pure reference in one compile
    def run(key, x):
        variables = module.init(key, x)
        params = variables["params"]
        layers = [params["layer_0"], params["layer_1"]]
        expected = rnn.unroll(cell, layers, x, reg=reg, deterministic=True)
        return variables, module.apply(variables, x), expected

    variables, (ys, carry), expected = run(jax.random.key(0), x)
    params = variables["params"]
    assert set(variables) == {"params"} and set(params) == {"layer_0", "layer_1"}
    gates = cells.NUM_GATES[cell]
    assert params["layer_0"]["w_x"].shape == (F, gates * SIZES[0])
    assert params["layer_1"]["w_h"].shape == (SIZES[1], gates * SIZES[1])
    assert ("b_h" in params["layer_1"]) == (cell == "gru")
    assert max(float(np.abs(v).max()) for v in jax.tree.leaves(params)) <= 0.3
    assert ys.shape == (B, T, SIZES[-1])
    assert [c["h"].shape for c in carry] == [(B, h) for h in SIZES]
    close((ys, carry), expected)


def test_carry_continues_the_sequence() -> None:
    """Two windows with the carry passed back equal one long window."""
    module = StackedRNN(SIZES, reg=eval_reg("lstm"))
    x = inputs()
    variables = init(module, x)

    @jax.jit  # one compile for every call of this test
    def run(variables, x):
        ys, carry = module.apply(variables, x)
        ys1, mid = module.apply(variables, x[:, :3])
        ys2, carry2 = module.apply(variables, x[:, 3:], mid)
        reset = module.apply(variables, x[:, 3:], module.initial_carry(B))[0]
        return ys, carry, (ys1, ys2), carry2, reset

    ys, carry, (ys1, ys2), carry2, reset = run(variables, x)
    close(np.concatenate([ys1, ys2], axis=1), ys)
    close(carry2, carry)
    assert not np.allclose(reset, ys2, atol=1e-4)


def test_training_mode_needs_a_dropout_rng() -> None:
    """`deterministic=False` with noise and no `dropout` rng raises; with one, it samples."""
    module = StackedRNN(SIZES, reg=variational(input=0.3, recurrent=0.3))
    x = inputs()
    variables = init(module, x)
    with pytest.raises(ValueError, match=r"needs a dropout PRNG key: apply\(\.\.\., rngs="):
        module.apply(variables, x, deterministic=False)

    @jax.jit
    def run(variables, keys):
        train = jax.vmap(lambda key: module.apply(variables, x, deterministic=False,
                                                  rngs={"dropout": key})[0])
        return train(keys), module.apply(variables, x)[0]

    keys = jax.random.split(jax.random.key(1), 3)[np.array([0, 0, 1])]  # two equal keys
    (a, b, c), evaluated = run(variables, keys)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert not np.allclose(a, evaluated)


def test_norm_stabilizer_sows_a_positive_penalty() -> None:
    """Training mode sows `penalties/norm_stabilizer` > 0 (no rng needed); eval sows none."""
    module = StackedRNN(SIZES, reg=norm_stabilizer(50.0))
    x = inputs()
    variables = init(module, x)

    @jax.jit
    def run(variables):
        train = module.apply(variables, x, deterministic=False, mutable=["penalties"])
        return train, module.apply(variables, x, mutable=["penalties"])

    ((ys, _), state), ((ys_eval, _), state_eval) = run(variables)
    (penalty,) = state["penalties"]["norm_stabilizer"]
    assert penalty.shape == () and float(penalty) > 0
    close(ys, ys_eval)  # the penalty leaves the outputs alone (two scans: float32 rounding)
    assert not state_eval.get("penalties")


def test_recurrent_layer_single_carry_and_time_major() -> None:
    """One layer, one dict carry; `time_major=True` transposes; params under `stack`."""
    module = RecurrentLayer(4, cell="gru")
    tm = RecurrentLayer(4, cell="gru", time_major=True)
    x = inputs()
    variables = init(module, x)
    layer = variables["params"]["stack"]["layer_0"]

    @jax.jit
    def run(variables, x):
        ys1, mid = module.apply(variables, x[:, :2])
        halves = (ys1, module.apply(variables, x[:, 2:], mid)[0])
        time_major = tm.apply(variables, x.swapaxes(0, 1))
        return module.apply(variables, x), rnn.unroll("gru", layer, x), halves, time_major

    (ys, carry), expected, (ys1, ys2), (ys_tm, carry_tm) = run(variables, x)
    assert ys.shape == (B, T, 4) and isinstance(carry, dict) and set(carry) == {"h"}
    close((ys, carry), expected)
    close(np.concatenate([ys1, ys2], axis=1), ys)
    close((np.swapaxes(ys_tm, 0, 1), carry_tm), (ys, carry))


def test_recurrent_layer_initial_carry_is_the_state_it_starts_from() -> None:
    """`initial_carry` is one zero dict of the layer's cell (with the output-gate key that
    recurrent dropout's output zoneout carries) and gives what a call without one gives."""
    x = inputs()
    for module in (RecurrentLayer(5, cell="gru"), RecurrentLayer(5, cell="lstm"),
                   RecurrentLayer(5, reg=recurrent_dropout(0.3, output_zoneout=True))):
        variables = init(module, x)
        zero = module.initial_carry(B)
        ys, carry = module.apply(variables, x)
        assert jax.tree.structure(zero) == jax.tree.structure(carry)
        assert all(a.shape == (B, 5) and not np.any(a) for a in jax.tree.leaves(zero))
        close(module.apply(variables, x, zero), (ys, carry))


def test_int_hidden_size_and_cell_checks() -> None:
    """An int `hidden_sizes` is one layer; LSTM-only regularizers on a GRU raise."""
    module = StackedRNN(3, cell="rnn", reg=NONE)
    variables = init(module, inputs())
    assert set(variables["params"]) == {"layer_0"}
    assert [c["h"].shape for c in module.initial_carry(B)] == [(B, 3)]
    with pytest.raises(ValueError, match="needs an LSTM cell state"):
        StackedRNN(3, cell="gru", reg=zoneout(cells=0.2)).init(jax.random.key(0), inputs())


def test_every_recurrent_module_takes_the_same_options() -> None:
    """`RecurrentOptions` is defined once: the four modules take every option by keyword
    and hand them on unchanged to the stack they build."""
    from rnnreg_jax.models import LanguageModel, SequenceModel
    from rnnreg_jax.nn import OPTION_FIELDS, RecurrentOptions

    options = dict(cell="lstm", reg=zoneout(cells=0.2, hiddens=0.1), init_scale=0.2, unroll=2,
                   implementation="autodiff", bn_max_steps=7, bn_momentum=0.5,
                   recurrent_bias=True, forget_bias=1.0, orthogonal_init=False,
                   dtype=jnp.float32, param_dtype=jnp.float32,
                   param_axes=(("w_h", ("hidden", "gates")),))
    assert set(options) == set(OPTION_FIELDS)
    modules = [StackedRNN(4, **options), RecurrentLayer(4, **options),
               LanguageModel(11, (4,), **options), SequenceModel(3, (4,), **options)]
    for module in modules:
        assert isinstance(module, RecurrentOptions)
        assert module.recurrent_options() == options
    # the single layer is the one-layer stack, options and all (forget bias, second bias)
    x = inputs()
    variables = init(modules[1], x)
    stack_vars = {"params": variables["params"]["stack"]}
    close(modules[1].apply(variables, x)[0], modules[0].apply(stack_vars, x)[0])
    assert "b_h" in variables["params"]["stack"]["layer_0"]  # recurrent_bias reached it
    assert LanguageModel(11, (4,)).init_scale == 0.1 and StackedRNN(4).init_scale is None


def test_a_users_cell_keeps_running_statistics_as_lstm_bn_does() -> None:
    """`cells.Cell(aux_output=True, statistics=...)`: the stack keeps the statistics in
    `batch_stats`, folds each training window's auxiliary output into them, and needs
    `mutable=['batch_stats']` to do so; nothing in the stack is specific to batch norm."""
    import jax.numpy as jnp

    def update(params, carry, xw_t, rec_t, noise):
        h = jnp.tanh(xw_t + rec_t)
        return {"h": h}, (h, {"mean": jnp.mean(h, axis=0)})

    kept = cells.CellStatistics(
        init=lambda hidden, max_steps, dtype=jnp.float32: {"mean": jnp.zeros((hidden,), dtype)},
        update=lambda stats, window, momentum: {
            "mean": momentum * stats["mean"] + (1 - momentum) * jnp.mean(window["mean"], 0)},
        check=lambda max_steps, momentum: None)
    cell = cells.Cell(name="tanh_with_mean", num_gates=1, update=update, aux_output=True,
                      statistics=kept)
    layer = StackedRNN(3, cell=cell, bn_momentum=0.5)
    x = inputs()
    variables = layer.init(jax.random.key(0), x)
    np.testing.assert_array_equal(variables["batch_stats"]["layer_0"]["mean"], np.zeros(3))
    (ys, _), new = layer.apply(variables, x, deterministic=False, mutable=["batch_stats"])
    close(new["batch_stats"]["layer_0"]["mean"], 0.5 * np.mean(np.asarray(ys), axis=(0, 1)))
    with pytest.raises(ValueError, match="updates its running statistics"):
        layer.apply(variables, x, deterministic=False)
    with pytest.raises(ValueError, match="Running statistics apply to cells that keep them"):
        rnn.unroll("lstm", cells.init_params(jax.random.key(1), "lstm", F, 3), x,
                   cell_stats={"mean": np.zeros(3)})


def test_module_switches_param_dtype_and_input_width_are_one_sentence():
    """The string "False" from a config turned a switch on (time_major ran time-major,
    embed_to_gates and tie_embeddings changed the model); an integer or misspelt
    param_dtype failed inside an initializer; `use_running_average="False"` used the
    running statistics; inputs of another width than the stored w_x were Flax's
    ScopeParamShapeError."""
    from rnnreg_jax.models import LanguageModel, SequenceModel

    key, x = jax.random.key(0), jnp.ones((2, 3, 4))
    ids = jnp.zeros((2, 3), jnp.int32)
    for make, field in ((lambda: StackedRNN(5, time_major="no"), "time_major"),
                        (lambda: StackedRNN(5, carry_first="no"), "carry_first"),
                        (lambda: LanguageModel(7, 5, embed_to_gates="False"), "embed_to_gates"),
                        (lambda: LanguageModel(7, 5, tie_embeddings="False"), "tie_embeddings"),
                        (lambda: LanguageModel(7, 5, orthogonal_init="False"),
                         "orthogonal_init")):
        with pytest.raises(ValueError, match=f"^{field} must be True or False"):
            make()
    for dtype in (jnp.int32, "float32x"):
        with pytest.raises(ValueError, match="^param_dtype must be a floating dtype"):
            StackedRNN(5, param_dtype=dtype)
        for make in (LanguageModel, lambda *a, **k: SequenceModel(*a, vocab_size=7, **k)):
            with pytest.raises(ValueError, match="^dtype must be a floating dtype"):
                make(7, 5, dtype=dtype)  # one misspelt failed inside numpy, int32 blamed ids
    bn = StackedRNN(5, cell="lstm_bn")
    variables = bn.init(key, x)
    with pytest.raises(ValueError, match="^use_running_average must be True or False"):
        bn.apply(variables, x, deterministic=False, use_running_average="False",
                 mutable=["batch_stats"])
    stack = StackedRNN((5, 6))
    variables = stack.init(key, x)
    with pytest.raises(ValueError, match=r"^Layer 0's w_x reads 4 features, but its input "
                                         r"\(the inputs\) has 7\."):
        stack.apply(variables, jnp.ones((2, 3, 7)))
    assert LanguageModel(7, 5).init(key, ids)["params"]  # the defaults pass
