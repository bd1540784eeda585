"""Semantics of every regularizer: specs, formulas, tying, jit/grad, errors.

The central check is `test_unroll_matches_reference`: a hand-written,
gate-by-gate implementation of the regularizer table in docs/REGULARIZERS.md, fed
the masks that `noise` draws from the same key, must reproduce `rnn.unroll` in
training mode, and its expectation (dropout = identity, mixing coefficient = its
rate) must reproduce deterministic mode: in float64 to rounding, in float32 to
float32's rounding (`tests/numerics.py`).
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest

import rnnreg_jax
from rnnreg_jax import cells, noise, rnn
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
    norm_stabilizer_penalty,
    recurrent_dropout,
    stochastic_depth,
    temporal_activation_regularization,
    variational,
    weight_noise,
    zaremba,
    zoneout,
)

KEY = jax.random.key(0)
B, T, F, H = 3, 5, 6, 4


def make_params(cell, sizes=(F, H, H), seed=0):
    """Uniform(-0.5, 0.5) layers in `cells.init_params`' layout, drawn with numpy.

    (numpy, not `jax.random`: compiling threefry for 2-D shapes costs seconds on CPU.)
    """
    rng = np.random.default_rng(seed)
    width = lambda h: cells.NUM_GATES[cell] * h
    layers = []
    for i, o in zip(sizes, sizes[1:], strict=False):
        shapes = {"w_x": (i, width(o)), "w_h": (o, width(o)), "b": (width(o),)}
        if cell == "gru":
            shapes["b_h"] = (width(o),)
        layers.append({k: jnp.asarray(rng.uniform(-0.5, 0.5, v), jnp.float32)
                       for k, v in shapes.items()})
    return layers


# The public `unroll` under jit (specs are static): one compile per (cell, spec, mode).
run = jax.jit(rnnreg_jax.unroll, static_argnums=0,
              static_argnames=("reg", "deterministic", "time_major", "unroll", "return_hiddens"))


X = jnp.asarray(np.random.default_rng(1).normal(size=(B, T, F)), jnp.float32)
PARAMS = {cell: make_params(cell) for cell in cells.CELL_TYPES}


# =========================================================================== specs


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


# =========================================================================== reference


def _at(value, t, per_step):
    return value[t] if per_step and value is not None else value


def _mix(d, prev, new):
    """The catalog's `d * prev + (1 - d) * new`, written as in the papers."""
    return new if d is None else d * prev + (1 - d) * new


def _array(mask):
    """A per-gate recurrent mask's array (`cells.PerGate`), other masks as they are."""
    return mask.masks if isinstance(mask, cells.PerGate) else mask


def _gate(mask, g, per_gate):
    """The mask one gate's copy of an input sees (None = unmasked)."""
    if mask is None:
        return 1.0
    return mask[g] if per_gate else mask


