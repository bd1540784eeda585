"""One-sentence errors for bad arguments of public functions (penalties, bidirectional
helpers, the NNX modules and MC dropout, the task models), and the silent misreadings
they replace. `generate`'s cases are in
tests/test_generate.py's table (`_bad_calls`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rnnreg_jax as rj
from rnnreg_jax import bidirectional as bd
from rnnreg_jax import nnx as rnx
from rnnreg_jax.models import LanguageModel, SequenceModel

B, T, H, V = 2, 3, 4, 7
HIDDENS = jax.random.normal(jax.random.key(0), (B, T, H))
PENALTIES = (rj.activation_penalty, rj.temporal_activation_penalty, rj.norm_stabilizer_penalty)
KEY_MESSAGE = "key must be one PRNG key (jax.random.key(seed), or jax.random.PRNGKey(seed))"


def one_sentence(error: pytest.ExceptionInfo, message: str) -> None:
    """`message` starts the error's text, which is one line ending in a period."""
    text = str(error.value)
    assert text.startswith(message) and "\n" not in text and text.endswith("."), text


def weight_name(penalty) -> str:
    return "alpha" if penalty is rj.activation_penalty else "beta"


# ------------------------------------------------------------------------------ penalties

@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("weight,message", [
    (-1.0, "{} must be finite and non-negative"),  # silently a negative loss term before
    (math.nan, "{} must be finite and non-negative"),  # a NaN loss before
    (jnp.asarray(-1.0), "{} must be finite and non-negative"),  # a concrete array: checked
    ("2", "{} must be a number, got '2'."),
    (jnp.ones(2), "{} must be a real scalar, got an array of shape (2,)"),  # a vector "loss"
])
def test_penalty_weights_are_checked(penalty, weight, message):
    with pytest.raises(ValueError) as error:
        penalty(HIDDENS, weight)
    one_sentence(error, message.format(weight_name(penalty)))


@pytest.mark.parametrize("penalty", PENALTIES)
@pytest.mark.parametrize("change,message", [
    (dict(time_axis=2), "time_axis must be 0 or 1 (the batch being the other), got 2."),
    (dict(time_axis=True), "time_axis must be 0 or 1 (the batch being the other), got True."),
    (dict(time_axis=-1), "time_axis must be 0 or 1"),  # differenced the features before
    (dict(hiddens=HIDDENS[0]), "{} must be [B, T, H] (or [T, B, H] with time_axis=0), got "
                               "shape (3, 4)."),
    (dict(seq_lengths=jnp.asarray([1.0, 2.0])), "seq_lengths must be integers, got dtype "
                                                "float32."),
    (dict(seq_lengths=jnp.asarray([1, T + 1])), "seq_lengths must be in [1, T] = [1, 3], got "
                                                "values from 1 to 4."),
    (dict(seq_lengths=jnp.asarray([1, 2, 3])), "seq_lengths must have shape [B] = (2,), got "
                                               "(3,)."),
])
def test_penalty_axes_shapes_and_lengths_are_checked(penalty, change, message):
    args = dict(hiddens=HIDDENS, time_axis=1, seq_lengths=None) | change
    with pytest.raises(ValueError) as error:
        penalty(args["hiddens"], 1.0, args["time_axis"], args["seq_lengths"])
    name = "outputs" if penalty is rj.activation_penalty else "hiddens"
    one_sentence(error, message.format(name))


@pytest.mark.parametrize("penalty", PENALTIES)
def test_penalty_weight_may_be_a_traced_scalar(penalty):
    """A scheduled or learned coefficient: a scalar array, traced under jit and grad, gives
    what the float gives (its value is not checked there)."""
    lengths = jnp.asarray([T, 2])
    expected = penalty(HIDDENS, 0.5, 1, lengths)
    traced = jax.jit(penalty, static_argnums=2)(HIDDENS, jnp.asarray(0.5), 1, lengths)
    np.testing.assert_allclose(traced, expected, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda w: penalty(HIDDENS, w, 1, lengths))(0.5),
                               expected / 0.5, rtol=1e-5)
    time_major = jnp.swapaxes(HIDDENS, 0, 1)
    np.testing.assert_allclose(penalty(time_major, np.float32(0.5), np.int64(0), lengths),
                               expected, rtol=1e-6)


