"""One-sentence errors for bad inputs of the task models (linen and NNX), the linen
stack's modes, NNX MC dropout, `nnx.linen_key`, the NNX stack's options and `generate`,
which before failed deep inside jax or Flax, printed a whole carry, or passed silently."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from rnnreg_jax import models
from rnnreg_jax import nn as linen_nn
from rnnreg_jax import nnx as rnx
from rnnreg_jax.generate import generate

B, T, F, H, V = 2, 3, 3, 4, 7
KEY = jax.random.key(0)


def one_sentence(error: pytest.ExceptionInfo, fragment: str) -> None:
    """`fragment` is in the error's text, which is one line ending in a period."""
    text = str(error.value)
    assert fragment in text and "\n" not in text and text.endswith("."), text


def ids(shape=(B, T)):
    return jnp.ones(shape, jnp.int32)


def floats(shape=(B, T, F)):
    return jnp.ones(shape, jnp.float32)


# 1 ---------------------------------------------------------------------- empty sequences

def _linen_sequence(token_ids: bool):
    model = models.SequenceModel(2, H, vocab_size=V if token_ids else None)
    variables = model.init(KEY, ids() if token_ids else floats())
    return lambda x: model.apply(variables, x)


def _nnx_sequence(token_ids: bool):
    return rnx.SequenceModel(2, H, vocab_size=V if token_ids else None,
                             input_size=None if token_ids else F, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("make", [_linen_sequence, _nnx_sequence], ids=["linen", "nnx"])
@pytest.mark.parametrize("token_ids", [False, True], ids=["features", "ids"])
def test_sequence_model_refuses_an_empty_sequence(make, token_ids):
    """T = 0 failed in jax's indexing ("index is out of bounds for axis 1 with size 0")."""
    model = make(token_ids)
    empty = ids((B, 0)) if token_ids else floats((B, 0, F))
    with pytest.raises(ValueError) as error:
        model(empty)
    one_sentence(error, f"SequenceModel's inputs must have at least one step (T >= 1), "
                        f"whose last output the head reads; got shape {empty.shape}.")
    assert model(ids() if token_ids else floats()).shape == (B, 2)  # one step or more: fine


# 2 ------------------------------------------------------------------ flag messages, one line

def test_a_carry_bound_to_deterministic_is_named_in_one_line():
    """`SequenceModel.apply(v, x, carry)` binds the carry to `deterministic`; the message
    printed every array of the carry, over many lines."""
    stack = linen_nn.StackedRNN(H)
    stack_vars = stack.init(KEY, floats())
    _, carry = stack.apply(stack_vars, floats())
    model = models.SequenceModel(2, H)
    variables = model.init(KEY, floats())
    for call in (lambda: model.apply(variables, floats(), carry),
                 lambda: stack.apply(stack_vars, floats(), carry, carry)):
        with pytest.raises(ValueError) as error:
            call()
        one_sentence(error, "deterministic must be True or False, got a list.")
    lm = models.LanguageModel(V, H)
    lm_vars = lm.init(KEY, ids())
    with pytest.raises(ValueError) as error:
        lm.apply(lm_vars, ids(), None, jnp.ones((B, H)))
    one_sentence(error, "deterministic must be True or False, got an array of shape (2, 4).")
    nnx_stack = rnx.StackedRNN(F, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError) as error:
        nnx_stack(floats(), deterministic=carry)
    one_sentence(error, "deterministic must be True or False, got a list.")


# 3 ------------------------------------------------------- linen use_running_average, any cell

@pytest.mark.parametrize("value", ["x", "False", 2])
def test_linen_stack_refuses_a_non_bool_use_running_average(value):
    """An "lstm" stack keeps no statistics, so the word was never read (the NNX twin
    refused it)."""
    stack = linen_nn.StackedRNN(H)
    variables = stack.init(KEY, floats())
    with pytest.raises(ValueError) as error:
        stack.apply(variables, floats(), use_running_average=value)
    one_sentence(error, f"use_running_average must be True or False, got {value!r}.")
    stack.apply(variables, floats(), use_running_average=True)  # a bool: fine


# 4 ---------------------------------------------------------------------------- mc_samples

def _lm():
    return rnx.LanguageModel(V, H, rngs=nnx.Rngs(0, dropout=1))


@pytest.mark.parametrize("window", [1.5, -1, 2**32, "a", None, True])
def test_mc_samples_window_must_be_a_whole_number(window):
    """1.5 was truncated to 1, -1 overflowed uint32, "a" and None failed inside jnp."""
    with pytest.raises(ValueError) as error:
        rnx.mc_samples(_lm(), ids(), KEY, 2, masks="window", window=window)
    one_sentence(error, f"window must be a whole number in [0, 2^32) (an int or an integer "
                        f"scalar array: fold_in's data), got {window!r}.")
    rnx.mc_samples(_lm(), ids(), KEY, 2, masks="window", window=3)  # fine


@pytest.mark.parametrize("model,got", [
    ("x", "got a str."),
    (models.LanguageModel(V, H), "got the linen LanguageModel (make its NNX twin with "
                                 "rnnreg_jax.nnx.LanguageModel.from_linen(module, variables))."),
    (rnx.LanguageModel, "got the class LanguageModel."),
])
def test_mc_samples_model_must_be_an_nnx_model(model, got):
    """A string was "'str' object is not callable", a linen model Flax's
    CallCompactUnboundModuleError."""
    with pytest.raises(ValueError) as error:
        rnx.mc_samples(model, ids(), KEY, 2)
    one_sentence(error, "model must be an rnnreg_jax.nnx LanguageModel, SequenceModel or "
                        f"StackedRNN, {got}")


def test_mc_samples_carry_must_be_stacked_per_sample():
    """One model's carry `[B, H]` was read as K states `[H]`: "carry['c'] must be [B, H],
    got shape (4,)", which named the wrong layout."""
    model = _lm()
    _, carry = model(ids())
    with pytest.raises(ValueError) as error:
        rnx.mc_samples(model, ids(), KEY, 2, carry)
    one_sentence(error, "carry must hold each sample's state stacked, arrays [K, B, H] with "
                        "K = num_samples = 2 (the carry mc_samples returned), got an array "
                        "of shape (2, 4).")
    _, stacked = rnx.mc_samples(model, ids(), KEY, 2)
    rnx.mc_samples(model, ids(), KEY, 2, stacked)  # what it returned: fine
    with pytest.raises(ValueError, match="K = num_samples = 3"):
        rnx.mc_samples(model, ids(), KEY, 3, stacked)


# 5 --------------------------------------------------- linen_key, NNX options at construction

@pytest.mark.parametrize("call,fragment", [
    (lambda: rnx.linen_key(None, "a"), "key must be one PRNG key"),
    (lambda: rnx.linen_key(jnp.ones(3), "a"), "key must be one PRNG key"),
    (lambda: rnx.linen_key(KEY, "a", draw=0), "draw must be a whole number >= 1, got 0."),
    (lambda: rnx.linen_key(KEY, "a", draw="1"), "draw must be a whole number >= 1, got '1'."),
    (lambda: rnx.linen_key(KEY, 3), "Each name of the path must be a module name"),
])
def test_linen_key_checks_its_arguments(call, fragment):
    """None and a bad draw failed inside jax with raw TypeErrors."""
    with pytest.raises(ValueError) as error:
        call()
    one_sentence(error, fragment)
    rnx.linen_key(KEY, "a", draw=2)  # fine
    rnx.linen_key(jax.random.PRNGKey(0))


@pytest.mark.parametrize("option,value,fragment", [
    ("implementation", "x", "implementation must be one of ('auto', 'fused', 'autodiff', "
                            "'pallas'), got 'x'."),
    ("unroll", 0, "unroll must be a whole number >= 1, got 0."),
    ("unroll", 1.5, "unroll must be a whole number >= 1, got 1.5."),
])
def test_nnx_stack_checks_options_at_construction(option, value, fragment):
    """They were accepted and failed only at the first call (linen fails at init)."""
    with pytest.raises(ValueError) as error:
        rnx.StackedRNN(F, H, rngs=nnx.Rngs(0), **{option: value})
    one_sentence(error, fragment)
    with pytest.raises(ValueError) as error:
        rnx.LanguageModel(V, H, rngs=nnx.Rngs(0), **{option: value})
    one_sentence(error, fragment)


# 6 ------------------------------------------------------------------------------ generate

def test_generate_names_a_class_and_a_bare_logits_function():
    """The class was called as the apply function ("'LanguageModel' object is not
    subscriptable"); a function returning bare logits was indexed along its batch and
    reported as logits of the wrong shape."""
    model = models.LanguageModel(V, H)
    variables = model.init(KEY, ids())
    with pytest.raises(ValueError) as error:
        generate(models.LanguageModel, variables, KEY, 2, start_id=0)
    one_sentence(error, "model must be a LanguageModel instance (linen or NNX) or an apply "
                        "function, got the class LanguageModel itself")

    def bare(v, x, carry):
        return model.apply(v, x, carry)[0]

    with pytest.raises(ValueError) as error:
        generate(bare, variables, KEY, 2, start_id=0)
    one_sentence(error, "must return a pair (logits [B, T, V], carry), got an array of "
                        "shape (1, 1, 7).")
    pair = lambda v, x, carry: model.apply(v, x, carry)  # noqa: E731
    tokens, _ = generate(pair, variables, KEY, 2, start_id=0)
    assert tokens.shape == (1, 2)