def reference_unroll(cell, params, x, reg, key, deterministic):
    """docs/REGULARIZERS.md's table written gate by gate in a Python loop over time, in
    the dtype of `x` (float64 under `numerics.x64()`)."""
    batch, steps, _ = x.shape
    x = jnp.swapaxes(x, 0, 1)
    num_gates = cells.NUM_GATES[cell]
    for layer, p in enumerate(params):
        hidden = p["w_h"].shape[0]
        ln = noise.layer_noise(reg, key, layer, cell, batch, steps, x.shape[-1], hidden,
                               deterministic, x.dtype)
        w_h = noise.weight_noise(reg, key, layer, p["w_h"], deterministic)
        blocks = lambda w, n=hidden: [w[..., g * n:(g + 1) * n] for g in range(num_gates)]
        wx, wh, bx = blocks(p["w_x"]), blocks(w_h), blocks(p["b"])
        bh = blocks(p["b_h"]) if cell == "gru" else None
        h = c = o_prev = jnp.zeros((batch, hidden), x.dtype)
        masks = reg.find(Dropout) or Dropout()
        in_per_step = masks.input is not None and masks.input.tie == "step"
        in_per_gate = masks.input is not None and masks.input.per_gate
        rec_per_gate = masks.recurrent is not None and masks.recurrent.per_gate
        ys = []
        for t in range(steps):
            n = {name: _array(getattr(ln.tied, name)) if getattr(ln.tied, name) is not None
                 else _at(_array(getattr(ln.per_step, name)), t, True)
                 for name in cells.StepNoise._fields}
            mx = ln.input
            if mx is not None and in_per_step:
                mx = mx[t]  # every per-step mask is time first
            xs = [(x[t] * _gate(mx, g, in_per_gate)) @ wx[g] + bx[g] for g in range(num_gates)]
            hs = [(h * _gate(n["recurrent"], g, rec_per_gate)) @ wh[g] for g in range(num_gates)]
            m_u = 1.0 if n["update"] is None else n["update"]
            if cell == "lstm":
                i, f, o = (jax.nn.sigmoid(xs[g] + hs[g]) for g in (0, 1, 3))
                gg = jnp.tanh(xs[2] + hs[2]) * m_u
                c_new = f * c + i * gg
                if reg.needs_output_gate:
                    o = _mix(n["output_gate"], o_prev, o)
                    o_prev = o
                if n["cell"] is not None:
                    c_new = c_new * n["cell"]
                h_new = o * jnp.tanh(c_new)
                c_t, h_t = _mix(n["zone_c"], c, c_new), _mix(n["zone_h"], h, h_new)
                c, h = _mix(n["depth"], c, c_t), _mix(n["depth"], h, h_t)
            else:
                if cell == "gru":
                    r = jax.nn.sigmoid(xs[0] + hs[0] + bh[0])
                    z = jax.nn.sigmoid(xs[1] + hs[1] + bh[1])
                    cand = jnp.tanh(xs[2] + r * (hs[2] + bh[2])) * m_u
                    h_new = (1 - z) * cand + z * h
                else:
                    h_new = jnp.tanh(xs[0] + hs[0]) * m_u
                h = _mix(n["depth"], h, _mix(n["zone_h"], h, h_new))
            ys.append(h)
        x = jnp.stack(ys)
    mask = noise.output_mask(reg, key, batch, steps, x.shape[-1], deterministic, x.dtype)
    if mask is not None:
        x = x * mask
    return jnp.swapaxes(x, 0, 1)


# Every regularizer, alone for the LSTM and bundled for GRU/RNN, in training mode.
TRAIN_CASES = [
    ("lstm", "zaremba + zoneout", zaremba(0.4) + zoneout(0.5, 0.3)),
    ("lstm", "variational + tied zoneout + tied semeniuta + output zoneout",
     variational(0.4, 0.3, 0.3, cell=0.2) + zoneout(0.5, 0.3, tie="sequence")
     + recurrent_dropout(0.4, tie="sequence", output_zoneout=True)),
    ("lstm", "variational per_gate + depth + weight noise",
     variational(0.4, 0.3, per_gate=True) + stochastic_depth(0.4) + weight_noise(0.3)),
    ("lstm", "naive per_gate + semeniuta + output zoneout + shared zoneout",
     naive_dropout(input=0.4, recurrent=0.3, cell=0.2, per_gate=True)
     + recurrent_dropout(0.4, output_zoneout=True) + zoneout(0.4, 0.4, shared=True)),
    ("gru", "per step bundle", naive_dropout(input=0.4, recurrent=0.3, per_gate=True)
     + zoneout(hiddens=0.3) + recurrent_dropout(0.3) + stochastic_depth(0.2)),
    ("gru", "tied bundle", variational(0.4, 0.3, 0.3) + recurrent_dropout(0.3, tie="sequence")
     + zoneout(hiddens=0.3, tie="sequence") + weight_noise(0.1)),
    ("rnn", "per step bundle", zaremba(0.3) + naive_dropout(recurrent=0.3)
     + zoneout(hiddens=0.3) + recurrent_dropout(0.3) + stochastic_depth(0.2)),
    ("rnn", "tied bundle", variational(0.4, 0.3, 0.3, per_gate=True) + weight_noise(0.1)
     + recurrent_dropout(0.3, tie="sequence") + zoneout(hiddens=0.3, tie="sequence")),
    ("lstm", "semeniuta with eval scaling + output zoneout",
     recurrent_dropout(0.4, output_zoneout=True, eval_scaling=True) + zoneout(0.3, 0.2)),
]
EVAL_CASES = [
    ("lstm", "everything", variational(0.3, 0.3, 0.2, cell=0.1, per_gate=True)
     + zoneout(0.3, 0.2) + recurrent_dropout(0.3, output_zoneout=True)
     + stochastic_depth(0.2) + weight_noise(0.1)),
    ("gru", "everything", zaremba(0.3) + naive_dropout(recurrent=0.3) + zoneout(hiddens=0.3)
     + recurrent_dropout(0.3) + stochastic_depth(0.2) + weight_noise(0.1)),
    ("rnn", "everything", variational(0.3, 0.3, 0.3, per_gate=True) + zoneout(hiddens=0.3)
     + recurrent_dropout(0.3) + stochastic_depth(0.2)),
    ("gru", "semeniuta with eval scaling", recurrent_dropout(0.3, eval_scaling=True)),
]


