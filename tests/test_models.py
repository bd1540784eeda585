"""Tests of the task models `LanguageModel` and `SequenceModel`."""

from __future__ import annotations

import jax
import numerics as nm
import numpy as np
import pytest

from rnnreg_jax import rnn
from rnnreg_jax.models import LanguageModel, SequenceModel
from rnnreg_jax.regularizers import (
    embedding_dropout,
    norm_stabilizer,
    variational,
    zaremba,
    zoneout,
)

B, T, V = 2, 5, 11


def token_ids(steps: int = T, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, (B, steps)).astype(np.int32)


def close(a, b) -> None:
    """float32, leaf by leaf: rtol 1e-5 plus 100 ulps of the leaf's largest magnitude."""
    nm.assert_trees_close_f32(a, b)


def test_language_model_is_embed_unroll_dense() -> None:
    """Logits `[B, T, V]` equal embedding lookup -> `rnn.unroll` -> dense, carry included."""
    reg = zoneout(cells=0.2, hiddens=0.1)
    model = LanguageModel(V, (6, 4), embed_size=3, reg=reg, init_scale=0.1)
    ids = token_ids()
    variables = jax.jit(model.init)(jax.random.key(0), ids)
    p = variables["params"]
    assert set(p) == {"embed", "rnn", "softmax"}
    assert p["embed"]["embedding"].shape == (V, 3)
    assert p["softmax"]["kernel"].shape == (4, V)
    assert max(float(np.abs(v).max()) for v in jax.tree.leaves(p)) <= 0.1

    @jax.jit
    def run(variables, ids):
        logits, carry = model.apply(variables, ids)
        layers = [p["rnn"]["layer_0"], p["rnn"]["layer_1"]]
        ys, ref_carry = rnn.unroll("lstm", layers, p["embed"]["embedding"][ids], reg=reg)
        ref = ys @ p["softmax"]["kernel"] + p["softmax"]["bias"]
        ys1, mid = model.apply(variables, ids[:, :2])
        ys2, carry2 = model.apply(variables, ids[:, 2:], mid)
        return (logits, carry), (ref, ref_carry), (ys1, ys2, carry2)

    (logits, carry), expected, (ys1, ys2, carry2) = run(variables, ids)
    assert logits.shape == (B, T, V) and len(carry) == 2
    close((logits, carry), expected)
    close(np.concatenate([ys1, ys2], axis=1), logits)  # the carry continues the stream
    close(carry2, carry)


def test_language_model_training_mode() -> None:
    """Dropout needs the `dropout` rng; same rng same logits; penalties are sown."""
    reg = variational(input=0.3, output=0.3) + embedding_dropout(0.2) + norm_stabilizer(1.0)
    model = LanguageModel(V, (4,), reg=reg)
    ids = token_ids()
    variables = jax.jit(model.init)(jax.random.key(0), ids)
    with pytest.raises(ValueError, match="needs a dropout PRNG key"):
        model.apply(variables, ids, deterministic=False)

    @jax.jit
    def run(variables, keys):
        def train(key):
            (logits, _), state = model.apply(variables, ids, deterministic=False,
                                             rngs={"dropout": key}, mutable=["penalties"])
            return logits, state["penalties"]

        return jax.vmap(train)(keys), model.apply(variables, ids)[0]

    ((a, b, c), penalties), evaluated = run(
        variables, jax.random.split(jax.random.key(1), 3)[np.array([0, 0, 1])])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.all(penalties["rnn"]["norm_stabilizer"][0] > 0)
    assert not np.allclose(a, evaluated)


def test_tied_embeddings() -> None:
    """Tied softmax uses the embedding matrix; mismatched sizes are a clear error."""
    model = LanguageModel(V, (4,), tie_embeddings=True)
    ids = token_ids()
    variables = jax.jit(model.init)(jax.random.key(0), ids)
    assert "softmax" not in variables["params"]
    assert variables["params"]["softmax_bias"].shape == (V,)
    with pytest.raises(ValueError, match="tie_embeddings"):
        bad = LanguageModel(V, (4, 5), tie_embeddings=True)
        jax.eval_shape(bad.init, jax.random.key(0), ids)  # traced only: fast


