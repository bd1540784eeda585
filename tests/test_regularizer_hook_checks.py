"""A regularizer of one's own whose hook breaks its contract (`regularizers.base`) fails
in one sentence naming it, alone and composed with a built-in, at the call that would
have used the bad value, rather than deep inside a traced step; and every shape the
contract allows runs."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest

import rnnreg_jax as rj
from rnnreg_jax import cells, models, rnn
from rnnreg_jax.nn import StackedRNN
from rnnreg_jax.regularizers.base import penalties_of

B, T, F, H, W = 4, 7, 3, 6, 5  # the stack: F -> H -> W


def _regularizer_with(name: str, **hooks):
    """A frozen regularizer class `name` with `hooks` as its methods, instantiated."""
    return dataclasses.dataclass(frozen=True)(
        type(name, (rj.regularizers.Regularizer,), hooks))()


def _regularizer_whose(hook: str, returns, name: str):
    """A regularizer `name` whose `hook` (a mask or step noise hook) returns
    `returns(B, T, size)`, size the hook's site's width."""
    size = "input_size" if hook in ("input_mask", "output_mask") else "hidden_size"

    def method(self, key, shape, deterministic):
        return returns(shape.batch, shape.steps, getattr(shape, size))

    return _regularizer_with(name, **{hook: method})


def _params():
    return [cells.init_params(jax.random.key(0), "lstm", f, h, 0.4)
            for f, h in ((F, H), (H, W))]


def _unroll(reg, batch=B, params=None):
    x = jax.random.normal(jax.random.key(2), (batch, T, F))
    return rnn.unroll("lstm", _params() if params is None else params, x, reg=reg,
                      key=jax.random.key(3), deterministic=False)


# One multiplier per LSTM gate block (i, f, g, o), powers of 2 so that scaling the
# operand or the weights rounds alike.
GATE_SCALES = jnp.array([1.0, 0.5, 2.0, 0.25])


def _unroll_gate_scaled(name, scales, batch=B):
    """`_unroll` without a regularizer, each layer's `name` ("w_x" or "w_h", `[F or H, 4H]`,
    its gate blocks side by side) scaled block by block by `scales`: what a mask constant
    over the batch and the units does to the product it masks, `(v * m) W = v (m W)`."""
    params = [dict(p, **{name: p[name] * jnp.repeat(scales, p[name].shape[1] // 4)})
              for p in _params()]
    return _unroll(rj.NONE, batch, params)


def _refused_alone_and_composed(reg, message, run=_unroll):
    for candidate in (reg, rj.zoneout(hiddens=0.1) + reg):
        with pytest.raises(ValueError) as err:
            run(candidate)
        assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("noise_fn,message", [
    (lambda b, t, h: None, "Returns.step_noise must return (tied, per_step), two dicts of "
                           "cells.StepNoise fields; got NoneType None."),
    (lambda b, t, h: {"recurrent": jnp.ones((b, h))}, "Returns.step_noise must return "
                                                      "(tied, per_step), two dicts of"),
    (lambda b, t, h: ({"recurent": jnp.ones((b, h))}, {}), "Returns.step_noise must return "
     "(tied, per_step), two dicts of cells.StepNoise fields; 'recurent' is none of"),
    (lambda b, t, h: ({"recurrent": jnp.ones((b + 1, h))}, {}),
     "Returns's tied step noise 'recurrent' has shape (5, 6); layer 0 needs one that "
     "broadcasts to (4, 6)."),
    (lambda b, t, h: ({}, {"zone_h": jnp.ones((b, h))}),
     "Returns's per-step step noise 'zone_h' has shape (4, 6); layer 0 needs one that "
     "broadcasts to (7, 4, 6)."),
    (lambda b, t, h: ({"recurrent": cells.PerGate(jnp.ones((3, b, h)))}, {}),
     "Returns's tied step noise 'recurrent' has shape (3, 4, 6); layer 0 needs one that "
     "broadcasts to (4, 4, 6)."),
])
def test_a_step_noise_hooks_mistake_is_one_sentence(noise_fn, message):
    """A user's hook with the wrong structure or shapes failed inside the scan (an
    unpacking TypeError, a broadcasting error naming no site)."""
    _refused_alone_and_composed(_regularizer_whose("step_noise", noise_fn, "Returns"),
                                message)


@pytest.mark.parametrize("noise_fn,gate_scales", [
    # depth 1 keeps every layer's previous state, the zero initial one: ys exactly 0
    (lambda b, t, h: ({"recurrent": cells.PerGate(jnp.ones((4, b, h))), "depth":
                       jnp.ones((b, 1)), "zone_c": 0.5}, {"zone_h": jnp.ones((t, b, h))}),
     None),
    (lambda b, t, h: ({}, {"recurrent": cells.PerGate(jnp.ones((t, 4, b, h))),
                           "depth": jnp.ones((t, b, 1))}), None),
    # a per-gate recurrent mask, tied or per step (depth 0: no layer keeps its state):
    # W_h's gate blocks scaled
    (lambda b, t, h: ({"recurrent": cells.PerGate(
        GATE_SCALES[:, None, None] * jnp.ones((4, b, h)))}, {}), GATE_SCALES),
    (lambda b, t, h: ({}, {"recurrent": cells.PerGate(
        GATE_SCALES[None, :, None, None] * jnp.ones((t, 4, b, h))),
                           "depth": jnp.zeros((t, b, 1))}), GATE_SCALES),
])
def test_step_noise_of_every_documented_shape_runs(noise_fn, gate_scales):
    ys, _ = _unroll(_regularizer_whose("step_noise", noise_fn, "Returns"))
    assert ys.shape == (B, T, W)
    if gate_scales is None:
        np.testing.assert_array_equal(ys, 0.0)
    else:
        nm.assert_close_f32(ys, _unroll_gate_scaled("w_h", gate_scales)[0])


@pytest.mark.parametrize("masked_fn,message", [
    # a bare [B, F] mask of B = 2 was unpacked into a mask and a "per_gate" row
    (lambda b, t, f: jnp.ones((2, f)), "Masks.input_mask must return None or (mask, "
                                       "per_gate) with per_gate a bool; got "),
    (lambda b, t, f: (jnp.ones((b, f + 1)), False),
     "Masks's input mask has shape (2, 4); layer 0 needs one that broadcasts to (2, 3) or "
     "(7, 2, 3)."),
    (lambda b, t, f: (jnp.ones((b, f)), True),
     "Masks's input mask has shape (2, 3); layer 0 needs one that broadcasts to (4, 2, 3) "
     "or (7, 4, 2, 3)."),
])
def test_an_input_mask_hooks_mistake_is_one_sentence(masked_fn, message):
    masks = _regularizer_whose("input_mask", masked_fn, "Masks")
    _refused_alone_and_composed(masks, message, run=lambda reg: _unroll(reg, batch=2))
    # Every layer's input is masked: its W_x's gate blocks scaled by the mask's constants.
    ones, half = jnp.ones(4), jnp.full(4, 0.5)
    for good, gate_scales in (
            (lambda b, t, f: (jnp.ones((t, b, f)), False), ones),
            (lambda b, t, f: (jnp.ones((4, b, f)), True), ones),
            (lambda b, t, f: (0.5, False), half),
            (lambda b, t, f: (GATE_SCALES[:, None, None] * jnp.ones((4, b, f)), True),
             GATE_SCALES)):
        ys, _ = _unroll(_regularizer_whose("input_mask", good, "Masks"), batch=2)
        nm.assert_close_f32(ys, _unroll_gate_scaled("w_x", gate_scales, batch=2)[0])


@pytest.mark.parametrize("mask_fn,message", [
    (lambda b, t, w: jnp.ones((b, w + 1)), "Outputs's output mask has shape (4, 6); the "
     "stack's output needs one that broadcasts to (4, 5) or (7, 4, 5)."),
    (lambda b, t, w: jnp.ones((t, 1, b, w)), "Outputs's output mask has shape (7, 1, 4, 5)"),
    (lambda b, t, w: jnp.ones((b, t, w)), "Outputs's output mask has shape (4, 7, 5)"),
])
def test_an_output_mask_hooks_mistake_is_one_sentence(mask_fn, message):
    """A batch-major `[B, T, W]` mask or a wrong width failed in the product, naming
    nothing (where B == T a batch-major mask has the right shape: no check can tell)."""
    _refused_alone_and_composed(_regularizer_whose("output_mask", mask_fn, "Outputs"),
                                message)
    for good in (lambda b, t, w: jnp.ones((t, b, w)), lambda b, t, w: jnp.full((w,), 0.5),
                 lambda b, t, w: 0.5, lambda b, t, w: None):
        ys, _ = _unroll(_regularizer_whose("output_mask", good, "Outputs"))
        assert ys.shape == (B, T, W) and np.all(np.isfinite(ys))


def _embedding_masker(returns):
    def embedding_mask(self, key, ids, vocab_size, deterministic, dtype):
        return returns(*ids.shape)

    return _regularizer_with("Embeds", embedding_mask=embedding_mask)


def _language_model_logits(reg, deterministic=False):
    ids = jnp.tile(jnp.arange(T, dtype=jnp.int32) % 5, (B, 1))
    model = models.LanguageModel(vocab_size=5, hidden_sizes=(H,), init_scale=0.1, reg=reg)
    variables = model.init(jax.random.key(0), ids)
    logits, _ = model.apply(variables, ids, deterministic=deterministic,
                            rngs={"dropout": jax.random.key(5)})
    return logits


@pytest.mark.parametrize("mask_fn,message", [
    (lambda b, t: jnp.ones((t, b, 1)), "Embeds's embedding mask has shape (7, 4, 1); tokens "
     "of shape (4, 7) need one that broadcasts to (4, 7, 1) or (4, 7, E)."),
    (lambda b, t: jnp.ones((1, b, t, 1)), "Embeds's embedding mask has shape (1, 4, 7, 1)"),
])
def test_an_embedding_mask_hooks_mistake_is_one_sentence(mask_fn, message):
    _refused_alone_and_composed(_embedding_masker(mask_fn), message,
                                run=_language_model_logits)
    for good in (lambda b, t: jnp.ones((b, t, 1)), lambda b, t: jnp.ones((b, 1, 1)),
                 lambda b, t: 0.5):
        assert np.all(np.isfinite(_language_model_logits(_embedding_masker(good))))


@pytest.mark.parametrize("transform,message", [
    (lambda params: None, "Weights.weights must return the dict of arrays it was given, "
                          "transformed; got NoneType None."),
    (lambda params: {"w_h": params["w_h"]}, "Weights.weights dropped ['b', 'w_x'] from the "
     "arrays it was given (['b', 'w_h', 'w_x']); return them all"),
    (lambda params: dict(params, w_h=params["w_h"].T), "Weights.weights changed 'w_h' from "
     "shape (6, 24) to (24, 6); a weight transform keeps each array's shape."),
])
def test_a_weights_hooks_mistake_is_one_sentence(transform, message):
    """A dropped array was a KeyError inside the cell; a transposed square-looking W_h a
    shape error in the step's product, naming neither."""
    def weights(self, params, key, layer, deterministic):
        return transform(params)

    _refused_alone_and_composed(_regularizer_with("Weights", weights=weights), message)
    extra = _regularizer_with("Weights", weights=lambda self, params, *_: dict(
        params, w_h=2 * params["w_h"], note=jnp.zeros(())))
    assert np.all(np.isfinite(_unroll(extra)[0]))  # values change, entries may be added


