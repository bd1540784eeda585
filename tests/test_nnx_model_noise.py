"""The NNX task models' model noise: a regularizer of the model's own weights
(`model_weights`, e.g. `weight_noise(std, scope="all")`) perturbs the embedding and the
softmax or head kernel as the linen models do, with the same key.

Training calls are compared with linen's in float64 (outputs, penalties and gradients,
`test_nnx.assert_same_as_linen`); the arrays perturbed are checked against a model
holding them perturbed by hand; evaluation is the noise-free model; gradients under
`nnx.jit` are finite and reach every parameter.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest
from flax import nnx
from test_nnx import (
    KEY,
    LENGTHS,
    B,
    F,
    T,
    V,
    assert_language_model_same_as_linen,
    assert_same_as_linen,
    floats,
    ids,
)

import rnnreg_jax as rj
from rnnreg_jax import models, regularizers
from rnnreg_jax import nnx as rnx
from rnnreg_jax.regularizers.weights import WeightNoise

STD = 0.3
ALL = regularizers.weight_noise(STD, "all")
# Embedding dropout beside the model noise: its key is then linen's second root draw.
LM_REG = rj.variational(input=0.2, recurrent=0.2, output=0.3, embedding=0.2) + ALL + (
    rj.activation_regularization(1.0))


@dataclasses.dataclass(frozen=True)
class _ModelOnly(regularizers.Regularizer):
    """Weight noise on the model's own arrays only (none in the stack), so a test can
    rebuild the perturbed arrays by hand and leave the recurrence noise-free."""

    def model_weights(self, arrays, key, deterministic):
        return WeightNoise(STD, "all").model_weights(arrays, key, deterministic)


MODEL_ONLY = rj.compose(_ModelOnly())


def lm(reg=ALL, tied=False, **kwargs) -> rnx.LanguageModel:
    return rnx.LanguageModel(V, (5,), tie_embeddings=tied, reg=reg,
                             rngs=nnx.Rngs(params=0, dropout=1), **kwargs)


def with_params(model, params: dict):
    """A noise-free twin of `model` (no regularizer) holding `params`."""
    linen, _ = model.to_linen()
    return type(model).from_linen(linen.clone(reg=rj.NONE), {"params": params})


@pytest.mark.parametrize("kind", [pytest.param("untied", marks=pytest.mark.slow), "tied",
                                  pytest.param("embed_to_gates", marks=pytest.mark.slow)])
def test_language_model_with_model_noise_matches_linen(kind):
    assert_language_model_same_as_linen(  # embed_to_gates: the embedding is W_x
        kind, LM_REG, rj.zoneout(cells=0.3, hiddens=0.2) + rj.embedding_dropout(0.2) + ALL)


@pytest.mark.parametrize("inputs,lengths", [  # floats on full windows is slow
    pytest.param("floats", None, marks=pytest.mark.slow, id="floats-full"),
    pytest.param("floats", LENGTHS, id="floats-padded"),
    pytest.param("ids", None, id="ids-full"), pytest.param("ids", LENGTHS, id="ids-padded")])
def test_sequence_model_with_model_noise_matches_linen(inputs, lengths):
    """Token ids: embedding and head perturbed; float inputs: the head only."""
    vocab = V if inputs == "ids" else None  # floats: no word types to drop
    reg = rj.variational(input=0.2, recurrent=0.2, output=0.3,
                         embedding=0.3 if vocab else 0.0) + ALL
    linen = models.SequenceModel(3, (4,), vocab_size=vocab, embed_size=5, reg=reg)
    x = ids() if inputs == "ids" else floats((B, T, F))
    variables = linen.init(jax.random.key(0), x)
    assert_same_as_linen(linen, variables, (x,), rnx.SequenceModel, seq_lengths=lengths)


def perturbed(params: dict, paths: list[tuple[str, str]], key) -> dict:
    """`params` with the arrays at `paths` ("embedding" or "output" role, path) read
    through `_ModelOnly`'s transform with `key`, one call per array as the models make."""
    out = jax.tree.map(lambda a: a, params)
    for role, (owner, name) in paths:
        out[owner][name] = MODEL_ONLY.model_weights({role: params[owner][name]}, key,
                                                    False)[role]
    return out


@pytest.mark.parametrize("tied", [False, True])
def test_the_language_model_perturbs_its_embedding_and_softmax_kernel(tied):
    """Its training call is the noise-free model holding the embedding (and, untied, the
    softmax kernel) perturbed with linen's first root key; biases stay; a different
    key gives other outputs; evaluation is the noise-free model."""
    model = lm(MODEL_ONLY, tied)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    weights_key = rnx.linen_key(KEY)
    paths = [("embedding", ("embed", "embedding"))]
    if not tied:
        paths.append(("output", ("softmax", "kernel")))
    noisy = perturbed(params, paths, weights_key)
    assert not np.allclose(noisy["embed"]["embedding"], params["embed"]["embedding"])
    expected, _ = with_params(model, noisy)(ids(), deterministic=True)
    got, _ = model(ids(), rngs=KEY)
    nm.assert_close_f32(got, expected)
    clean, _ = with_params(model, params)(ids(), deterministic=True)
    assert not np.allclose(got, clean, atol=1e-3)
    assert not np.allclose(model(ids(), rngs=jax.random.key(5))[0], got, atol=1e-3)
    np.testing.assert_array_equal(model(ids(), deterministic=True)[0], clean)