def test_sequence_model_float_inputs() -> None:
    """`[B, T, F]` floats -> `[B, C]`: a dense head on the last output of the stack."""
    model = SequenceModel(num_outputs=3, hidden_sizes=(4,), cell="gru")
    x = np.random.default_rng(1).standard_normal((B, T, 2)).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    p = variables["params"]
    assert set(p) == {"rnn", "head"}

    @jax.jit
    def run(variables):
        ys, _ = rnn.unroll("gru", p["rnn"]["layer_0"], x)
        return model.apply(variables, x), ys[:, -1] @ p["head"]["kernel"] + p["head"]["bias"]

    out, expected = run(variables)
    assert out.shape == (B, 3)
    close(out, expected)


def test_sequence_model_token_inputs() -> None:
    """Token ids are embedded; regression head `[B, 1]`; training mode needs the rng."""
    model = SequenceModel(num_outputs=1, hidden_sizes=(4, 3), vocab_size=V, embed_size=5,
                          reg=variational(input=0.2, output=0.2, embedding=0.2))
    ids = token_ids()
    variables = jax.jit(model.init)(jax.random.key(0), ids)
    assert variables["params"]["embed"]["embedding"].shape == (V, 5)
    out = jax.jit(model.apply)(variables, ids)
    assert out.shape == (B, 1) and np.all(np.isfinite(out))
    with pytest.raises(ValueError, match="needs a dropout PRNG key"):
        model.apply(variables, ids, deterministic=False)


def test_embedding_dropout_alone_needs_a_dropout_key_too() -> None:
    model = LanguageModel(vocab_size=11, hidden_sizes=(5,), reg=embedding_dropout(0.2))
    ids = np.zeros((2, 3), np.int32)
    variables = model.init(jax.random.key(0), ids)
    with pytest.raises(ValueError, match="needs a dropout PRNG key"):
        model.apply(variables, ids, deterministic=False)
    logits, _ = model.apply(variables, ids, deterministic=False,
                            rngs={"dropout": jax.random.key(1)})
    assert logits.shape == (2, 3, 11)


def test_orthogonal_init_of_both_models():
    """orthogonal_init: orthonormal rows in every weight matrix, zero biases."""
    import jax.numpy as jnp

    lm = LanguageModel(vocab_size=12, hidden_sizes=(8,), embed_size=8, orthogonal_init=True)
    params = lm.init(jax.random.key(0), jnp.zeros((2, 3), jnp.int32))["params"]
    layer = params["rnn"]["layer_0"]
    for w in (layer["w_x"], layer["w_h"], params["softmax"]["kernel"]):  # [n, m], n <= m
        np.testing.assert_allclose(w @ w.T, np.eye(w.shape[0]), atol=1e-5)
    assert not np.any(layer["b"]) and not np.any(params["softmax"]["bias"])
    embed = params["embed"]["embedding"]  # [12, 8]: orthonormal columns
    np.testing.assert_allclose(embed.T @ embed, np.eye(8), atol=1e-5)
    seq = SequenceModel(num_outputs=3, hidden_sizes=(8,), orthogonal_init=True)
    head = seq.init(jax.random.key(1), jnp.zeros((2, 5, 1)))["params"]["head"]
    np.testing.assert_allclose(head["kernel"].T @ head["kernel"], np.eye(3), atol=1e-5)
    plain = LanguageModel(vocab_size=12, hidden_sizes=(8,), embed_size=8, init_scale=0.1)
    w_h = plain.init(jax.random.key(0), jnp.zeros((2, 3), jnp.int32))["params"]["rnn"][
        "layer_0"]["w_h"]
    assert np.abs(w_h).max() <= 0.1 and not np.allclose(w_h @ w_h.T, np.eye(8), atol=0.1)