@pytest.mark.parametrize("cell,name,reg,deterministic",
                         [(*c, False) for c in TRAIN_CASES] + [(*c, True) for c in EVAL_CASES],
                         ids=[f"{c[0]}-{c[1]}-train" for c in TRAIN_CASES]
                         + [f"{c[0]}-{c[1]}-eval" for c in EVAL_CASES])
def test_unroll_matches_reference(cell, name, reg, deterministic):
    params = PARAMS[cell]
    key = None if deterministic else KEY
    ys, _ = run(cell, params, X, reg=reg, key=key, deterministic=deterministic)
    expected = reference_unroll(cell, params, X, reg, key, deterministic)
    nm.assert_close_f32(ys, expected)
    with nm.x64():  # the same function: to rounding in float64
        params64, x64 = nm.as_f64(params), nm.as_f64(X)
        ys64, _ = run(cell, params64, x64, reg=reg, key=key, deterministic=deterministic)
        nm.assert_close_f64(ys64, reference_unroll(cell, params64, x64, reg, key,
                                                   deterministic))
    plain, _ = run(cell, params, X)
    assert not np.allclose(ys, plain, atol=1e-4), "the regularizer changed nothing"
    if not deterministic:
        # Same key, same output; another key, another output.
        np.testing.assert_array_equal(ys, run(cell, params, X, reg=reg, key=KEY,
                                              deterministic=False)[0])
        other, _ = run(cell, params, X, reg=reg, key=jax.random.key(5), deterministic=False)
        assert not np.allclose(ys, other, atol=1e-4)


@pytest.mark.parametrize("cell", ["lstm"])
def test_masks_are_per_example(cell):
    """Identical examples get different noise in training and equal outputs in evaluation."""
    reg = zaremba(0.3) + zoneout(hiddens=0.3) + stochastic_depth(0.3)
    x = jnp.tile(X[:1], (4, 1, 1))
    ys, _ = run(cell, PARAMS[cell][:1], x, reg=reg, key=KEY, deterministic=False)
    assert len({np.asarray(y).tobytes() for y in ys}) == 4
    ys, _ = run(cell, PARAMS[cell][:1], x, reg=reg, deterministic=True)
    np.testing.assert_array_equal(ys, jnp.tile(ys[:1], (4, 1, 1)))


# =========================================================================== expectations


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
    # `cells.mix` computes new + d (prev - new): exact to an ulp per step, not bit for bit.
    np.testing.assert_allclose(ys, jnp.broadcast_to(carry["h"][:, None], ys.shape), atol=1e-5)
    for name in carry:
        np.testing.assert_allclose(final[name], carry[name], atol=1e-5)
    # Zero state stays exactly zero.
    ys, _ = run(cell, PARAMS[cell][0], x, cells.init_carry(cell, B, H), reg=reg, key=KEY,
                deterministic=False)
    np.testing.assert_array_equal(ys, 0.0)


# =========================================================================== tying by gradients


def _input_pattern(reg, key):
    """Zero pattern of d sum_h y_t / d x_t over input features, `[T, B, F]`, public API only."""
    steps, batch, features = 6, 2, 16
    params = make_params("lstm", (features, 8), seed=2)[0]
    x = jnp.asarray(np.random.default_rng(4).normal(size=(batch, steps, features)), jnp.float32)

    def step_sum(x):
        ys, _ = rnnreg_jax.unroll("lstm", params, x, reg=reg, key=key, deterministic=False)
        return ys.sum(-1)  # [B, T]

    jac = jax.jit(jax.jacrev(step_sum))(x)  # [B, T, B, T, F]
    diag = jnp.stack([jnp.stack([jac[b, t, b, t] for b in range(batch)]) for t in range(steps)])
    return np.asarray(diag) == 0


def test_tying_is_visible_in_input_gradients():
    tied = _input_pattern(rnnreg_jax.variational(input=0.5), KEY)
    per_step = _input_pattern(rnnreg_jax.zaremba(0.5), KEY)
    for pattern in (tied, per_step):
        frac = pattern.mean()
        assert 0.2 < frac < 0.8, frac  # about half the features dropped
    # Variational: the same features are dropped at every step of a sequence...
    assert all(np.array_equal(tied[t], tied[0]) for t in range(tied.shape[0]))
    # ... but differ between examples.
    assert not np.array_equal(tied[0, 0], tied[0, 1])
    # Zaremba: a fresh mask every step.
    for b in range(per_step.shape[1]):
        assert len({per_step[t, b].tobytes() for t in range(per_step.shape[0])}) > 1