# ----------------------------------------------------------------------------- bidirectional

def test_bidirectional_init_params_reads_hidden_sizes_as_the_linen_stacks():
    """A numpy integer is one layer, as an int (a TypeError before); no layer is refused
    (an empty stack before)."""
    key = jax.random.key(0)
    layers = bd.init_params(key, "lstm", 3, np.int64(H))
    same = bd.init_params(key, "lstm", 3, H)
    assert jax.tree.map(np.shape, layers) == jax.tree.map(np.shape, same)
    with pytest.raises(ValueError) as error:
        bd.init_params(key, "lstm", 3, ())
    one_sentence(error, "hidden_sizes must name at least one layer, got none.")
    with pytest.raises(ValueError) as error:
        bd.init_params(key, "lstm", 3, (H, 0))
    one_sentence(error, "Each of hidden_sizes must be a whole number >= 1, got 0.")


@pytest.mark.parametrize("lengths", [None, np.array([1, 2, 3])])
def test_reverse_padded_needs_a_batch_and_a_time_axis(lengths):
    with pytest.raises(ValueError) as error:  # an IndexError before
        rj.reverse_padded(np.zeros(3), lengths)
    one_sentence(error, "x must be [B, T, ...] (or [T, B, ...] with time_axis=0), got shape "
                        "(3,).")


# ----------------------------------------------------------------------------------- NNX

@pytest.mark.parametrize("field", ["time_major", "carry_first"])
def test_nnx_bidirectional_switches_are_flags(field):
    """The string "no" switched the option on before (as the NNX StackedRNN refuses)."""
    with pytest.raises(ValueError) as error:
        rnx.Bidirectional(3, H, rngs=nnx.Rngs(0), **{field: "no"})
    one_sentence(error, f"{field} must be True or False, got 'no'.")


@pytest.mark.parametrize("make", [
    lambda **kw: rnx.StackedRNN(3, H, rngs=nnx.Rngs(0), **kw),
    lambda **kw: rnx.Bidirectional(3, H, rngs=nnx.Rngs(0), **kw),
    lambda **kw: rnx.LanguageModel(V, H, rngs=nnx.Rngs(0), **kw),
    lambda **kw: rnx.SequenceModel(2, H, input_size=3, rngs=nnx.Rngs(0), **kw),
])
def test_nnx_modes_given_at_construction_are_flags(make):
    with pytest.raises(ValueError) as error:
        make(deterministic="no")
    one_sentence(error, "deterministic must be True or False, got 'no'.")


def test_nnx_use_running_average_given_at_construction_is_a_flag():
    """lstm_bn trained on its running statistics with the string "no" before."""
    for make in (lambda: rnx.StackedRNN(3, H, cell="lstm_bn", use_running_average="no",
                                        rngs=nnx.Rngs(0)),
                 lambda: rnx.LanguageModel(V, H, cell="lstm_bn", use_running_average="no",
                                           rngs=nnx.Rngs(0))):
        with pytest.raises(ValueError) as error:
            make()
        one_sentence(error, "use_running_average must be True or False, got 'no'.")
    stack = rnx.StackedRNN(3, H, cell="lstm_bn", use_running_average=True, rngs=nnx.Rngs(0))
    assert stack.use_running_average is True


@pytest.mark.parametrize("key", [jnp.asarray(3), jnp.asarray([1, 2, 3], jnp.uint32),
                                 jax.random.split(jax.random.key(0))])