def test_glorot_uniform_head():
    """head_init="glorot_uniform" (Keras 0.x's Dense): kernel within and near
    sqrt(6 / (fan_in + fan_out)), zero bias; a bad name or one combined with
    orthogonal_init is refused in one sentence (the NNX twin: tests/test_nnx.py)."""
    import jax.numpy as jnp

    hidden, outputs = 64, 3
    bound = np.sqrt(6.0 / (hidden + outputs))
    model = SequenceModel(num_outputs=outputs, hidden_sizes=(hidden,), vocab_size=V,
                          embed_size=4, head_init="glorot_uniform")
    head = model.init(jax.random.key(0), jnp.zeros((2, 3), jnp.int32))["params"]["head"]
    kernel = np.asarray(head["kernel"])
    assert kernel.shape == (hidden, outputs) and not np.any(head["bias"])
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
    assert abs(kernel.std() / (bound / np.sqrt(3.0)) - 1.0) < 0.15  # a uniform's spread
    bad = SequenceModel(num_outputs=2, hidden_sizes=(4,), head_init="xavier")
    with pytest.raises(ValueError, match="head_init must be one of"):
        bad.init(jax.random.key(0), jnp.zeros((2, 3, 1)))
    both = SequenceModel(num_outputs=2, hidden_sizes=(4,), head_init="glorot_uniform",
                         orthogonal_init=True)
    with pytest.raises(ValueError, match="orthogonal_init already"):
        both.init(jax.random.key(0), jnp.zeros((2, 3, 1)))


def test_embed_to_gates_is_a_one_hot_linear_map_into_the_gates():
    """The zoneout authors' word-level input: embedding row + b as the gates' input
    pre-activations, equal to a plain model whose W_x is the identity."""
    import jax.numpy as jnp

    ids = jnp.array([[1, 5, 2], [0, 3, 3]])
    lm = LanguageModel(vocab_size=7, hidden_sizes=(4,), embed_to_gates=True, init_scale=0.3)
    variables = lm.init(jax.random.key(0), ids)
    params = variables["params"]
    assert params["embed"]["embedding"].shape == (7, 16)
    assert "w_x" not in params["rnn"]["layer_0"]
    plain = LanguageModel(vocab_size=7, hidden_sizes=(4,), embed_size=16, init_scale=0.3)
    layer = dict(params["rnn"]["layer_0"], w_x=jnp.eye(16))
    same = {"params": dict(params, rnn={"layer_0": layer})}
    for deterministic in (True, False):
        rngs = None if deterministic else {"dropout": jax.random.key(1)}
        a, _ = lm.apply(variables, ids, deterministic=deterministic, rngs=rngs)
        b, _ = plain.apply(same, ids, deterministic=deterministic, rngs=rngs)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    bad = LanguageModel(vocab_size=7, hidden_sizes=(4,), embed_to_gates=True,
                        reg=zoneout(0.1, 0.1) + zaremba(0.2))
    with pytest.raises(ValueError, match="takes no input dropout mask"):
        bad.apply(bad.init(jax.random.key(0), ids), ids, deterministic=False,
                  rngs={"dropout": jax.random.key(1)})


def test_an_int_hidden_sizes_is_one_layer_as_in_stacked_rnn() -> None:
    """`hidden_sizes=4` is `(4,)`, as `nn.StackedRNN` reads it, not a TypeError."""
    ids = token_ids()
    for int_model, tuple_model in (
            (LanguageModel(V, 4), LanguageModel(V, (4,))),
            (SequenceModel(2, 4, vocab_size=V), SequenceModel(2, (4,), vocab_size=V))):
        shapes = jax.eval_shape(int_model.init, jax.random.key(0), ids)  # traced only: fast
        expected = jax.eval_shape(tuple_model.init, jax.random.key(0), ids)
        assert jax.tree.map(lambda a: a.shape, shapes) == \
            jax.tree.map(lambda a: a.shape, expected)


