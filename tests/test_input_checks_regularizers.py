"""One-sentence errors for bad arguments of the regularizers' public helpers, records and
composition, `rnnreg_jax.lengths` and `rnnreg_jax.noise`, and the silent misreadings
they replace (NaN weights, clipped lengths, a spec accepted until the first unroll).
Values are checked where concrete; traced ones still run under `jit`."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnreg_jax as rj
from rnnreg_jax import lengths, noise
from rnnreg_jax import regularizers as R

KEY = jax.random.key(0)
W = jnp.ones((3, 4), jnp.float32)
YS = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)  # [B, T, H]
MASK = np.arange(5)[None, :] < np.array([[5], [1], [3]])
TIME_AXIS = "time_axis must be 0 or 1 (the batch being the other), got "


def one_sentence(error: pytest.ExceptionInfo, message: str) -> None:
    """`message` starts the error's text, which is one line ending in a period."""
    text = str(error.value)
    assert text.startswith(message) and "\n" not in text and text.endswith("."), text


# ------------------------------------------------------------- 1: drop_connect, gaussian_noise

@pytest.mark.parametrize("call,message", [
    # all NaN before
    (lambda: R.drop_connect(KEY, W, 1.0), "drop_connect rate must be a probability in [0, 1)"),
    # scaled the weights by 0.5 before
    (lambda: R.drop_connect(KEY, W, -1.0), "drop_connect rate must be a probability in [0, 1), "
                                           "got -1.0."),
    # an OverflowError before
    (lambda: R.drop_connect(KEY, W, 1.5), "drop_connect rate must be a probability in [0, 1)"),
    (lambda: R.drop_connect(KEY, W, "0.5"), "drop_connect rate must be a number, got '0.5'."),
    (lambda: R.drop_connect(KEY, [[1.0]], 0.5), "drop_connect's w must be an array"),
    # silently added noise of a negative std, or NaN, before
    (lambda: R.gaussian_noise(KEY, W, -1.0), "gaussian_noise std must be finite and "
                                             "non-negative"),
    (lambda: R.gaussian_noise(KEY, W, math.nan), "gaussian_noise std must be finite and "
                                                 "non-negative"),
    (lambda: R.gaussian_noise(KEY, W, jnp.asarray([0.1, -0.1, 0.1, 0.1])),
     "gaussian_noise std must be finite and non-negative, got values from -0.1"),
    (lambda: R.gaussian_noise(KEY, W, jnp.ones(5)), "gaussian_noise std must be a scalar or "
                                                    "broadcast to w's shape (3, 4)"),
    (lambda: R.gaussian_noise(KEY, W.astype(jnp.int32), 0.1),
     "gaussian_noise's w must be a floating-point array, got dtype int32."),
])
def test_weight_noise_helpers_check_rate_std_and_weight(call, message):
    with pytest.raises(ValueError) as error:
        call()
    one_sentence(error, message)


def test_weight_noise_helpers_still_take_valid_and_traced_values():
    """A valid rate keeps its draws; a traced std (a learned scale) is not read."""
    dropped = R.drop_connect(KEY, W, 0.5)
    assert set(np.unique(np.asarray(dropped)).tolist()) <= {0.0, 2.0}
    noisy = jax.jit(lambda s: R.gaussian_noise(KEY, W, s))(jnp.asarray(-1.0))
    assert noisy.shape == W.shape


# ----------------------------------------------------------------------------- 2: lengths

