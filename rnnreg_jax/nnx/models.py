"""The NNX task models: `LanguageModel` and `SequenceModel` over the NNX `StackedRNN`.

Their `nnx.Param` states are the linen models' `params` trees path for path (`embed`,
`rnn/layer_<l>`, `softmax` or `softmax_bias`, `head`), and each draws its noise keys from
one key per call as the linen model does from `rngs={"dropout": key}`, the key of the
regularizer's transform of the embedding and output kernel (`model_weights`) included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from flax import nnx

from rnnreg_jax import cells, lengths, model_init, models, noise, partitioning, precision
from rnnreg_jax.nnx.base import (
    RecurrentModule,
    dropout_stream,
    get_value,
    linen_key,
    linen_options,
    params_only,
)
from rnnreg_jax.nnx.stack import StackedRNN, as_param
from rnnreg_jax.regularizers.checks import check_flag
from rnnreg_jax.stack_layers import layer_sizes


class LanguageModel(RecurrentModule):
    """Embedding -> (embedding dropout) -> stacked RNN -> softmax logits (the NNX twin
    of `rnnreg_jax.models.LanguageModel`, which documents the options).

    Args:
      vocab_size: V.
      hidden_sizes: recurrent widths, bottom first (an int for one layer).
      embed_size: E (default: the first hidden size).
      tie_embeddings: the embedding matrix is the softmax's weights.
      embed_to_gates: the embedding holds the first layer's gate pre-activations.
      embed_init_scale, softmax_bias_init: the embedding's and softmax's draws, as in
        linen.
      deterministic, use_running_average: the modes (`RecurrentModule`).
      rngs: `params` and `dropout` streams, as `StackedRNN` takes them.
      **options: the recurrent options, `init_scale` 0.1 by default here.
    """

    LINEN = models.LanguageModel

    def __init__(self, vocab_size: int, hidden_sizes: Sequence[int] | int, *,
                 embed_size: int | None = None, tie_embeddings: bool = False,
                 embed_to_gates: bool = False, embed_init_scale: float | None = None,
                 softmax_bias_init: str = "uniform", deterministic: bool = False,
                 use_running_average: bool | None = None, rngs: nnx.Rngs, **options):
        self._set_options(options, deterministic, use_running_average)
        for name, value in (("tie_embeddings", tie_embeddings),
                            ("embed_to_gates", embed_to_gates)):
            check_flag(value, name)  # as the linen twin's fields
        self.vocab_size, self.hidden_sizes = vocab_size, layer_sizes(hidden_sizes)
        self.embed_size, self.tie_embeddings = embed_size, tie_embeddings
        self.embed_to_gates = embed_to_gates
        self.embed_init_scale, self.softmax_bias_init = embed_init_scale, softmax_bias_init
        self.rngs = dropout_stream(rngs)
        width = models.embedding_width(self.cell, self.hidden_sizes, embed_size,
                                       embed_to_gates)
        if tie_embeddings and self.hidden_sizes[-1] != width:
            raise ValueError("tie_embeddings needs the last hidden size to equal "
                             f"embed_size ({self.hidden_sizes[-1]} != {width}).")
        weights, bias = model_init.output_initializers(self.init_scale, embed_init_scale,
                                                   softmax_bias_init, self.orthogonal_init)
        own, stack_axes = partitioning.split_model_axes(self.param_axes)
        partitioning.check_model_names(own, models.language_model_arrays(tie_embeddings))
        self.embed = embedding(vocab_size, width, weights, self.dtype, self.param_dtype, rngs)
        self.rnn = StackedRNN(width, self.hidden_sizes, project_first_input=not embed_to_gates,
                              deterministic=deterministic,
                              use_running_average=use_running_average, rngs=params_only(rngs),
                              **dict(self.recurrent_options(), param_axes=stack_axes))
        if tie_embeddings:
            self.softmax_bias = nnx.Param(bias(rngs["params"](), (vocab_size,),
                                               self.param_dtype))
        else:
            self.softmax = nnx.Linear(self.hidden_sizes[-1], vocab_size,
                                      kernel_init=weights, bias_init=bias,
                                      dtype=self.dtype, param_dtype=self.param_dtype,
                                      rngs=rngs)
        name_axes(self, own)

    def __call__(self, ids: jax.Array, carry=None, *, deterministic: bool | None = None,
                 use_running_average: bool | None = None, rngs: Any = None,
                 seq_lengths: jax.Array | None = None):
        """Logits for a window of token ids.

        Args:
          ids: int `[B, T]`.
          carry: per-layer states from the previous window (or None = zeros).
          deterministic, use_running_average, rngs: as
            `StackedRNN.__call__` takes them.
          seq_lengths: int `[B]`, each sequence's valid steps (padding after them, see
            `rnn.unroll`): the carry returned is the state after its last valid step;
            the logits past it are the softmax's of a zero output (mask them out of the
            loss).

        Returns:
          `(logits [B, T, V], carry)`; the logits in `dtype` when it is set.
        """
        models.check_rank("LanguageModel takes int ids [B, T]", ids, 2)
        deterministic, average = self.modes(deterministic, use_running_average)
        noisy = self.reg.has_noise or self.reg.model_noise
        key = self.call_key(rngs, not deterministic and noisy)
        weights_key = model_weights_key(key, self.reg)
        table = models.embedding_table(self.reg, self.embed.embedding[...], weights_key)
        x = embed_with_dropout(self.embed, ids, self.reg, key, deterministic, table,
                               weights_key)
        y, carry = self.rnn.run(x, carry, deterministic, average, stack_key(key, self.reg),
                                seq_lengths)
        if self.tie_embeddings:
            # the perturbed table where the window has one (the same array, tied), as linen
            scores = (self.embed.attend(y) if weights_key is None
                      else y @ precision.cast(table, self.dtype).T)
            logits = scores + precision.cast(self.softmax_bias[...], self.dtype)
        else:
            logits = output_layer(self.softmax, y, self.reg, weights_key)
        return logits, carry

    def linen_module(self) -> models.LanguageModel:
        return models.LanguageModel(self.vocab_size, self.hidden_sizes, self.embed_size,
                                    self.tie_embeddings, self.embed_to_gates,
                                    self.embed_init_scale, self.softmax_bias_init,
                                    **self.recurrent_options())

    @classmethod
    def _twin_of(cls, module: models.LanguageModel, variables: dict,
                 rngs: nnx.Rngs) -> LanguageModel:
        return cls(module.vocab_size, module.hidden_sizes, embed_size=module.embed_size,
                   tie_embeddings=module.tie_embeddings, embed_to_gates=module.embed_to_gates,
                   embed_init_scale=module.embed_init_scale,
                   softmax_bias_init=module.softmax_bias_init, rngs=rngs,
                   **linen_options(module))


class SequenceModel(RecurrentModule):
    """(Embedding ->) stacked RNN -> last output -> dense head (the NNX twin of
    `rnnreg_jax.models.SequenceModel`).

    Args:
      num_outputs: classes (logits) or 1 for regression.
      hidden_sizes: recurrent widths (an int for one layer).
      vocab_size: if set, inputs are token ids embedded to `embed_size`.
      embed_size: E.
      input_size: F of float inputs `[B, T, F]` (when `vocab_size` is None).
      head_init: as linen's (`model_init.head_initializers`).
      deterministic, use_running_average, rngs, **options: as `LanguageModel` takes them
        (`init_scale` None by default, as in linen).
    """

    LINEN = models.SequenceModel

    def __init__(self, num_outputs: int, hidden_sizes: Sequence[int] | int, *,
                 vocab_size: int | None = None, embed_size: int = 128,
                 input_size: int | None = None, head_init: str = "lecun_normal",
                 deterministic: bool = False,
                 use_running_average: bool | None = None, rngs: nnx.Rngs, **options):
        self._set_options(options, deterministic, use_running_average)
        if (vocab_size is None) == (input_size is None):
            raise ValueError("A SequenceModel takes token ids (vocab_size) or float inputs "
                             "(input_size, their width F): exactly one of the two.")
        cells.check_size(num_outputs, "num_outputs")
        cells.check_size(embed_size if input_size is None else input_size,
                         "embed_size" if input_size is None else "input_size")
        self.num_outputs, self.hidden_sizes = num_outputs, layer_sizes(hidden_sizes)
        self.vocab_size, self.embed_size, self.input_size = vocab_size, embed_size, input_size
        self.head_init = head_init
        self.rngs = dropout_stream(rngs)
        ortho = self.orthogonal_init
        own, stack_axes = partitioning.split_model_axes(self.param_axes)
        partitioning.check_model_names(own, models.sequence_model_arrays(vocab_size))
        models.check_embedding_noise(self.reg, vocab_size)
        self.embed = nnx.data(None)
        if vocab_size is not None:
            scale = model_init.sequence_embedding_scale(self.init_scale)
            self.embed = embedding(vocab_size, embed_size, model_init.weight_init(scale, ortho),
                                   self.dtype, self.param_dtype, rngs)
        self.rnn = StackedRNN(input_size or embed_size, self.hidden_sizes,
                              deterministic=deterministic,
                              use_running_average=use_running_average, rngs=params_only(rngs),
                              **dict(self.recurrent_options(), param_axes=stack_axes))
        head = model_init.head_initializers(head_init, ortho)
        self.head = nnx.Linear(self.hidden_sizes[-1], num_outputs, dtype=self.dtype,
                               param_dtype=self.param_dtype, rngs=rngs, **head)
        name_axes(self, own)

    def __call__(self, inputs: jax.Array, *, deterministic: bool | None = None,
                 use_running_average: bool | None = None, rngs: Any = None,
                 seq_lengths: jax.Array | None = None) -> jax.Array:
        """`[B, T]` ids or `[B, T, F]` floats -> `[B, num_outputs]` (the arguments as
        `StackedRNN.__call__` takes them); with `seq_lengths` the head reads each
        example's last valid output `y[b, L_b - 1]` instead of `y[:, -1]`."""
        models.check_sequence_inputs(inputs, token_ids=self.embed is not None)
        deterministic, average = self.modes(deterministic, use_running_average)
        noisy = (self.reg.stack_noise or self.reg.model_noise
                 or (self.embed is not None and self.reg.embedding_noise))
        key = self.call_key(rngs, not deterministic and noisy)
        weights_key = model_weights_key(key, self.reg)
        x = inputs
        if self.embed is not None:
            x = embed_with_dropout(self.embed, inputs, self.reg, key, deterministic,
                                   models.embedding_table(
                                       self.reg, self.embed.embedding[...], weights_key),
                                   weights_key)
        y, _ = self.rnn.run(x, None, deterministic, average, stack_key(key, self.reg),
                            seq_lengths)
        return output_layer(self.head, lengths.last_valid(y, seq_lengths), self.reg,
                            weights_key)

    def linen_module(self) -> models.SequenceModel:
        return models.SequenceModel(self.num_outputs, self.hidden_sizes, self.vocab_size,
                                    self.embed_size, self.head_init,
                                    **self.recurrent_options())

    @classmethod
    def _twin_of(cls, module: models.SequenceModel, variables: dict,
                 rngs: nnx.Rngs) -> SequenceModel:
        input_size = None
        if module.vocab_size is None:
            input_size = variables["params"]["rnn"]["layer_0"]["w_x"].shape[0]
        return cls(module.num_outputs, module.hidden_sizes, vocab_size=module.vocab_size,
                   embed_size=module.embed_size, input_size=input_size,
                   head_init=module.head_init, rngs=rngs, **linen_options(module))