def test_inputs_of_another_rank_are_named_in_the_models_terms() -> None:
    """Ids that are not `[B, T]` (or floats that are not `[B, T, F]`) are a one-sentence
    ValueError in the model's own terms, not the stack's `[B, T, F]` of embeddings."""
    with pytest.raises(ValueError, match=r"LanguageModel takes int ids \[B, T\], got shape "
                                         r"\(2, 5, 1\)"):
        jax.eval_shape(LanguageModel(V, 4).init, jax.random.key(0),
                       np.zeros((B, T, 1), np.int32))
    with pytest.raises(ValueError, match=r"SequenceModel with vocab_size takes int ids "
                                         r"\[B, T\], got shape \(5,\)"):
        jax.eval_shape(SequenceModel(2, 4, vocab_size=V).init, jax.random.key(0),
                       np.zeros((T,), np.int32))
    with pytest.raises(ValueError, match=r"SequenceModel without vocab_size takes float "
                                         r"inputs \[B, T, F\], got shape \(2, 5\)"):
        jax.eval_shape(SequenceModel(2, 4).init, jax.random.key(0), np.zeros((B, T)))


def test_token_ids_out_of_the_vocabulary_are_refused_or_poison_the_loss() -> None:
    """Concrete ids outside `[0, V)` or float ids are a one-sentence ValueError in both
    models; under jit, where nothing can raise, such an id's logits are NaN, a negative
    id's too (`nn.Embed`'s gather wraps -1 to the table's last row: another word, no
    error), while every in-range id reads its row as before."""
    lm, seq = LanguageModel(V, 4), SequenceModel(2, 4, vocab_size=V)
    ids = token_ids()
    for model in (lm, seq):
        variables = model.init(jax.random.key(0), ids)
        for bad, got in ((V, f"from 0 to {V}"), (-1, "from -1 to")):
            with pytest.raises(ValueError, match=rf"^Token ids must lie in \[0, vocab_size\) "
                                                 rf"= \[0, {V}\), got ids {got}"):
                model.apply(variables, np.where(np.arange(T) == 1, bad, ids))
        with pytest.raises(ValueError, match=r"^Token ids must be integers, got dtype float"):
            model.apply(variables, ids.astype(np.float32))
    variables = lm.init(jax.random.key(0), ids)
    logits = jax.jit(lm.apply)(variables, ids)[0]
    for bad in (V, -1):
        poisoned = jax.jit(lm.apply)(variables, np.where(np.arange(T) == 2, bad, ids))[0]
        np.testing.assert_array_equal(poisoned[:, :2], logits[:, :2])  # before the bad id
        assert np.isnan(poisoned[:, 2:]).all()  # from it on: its row and the state after it


def test_sizes_that_are_not_whole_numbers_are_named() -> None:
    """An empty stack, a width or vocabulary below 1 or not a whole number is one sentence
    (they were an IndexError, an MLIR error, a TypeError: 'float' object is not
    iterable); a numpy integer width is one layer, like an int. (NNX's twin:
    tests/test_nnx.py; NNX does not import at the flax floor these tests also run at.)"""
    ids, key = token_ids(), jax.random.key(0)
    for hidden_sizes in ((), (4, -1), 4.0, (0,)):
        with pytest.raises(ValueError, match="hidden_sizes must"):
            jax.eval_shape(LanguageModel(V, hidden_sizes).init, key, ids)
    for make in (lambda: LanguageModel(0, 4), lambda: SequenceModel(2, 4, vocab_size=-3)):
        with pytest.raises(ValueError, match="vocab_size must be a whole number >= 1"):
            jax.eval_shape(make().init, key, ids)
    with pytest.raises(ValueError, match="num_outputs must be a whole number >= 1, got 0"):
        jax.eval_shape(SequenceModel(0, 4, vocab_size=V).init, key, ids)  # divided by zero
    # a negative embedding width was an MLIR error, 0 silently the hidden size
    for make in (lambda: LanguageModel(V, 4, embed_size=-3),
                 lambda: LanguageModel(V, 4, embed_size=0),
                 lambda: SequenceModel(2, 4, vocab_size=V, embed_size=0)):
        with pytest.raises(ValueError, match="embed_size must be a whole number >= 1"):
            jax.eval_shape(make().init, key, ids)
    shapes = jax.eval_shape(LanguageModel(V, np.int64(4)).init, key, ids)
    assert shapes["params"]["rnn"]["layer_0"]["w_h"].shape == (4, 16)