def test_a_model_weights_hooks_mistake_is_one_sentence():
    def model_weights(self, arrays, key, deterministic):
        return {name: value.T for name, value in arrays.items()}

    _refused_alone_and_composed(
        _regularizer_with("Tables", model_weights=model_weights),
        "Tables.model_weights changed 'embedding' from shape (5, 6) to (6, 5); a weight "
        "transform keeps each array's shape.", run=_language_model_logits)


@pytest.mark.parametrize("terms,message", [
    (lambda h: h[-1], "Penalty.penalties must return a dict of named scalar loss "
                           "terms, {name: scalar}; got "),
    (lambda h: {"act": jnp.mean(h[-1] ** 2, axis=(1, 2))},
     "Penalty's penalty 'act' is shape (4,); a loss term must be a scalar (sum or average "
     "it)."),
    (lambda h: {"act": "large"}, "Penalty's penalty 'act' is a str; a loss term must be a "
                                 "scalar"),
])
def test_a_penalties_hooks_mistake_is_one_sentence(terms, message):
    """A per-example term broadcast the loss to a vector: the gradient then failed with
    "Gradient only defined for scalar-output functions", far from the hook."""
    def penalties(self, params, hiddens, outputs, time_axis, seq_lengths=None):
        return terms(hiddens)

    def sown(reg):
        module = StackedRNN((H, W), reg=reg)
        x = jax.random.normal(jax.random.key(2), (B, T, F))
        variables = module.init(jax.random.key(0), x)
        return module.apply(variables, x, deterministic=False, mutable=["penalties"],
                            rngs={"dropout": jax.random.key(1)})

    penalty = _regularizer_with("Penalty", penalties=penalties)
    _refused_alone_and_composed(penalty, message, run=sown)
    good = _regularizer_with("Penalty", penalties=lambda self, params, hiddens, *_, **__: {
        "act": jnp.mean(hiddens[-1] ** 2), "constant": 1.0})
    _, state = sown(good)
    assert {name for name in state["penalties"]} == {"act", "constant"}
    assert penalties_of(good, [], [jnp.ones((2, 3))], jnp.zeros(()), 1) == {
        "act": 1.0, "constant": 1.0}


def test_the_built_ins_pass_every_check():
    """Every hook of every built-in family, composed, through a language model and a
    stack: the checks refuse nothing they return."""
    reg = (rj.zaremba(0.2) + rj.variational(recurrent=0.2) + rj.zoneout(cells=0.1)
           + rj.embedding_dropout(0.1) + rj.weight_drop(0.2) + rj.weight_noise(0.01, scope="all")
           + rj.activation_regularization(1.0) + rj.norm_stabilizer(1.0))
    assert np.all(np.isfinite(_language_model_logits(reg)))
    # evaluation's expectations: scalar scales where eval_scaling asks for them
    scaled = (rj.variational(input=0.2, recurrent=0.2, output=0.2, eval_scaling=True)
              + rj.embedding_dropout(0.1, eval_scaling=True) + rj.zoneout(hiddens=0.1))
    for deterministic in (False, True):
        assert np.all(np.isfinite(_language_model_logits(scaled, deterministic)))