def name_axes(model: nnx.Module, own: dict) -> None:
    """Give the model's own arrays that `param_axes` names (`own`: path -> axis names,
    `partitioning.split_model_axes`) those names as `out_sharding` metadata, as the
    stack's arrays get theirs; values unchanged."""
    for path, names in own.items():
        *parents, attribute = path.split("/")
        owner = model
        for parent in parents:
            owner = getattr(owner, parent)
        value = get_value(getattr(owner, attribute))
        boxed = partitioning.boxed_array_init(lambda *_, v=value: v, names, path)(None,
                                                                          value.shape)
        setattr(owner, attribute, as_param(boxed))


def embedding(vocab_size: int, width: int, init, dtype: Any, param_dtype: Any,
              rngs: nnx.Rngs) -> nnx.Embed:
    """linen's `nn.Embed(..., dtype=dtype, param_dtype=param_dtype)` in NNX: the table
    drawn in `param_dtype`, looked up in `dtype`, or with `dtype=None` in the table's
    own dtype whatever it holds (`nnx.Embed` would fix None to the dtype drawn at
    construction, so weights loaded in float64 would be looked up in float32)."""
    cells.check_size(vocab_size, "vocab_size")
    embed = nnx.Embed(vocab_size, width, embedding_init=init, param_dtype=param_dtype,
                      rngs=rngs)
    embed.dtype = dtype
    return embed


