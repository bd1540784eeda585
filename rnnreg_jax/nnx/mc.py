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

import jax
from flax import nnx

from rnnreg_jax import cells, noise
from rnnreg_jax.nnx.models import SequenceModel
from rnnreg_jax.regularizers.checks import check_flag, check_key
from rnnreg_jax.regularizers.embedding import embedding_at_evaluation


def mc_samples(model: nnx.Module, inputs: jax.Array, key: jax.Array, num_samples: int,
               carry: Any = None, *, window: int = 0, masks: str = "pass",
               embedding_dropout: bool = True, **call_kwargs) -> tuple[jax.Array, Any]:
    """K noisy forward passes of `model`, vmapped; the model itself is left unchanged.

    Args:
      model: an `rnnreg_jax.nnx` `LanguageModel`, `SequenceModel` or `StackedRNN`.
      inputs: one window (or batch) of inputs, as the model takes them.
      key: the MC key of the pass.
      num_samples: K.
      carry: each sample's state from the previous window, stacked `[K, ...]` (what the
        previous call returned), or None (zeros); not for a `SequenceModel`.
      window, masks: `noise.mc_sample_keys`' (masks "pass": the same masks in every
        window of the pass; "window": new ones in each).
      embedding_dropout: False turns word-type dropout off in the samples (Gal's PTB
        protocol, `train.mc_embedding_dropout`; classic dropout, `eval_scaling`, is
        held at its evaluation value q).
      **call_kwargs: passed on to the model's call.

    Returns:
      `(outputs [K, ...], carry [K, ...])`; the carry is None for a `SequenceModel`.
    """
    num_samples = cells.check_size(num_samples, "num_samples")  # numpy integers too
    check_key(key, required=True)
    check_flag(embedding_dropout, "embedding_dropout")
    has_carry = not isinstance(model, SequenceModel)
    if carry is not None and not has_carry:
        raise ValueError("A SequenceModel carries no state between calls; pass carry=None.")
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