def test_nnx_call_key_must_be_one_prng_key(key):
    """An int array failed inside jax.random ("invalid PRNG key data") before."""
    stack = rnx.StackedRNN(3, H, reg=rj.variational(0.2, 0.2, 0.2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError) as error:
        stack(jnp.ones((B, T, 3)), rngs=key)
    one_sentence(error, "rngs must be one PRNG key (jax.random.key(seed), or "
                        "jax.random.PRNGKey(seed)), got an array of shape")
    stack(jnp.ones((B, T, 3)), rngs=jax.random.key(1))  # one key: fine
    stack(jnp.ones((B, T, 3)), rngs=jax.random.PRNGKey(1))


@pytest.mark.parametrize("key,message", [
    (0, f"{KEY_MESSAGE}, got 0."),
    (jnp.asarray([1, 2, 3]), f"{KEY_MESSAGE}, got an array of shape (3,)"),
    (None, f"{KEY_MESSAGE}, got None."),
])
def test_mc_samples_key_must_be_one_prng_key(key, message):
    model = rnx.LanguageModel(V, H, reg=rj.variational(0.2, 0.2, 0.2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError) as error:
        rnx.mc_samples(model, jnp.zeros((B, T), jnp.int32), key, 2)
    one_sentence(error, message)


def test_mc_samples_counts_and_switches():
    """A numpy integer count is K, as an int (refused before); a word where the
    embedding_dropout switch belongs is refused (taken as True before)."""
    model = rnx.LanguageModel(V, H, reg=rj.variational(0.2, 0.2, 0.2), rngs=nnx.Rngs(0))
    ids = jnp.zeros((B, T), jnp.int32)
    key = jax.random.key(1)
    numpy_count, _ = rnx.mc_samples(model, ids, key, np.int64(2))
    int_count, _ = rnx.mc_samples(model, ids, key, 2)
    np.testing.assert_array_equal(numpy_count, int_count)
    log_probs, _ = rnx.mc_log_probs(model, ids, key, np.int64(2))
    assert log_probs.shape == (B, T, V)
    for count in (0, 2.0, True):
        with pytest.raises(ValueError) as error:
            rnx.mc_samples(model, ids, key, count)
        one_sentence(error, f"num_samples must be a whole number >= 1, got {count!r}.")
    with pytest.raises(ValueError) as error:
        rnx.mc_samples(model, ids, key, 2, embedding_dropout="no")
    one_sentence(error, "embedding_dropout must be True or False, got 'no'.")


# -------------------------------------------------------------------------------- models

EMBED_TO_GATES = ("embed_to_gates makes the embedding the first layer's gates, 16 wide, so "
                  "embed_size must be None, 4 (its default, the first hidden size) or 16, "
                  "got 10.")


def test_embed_to_gates_refuses_a_conflicting_embed_size():
    """embed_size=10 was silently ignored (the embedding G*H = 16 wide); the first hidden
    size (the presets' spelled-out default) and G*H itself are consistent."""
    ids = jnp.zeros((B, T), jnp.int32)
    with pytest.raises(ValueError) as error:
        LanguageModel(V, (H,), embed_size=10, embed_to_gates=True).init(jax.random.key(0), ids)
    one_sentence(error, EMBED_TO_GATES)
    with pytest.raises(ValueError) as error:
        rnx.LanguageModel(V, (H,), embed_size=10, embed_to_gates=True, rngs=nnx.Rngs(0))
    one_sentence(error, EMBED_TO_GATES)
    for embed_size in (None, H, 4 * H):
        variables = LanguageModel(V, (H,), embed_size=embed_size, embed_to_gates=True).init(
            jax.random.key(0), ids)
        assert variables["params"]["embed"]["embedding"].shape == (V, 4 * H)
        model = rnx.LanguageModel(V, (H,), embed_size=embed_size, embed_to_gates=True,
                                  rngs=nnx.Rngs(0))
        assert model.embed.embedding[...].shape == (V, 4 * H)


def test_sequence_model_init_scale_zero_draws_a_zero_embedding():
    """`init_scale or 0.05` drew it at 0.05 before; None keeps Keras' 0.05."""
    ids = jnp.asarray(np.random.default_rng(0).integers(0, V, (B, T)), jnp.int32)
    for scale, bound in ((0.0, 0.0), (None, 0.05), (0.3, 0.3)):
        linen = SequenceModel(2, H, vocab_size=V, embed_size=5, init_scale=scale)
        table = linen.init(jax.random.key(0), ids)["params"]["embed"]["embedding"]
        model = rnx.SequenceModel(2, H, vocab_size=V, embed_size=5, init_scale=scale,
                                  rngs=nnx.Rngs(0))
        for drawn in (table, model.embed.embedding[...]):
            assert float(jnp.max(jnp.abs(drawn))) <= bound
            assert bound == 0.0 or float(jnp.max(jnp.abs(drawn))) > bound / 2

