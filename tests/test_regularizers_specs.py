"""Regularizer specs: what each constructor sets, composition and its conflicts, rate
zero as no regularization, and the one-sentence errors for bad settings, cells and keys."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from regularizer_inputs import KEY, PARAMS, H, X

import rnnreg_jax
from rnnreg_jax import noise
from rnnreg_jax.nn import StackedRNN
from rnnreg_jax.regularizers import (
    NONE,
    Dropout,
    EmbeddingDropout,
    MaskSpec,
    NormStabilizer,
    RecurrentDropout,
    StochasticDepth,
    WeightNoise,
    Zoneout,
    activation_regularization,
    compose,
    dropout,
    embedding_dropout,
    naive_dropout,
    norm_stabilizer,
    recurrent_dropout,
    stochastic_depth,
    temporal_activation_regularization,
    variational,
    weight_drop,
    weight_noise,
    zaremba,
    zoneout,
)


def test_constructors_set_only_their_fields():
    assert zaremba(0.3) == Dropout(input=MaskSpec(0.3, "step"), output=MaskSpec(0.3, "step"))
    assert variational(0.3, 0.2, 0.1, cell=0.05, embedding=0.4, per_gate=True) == compose(
        Dropout(input=MaskSpec(0.3, "sequence", True), recurrent=MaskSpec(0.2, "sequence", True),
                output=MaskSpec(0.1, "sequence"), cell=MaskSpec(0.05, "sequence")),
        EmbeddingDropout(0.4))
    assert naive_dropout(input=0.3, recurrent=0.2) == Dropout(
        input=MaskSpec(0.3, "step"), recurrent=MaskSpec(0.2, "step"))
    assert embedding_dropout(0.2) == EmbeddingDropout(0.2)
    assert zoneout(0.5, 0.05) == Zoneout(cells=0.5, hiddens=0.05)
    assert recurrent_dropout(0.25, output_zoneout=True) == RecurrentDropout(
        update=MaskSpec(0.25, "step"), output_zoneout=True)
    assert stochastic_depth(0.1) == StochasticDepth(0.1)
    assert weight_noise(0.075) == WeightNoise(0.075)
    assert norm_stabilizer(50.0) == NormStabilizer(50.0)
    assert dropout("recurrent", 0.3, tie="sequence", per_gate=True) == Dropout(
        recurrent=MaskSpec(0.3, "sequence", True))
    # The public names are the same objects.
    assert rnnreg_jax.variational is variational and rnnreg_jax.zaremba is zaremba


@pytest.mark.parametrize("reg", [zaremba(0.0), variational(), naive_dropout(), zoneout(),
                                 recurrent_dropout(0.0, output_zoneout=True),
                                 stochastic_depth(0.0), weight_noise(0.0), embedding_dropout(0.0),
                                 dropout("input", 0.0)])
def test_rate_zero_is_no_regularization(reg):
    assert reg == NONE and not reg.has_noise


def test_compose_merges_and_refuses_conflicts():
    reg = zoneout(0.5, 0.05) + zaremba(0.25) + weight_noise(0.1)
    # the same parts in another order (order matters to `weights` hooks alone)
    assert set(reg.parts) == set(compose(zaremba(0.25), weight_noise(0.1),
                                         zoneout(0.5, 0.05)).parts)
    assert (reg.find(Zoneout).cells, reg.find(Dropout).input, reg.find(WeightNoise).std) == (
        0.5, MaskSpec(0.25, "step"), 0.1)
    assert variational(0.3, 0.3) + embedding_dropout(0.2) == variational(0.3, 0.3, embedding=0.2)
    assert compose() == NONE
    assert compose(zaremba(0.3), zaremba(0.3)) == zaremba(0.3)  # equal settings agree
    assert zoneout(0.5, tie="sequence") + zoneout(0, 0.1, tie="sequence") == zoneout(
        0.5, 0.1, tie="sequence")
    # an inactive setting's options are no conflict (it is left out)
    assert zoneout(0.5) + zoneout(0.0, tie="sequence") == zoneout(0.5)


BAD_ARGUMENTS = [
    ("dropout rate -0.1", lambda: dropout("input", -0.1), "\\[0, 1\\)"),
    ("dropout rate 1", lambda: dropout("input", 1.0), "\\[0, 1\\)"),
    ("zaremba rate 1", lambda: zaremba(1.0), "\\[0, 1\\)"),
    ("variational rate 1", lambda: variational(recurrent=1.0), "\\[0, 1\\)"),
    ("variational rate -0.1", lambda: variational(input=-0.1), "\\[0, 1\\)"),
    ("nan rate", lambda: zaremba(float("nan")), "\\[0, 1\\)"),
    ("embedding rate 1", lambda: embedding_dropout(1.0), "\\[0, 1\\)"),
    ("semeniuta rate 1", lambda: recurrent_dropout(1.0), "\\[0, 1\\)"),
    ("zoneout cells 1.5", lambda: zoneout(cells=1.5), "\\[0, 1\\]"),
    ("zoneout hiddens -0.1", lambda: zoneout(hiddens=-0.1), "\\[0, 1\\]"),
    ("stochastic depth 1.5", lambda: stochastic_depth(1.5), "\\[0, 1\\]"),
    ("weight noise < 0", lambda: weight_noise(-0.1), "non-negative"),
    ("norm stabilizer < 0", lambda: norm_stabilizer(-1.0), "non-negative"),
    ("unknown site", lambda: dropout("foo", 0.1), "Unknown dropout site 'foo'"),
    ("unknown noise site", lambda: noise.site_key(KEY, "foo"), "Unknown noise site 'foo'"),
    ("unknown tie", lambda: dropout("input", 0.1, tie="foo"), "tie must be one of"),
    ("unknown tie rate 0", lambda: dropout("input", 0.0, tie="foo"), "tie must be one of"),
    ("unknown tie variational", lambda: variational(input=0.1, tie="window"),
     "tie must be one of"),
    ("unknown tie no rates", lambda: variational(embedding=0.2, tie="foo"), "tie must be one of"),
    ("unknown tie semeniuta", lambda: recurrent_dropout(0.1, tie="batch"), "tie must be one of"),
    ("unknown tie zoneout", lambda: zoneout(0.1, tie="foo"), "Zoneout's tie must be one of"),
    ("unknown tie MaskSpec", lambda: MaskSpec(0.1, "foo"), "tie must be one of"),
    ("per_gate on output", lambda: dropout("output", 0.1, per_gate=True), "per_gate"),
    ("shared zoneout unequal", lambda: zoneout(0.5, 0.1, shared=True), "cells == hiddens"),
    ("output zoneout alone", lambda: RecurrentDropout(output_zoneout=True), "needs recurrent"),
    ("compose conflict", lambda: zaremba(0.3) + zaremba(0.5), "input set twice"),
    ("compose tie conflict", lambda: zaremba(0.3) + variational(input=0.3),
     "input set twice"),
    ("compose zoneout conflict", lambda: compose(zoneout(0.5), zoneout(0.4)),
     "cells set twice"),
    # flags that are not bools: the string "False" switched classic dropout on
    ("string eval_scaling", lambda: variational(input=0.1, eval_scaling="False"),
     "eval_scaling must be True or False, got 'False'"),
    ("string per_gate", lambda: dropout("recurrent", 0.1, per_gate="no"), "per_gate must be"),
    ("None shared", lambda: zoneout(0.1, 0.1, shared=None), "shared must be True or False"),
    ("string output_zoneout", lambda: recurrent_dropout(0.1, output_zoneout="yes"),
     "output_zoneout must be"),
    ("string embedding scaling", lambda: embedding_dropout(0.1, eval_scaling="0"),
     "eval_scaling must be"),
    ("string MaskSpec flag", lambda: MaskSpec(0.1, per_gate="False"), "per_gate must be"),
    ("shared Zoneout record unequal", lambda: Zoneout(0.5, 0.1, shared=True),
     "cells == hiddens"),
    # one setting's tie was applied to the other's site: the cells below became tied
    # per sequence
    ("compose zoneout ties", lambda: zoneout(cells=0.5) + zoneout(hiddens=0.1, tie="sequence"),
     "Zoneout.tie differs"),
    # settings that are not numbers (a string from a config, None, a bool) were
    # TypeErrors from a comparison, or stored as they came (MaskSpec("0.5"))
    ("string rate", lambda: zaremba("0.5"), "Zaremba dropout rate must be a number"),
    ("string MaskSpec rate", lambda: MaskSpec("0.5"), "Dropout rate must be a number"),
    ("None rate", lambda: variational(input=None), r"\(input\) rate must be a number"),
    ("string embedding rate", lambda: embedding_dropout("0.1"), "must be a number"),
    ("bool zoneout rate", lambda: zoneout(cells=True), r"\(cells\) rate must be a number"),
    ("bool depth rate", lambda: stochastic_depth(True), "must be a number"),
    ("string weight noise", lambda: weight_noise("0.1"), "weight_noise must be a number"),
    ("None penalty weight", lambda: norm_stabilizer(None), "must be a number"),
    ("infinite weight noise", lambda: weight_noise(float("inf")), "finite and non-negative"),
    ("infinite AR", lambda: activation_regularization(float("inf")), "finite"),
    ("nan TAR", lambda: temporal_activation_regularization(float("nan")), "finite"),
    # keep probabilities are multiples of 2^-16: these quantized to 0 and the inverted
    # masks divided by it (every output NaN)
    ("rate keeping nothing", lambda: zaremba(0.999995), "must keep at least 2\\^-16"),
    ("weight drop keeping nothing", lambda: weight_drop(1 - 2.0 ** -18), "2\\^-16"),
    ("recurrent dropout keeping nothing", lambda: recurrent_dropout(0.9999999), "2\\^-16"),
    ("embedding dropout keeping nothing", lambda: embedding_dropout(0.9999999), "2\\^-16"),
    ("huge integer rate", lambda: zaremba(10 ** 400), "rate must be a number"),  # Overflow
]


def test_settings_are_stored_as_python_floats():
    """A numpy or 0-d JAX rate is stored as a float, so the record stays hashable (a
    static `jit` argument) and equal to the one built from the float."""
    assert zaremba(np.float32(0.25)) == zaremba(0.25)
    reg = variational(input=jnp.asarray(0.5), recurrent=np.float64(0.25)) + weight_noise(
        jnp.asarray(0.5))
    assert hash(reg) == hash(variational(input=0.5, recurrent=0.25) + weight_noise(0.5))
    assert type(reg.find(Dropout).input.rate) is float


@pytest.mark.parametrize("make,match", [c[1:] for c in BAD_ARGUMENTS],
                         ids=[c[0] for c in BAD_ARGUMENTS])
def test_bad_arguments_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_reg_that_is_not_a_regularizer_is_one_sentence():
    """`reg=None`, an uncalled constructor or a number is named where it is given, in
    `+`, `compose`, `unroll`, the linen modules and the NNX ones (they were
    AttributeErrors deep inside: 'NoneType' object has no attribute ...)."""
    from flax import nnx

    from rnnreg_jax import models
    from rnnreg_jax import nnx as rnx

    match = "reg must be a regularizer"
    with pytest.raises(ValueError, match=match + r".*got None\."):
        compose(zaremba(0.1), None)
    with pytest.raises(ValueError, match=match + ".*got 0.5"):
        zaremba(0.1) + 0.5
    with pytest.raises(ValueError, match=match + ".*<function zaremba.*call it"):
        rnnreg_jax.unroll("lstm", PARAMS["lstm"], X, reg=zaremba)
    with pytest.raises(ValueError, match=match):
        rnnreg_jax.unroll("lstm", PARAMS["lstm"], X, reg=None)
    with pytest.raises(ValueError, match=match):
        models.LanguageModel(5, (4,), reg=None)
    with pytest.raises(ValueError, match=match):
        StackedRNN((4,), reg=zaremba)
    with pytest.raises(ValueError, match=match):
        rnx.StackedRNN(3, (4,), reg=None, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("cell", ["gru", "rnn"])
@pytest.mark.parametrize("reg", [variational(cell=0.2), dropout("cell", 0.2), zoneout(cells=0.2),
                                 zoneout(0.2, 0.2, shared=True),
                                 recurrent_dropout(0.2, output_zoneout=True)],
                         ids=["variational cell", "cell dropout", "zoneout cells",
                              "zoneout shared", "output zoneout"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_lstm_only_sites_rejected_on_gru_and_rnn(cell, reg, deterministic):
    with pytest.raises(ValueError, match="needs an LSTM cell state"):
        reg.check_cell(cell)
    with pytest.raises(ValueError, match="needs an LSTM cell state"):
        rnnreg_jax.unroll(cell, PARAMS[cell], X, reg=reg, key=KEY, deterministic=deterministic)
    with pytest.raises(ValueError, match="needs an LSTM cell state"):
        StackedRNN(H, cell=cell, reg=reg).init(KEY, X)


@pytest.mark.parametrize("reg", [zaremba(0.1), variational(recurrent=0.1), zoneout(hiddens=0.1),
                                 stochastic_depth(0.1), weight_noise(0.1),
                                 recurrent_dropout(0.1)])
def test_missing_key_in_training_raises(reg):
    with pytest.raises(ValueError, match="PRNG key is required"):
        rnnreg_jax.unroll("gru", PARAMS["gru"], X, reg=reg, deterministic=False)
    # Flax: a training apply without a "dropout" stream says how to pass one.
    with pytest.raises(ValueError, match="needs a dropout PRNG key"):
        StackedRNN(H, cell="gru", reg=reg).apply({"params": {"layer_0": PARAMS["gru"][0]}}, X,
                                                 deterministic=False)


def test_the_smallest_keep_probability_still_runs():
    """A rate whose keep probability quantizes to 2^-16 (the last one allowed) gives
    finite outputs: the mask divides by 2^-16, not by 0."""
    rate = 1 - 2.0 ** -16
    out, _ = rnnreg_jax.unroll("lstm", PARAMS["lstm"], X, reg=zaremba(rate), key=KEY,
                               deterministic=False)
    assert bool(jnp.isfinite(out).all())
    assert noise.quantize_probability(1 - rate) == 2.0 ** -16


def test_sum_of_regularizers_composes():
    """`sum(regs)` starts from 0, which `Regularizer.__radd__` takes as nothing."""
    assert sum([zaremba(0.5), weight_noise(0.1)]) == zaremba(0.5) + weight_noise(0.1)
    assert sum([zaremba(0.5)]) == zaremba(0.5)
    with pytest.raises(TypeError):
        1 + zaremba(0.5)


def test_weight_drop_runs_before_weight_noise_in_either_order():
    """Weight drop masks W_h before weight noise adds to it, whichever is written first
    (`WEIGHTS_ORDER`): `W_h * m / q + sigma * eps` both ways."""
    params = PARAMS["lstm"][0]
    drop_first = (weight_drop(0.5) + weight_noise(0.1)).weights(params, KEY, 0, False)
    noise_first = (weight_noise(0.1) + weight_drop(0.5)).weights(params, KEY, 0, False)
    np.testing.assert_array_equal(drop_first["w_h"], noise_first["w_h"])
    dropped = weight_drop(0.5).weights(params, KEY, 0, False)["w_h"]
    noisy = weight_noise(0.1).weights(params, KEY, 0, False)["w_h"]
    added = noisy - params["w_h"]  # sigma * eps, the same site key in both
    np.testing.assert_allclose(drop_first["w_h"], dropped + added, rtol=1e-6, atol=1e-6)
