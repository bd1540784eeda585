"""MC dropout with the NNX models: training-mode noise at evaluation, K samples.

The protocol is `rnnreg_jax.train`'s (`Evaluator.evaluate_mc`): sample k draws its masks
from key k of `noise.mc_sample_keys(key, window, 0, K, masks)` (`fold_in(key, k)` for the
whole pass, or per window), its noise is sampled while a cell's running statistics are used
("lstm_bn": no batch statistics shared between samples), each sample carries its own
state, and the prediction averages the samples' probabilities, not their logits.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen
import jax
import jax.numpy as jnp
from flax import nnx

from rnnreg_jax import cells, noise
from rnnreg_jax.nnx.models import LanguageModel, SequenceModel
from rnnreg_jax.nnx.stack import StackedRNN
from rnnreg_jax.regularizers.checks import check_flag, check_key
from rnnreg_jax.regularizers.embedding import embedding_at_evaluation

MODELS = (LanguageModel, SequenceModel, StackedRNN)


def mc_samples(model: nnx.Module, inputs: jax.Array, key: jax.Array, num_samples: int,
               carry: Any = None, *, window: int = 0, masks: str = "pass",
               embedding_dropout: bool = True, **call_kwargs) -> tuple[jax.Array, Any]:
    """K noisy forward passes of `model`, vmapped; the model itself is left unchanged.

    Args:
      model: an `rnnreg_jax.nnx` `LanguageModel`, `SequenceModel` or `StackedRNN`.
      inputs: one window (or batch) of inputs, as the model takes them.
      key: the MC key of the pass.
      num_samples: K.
      carry: each sample's state from the previous window, stacked `[K, ...]` (each
        array `[K, B, H]`: what the previous call returned), or None (zeros); not for a
        `SequenceModel`.
      window, masks: `noise.mc_sample_keys`' (masks "pass": the same masks in every
        window of the pass; "window": new ones in each, `window` the window's index, a
        whole number in [0, 2^32)).
      embedding_dropout: False turns word-type dropout off in the samples (Gal's PTB
        protocol, `train.mc_embedding_dropout`; classic dropout, `eval_scaling`, is
        held at its evaluation value q).
      **call_kwargs: passed on to the model's call.

    Returns:
      `(outputs [K, ...], carry [K, ...])`; the carry is None for a `SequenceModel`.
    """
    check_model(model)
    num_samples = cells.check_size(num_samples, "num_samples")  # numpy integers too
    check_key(key, required=True)
    check_flag(embedding_dropout, "embedding_dropout")
    if masks == "window":  # "pass" reads no window
        noise.check_index(window, "window")
    has_carry = not isinstance(model, SequenceModel)
    if carry is not None and not has_carry:
        raise ValueError("A SequenceModel carries no state between calls; pass carry=None.")
    if carry is not None:
        check_stacked_carry(carry, num_samples)
    keys = noise.mc_sample_keys(key, window, 0, num_samples, masks)
    graphdef, state = nnx.split(model)

    def sample(sample_key, sample_carry):
        copy = nnx.merge(graphdef, state)  # the samples' penalties stay in their copies
        if not embedding_dropout and copy.reg.embedding_noise:
            copy.set_attributes(reg=embedding_at_evaluation(copy.reg))
        args = (inputs, sample_carry) if has_carry else (inputs,)
        out = copy(*args, deterministic=False, use_running_average=True, rngs=sample_key,
                   **call_kwargs)
        if getattr(copy, "carry_first", False):  # a StackedRNN's (carry, outputs)
            out = out[::-1]
        return out if has_carry else (out, None)

    return jax.vmap(sample)(keys, carry)


def mc_log_probs(model: nnx.Module, inputs: jax.Array, key: jax.Array, num_samples: int,
                 carry: Any = None, **kwargs) -> tuple[jax.Array, Any]:
    """`log(mean_k softmax(logits_k))` over K `mc_samples` (the MC dropout prediction of a
    language model or classifier; a regression averages `mc_samples` itself).

    Returns:
      `(log probabilities [..., V], carry [K, ...] or None)`.
    """
    logits, carry = mc_samples(model, inputs, key, num_samples, carry, **kwargs)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return jax.nn.logsumexp(log_probs, axis=0) - math.log(num_samples), carry


def check_model(model: Any) -> None:
    """One of the NNX models `mc_samples` runs, or a one-sentence ValueError (a string
    was called, a linen module failed as an unbound one in Flax)."""
    if isinstance(model, MODELS):
        return
    names = "an rnnreg_jax.nnx LanguageModel, SequenceModel or StackedRNN"
    if isinstance(model, flax.linen.Module):
        name = type(model).__name__
        twin = name if name in [m.__name__ for m in MODELS] else "<Model>"
        raise ValueError(f"model must be {names}, got the linen {name} (make its NNX twin "
                         f"with rnnreg_jax.nnx.{twin}.from_linen(module, variables)).")
    what = (f"the class {model.__name__}" if isinstance(model, type)
            else f"a {type(model).__name__}")
    raise ValueError(f"model must be {names}, got {what}.")


def check_stacked_carry(carry: Any, num_samples: int) -> None:
    """The samples' carry stacked `[K, B, H]` per array (what `mc_samples` returned), or
    a one-sentence ValueError (one model's `[B, H]` carry was read as K states of shape
    `[H]`)."""
    for leaf in jax.tree.leaves(carry):
        shape = tuple(jnp.shape(leaf))
        if len(shape) != 3 or shape[0] != num_samples:
            raise ValueError(f"carry must hold each sample's state stacked, arrays [K, B, H] "
                             f"with K = num_samples = {num_samples} (the carry mc_samples "
                             f"returned), got an array of shape {shape}.")
