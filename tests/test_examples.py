"""The examples for other JAX frameworks (examples/): Equinox and Keras 3 on JAX.

* Equinox: the module is `rnnreg_jax.unroll` on its parameters; weight drop is one mask
  per batch, which vmapping per example with split keys would change (B masked copies of
  W_h); vmapping with one shared key would give every example the same variational mask;
  the training loop's evaluation loss falls.
* Keras: weights ported from `keras.layers.LSTM` give its outputs (and final states) to
  float32 rounding; `fit` runs; the noise is on in training calls only.

The frameworks are the `examples` extra (pyproject.toml), in the lock; each group skips
when its framework is not installed.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import as_f64, assert_close_f32, assert_close_f64, x64

import rnnreg_jax as rj

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name: str, framework: str):
    """examples/<name>.py as a module, or a skip when `framework` is not installed."""
    if importlib.util.find_spec(framework) is None:
        pytest.skip(f"{framework} is not installed (pip install '.[examples]')")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def eqx_example():
    return _load("equinox_lstm", "equinox")


@pytest.fixture(scope="module")
def keras_example():
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "jax"  # what the example does, before any import
    return _load("keras3_layer", "keras")


B, T, F, H = 3, 5, 4, 6  # distinct sizes, so that a shape in a jaxpr names one thing


def _x(seed: int = 1) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (B, T, F))


# --- Equinox --------------------------------------------------------------------------------

def test_equinox_module_is_unroll_on_its_params(eqx_example):
    import equinox as eqx

    reg = (rj.variational(input=0.3, recurrent=0.3, output=0.2) + rj.zoneout(cells=0.2)
           + rj.weight_drop(0.4))
    model = eqx_example.RegularizedLSTM(F, (H, H), reg, key=jax.random.key(0))
    x, key = _x(), jax.random.key(7)
    carry = jax.tree.map(lambda a: a + 0.1, rj.initial_carry("lstm", model.layers, B))

    @eqx.filter_jit
    def module(model, x, carry, deterministic):
        return model(x, carry, key=key, deterministic=deterministic)

    @functools.partial(jax.jit, static_argnames="deterministic")
    def unroll(layers, x, carry, deterministic):
        return rj.unroll("lstm", layers, x, carry, reg=reg, key=key,
                         deterministic=deterministic)

    for deterministic in (False, True):
        got = module(model, x, carry, deterministic)
        expected = unroll(model.layers, x, carry, deterministic)
        jax.tree.map(assert_close_f32, got, expected)
    noisy, clean = module(model, x, carry, False)[0], module(model, x, carry, True)[0]
    assert float(jnp.abs(noisy - clean).max()) > 1e-3  # the noise is on in training
    with x64():  # tightly, in float64
        args = as_f64((model, x, carry))
        jax.tree.map(assert_close_f64, module(*args, False), unroll(args[0].layers, *args[1:],
                                                                    False))


def test_equinox_module_refuses_a_single_example(eqx_example):
    model = eqx_example.RegularizedLSTM(F, (H,), key=jax.random.key(0))
    with pytest.raises(ValueError, match="batch"):
        model(_x()[0])
    with pytest.raises(ValueError, match="at least one layer"):
        eqx_example.RegularizedLSTM(F, (), key=jax.random.key(0))


def _per_example(model, x, keys=None, key=None):
    """`model` vmapped over examples, each a batch of one: with `keys` (one per example)
    or one shared `key`."""
    def one(x_b, k):
        return model(x_b[None], key=k, deterministic=False)[0][0]
    if keys is not None:
        return jax.vmap(one)(x, keys)
    return jax.vmap(one, in_axes=(0, None))(x, key)


def test_weight_drop_is_one_mask_per_batch_and_vmap_with_split_keys_is_another(eqx_example):
    model = eqx_example.RegularizedLSTM(F, (H,), rj.weight_drop(0.5), key=jax.random.key(0))
    x, key = _x(), jax.random.key(7)
    batched = model(x, key=key, deterministic=False)[0]
    # One W_h mask for the batch: each row is that example alone under the same mask.
    for b in range(B):
        alone = model(x[b:b + 1], key=key, deterministic=False)[0][0]
        assert_close_f32(batched[b], alone)
    # Vmapped with a key per example: B masks, so different outputs for every example...
    keys = jax.random.split(key, B)
    split = _per_example(model, x, keys=keys)
    assert all(float(jnp.abs(split[b] - batched[b]).max()) > 1e-3 for b in range(B))
    # ... and B masked copies of W_h [H, 4H] in the program, where the batch has none.
    w_h_copies = f"f32[{B},{H},{4 * H}]"
    assert w_h_copies in str(jax.make_jaxpr(lambda x, k: _per_example(model, x, keys=k))(x, keys))
    batched_jaxpr = str(jax.make_jaxpr(lambda x: model(x, key=key, deterministic=False))(x))
    assert not re.search(rf"\[\d+,{H},{4 * H}\]", batched_jaxpr)


def test_vmap_with_a_shared_key_gives_every_example_the_same_variational_mask(eqx_example):
    reg = rj.variational(input=0.5, recurrent=0.5)
    model = eqx_example.RegularizedLSTM(F, (H,), reg, key=jax.random.key(0))
    same = jnp.broadcast_to(_x()[:1], (B, T, F))  # B copies of one example
    key = jax.random.key(7)

    def spread(ys):  # how far each example's output is from the first's
        return [float(jnp.abs(ys[b] - ys[0]).max()) for b in range(1, B)]

    # The batch draws each example its own mask: the copies come out different.
    assert min(spread(model(same, key=key, deterministic=False)[0])) > 1e-3
    # Vmapped with one shared key, every example draws the same mask.
    assert max(spread(_per_example(model, same, key=key))) == 0.0
    # Split keys per example restore independent masks.
    assert min(spread(_per_example(model, same, keys=jax.random.split(key, B)))) > 1e-3


def test_equinox_training_loop_lowers_the_loss(eqx_example, capsys):
    history = eqx_example.main(["--steps=80", "--hidden=16"])
    first, last = history[0][2], history[-1][2]
    assert len(history) == 81 and all(np.isfinite(h[1]) for h in history[1:])
    # ~0.9 (the targets' variance) -> 0.23-0.31 over seeds 0-3; a net that learned nothing
    # stays near 0.9.
    assert last < 0.6 * first, (first, last)
    assert f"evaluation loss {first:.4f} -> {last:.4f}" in capsys.readouterr().out


# --- Keras 3 --------------------------------------------------------------------------------

def _random_lstm(keras, units: int, **options):
    """A built keras.layers.LSTM with every weight drawn N(0, 0.5), biases included, so a
    swapped gate block could not go unnoticed."""
    lstm = keras.layers.LSTM(units, return_sequences=True, return_state=True, **options)
    lstm.build((None, None, F))
    rng = np.random.default_rng(0)
    lstm.set_weights([0.5 * rng.standard_normal(w.shape).astype(np.float32)
                      for w in lstm.weights])
    return lstm


@pytest.mark.parametrize("options", [{}, {"dropout": 0.3, "recurrent_dropout": 0.4}])
def test_ported_weights_give_keras_lstm_outputs(keras_example, options):
    import keras

    lstm = _random_lstm(keras, H, **options)
    ours = keras_example.from_keras_lstm(lstm, **options)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, T, F)).astype(np.float32)
    state = [0.5 * rng.standard_normal((B, H)).astype(np.float32) for _ in range(2)]
    # Inference (training=False): both layers' dropout is off, so the outputs agree.
    expected = lstm(x, initial_state=state, training=False)
    got = ours(x, initial_state=state, training=False)
    assert len(got) == 3
    for name, g, e in zip(("outputs", "h", "c"), got, expected, strict=True):
        assert g.shape == e.shape
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=0, atol=1e-5,
                                   err_msg=name)
    # The port alone, through the pure core.
    params = keras_example.port_keras_lstm(lstm)
    ys, carry = rj.unroll("lstm", params, x, {"h": state[0], "c": state[1]})
    np.testing.assert_allclose(ys, np.asarray(expected[0]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(carry["c"], np.asarray(expected[2]), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_keras_fit_runs_with_noise_in_training_only(keras_example):
    x, y = keras_example.delayed_copy(16, steps=6)
    model = keras_example.build_model(8, recurrent_dropout=0.4, zoneout_cells=0.3)
    layer = next(lay for lay in model.layers if isinstance(lay, keras_example.RegularizedLSTM))
    weights = lambda: [np.array(w.value) for w in model.weights]
    before = weights()
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # two steps
    assert np.isfinite(history.history["loss"][0])
    assert all(not np.array_equal(a, b) for a, b in zip(before, weights(), strict=True))
    # Inference: the expectation, deterministic (zoneout at its rate, dropout off).
    expected = rj.unroll("lstm", layer.params(), x, reg=layer.reg, deterministic=True)[0]
    np.testing.assert_array_equal(layer(x, training=False), expected)
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))
    # Training: noise, fresh at every call (the seed generator advances).
    first, second = layer(x, training=True), layer(x, training=True)
    assert float(jnp.abs(first - expected).max()) > 1e-3
    assert float(jnp.abs(first - second).max()) > 1e-3


@pytest.mark.parametrize("regularized", [True, False])
def test_keras_training_loss_sees_the_noise_and_evaluation_does_not(keras_example,
                                                                    regularized):
    import keras

    options = {"recurrent_dropout": 0.5, "dropout": 0.3} if regularized else {}
    model = keras_example.build_model(8, **options)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")  # weights stay put
    x, y = keras_example.delayed_copy(8, steps=6)
    evaluated = model.evaluate(x, y, batch_size=8, verbose=0)
    trained = [model.train_on_batch(x, y) for _ in range(2)]
    if regularized:
        assert min(abs(t - evaluated) for t in trained) > 1e-4
        assert abs(trained[0] - trained[1]) > 1e-4
    else:  # the control: without noise the training-mode loss is the evaluated one
        np.testing.assert_allclose(trained, [evaluated] * 2, rtol=1e-5)


def test_keras_layer_refuses_bad_arguments(keras_example):
    import keras

    with pytest.raises(ValueError, match="either reg or the rate options"):
        keras_example.RegularizedLSTM(4, dropout=0.1, reg=rj.zoneout(cells=0.1))
    with pytest.raises(ValueError, match="positive integer"):
        keras_example.RegularizedLSTM(0)
    with pytest.raises(ValueError, match="probability"):
        keras_example.RegularizedLSTM(4, recurrent_dropout=1.5)
    with pytest.raises(ValueError, match="not built"):
        keras_example.port_keras_lstm(keras.layers.LSTM(4))
    with pytest.raises(ValueError, match="keras.layers.LSTM"):
        keras_example.port_keras_lstm(keras.layers.GRU(4))
    with pytest.raises(ValueError, match="tanh"):
        lstm = keras.layers.LSTM(4, activation="relu")
        lstm.build((None, None, F))
        keras_example.port_keras_lstm(lstm)


@pytest.mark.parametrize("name, flag", [("eqx_example", "--steps=0"),
                                        ("keras_example", "--epochs=0"),
                                        ("keras_example", "--units=x")])
def test_example_commands_refuse_sizes_below_one_in_one_line(name, flag, request, capsys):
    example = request.getfixturevalue(name)
    with pytest.raises(SystemExit) as exit_info:
        example.main([flag])
    assert exit_info.value.code == 2
    assert "must be a whole number of at least 1" in capsys.readouterr().err