def model_weights_key(key: jax.Array | None, reg) -> jax.Array | None:
    """The key of the regularizer's transform of the model's own weights in a training
    call (`key` given), else None: linen's first root `make_rng("dropout")`, taken only
    with `reg.model_noise`, as linen's `_model_noise_key` (so no other draw moves)."""
    return linen_key(key) if key is not None and reg.model_noise else None


def output_layer(layer: nnx.Linear, x: jax.Array, reg,
                 weights_key: jax.Array | None) -> jax.Array:
    """The softmax or head layer on `x`; with `weights_key` its kernel read through the
    regularizer's transform (`model_weights`, "output"), the bias as it is, by linen's
    own `models.noisy_dense` (so the same bits)."""
    if weights_key is None:
        return layer(x)
    bias = None if layer.bias is None else layer.bias[...]
    return models.noisy_dense(reg, weights_key, x, layer.kernel[...], bias, layer.dtype)


def embed_with_dropout(embed: nnx.Embed, ids: jax.Array, reg, key: jax.Array | None,
                       deterministic: bool, table: jax.Array,
                       weights_key: jax.Array | None) -> jax.Array:
    """The ids looked up in `table` (`models.embedding_table`) with the regularizer's word-type
    dropout (the model's own key: linen's root `make_rng("dropout")`, its second draw
    when the first was `weights_key`)."""
    x = models.look_up(table, ids, embed.dtype)
    site_key = None
    if key is not None and reg.embedding_noise:
        site_key = linen_key(key, draw=1 if weights_key is None else 2)
    mask = noise.embedding_mask(reg, site_key, ids, embed.num_embeddings, deterministic,
                                precision.mask_dtype(x.dtype))
    return x if mask is None else x * mask


def stack_key(key: jax.Array | None, reg) -> jax.Array | None:
    """The key the model's `rnn` child draws (linen's `make_rng("dropout")` in `rnn`)."""
    return linen_key(key, "rnn") if key is not None and reg.stack_noise else None
