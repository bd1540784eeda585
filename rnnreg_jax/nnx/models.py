"""The NNX task models: `LanguageModel` and `SequenceModel` over the NNX `StackedRNN`.

Their `nnx.Param` states are the linen models' `params` trees path for path (`embed`,
`rnn/layer_<l>`, `softmax` or `softmax_bias`, `head`), and each draws its noise keys from
one key per call as the linen model does from `rngs={"dropout": key}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen
import jax
from flax import nnx

from rnnreg_jax import cells, models, noise
from rnnreg_jax.nnx.base import (
    RecurrentModule,
    dropout_stream,
    linen_key,
    linen_options,
    params_only,
)
from rnnreg_jax.nnx.stack import StackedRNN


class LanguageModel(RecurrentModule):
    """Embedding -> (embedding dropout) -> stacked RNN -> softmax logits (the NNX twin
    of `rnnreg_jax.models.LanguageModel`, which documents the options).

    Args:
      vocab_size: V.
      hidden_sizes: recurrent widths, bottom first.
      embed_size: E (default: the first hidden size).
      tie_embeddings: the embedding matrix is the softmax's weights.
      embed_to_gates: the embedding holds the first layer's gate pre-activations.
      deterministic, use_running_average: the modes (`RecurrentModule`).
      rngs: `params` and `dropout` streams, as `StackedRNN` takes them.
      **options: the recurrent options, `init_scale` 0.1 by default here.
    """

    LINEN = models.LanguageModel

    def __init__(self, vocab_size: int, hidden_sizes: Sequence[int], *,
                 embed_size: int | None = None, tie_embeddings: bool = False,
                 embed_to_gates: bool = False, deterministic: bool = False,
                 use_running_average: bool | None = None, rngs: nnx.Rngs, **options):
        self._set_options(options, deterministic, use_running_average)
        self.vocab_size, self.hidden_sizes = vocab_size, tuple(hidden_sizes)
        self.embed_size, self.tie_embeddings = embed_size, tie_embeddings
        self.embed_to_gates = embed_to_gates
        self.rngs = dropout_stream(rngs)
        width = embed_size or self.hidden_sizes[0]
        if embed_to_gates:
            width = cells.num_gates(self.cell) * self.hidden_sizes[0]
        if tie_embeddings and self.hidden_sizes[-1] != width:
            raise ValueError("tie_embeddings needs the last hidden size to equal "
                             f"embed_size ({self.hidden_sizes[-1]} != {width}).")
        scale, ortho = self.init_scale, self.orthogonal_init
        self.embed = follow_table_dtype(nnx.Embed(
            vocab_size, width, embedding_init=models.weight_init(scale, ortho), rngs=rngs))
        self.rnn = StackedRNN(width, self.hidden_sizes, project_first_input=not embed_to_gates,
                              deterministic=deterministic,
                              use_running_average=use_running_average,
                              rngs=params_only(rngs), **self.recurrent_options())
        if tie_embeddings:
            self.softmax_bias = nnx.Param(models.bias_init(scale, ortho)(rngs["params"](),
                                                                         (vocab_size,)))
        else:
            self.softmax = nnx.Linear(self.hidden_sizes[-1], vocab_size,
                                      kernel_init=models.weight_init(scale, ortho),
                                      bias_init=models.bias_init(scale, ortho), rngs=rngs)

    def __call__(self, ids: jax.Array, carry=None, *, deterministic: bool | None = None,
                 use_running_average: bool | None = None, rngs: Any = None, **unroll_kwargs):
        """Logits for a window of token ids.

        Args:
          ids: int `[B, T]`.
          carry: per-layer states from the previous window (or None = zeros).
          deterministic, use_running_average, rngs, **unroll_kwargs: as
            `StackedRNN.__call__` takes them.

        Returns:
          `(logits [B, T, V], carry)`.
        """
        deterministic, average = self.modes(deterministic, use_running_average)
        key = self.call_key(rngs, not deterministic and self.reg.has_noise)
        x = embed_with_dropout(self.embed, ids, self.reg, key, deterministic)
        y, carry = self.rnn.run(x, carry, deterministic, average,
                                stack_key(key, self.reg), **unroll_kwargs)
        if self.tie_embeddings:
            logits = self.embed.attend(y) + self.softmax_bias[...]
        else:
            logits = self.softmax(y)
        return logits, carry

    def linen_module(self) -> models.LanguageModel:
        return models.LanguageModel(self.vocab_size, self.hidden_sizes, self.embed_size,
                                    self.tie_embeddings, self.embed_to_gates,
                                    **self.recurrent_options())

    @classmethod
    def _twin_of(cls, module: models.LanguageModel, variables: dict,
                 rngs: nnx.Rngs) -> LanguageModel:
        return cls(module.vocab_size, module.hidden_sizes, embed_size=module.embed_size,
                   tie_embeddings=module.tie_embeddings, embed_to_gates=module.embed_to_gates,
                   rngs=rngs, **linen_options(module))


class SequenceModel(RecurrentModule):
    """(Embedding ->) stacked RNN -> last output -> dense head (the NNX twin of
    `rnnreg_jax.models.SequenceModel`).

    Args:
      num_outputs: classes (logits) or 1 for regression.
      hidden_sizes: recurrent widths.
      vocab_size: if set, inputs are token ids embedded to `embed_size`.
      embed_size: E.
      input_size: F of float inputs `[B, T, F]` (when `vocab_size` is None).
      deterministic, use_running_average, rngs, **options: as `LanguageModel` takes them
        (`init_scale` None by default, as in linen).
    """

    LINEN = models.SequenceModel

    def __init__(self, num_outputs: int, hidden_sizes: Sequence[int], *,
                 vocab_size: int | None = None, embed_size: int = 128,
                 input_size: int | None = None, deterministic: bool = False,
                 use_running_average: bool | None = None, rngs: nnx.Rngs, **options):
        self._set_options(options, deterministic, use_running_average)
        if (vocab_size is None) == (input_size is None):
            raise ValueError("A SequenceModel takes token ids (vocab_size) or float inputs "
                             "(input_size, their width F): exactly one of the two.")
        self.num_outputs, self.hidden_sizes = num_outputs, tuple(hidden_sizes)
        self.vocab_size, self.embed_size, self.input_size = vocab_size, embed_size, input_size
        self.rngs = dropout_stream(rngs)
        ortho = self.orthogonal_init
        self.embed = nnx.data(None)
        if vocab_size is not None:
            self.embed = follow_table_dtype(nnx.Embed(
                vocab_size, embed_size, rngs=rngs,
                embedding_init=models.weight_init(self.init_scale or 0.05, ortho)))
        self.rnn = StackedRNN(input_size or embed_size, self.hidden_sizes,
                              deterministic=deterministic,
                              use_running_average=use_running_average,
                              rngs=params_only(rngs), **self.recurrent_options())
        head = (dict(kernel_init=flax.linen.initializers.orthogonal(),
                     bias_init=flax.linen.initializers.zeros) if ortho else {})
        self.head = nnx.Linear(self.hidden_sizes[-1], num_outputs, rngs=rngs, **head)

    def __call__(self, inputs: jax.Array, *, deterministic: bool | None = None,
                 use_running_average: bool | None = None, rngs: Any = None,
                 **unroll_kwargs) -> jax.Array:
        """`[B, T]` ids or `[B, T, F]` floats -> `[B, num_outputs]` (the arguments as
        `StackedRNN.__call__` takes them)."""
        deterministic, average = self.modes(deterministic, use_running_average)
        noisy = self.reg.stack_noise or (self.embed is not None and self.reg.embedding_noise)
        key = self.call_key(rngs, not deterministic and noisy)
        x = inputs
        if self.embed is not None:
            x = embed_with_dropout(self.embed, inputs, self.reg, key, deterministic)
        y, _ = self.rnn.run(x, None, deterministic, average, stack_key(key, self.reg),
                            **unroll_kwargs)
        return self.head(y[:, -1])

    def linen_module(self) -> models.SequenceModel:
        return models.SequenceModel(self.num_outputs, self.hidden_sizes, self.vocab_size,
                                    self.embed_size, **self.recurrent_options())

    @classmethod
    def _twin_of(cls, module: models.SequenceModel, variables: dict,
                 rngs: nnx.Rngs) -> SequenceModel:
        input_size = None
        if module.vocab_size is None:
            input_size = variables["params"]["rnn"]["layer_0"]["w_x"].shape[0]
        return cls(module.num_outputs, module.hidden_sizes, vocab_size=module.vocab_size,
                   embed_size=module.embed_size, input_size=input_size, rngs=rngs,
                   **linen_options(module))


def follow_table_dtype(embed: nnx.Embed) -> nnx.Embed:
    """`embed` computing in its table's dtype, whatever it holds (linen's `Embed` with
    `dtype=None`; `nnx.Embed` fixes the dtype at construction, so weights loaded in
    float64 would be looked up in float32). A `dtype` option would set it here."""
    embed.dtype = None
    return embed


def embed_with_dropout(embed: nnx.Embed, ids: jax.Array, reg, key: jax.Array | None,
                       deterministic: bool) -> jax.Array:
    """The embedded ids with the regularizer's word-type dropout (the model's own key:
    linen's root `make_rng("dropout")`)."""
    x = embed(ids)
    site_key = linen_key(key) if key is not None and reg.embedding_noise else None
    mask = noise.embedding_mask(reg, site_key, ids, embed.num_embeddings, deterministic,
                                x.dtype)
    return x if mask is None else x * mask


def stack_key(key: jax.Array | None, reg) -> jax.Array | None:
    """The key the model's `rnn` child draws (linen's `make_rng("dropout")` in `rnn`)."""
    return linen_key(key, "rnn") if key is not None and reg.stack_noise else None