@pytest.mark.parametrize("call,message", [
    # silently clipped to the first / last step before
    (lambda: lengths.last_valid(YS, jnp.array([0, 3])), "seq_lengths must be in [1, T] = "
                                                        "[1, 3], got values from 0 to 3."),
    (lambda: lengths.last_valid(YS, jnp.array([5, 9])), "seq_lengths must be in [1, T]"),
    (lambda: lengths.last_valid(YS, jnp.array([1, 2, 3])), "seq_lengths must have shape "
                                                           "[B] = (2,), got (3,)."),
    (lambda: lengths.last_valid(YS, jnp.array([1.0, 2.0])), "seq_lengths must be integers"),
    (lambda: lengths.last_valid(YS, jnp.array([1, 2]), time_axis=2), TIME_AXIS + "2."),
    (lambda: lengths.last_valid(jnp.zeros((2, 0, 2)), jnp.array([1, 2])),
     "ys must be [B, T, ...] (or [T, B, ...] with time_axis=0) with at least one step"),
    (lambda: lengths.last_valid(jnp.zeros((2, 0, 2)), None), "ys must be [B, T, ...]"),
    (lambda: lengths.valid_mask(jnp.array([1, 2]), -1), "steps must be a whole number >= 0, "
                                                        "got -1."),
    (lambda: lengths.valid_mask(jnp.array([1, 2]), 3, time_axis=2), TIME_AXIS + "2."),
    (lambda: lengths.valid_mask(jnp.array([1, 5]), 3), "seq_lengths must be in [1, T]"),
    (lambda: lengths.from_mask(MASK, time_axis=3), TIME_AXIS + "3."),
    (lambda: lengths.check(None, 2, 3), "seq_lengths must be an integer array of shape [B] "
                                        "= (2,), got None."),
])
def test_lengths_helpers_check_their_arguments(call, message):
    with pytest.raises(ValueError) as error:
        call()
    one_sentence(error, message)


def test_lengths_helpers_keep_valid_lists_and_traced_lengths():
    """A list of lengths is read as the array (an indexing TypeError before); under jit a
    length out of range still reads the nearest step, as documented."""
    np.testing.assert_array_equal(lengths.valid_mask([1, 2], 3),
                                  [[True, False, False], [True, True, False]])
    clipped = jax.jit(lengths.last_valid)(YS, jnp.array([0, 9]))
    np.testing.assert_array_equal(clipped, np.stack([YS[0, 0], YS[1, 2]]))


# --------------------------------------------------------------------- 3: records' fields

@pytest.mark.parametrize("make,message", [
    # accepted, then an AttributeError ('active') at unroll before
    (lambda: R.Dropout(input=0.5), "Dropout.input must be a MaskSpec or None (MaskSpec(rate, "
                                   "tie), or build it with rnnreg_jax.dropout('input', rate)), "
                                   "got 0.5."),
    (lambda: R.Dropout(recurrent="0.2"), "Dropout.recurrent must be a MaskSpec or None"),
    # an AttributeError ('per_gate') before
    (lambda: R.RecurrentDropout(update=2), "RecurrentDropout.update must be a MaskSpec or "
                                           "None"),
    # accepted, then an AttributeError ('needs_output_gate', 'active') before
    (lambda: R.Chain(members=("x",)), "Chain.members must be a tuple of regularizers "
                                      "(compose(a, b) builds one), got 'x' among them."),
    (lambda: R.Chain(members=rj.zaremba(0.5)), "Chain.members must be a tuple of "
                                               "regularizers"),
])
def test_regularizer_records_check_their_fields(make, message):
    with pytest.raises(ValueError) as error:
        make()
    one_sentence(error, message)


def test_records_built_directly_still_work():
    spec = R.MaskSpec(0.3, "step")
    assert R.Dropout(input=spec, output=spec) == rj.zaremba(0.3)
    assert R.Chain([rj.zaremba(0.3)]).members == (rj.zaremba(0.3),)  # a list: a tuple


# ---------------------------------------------------------------------------- 4: without

@pytest.mark.parametrize("args,message", [
    (("x", R.Dropout), "reg must be a regularizer"),  # an AttributeError ('parts') before
    ((rj.zaremba(0.5), "x"), "family must be a regularizer class (such as "
                             "rnnreg_jax.regularizers.EmbeddingDropout) or a tuple of them, "
                             "got 'x'."),  # an isinstance TypeError before
    ((rj.zaremba(0.5), (R.Dropout, int)), "family must be a regularizer class"),
    ((rj.zaremba(0.5), ()), "family must be a regularizer class"),
])
def test_without_checks_reg_and_family(args, message):
    with pytest.raises(ValueError) as error:
        R.without(*args)
    one_sentence(error, message)


