"""Weight noise on every weight matrix (`weight_noise(std, scope="all")`, the zoneout
authors' noise on Blocks' WEIGHT role) and the `model_weights` hook the task models call."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnreg_jax as rj
from rnnreg_jax import cells, regularizers
from rnnreg_jax.models import LanguageModel, SequenceModel
from rnnreg_jax.regularizers.weights import WeightNoise

STD = 0.5


def _layer():
    return cells.init_params(jax.random.key(0), "lstm", 3, 4)


def test_all_adds_noise_to_w_x_too_and_keeps_w_h_s_draw():
    params, key = _layer(), jax.random.key(7)
    recurrent = regularizers.weight_noise(STD).weights(params, key, 0, False)
    every = regularizers.weight_noise(STD, "all").weights(params, key, 0, False)
    np.testing.assert_array_equal(recurrent["w_x"], params["w_x"])
    np.testing.assert_array_equal(every["w_h"], recurrent["w_h"])  # the same draw as before
    np.testing.assert_array_equal(every["b"], params["b"])  # biases stay
    eps = (every["w_x"] - params["w_x"]) / STD
    assert abs(float(eps.mean())) < 0.5 and 0.5 < float(eps.std()) < 1.5
    assert not np.allclose(eps, (every["w_h"][:3] - params["w_h"][:3]) / STD)  # own draws
    for reg in (regularizers.weight_noise(STD), regularizers.weight_noise(STD, "all")):
        assert reg.weights(params, key, 0, True) is params  # evaluation: W
    assert not regularizers.weight_noise(STD).model_noise
    assert regularizers.weight_noise(STD, "all").model_noise
    assert not regularizers.weight_noise(0.0, "all").model_noise  # off: no key needed


def test_model_weights_draws_each_array_apart_and_only_in_training():
    reg, key = regularizers.weight_noise(STD, "all"), jax.random.key(3)
    arrays = {"embedding": jnp.zeros((50, 8)), "output": jnp.zeros((8, 50))}
    noisy = reg.model_weights(arrays, key, False)
    assert {k: v.shape for k, v in noisy.items()} == {k: v.shape for k, v in arrays.items()}
    assert 0.4 < float(noisy["embedding"].std()) < 0.6
    assert not np.allclose(noisy["embedding"], noisy["output"].T)
    np.testing.assert_array_equal(reg.model_weights({"output": arrays["output"]}, key,
                                                    False)["output"], noisy["output"])
    assert reg.model_weights(arrays, key, True) is arrays
    with pytest.raises(ValueError, match="A PRNG key is required for weight noise"):
        reg.model_weights(arrays, None, False)


def test_scope_is_checked_and_two_scopes_do_not_merge():
    with pytest.raises(ValueError, match=r"^weight_noise scope must be one of "
                                         r"\('recurrent', 'all'\), got 'every'\."):
        regularizers.weight_noise(0.1, "every")
    with pytest.raises(ValueError, match="WeightNoise.scope differs"):
        rj.compose(WeightNoise(0.1, "all"), WeightNoise(0.1))


@dataclasses.dataclass(frozen=True)
class _Shift(regularizers.Regularizer):
    """A user's model-weight transform: +1 on the output kernel, x2 on the embedding."""

    def model_weights(self, arrays, key, deterministic):
        if deterministic:
            return arrays
        shifted = {"output": lambda w: w + 1.0, "embedding": lambda w: 2.0 * w}
        return {name: shifted[name](w) for name, w in arrays.items()}


@pytest.mark.parametrize("tied", [False, True])
def test_the_language_model_reads_its_embedding_and_softmax_through_the_hook(tied):
    ids = jnp.asarray([[1, 2, 3], [4, 5, 0]])
    shifted = LanguageModel(7, 6, tie_embeddings=tied, reg=rj.compose(_Shift()))
    plain = LanguageModel(7, 6, tie_embeddings=tied)
    variables = plain.init(jax.random.key(0), ids)
    rngs = {"dropout": jax.random.key(1)}
    assert shifted.reg.model_noise
    got, _ = shifted.apply(variables, ids, deterministic=False, rngs=rngs)
    params = jax.tree.map(lambda a: a, variables["params"])
    params["embed"] = {"embedding": 2.0 * params["embed"]["embedding"]}
    if not tied:
        params["softmax"] = dict(params["softmax"], kernel=params["softmax"]["kernel"] + 1.0)
    want, _ = plain.apply({"params": params}, ids)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # as the training step calls it, with collections to fill (Flax's map_variables,
    # tried first, saw no params then)
    (got, _), _ = shifted.apply(variables, ids, deterministic=False, rngs=rngs,
                                mutable=["penalties", "batch_stats"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    evaluated, _ = shifted.apply(variables, ids)  # evaluation: the stored weights
    np.testing.assert_allclose(evaluated, plain.apply(variables, ids)[0], rtol=1e-6)


def test_the_sequence_model_reads_its_embedding_and_head_through_the_hook():
    ids = jnp.asarray([[1, 2, 3], [4, 5, 0]])
    shifted = SequenceModel(2, 5, vocab_size=7, embed_size=4, reg=rj.compose(_Shift()))
    plain = SequenceModel(2, 5, vocab_size=7, embed_size=4)
    variables = plain.init(jax.random.key(0), ids)
    got, _ = shifted.apply(variables, ids, deterministic=False,
                           rngs={"dropout": jax.random.key(1)}, mutable=["penalties"])
    params = dict(variables["params"])
    params["embed"] = {"embedding": 2.0 * params["embed"]["embedding"]}
    params["head"] = dict(params["head"], kernel=params["head"]["kernel"] + 1.0)
    np.testing.assert_allclose(got, plain.apply({"params": params}, ids), rtol=1e-5, atol=1e-5)


def test_without_model_noise_nothing_moves():
    """A model whose regularizer has no model-weight transform draws no extra key: its
    training outputs are those of the code before the hook existed (same masks)."""
    ids = jnp.asarray([[1, 2, 3], [4, 5, 0]])
    reg = rj.variational(0.3, 0.3, 0.3, embedding=0.2)
    model = LanguageModel(7, 6, reg=reg)
    variables = model.init(jax.random.key(0), ids)
    rngs = {"dropout": jax.random.key(1)}
    out, _ = model.apply(variables, ids, deterministic=False, rngs=rngs)
    with_noise = LanguageModel(7, 6, reg=reg + regularizers.weight_noise(0.0, "all"))
    np.testing.assert_array_equal(
        with_noise.apply(variables, ids, deterministic=False, rngs=rngs)[0], out)


def test_the_weight_noise_presets_put_it_on_every_weight():
    from experiments.configs import ptb
    from experiments.configs.common import regularization

    for preset in (ptb.weight_noise, ptb.weight_noise_char):
        reg = regularization(preset().reg)
        assert reg.model_noise and any(getattr(p, "scope", None) == "all" for p in reg.parts)
    old = ptb.weight_noise().reg.to_dict()
    del old["weight_noise"]["scope"]  # a record from before the field: W_h only
    assert not regularization(old).model_noise