@pytest.mark.parametrize("inputs", ["floats", "ids"])
def test_the_sequence_model_perturbs_its_embedding_and_head_kernel(inputs):
    vocab = V if inputs == "ids" else None
    model = rnx.SequenceModel(3, (4,), vocab_size=vocab, embed_size=5,
                              input_size=None if vocab else F, reg=MODEL_ONLY,
                              rngs=nnx.Rngs(params=0, dropout=1))
    x = ids() if vocab else floats((B, T, F))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    paths = [("output", ("head", "kernel"))]
    if vocab:
        paths.insert(0, ("embedding", ("embed", "embedding")))
    noisy = perturbed(params, paths, rnx.linen_key(KEY))
    nm.assert_close_f32(model(x, rngs=KEY), with_params(model, noisy)(x, deterministic=True))
    clean = with_params(model, params)(x, deterministic=True)
    assert not np.allclose(model(x, rngs=KEY), clean, atol=1e-4)
    assert not np.allclose(model(x, rngs=jax.random.key(5)), model(x, rngs=KEY), atol=1e-4)
    np.testing.assert_array_equal(model(x, deterministic=True), clean)


def test_weight_noise_on_every_weight_evaluates_as_the_noise_free_model():
    """`.eval()` (and a call's `deterministic=True`) reads the stored weights: the
    noise-free model's outputs, and no key is drawn."""
    model = lm(LM_REG, tied=True)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    clean, _ = with_params(model, params)(ids(), deterministic=True)
    trained, _ = model(ids())
    assert not np.allclose(trained, clean, atol=1e-3)
    model.eval()
    count = int(model.rngs.count[...])
    np.testing.assert_array_equal(model(ids())[0], clean)
    assert int(model.rngs.count[...]) == count


def test_model_noise_alone_needs_a_key_and_draws_one_per_call():
    """With no other noise the model still draws its key (linen asks for one too), and
    without a stream a training call is the one-sentence error."""
    model = lm(MODEL_ONLY)
    assert not model.reg.has_noise and model.reg.model_noise
    first, _ = model(ids())
    assert int(model.rngs.count[...]) == 1
    assert not np.allclose(model(ids())[0], first)
    no_stream = rnx.LanguageModel(V, (5,), reg=ALL, rngs=nnx.Rngs(params=0))
    with pytest.raises(ValueError, match="needs a dropout PRNG key"):
        no_stream(ids())
    no_stream(ids(), deterministic=True)


def test_without_model_noise_the_keys_are_unchanged():
    """Weight noise off (`std=0`: no model noise) draws no key for it: the embedding mask
    keeps linen's first root key, and the output is linen's with the same key."""
    reg = rj.variational(0.3, 0.3, 0.3, embedding=0.2) + rj.weight_noise(0.0, "all")
    assert not reg.model_noise and reg.embedding_noise
    model = lm(reg, tied=True)
    linen, variables = model.to_linen()
    expected, _ = linen.apply(variables, ids(), deterministic=False, rngs={"dropout": KEY})
    nm.assert_close_f32(model(ids(), rngs=KEY)[0], expected)


@pytest.mark.parametrize("tied", [False, True])
def test_gradients_under_jit_are_finite_and_reach_every_parameter(tied):
    model = lm(LM_REG, tied)
    targets = (ids() + 1) % V

    @nnx.jit
    def grads_of(model, key):
        def loss_fn(model):
            logits, _ = model(ids(), rngs=key)
            xent = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)
            return xent.mean() + model.penalty()

        return nnx.grad(loss_fn)(model)

    grads = nnx.to_pure_dict(grads_of(model, KEY))
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    assert len(flat) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    for path, g in flat:
        name = jax.tree_util.keystr(path)
        assert np.isfinite(g).all(), name
        assert np.abs(g).max() > 0, name
    # the noisy arrays' gradients are those of the perturbed weights: another key, others
    other = nnx.to_pure_dict(grads_of(model, jax.random.key(5)))
    assert not np.allclose(other["embed"]["embedding"], grads["embed"]["embedding"])


def test_mc_samples_carry_the_model_noise_as_linens_samples_do():
    """MC dropout runs the samples in training mode: sample k perturbs the weights with
    `fold_in(key, k)` as linen's training-mode apply with that key does."""
    linen = models.LanguageModel(V, (4,), reg=LM_REG)
    variables = linen.init(jax.random.key(0), ids())
    model = rnx.LanguageModel.from_linen(linen, variables)
    samples, _ = rnx.mc_samples(model, ids(), KEY, 2)
    for k in range(2):
        expected, _ = linen.apply(variables, ids(), deterministic=False,
                                  rngs={"dropout": jax.random.fold_in(KEY, k)})
        nm.assert_close_f32(samples[k], expected)