def test_without_takes_a_class_or_a_tuple():
    reg = rj.zaremba(0.5) + rj.zoneout(0.1, 0.1)
    assert R.without(reg, R.Dropout) == rj.zoneout(0.1, 0.1)
    assert R.without(reg, (R.Dropout, R.Zoneout)) is R.NONE


# ----------------------------------------------------------------------------- 5: noise

def _layer_noise(**change):
    args = dict(reg=rj.zaremba(0.5), key=KEY, layer=0, cell="lstm", batch=2, steps=3,
                input_size=4, hidden_size=5, deterministic=False)
    return noise.layer_noise(**{**args, **change})


@pytest.mark.parametrize("call,message", [
    # a multi-line MLIRError before
    (lambda: _layer_noise(batch=-1), "batch must be a whole number >= 0, got -1."),
    (lambda: _layer_noise(hidden_size=2.5), "hidden_size must be a whole number >= 0"),
    (lambda: _layer_noise(layer=-1), "layer must be a whole number >= 0, got -1."),
    (lambda: _layer_noise(deterministic="no"), "deterministic must be True or False"),
    (lambda: _layer_noise(reg="x"), "reg must be a regularizer"),  # an AttributeError before
    # silently always True before
    (lambda: noise.bernoulli_draw(KEY, 1.5, (3,)), "p must be a probability in [0, 1], got "
                                                   "1.5."),
    (lambda: noise.bernoulli_draw(KEY, -1, (3,)), "p must be a probability in [0, 1]"),
    (lambda: noise.bernoulli_draw(KEY, math.nan, (3,)), "p must be a probability in [0, 1]"),
    (lambda: noise.bernoulli_draw(KEY, 0.5, (-1, 3)), "shape must be a tuple of whole numbers "
                                                      ">= 0, got (-1, 3)."),
    (lambda: noise.bernoulli(KEY, 0.5, (3,), "steps", 2), "tie must be one of"),
    # an AttributeError ('per_gate') before
    (lambda: noise.dropout_mask(KEY, 0.5, (2, 3), 3), "spec must be a regularizers.MaskSpec "
                                                      "(its rate, tie and per_gate)"),
    (lambda: noise.mc_sample_keys(KEY, 0, 0, 0), "count must be a whole number >= 1, got 0."),
    (lambda: noise.mc_sample_keys(KEY, 0, 0, 1.5), "count must be a whole number >= 1"),
    (lambda: noise.mc_sample_keys(0, 0, 0, 2), "key must be one PRNG key"),
    (lambda: noise.mc_sample_keys(KEY, 0, -1, 2), "first must be a whole number in [0, 2^32) "
                                                  "(an int or an integer scalar array: "
                                                  "fold_in's data), got -1."),
    (lambda: noise.mc_sample_keys(KEY, 0.5, 0, 2, "window"), "window must be a whole number "
                                                             "in [0, 2^32)"),
    (lambda: noise.mc_sample_keys(KEY, 2**32, 0, 2, "window"), "window must be a whole number "
                                                               "in [0, 2^32)"),
    (lambda: noise.mc_sample_keys(KEY, 0, jnp.asarray(-2), 2), "first must be a whole number "
                                                               "in [0, 2^32)"),
])
def test_noise_helpers_check_their_arguments(call, message):
    with pytest.raises(ValueError) as error:
        call()
    one_sentence(error, message)


def test_mc_sample_keys_take_traced_indices():
    """The evaluator's window and first sample are traced int32: their dtype is checked,
    not their values."""
    keys = jax.jit(lambda w, f: noise.mc_sample_keys(KEY, w, f, 3, "window"))(
        np.int32(2), np.int32(1))
    same = noise.mc_sample_keys(KEY, 2, 1, 3, "window")
    np.testing.assert_array_equal(jax.random.key_data(keys), jax.random.key_data(same))
