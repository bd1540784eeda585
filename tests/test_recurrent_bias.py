"""The second, additive bias of Zaremba's Lua LSTM (`recurrent_bias=True`)."""

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest

import rnnreg_jax as rj
from rnnreg_jax import cells, rnn, torch_port
from rnnreg_jax.models import LanguageModel


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_init_adds_b_h_and_keeps_the_other_draws(cell):
    key = jax.random.key(0)
    one = cells.init_params(key, cell, 3, 5, 0.1)
    two = cells.init_params(key, cell, 3, 5, 0.1, recurrent_bias=True)
    assert set(two) == set(one) | {"b_h"}
    for name in one:
        np.testing.assert_array_equal(one[name], two[name])
    assert two["b_h"].shape == one["b"].shape
    assert float(jnp.max(jnp.abs(two["b_h"]))) <= 0.1
    assert not np.allclose(two["b_h"], two["b"])  # its own draw


@pytest.mark.parametrize("cell", ["gru", "lstm_ln", "lstm_bn"])
def test_other_cells_reject_it(cell):
    with pytest.raises(ValueError, match="recurrent_bias applies to cells"):
        cells.init_params(jax.random.key(0), cell, 3, 5, recurrent_bias=True)


# Each cell and each backward pass by default; the other pairs with -m slow.
@pytest.mark.parametrize("cell,implementation", [
    ("lstm", "fused"), pytest.param("lstm", "autodiff", marks=pytest.mark.slow),
    pytest.param("rnn", "fused", marks=pytest.mark.slow), ("rnn", "autodiff")])
def test_same_function_as_one_summed_bias_and_equal_gradients(cell, implementation):
    params = cells.init_params(jax.random.key(1), cell, 4, 6, 0.3, recurrent_bias=True)
    merged = {k: v for k, v in params.items() if k != "b_h"}
    merged["b"] = params["b"] + params["b_h"]
    x = jax.random.normal(jax.random.key(2), (3, 7, 4))
    reg = rj.variational(0.2, 0.3, 0.1)

    def loss(p):
        ys, _ = rnn.unroll(cell, p, x, reg=reg, key=jax.random.key(4), deterministic=False,
                           implementation=implementation)
        return jnp.sum(jnp.sin(ys))

    np.testing.assert_allclose(loss(params), loss(merged), rtol=1e-6)
    grads = jax.grad(loss)(params)
    # Both biases receive the gradient of their sum: one SGD step moves the sum twice as far.
    np.testing.assert_allclose(grads["b"], grads["b_h"], rtol=1e-6)
    nm.assert_close_f32(grads["b"], jax.grad(loss)(merged)["b"])
    assert float(jnp.max(jnp.abs(grads["b_h"]))) > 0


def test_language_model_carries_one_b_h_per_layer():
    model = LanguageModel(vocab_size=11, hidden_sizes=(5, 5), recurrent_bias=True)
    params = model.init(jax.random.key(0), jnp.zeros((2, 3), jnp.int32))["params"]
    for layer in ("layer_0", "layer_1"):
        assert params["rnn"][layer]["b_h"].shape == (20,)
    plain = LanguageModel(vocab_size=11, hidden_sizes=(5, 5))
    plain_params = plain.init(jax.random.key(0), jnp.zeros((2, 3), jnp.int32))["params"]
    assert "b_h" not in plain_params["rnn"]["layer_0"]


def test_torch_port_keeps_both_biases():
    params = cells.init_params(jax.random.key(3), "lstm", 4, 6, 0.2, recurrent_bias=True)
    sd = torch_port.to_torch("lstm", params)
    np.testing.assert_array_equal(sd["bias_hh_l0"], params["b_h"])
    back = torch_port.from_torch("lstm", sd, recurrent_bias=True)[0]
    for name in params:
        np.testing.assert_array_equal(back[name], params[name])
    summed = torch_port.from_torch("lstm", sd)[0]
    np.testing.assert_allclose(summed["b"], params["b"] + params["b_h"])
    assert "b_h" not in summed


def test_zaremba_and_gal_presets_use_two_biases():
    from experiments.configs import ptb

    for name in ("zaremba_small", "zaremba_medium", "variational_medium", "variational_large"):
        assert getattr(ptb, name)().model.recurrent_bias, name
    assert not ptb.zoneout().model.recurrent_bias


# The normalized LSTMs' fused pass with -m slow.
@pytest.mark.parametrize("cell,implementation", [
    ("lstm", "fused"), ("lstm", "autodiff"),
    pytest.param("lstm_ln", "fused", marks=pytest.mark.slow), ("lstm_ln", "autodiff"),
    pytest.param("lstm_bn", "fused", marks=pytest.mark.slow), ("lstm_bn", "autodiff")])
def test_forget_bias_is_the_forget_block_of_b_shifted(cell, implementation):
    hidden = 6
    params = cells.init_params(jax.random.key(1), cell, 4, hidden, 0.3)
    shifted = dict(params, b=params["b"].at[hidden:2 * hidden].add(1.0))
    x = jax.random.normal(jax.random.key(2), (3, 7, 4))

    def loss(p, forget_bias):
        ys, _ = rnn.unroll(cell, p, x, reg=rj.zoneout(0.2, 0.1), key=jax.random.key(4),
                           deterministic=False, implementation=implementation,
                           forget_bias=forget_bias)
        return jnp.sum(jnp.sin(ys))

    np.testing.assert_allclose(loss(params, 1.0), loss(shifted, 0.0), rtol=1e-6)
    assert abs(float(loss(params, 1.0)) - float(loss(params, 0.0))) > 1e-3
    nm.assert_trees_close_f32(jax.grad(loss)(params, 1.0), jax.grad(loss)(shifted, 0.0))


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_forget_bias_needs_an_lstm(cell):
    params = cells.init_params(jax.random.key(0), cell, 3, 5)
    with pytest.raises(ValueError, match="forget_bias applies to LSTM cells"):
        rnn.unroll(cell, params, jnp.ones((2, 3, 3)), forget_bias=1.0)


def test_forget_bias_of_the_presets():
    """The authors' +1 at character level; none at word level, where it made momentum
    0.99 at lr 1 blow up (experiments/configs/ptb_zoneout.py, _zoneout_word)."""
    from experiments.configs import ptb

    for name in ("zoneout_char", "baseline_char"):
        assert getattr(ptb, name)().model.forget_bias == 1.0, name
    for name in ("zoneout", "baseline", "recurrent_dropout", "zaremba_small"):
        assert getattr(ptb, name)().model.forget_bias == 0.0, name
