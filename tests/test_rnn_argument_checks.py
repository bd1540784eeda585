"""The pure layer API's one-sentence errors for arguments that used to run silently
wrong (a string `time_major`, an integer compute dtype, a NaN forget bias) or fail deep
inside JAX (parameters of the wrong shape or dtype, a key that is not one, sizes,
records and carries of the wrong kind)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnreg_jax as rj
from rnnreg_jax import cells, rnn

B, T, F, H = 2, 3, 5, 4


def _lstm(**changes):
    params = dict(cells.init_params(jax.random.key(0), "lstm", F, H))
    params.update(changes)
    return params


def _x(width=F):
    return jnp.ones((B, T, width), jnp.float32)


@pytest.mark.parametrize("kwargs, message", [
    (dict(time_major="False"), "time_major must be True or False, got 'False'"),
    (dict(return_hiddens="no"), "return_hiddens must be True or False, got 'no'"),
    (dict(return_cell_stats="no"), "return_cell_stats must be True or False, got 'no'"),
    (dict(forget_bias=np.float32("nan")), "forget_bias must be finite, got nan"),
    (dict(forget_bias=jnp.array([1.0, 2.0])), r"forget_bias must be one number, got shape "
                                              r"\(2,\)"),
    (dict(forget_bias=True), "forget_bias must be a number, got True"),
    (dict(key=0), r"key must be one PRNG key \(jax.random.key\(seed\), or "
                  r"jax.random.PRNGKey\(seed\)\), got 0\."),
    (dict(key=jnp.zeros(2, jnp.float32)), "key must be one PRNG key .* dtype float32"),
    (dict(key=jax.random.split(jax.random.key(0))), r"key must be one PRNG key .* shape \(2,\)"),
])
def test_unroll_settings_are_one_sentence(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        rnn.unroll("lstm", _lstm(), _x(), **kwargs)
    assert "\n" not in str(err.value) and str(err.value).endswith(".")


def test_valid_keys_and_forget_biases_still_run():
    """A raw key and a typed one draw the same masks; a numpy or 0-d forget bias
    computes what the Python number does (a traced one is refused: it is a setting)."""
    reg = rj.zaremba(0.5)
    typed = rnn.unroll("lstm", _lstm(), _x(), reg=reg, key=jax.random.key(1),
                       deterministic=False)[0]
    raw = rnn.unroll("lstm", _lstm(), _x(), reg=reg, key=jax.random.PRNGKey(1),
                     deterministic=False)[0]
    np.testing.assert_array_equal(typed, raw)
    plain = rnn.unroll("lstm", _lstm(), _x(), forget_bias=1.0)[0]
    for same in (np.float32(1.0), jnp.float32(1.0), 1):
        np.testing.assert_array_equal(rnn.unroll("lstm", _lstm(), _x(), forget_bias=same)[0],
                                      plain)
    with pytest.raises(ValueError, match="forget_bias must be a number known outside jit"):
        jax.jit(lambda b: rnn.unroll("lstm", _lstm(), _x(), forget_bias=b))(1.0)


@pytest.mark.parametrize("params, width, message", [
    (_lstm(b=jnp.zeros(H)), F, r"Layer 0's b has shape \(4,\), but a lstm layer of 4 units "
                               r"needs \(16,\)"),
    (_lstm(b=jnp.zeros(4 * H + 1)), F, r"b has shape \(17,\)"),
    (_lstm(w_x=jnp.zeros((F, 3 * H))), F, r"w_x has shape \(5, 12\), but a lstm layer of 4 "
                                          r"units needs \[F, 16\]"),
    (_lstm(w_x=jnp.zeros(F)), F, r"w_x has shape \(5,\)"),
    (_lstm(w_h=jnp.zeros(4 * H)), F, r"Layer 0's w_h must be \[H, G\*H\], got shape "
                                     r"\(16,\)"),
    ({k: v for k, v in _lstm().items() if k != "w_x"}, F,
     r"Layer 0 has no w_x, so it takes its gates' pre-activations \(16 wide\), but its "
     r"input \(the inputs\) has 5 features"),
    (_lstm(w_x=jnp.zeros((F, 4 * H), jnp.int32)), F,
     "The dtype of layer 0's w_x must be a floating dtype"),
])
def test_parameters_of_the_wrong_shape_or_dtype_are_named(params, width, message):
    """They failed in a broadcast (`Incompatible shapes for broadcasting`) or a sigmoid
    of integers deep in the step."""
    with pytest.raises(ValueError, match=message):
        rnn.unroll("lstm", params, _x(width))


def test_a_second_bias_and_the_normalization_gains_are_checked_too():
    gru = dict(cells.init_params(jax.random.key(0), "gru", F, H), b_h=jnp.zeros(H))
    with pytest.raises(ValueError, match=r"Layer 0's b_h has shape \(4,\), but a gru layer "
                                         r"of 4 units needs \(12,\)"):
        rnn.unroll("gru", gru, _x())
    ln = dict(cells.init_params(jax.random.key(0), "lstm_ln", F, H), ln_c_g=jnp.ones(4 * H))
    with pytest.raises(ValueError, match=r"ln_c_g has shape \(16,\), but a lstm_ln layer of "
                                         r"4 units needs \(4,\)"):
        rnn.unroll("lstm_ln", ln, _x())
    fed = {k: v for k, v in _lstm().items() if k != "w_x"}  # embed_to_gates' layout
    assert rnn.unroll("lstm", fed, _x(4 * H))[0].shape == (B, T, H)


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype=jnp.int32), "dtype must be a floating dtype"),  # ran with W_h cast to int
    (dict(dtype="flaot"), "dtype must be a floating dtype .* got 'flaot'"),
    (dict(unroll=0), "unroll must be a whole number >= 1, got 0"),
    (dict(unroll=-3), "unroll must be a whole number >= 1, got -3"),
    (dict(forget_bias="one"), "forget_bias must be a number, got 'one'"),
    (dict(forget_bias=float("nan")), "forget_bias must be finite, got nan"),
    (dict(layer_noise=rj.zaremba(0.5)), r"layer_noise must be a noise.LayerNoise \(noise."
                                        r"layer_noise makes one from a regularizer\), got a "
                                        r"Dropout"),
])
def test_scan_layer_checks_what_unroll_checks(kwargs, message):
    xs = jnp.ones((T, B, F), jnp.float32)
    with pytest.raises(ValueError, match=message):
        rnn.scan_layer("lstm", _lstm(), xs, cells.init_carry("lstm", B, H), **kwargs)


def test_carries_params_and_records_of_the_wrong_kind_are_named():
    with pytest.raises(ValueError, match="hidden_size must be a whole number >= 1, got -1"):
        cells.init_carry("lstm", B, -1)
    with pytest.raises(ValueError, match="hidden_size must be a whole number >= 1, got 2.5"):
        cells.init_carry("lstm", B, 2.5)
    with pytest.raises(ValueError, match="dtype must be a floating dtype"):
        cells.init_carry("lstm", B, H, jnp.int32)  # an integer state stayed zero
    with pytest.raises(ValueError, match="dtype must be a floating dtype"):
        cells.init_params(jax.random.key(0), "lstm", F, H, dtype=jnp.int32)
    with pytest.raises(ValueError, match=r"initial_carry takes one layer's params .* layer 0 "
                                         r"is a dict without w_h"):
        rnn.initial_carry("lstm", {"w_x": jnp.zeros((F, 4 * H))}, B)
    with pytest.raises(ValueError, match="layer 0 is of type ArrayImpl"):
        rnn.initial_carry("lstm", [jnp.zeros((H, 4 * H))], B)
    with pytest.raises(ValueError, match=r"Layer 1's w_h must be \[H, G\*H\], got shape"):
        rnn.initial_carry("lstm", [_lstm(), _lstm(w_h=jnp.zeros(16))], B)
    with pytest.raises(ValueError, match="reg must be a regularizer"):
        rnn.initial_carry("lstm", _lstm(), B, reg=None)
    with pytest.raises(ValueError, match="params must be one layer's .* got NoneType"):
        rnn.unroll("lstm", None, _x())
    with pytest.raises(ValueError, match=r"A stack of 2 layers takes a list of carries, one "
                                         r"dict per layer, got one dict \(of \['c', 'h'\]\)"):
        two = [_lstm(), cells.init_params(jax.random.key(1), "lstm", H, H)]
        rnn.unroll("lstm", two, _x(), cells.init_carry("lstm", B, H))
    for gates in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="num_gates must be a whole number >= 1"):
            cells.Cell(name="mine", num_gates=gates, update=lambda *a: a)