# =========================================================================== jit and grad


# Every regularizer of each cell appears in some bundle; the first LSTM one also in eval mode.
GRAD_BUNDLES = {
    "lstm": [zaremba(0.3) + zoneout(0.3, 0.2) + recurrent_dropout(0.3, output_zoneout=True)
             + stochastic_depth(0.2) + weight_noise(0.05) + norm_stabilizer(1.0)
             + naive_dropout(recurrent=0.3, cell=0.2, per_gate=True),
             variational(0.3, 0.3, 0.3, cell=0.2, per_gate=True)
             + zoneout(0.3, 0.3, shared=True, tie="sequence")
             + recurrent_dropout(0.3, tie="sequence")],
    "gru": [zaremba(0.3) + naive_dropout(recurrent=0.3, per_gate=True) + zoneout(hiddens=0.2)
            + recurrent_dropout(0.3) + stochastic_depth(0.2) + weight_noise(0.05)
            + norm_stabilizer(1.0),
            variational(0.3, 0.3, 0.3) + zoneout(hiddens=0.2, tie="sequence")
            + recurrent_dropout(0.3, tie="sequence")],
    "rnn": [zaremba(0.3) + naive_dropout(recurrent=0.3) + zoneout(hiddens=0.2)
            + recurrent_dropout(0.3) + stochastic_depth(0.2) + weight_noise(0.05)
            + norm_stabilizer(1.0),
            variational(0.3, 0.3, 0.3, per_gate=True) + zoneout(hiddens=0.2, tie="sequence")
            + recurrent_dropout(0.3, tie="sequence")],
}


@pytest.mark.parametrize("cell", cells.CELL_TYPES)
def test_jit_grad_finite_through_100_steps(cell):
    """Every regularizer (in bundles), train and eval, under jit, gradients through 100 steps."""
    params = make_params(cell, (3, 5))
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 100, 3)), jnp.float32)
    regs = GRAD_BUNDLES[cell]

    @jax.jit
    def grads(params, x, key):
        out = []
        for reg, det in [(r, False) for r in regs] + [(regs[0], True)] * (cell == "lstm"):
            def loss(params, x, reg=reg, det=det):
                ys, _, hs = rnnreg_jax.unroll(cell, params, x, reg=reg, key=key,
                                              deterministic=det, return_hiddens=True)
                beta = (reg.find(NormStabilizer) or NormStabilizer()).weight
                pen = sum(norm_stabilizer_penalty(h, beta) for h in hs)
                return jnp.mean(ys[:, -1] ** 2) + jnp.mean(ys ** 2) + pen
            out.append(jax.grad(loss, argnums=(0, 1))(params, x))
        return out

    results = grads(params, x, KEY)
    assert len(results) == len(regs) + (cell == "lstm")
    for g in results:
        for leaf in jax.tree_util.tree_leaves(g):
            assert np.all(np.isfinite(leaf))
        # The first input step still gets a gradient after 100 steps.
        assert np.any(g[1][:, 0] != 0)
        assert all(np.any(leaf != 0) for leaf in jax.tree_util.tree_leaves(g[0]))


# =========================================================================== norm stabilizer


def test_norm_stabilizer_penalty_by_hand():
    # norms: example 0: 5, 0, 10 -> diffs -5, 10; example 1: 1, 1, 2 -> 0, 1.
    h = jnp.array([[[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]],
                   [[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]]])
    expected = 2.0 * (25 + 100 + 0 + 1) / 4
    np.testing.assert_allclose(norm_stabilizer_penalty(h, 2.0), expected, rtol=1e-6)
    np.testing.assert_allclose(norm_stabilizer_penalty(jnp.swapaxes(h, 0, 1), 2.0, time_axis=0),
                               expected, rtol=1e-6)
    # Differences are taken within the window: a constant norm costs nothing.
    np.testing.assert_array_equal(norm_stabilizer_penalty(jnp.ones((2, 4, 3)), 5.0), 0.0)


def test_norm_stabilizer_gradient_at_a_zero_state_is_finite():
    """A zero h_t (kept initial state) used to give NaN through jnp.linalg.norm."""
    h = jnp.array([[[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]]])
    np.testing.assert_allclose(norm_stabilizer_penalty(h, 1.0), 25.0)
    grad = jax.grad(norm_stabilizer_penalty)(h, 1.0)
    assert np.all(np.isfinite(grad))
    # d/dh_1 of (|h_1| - 0)^2 + (0 - |h_1|)^2 = 4 |h_1| h_1/|h_1| / 2 terms = 2 h_1.
    np.testing.assert_allclose(grad[0, 1], [6.0, 8.0], rtol=1e-6)
    np.testing.assert_array_equal(grad[0, 0], 0.0)


def test_stacked_rnn_sows_the_penalty_only_in_training():
    reg = norm_stabilizer(3.0)
    model = StackedRNN((H, H), cell="gru", reg=reg)
    variables = model.init(KEY, X)
    _, state = model.apply(variables, X, deterministic=False, mutable=["penalties"])
    penalty = jax.tree_util.tree_leaves(state["penalties"])
    assert len(penalty) == 1
    layers = [variables["params"][f"layer_{i}"] for i in range(2)]
    _, _, hs = rnn.unroll("gru", layers, X, return_hiddens=True)
    expected = sum(norm_stabilizer_penalty(h, 3.0) for h in hs)
    np.testing.assert_allclose(penalty[0], expected, rtol=1e-5)
    assert penalty[0] > 0
    _, state = model.apply(variables, X, deterministic=True, mutable=["penalties"])
    assert not jax.tree_util.tree_leaves(flax.core.unfreeze(state).get("penalties", {}))


# =========================================================================== composition


def test_zoneout_plus_zaremba_draws_every_site():
    reg = zoneout(0.5, 0.05) + zaremba(0.3)
    ln = noise.layer_noise(reg, KEY, 0, "lstm", B, T, F, H, False)
    assert ln.input.shape == (T, B, F)
    assert ln.per_step.zone_c.shape == ln.per_step.zone_h.shape == (T, B, H)
    assert ln.tied == cells.StepNoise()
    assert noise.output_mask(reg, KEY, B, T, H, False).shape == (T, B, H)
    # Each part's masks are those it draws alone.
    np.testing.assert_array_equal(
        ln.input, noise.layer_noise(zaremba(0.3), KEY, 0, "lstm", B, T, F, H, False).input)


def test_variational_plus_embedding_draws_every_site():
    reg = variational(0.35, 0.2, 0.35) + embedding_dropout(0.2)
    ln = noise.layer_noise(reg, KEY, 1, "lstm", B, T, H, H, False)
    assert ln.input.shape == (B, H) and ln.tied.recurrent.shape == (B, H)
    assert ln.per_step == cells.StepNoise()
    assert noise.output_mask(reg, KEY, B, T, H, False).shape == (B, H)
    ids = jnp.zeros((B, T), jnp.int32)
    assert noise.embedding_mask(reg, KEY, ids, 10, False).shape == (B, T, 1)


# =========================================================================== fast path


@pytest.mark.parametrize("reg", [zaremba(0.3), variational(0.3, 0.3, per_gate=True),
                                 naive_dropout(input=0.3, per_gate=True)],
                         ids=["zaremba", "variational per_gate", "naive per_gate"])
def test_input_masks_project_once_per_layer_outside_the_scan(monkeypatch, reg):
    calls = []
    original = cells.project_inputs

    def counting(params, x, input_mask=None, per_gate=False):
        calls.append((x.shape, None if input_mask is None else input_mask.shape, per_gate))
        return original(params, x, input_mask, per_gate)

    monkeypatch.setattr(cells.params, "project_inputs", counting)  # where `project` finds it
    rnnreg_jax.unroll("lstm", PARAMS["lstm"], X, reg=reg, key=KEY, deterministic=False)
    # One call per layer, on the whole window [T, B, F], with the mask.
    assert [c[0] for c in calls] == [(T, B, F), (T, B, H)]
    assert all(c[1] is not None and c[2] == reg.find(Dropout).input.per_gate for c in calls)


@pytest.mark.parametrize("tie", ["sequence", "step"])
def test_per_gate_projection_equals_stacked_masked_matmuls(tie):
    p = PARAMS["lstm"][0]
    x = jnp.swapaxes(X, 0, 1)
    mask = noise.dropout_mask(KEY, MaskSpec(0.5, tie, True), (B, F), T, num_gates=4)
    got = cells.project_inputs(p, x, mask, per_gate=True)
    blocks = []
    for g in range(4):
        m = mask[g] if tie == "sequence" else mask[:, g]  # per step: [T, G, B, F]
        blocks.append((x * m) @ p["w_x"][:, g * H:(g + 1) * H] + p["b"][g * H:(g + 1) * H])
    np.testing.assert_allclose(got, jnp.concatenate(blocks, -1), rtol=1e-5, atol=1e-6)


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
