"""Task models built on `StackedRNN`: a language model and sequence heads.

By default the weights (embedding, recurrent, softmax) are uniform in
[-init_scale, init_scale], as in Zaremba's and the zoneout authors' code;
`orthogonal_init` draws them orthogonal with zero biases (the zoneout authors'
character-level and pMNIST code), cells with their own initialization (Keras 0.x's)
draw theirs, and `SequenceModel`'s head follows `head_init` (the models' own arrays:
`rnnreg_jax.model_init`).

`dtype` and `param_dtype` (`nn.RecurrentOptions`) reach the embedding and dense layers
too: with `dtype=jnp.bfloat16` the logits are bfloat16, and the training losses take
their logsumexp in float32 (`train.losses`; do the same in a loss of your own).
Embedding-dropout multipliers are drawn in at least float32 (`rnnreg_jax.precision`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnreg_jax import cells, explicit_sharding, lengths, noise, partitioning, precision
from rnnreg_jax.model_init import (
    head_initializers,
    output_initializers,
    sequence_embedding_scale,
    weight_init,
)
from rnnreg_jax.nn import (
    RecurrentOptions,
    StackedRNN,
    check_modes,
    dropout_key,
    option,
)
from rnnreg_jax.regularizers.checks import check_weights
from rnnreg_jax.stack_layers import layer_sizes


def embedding_width(cell: Any, sizes: tuple[int, ...], embed_size: Any,
                    embed_to_gates: bool) -> int:
    """A language model's embedding width: `embed_size` (None: the first hidden size H),
    or with `embed_to_gates` the first layer's gates, G*H. There an `embed_size` other
    than G*H or H is refused rather than ignored; H is let through as the default that
    configs spell out (the presets set `embed_size` to the hidden size)."""
    first = sizes[0]
    width = first if embed_size is None else cells.check_size(embed_size, "embed_size")
    if not embed_to_gates:
        return width
    gates = cells.num_gates(cell) * first
    if width not in (first, gates):
        raise ValueError(f"embed_to_gates makes the embedding the first layer's gates, "
                         f"{gates} wide, so embed_size must be None, {first} (its default, "
                         f"the first hidden size) or {gates}, got {embed_size!r}.")
    return gates


def check_rank(expected: str, inputs: jax.Array, ndim: int) -> None:
    """A ValueError "`expected`, got shape S." unless `inputs` has `ndim` axes."""
    if jnp.ndim(inputs) != ndim:
        raise ValueError(f"{expected}, got shape {jnp.shape(inputs)}.")


def check_sequence_inputs(inputs: jax.Array, token_ids: bool) -> None:
    """`SequenceModel`'s inputs (linen and NNX): int ids `[B, T]` with a vocabulary,
    float features `[B, T, F]` without, of at least one step (the head reads the last
    output; T = 0 failed in an index)."""
    if token_ids:
        check_rank("SequenceModel with vocab_size takes int ids [B, T]", inputs, 2)
    else:
        check_rank("SequenceModel without vocab_size takes float inputs [B, T, F]", inputs, 3)
    if jnp.shape(inputs)[1] == 0:
        raise ValueError(f"SequenceModel's inputs must have at least one step (T >= 1), "
                         f"whose last output the head reads; got shape {jnp.shape(inputs)}.")


def check_embedding_noise(reg, vocab_size: int | None) -> None:
    """`SequenceModel` (linen and NNX) without an embedding refuses a regularizer that
    drops word types: it would train without that noise, silently."""
    if vocab_size is None and reg.embedding_noise:
        raise ValueError("reg drops word types (an embedding mask), but a SequenceModel "
                         "without vocab_size has no embedding; turn the regularizer's "
                         "embedding dropout off or give the model a vocab_size.")


def check_token_ids(ids: jax.Array, vocab_size: int, of: str = "") -> None:
    """A ValueError unless `ids` are integers, and, where their values are known (outside
    jit and other traces), unless each lies in `[0, vocab_size)`; `of` names them in the
    message ("the prompt": "Token ids of the prompt must ..."). Traced ids cannot be
    checked; `look_up` turns an id out of range into a row of NaN there."""
    name = f"Token ids of {of}" if of else "Token ids"
    dtype = jnp.result_type(ids)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{name} must be integers, got dtype {dtype}.")
    values = lengths.concrete_values(ids)
    if values is not None and values.size and (values.min() < 0 or values.max() >= vocab_size):
        raise ValueError(f"{name} must lie in [0, vocab_size) = [0, {vocab_size}), got "
                         f"ids from {values.min()} to {values.max()}.")


def look_up(table: jax.Array, ids: jax.Array, dtype=None) -> jax.Array:
    """The embedding rows `table[ids]` in `dtype` (None: the table's own), after
    `check_token_ids`.

    Every id outside `[0, V)` reads a row of NaN, a negative one too: `nn.Embed`'s gather
    wraps it to the end of the table, silently reading another word. Under jit nothing
    can raise, so the NaN carries the mistake to the loss (and `train` stops on it).
    Ids sharded over an explicit mesh's batch axis gather their rows with that sharding
    (`explicit_sharding.rows_sharding`)."""
    check_token_ids(ids, table.shape[0])
    table = table if dtype is None else table.astype(dtype)
    return table.at[ids].get(mode="fill", fill_value=jnp.nan, wrap_negative_indices=False,
                             out_sharding=explicit_sharding.rows_sharding(ids))


def language_model_arrays(tie_embeddings: bool) -> tuple[str, ...]:
    """The paths of a language model's own arrays (`param_axes` may name them)."""
    return ("embed/embedding",) + (("softmax_bias",) if tie_embeddings
                                   else ("softmax/kernel", "softmax/bias"))


def sequence_model_arrays(vocab_size: int | None) -> tuple[str, ...]:
    """The paths of a sequence model's own arrays (`param_axes` may name them)."""
    return ("embed/embedding",) * (vocab_size is not None) + ("head/kernel", "head/bias")


class _NoisyDense(nn.Module):
    """`nn.Dense`'s parameters (the same names, shapes and initializers), read in a
    training window through the regularizer's "output" transform (`model_weights`): the
    output layer under weight noise on every weight."""

    features: int
    reg: Any
    kernel_init: Any
    bias_init: Any
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: jax.Array, key: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return noisy_dense(self.reg, key, inputs, kernel, bias, self.dtype)


def noisy_dense(reg, key: jax.Array, inputs: jax.Array, kernel: jax.Array,
                bias: jax.Array | None, dtype: Any) -> jax.Array:
    """`inputs @ kernel + bias` as `nn.Dense` computes it (its dtype promotion), the
    kernel read through the regularizer's "output" transform (`model_weights`) with
    `key`: the output layer of a training window under model noise, linen's and NNX's."""
    arrays = {"output": kernel}
    kernel = check_weights(reg.model_weights(arrays, key, False), arrays, reg,
                           "model_weights")["output"]
    inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=dtype)
    return inputs @ kernel if bias is None else inputs @ kernel + bias


def _output_layer(reg, key: jax.Array | None, features: int, name: str, **dense):
    """The output layer (`nn.Dense(features, name=name, **dense)`) as a function of its
    input: where `key` is given (training, with `reg.model_noise`) it reads its kernel
    through the regularizer's transform."""
    if key is None:
        return nn.Dense(features, name=name, **dense)
    layer = _NoisyDense(features, reg, dense.pop("kernel_init", nn.initializers.lecun_normal()),
                        dense.pop("bias_init", nn.initializers.zeros), name=name, **dense)
    return lambda x: layer(x, key)


def _model_noise_key(module, reg, deterministic: bool) -> jax.Array | None:
    """The key of the model's own weight transforms in a training window, else None
    (drawn only with `reg.model_noise`, so no other draw moves)."""
    return dropout_key(module) if not deterministic and reg.model_noise else None


def embedding_table(reg, table: jax.Array, key: jax.Array | None) -> jax.Array:
    """The embedding table a window reads: `table`, or where `key` is given (training,
    with `reg.model_noise`) the regularizer's "embedding" transform of it."""
    if key is None:
        return table
    arrays = {"embedding": table}
    return check_weights(reg.model_weights(arrays, key, False), arrays, reg,
                         "model_weights")["embedding"]


class LanguageModel(RecurrentOptions):
    """Embedding -> (embedding dropout) -> stacked RNN -> softmax logits.

    Attributes:
      vocab_size: V.
      hidden_sizes: recurrent widths, bottom first (an int for one layer).
      embed_size: E (defaults to the first hidden size, as in Zaremba); with
        `embed_to_gates` the width is G*H, and `embed_size` must be None, the first
        hidden size or G*H (`embedding_width`).
      tie_embeddings: use the embedding matrix as the softmax weights
        (needs last hidden size == embed size).
      embed_to_gates: the embedding holds the first layer's gate
        pre-activations (`[V, G*H]`, no `W_x`): the zoneout authors' word-level
        model, a one-hot input times one linear map to the gates, instead of an
        `embed_size`-wide embedding followed by `W_x`.
      embed_init_scale: the embedding's and softmax weights' uniform scale when it
        should differ from the recurrent layers' (AWD-LSTM: 0.1 beside PyTorch's
        `1/sqrt(H)` LSTM, `init_scale=None`); None: `init_scale`.
      softmax_bias_init: "uniform" (the weights' draw, zero under `orthogonal_init`) or
        "zeros" (AWD-LSTM's decoder bias).
      and the keyword-only `nn.RecurrentOptions`, with `init_scale` 0.1 here (every
      weight: embedding, recurrent, softmax); `orthogonal_init` also makes the
      embedding and softmax weights orthogonal with zero biases (the zoneout
      authors' character-level code); the regularizer's embedding dropout drops word
      types, its input and output sites act on the embedding output and the last
      layer's output. "lstm_bn": the time index of the per-step statistics restarts at 0
      in every window, also when the state is carried from window to window.
    """

    vocab_size: int
    hidden_sizes: Sequence[int] | int
    embed_size: int | None = None
    tie_embeddings: bool = False
    embed_to_gates: bool = False
    embed_init_scale: float | None = None
    softmax_bias_init: str = "uniform"
    if TYPE_CHECKING:  # keyword-only, as `nn.RecurrentOptions` says
        _: dataclasses.KW_ONLY
    init_scale: float | None = option(0.1)

    @nn.compact
    def __call__(self, ids: jax.Array, carry=None, deterministic: bool = True,
                 use_running_average: bool | None = None, *,
                 seq_lengths: jax.Array | None = None):
        """Logits for a window of token ids.

        Args:
          ids: int `[B, T]` in `[0, vocab_size)` (others: `look_up`).
          carry: per-layer states from the previous window (or None = zeros).
          deterministic: evaluation mode.
          use_running_average: "lstm_bn" only, see `nn.StackedRNN`.
          seq_lengths: int `[B]`, each sequence's valid steps (padding after them, see
            `rnn.unroll`): the carry returned is the state after its last valid step;
            the logits past it are the softmax's of a zero output (mask them out of the
            loss).

        Returns:
          `(logits [B, T, V], carry)`.
        """
        check_rank("LanguageModel takes int ids [B, T]", ids, 2)
        deterministic = check_modes(deterministic, use_running_average)
        cells.check_size(self.vocab_size, "vocab_size")
        sizes = layer_sizes(self.hidden_sizes)
        embed_size = embedding_width(self.cell, sizes, self.embed_size, self.embed_to_gates)
        ortho = self.orthogonal_init
        weights, bias = output_initializers(self.init_scale, self.embed_init_scale,
                                            self.softmax_bias_init, ortho)
        own, stack_axes = partitioning.split_model_axes(self.param_axes)
        partitioning.check_model_names(own, language_model_arrays(self.tie_embeddings))
        boxed = lambda init, path: partitioning.boxed_array_init(init, own.get(path), path)
        embed = nn.Embed(self.vocab_size, embed_size,
                         embedding_init=boxed(weights, "embed/embedding"),
                         dtype=self.dtype, param_dtype=self.param_dtype, name="embed")
        weights_key = _model_noise_key(self, self.reg, deterministic)
        table = embedding_table(self.reg, embed.embedding, weights_key)
        x = look_up(table, ids, self.dtype)
        key = None
        if not deterministic and self.reg.embedding_noise:
            key = dropout_key(self)
        mask = noise.embedding_mask(self.reg, key, ids, self.vocab_size, deterministic,
                                    precision.mask_dtype(x.dtype))
        if mask is not None:
            x = x * mask
        y, carry = StackedRNN(sizes,
                              project_first_input=not self.embed_to_gates,
                              **dict(self.recurrent_options(), param_axes=stack_axes),
                              name="rnn")(x, carry, deterministic, use_running_average,
                                          seq_lengths=seq_lengths)
        if self.tie_embeddings:
            if y.shape[-1] != embed_size:
                raise ValueError("tie_embeddings needs the last hidden size to equal "
                                 f"embed_size ({y.shape[-1]} != {embed_size}).")
            bias = self.param("softmax_bias", boxed(bias, "softmax_bias"),
                              (self.vocab_size,), self.param_dtype)
            # the perturbed table where the window has one (the same array, tied)
            scores = (embed.attend(y) if weights_key is None
                      else y @ precision.cast(table, self.dtype).T)
            logits = scores + precision.cast(bias, self.dtype)
        else:
            logits = _output_layer(self.reg, weights_key, self.vocab_size, "softmax",
                                   kernel_init=boxed(weights, "softmax/kernel"),
                                   bias_init=boxed(bias, "softmax/bias"),
                                   dtype=self.dtype, param_dtype=self.param_dtype)(y)
        return logits, carry


class SequenceModel(RecurrentOptions):
    """(Embedding ->) stacked RNN -> last output -> dense head.

    Used for permuted sequential MNIST (float inputs `[B, T, F]`,
    `vocab_size=None`), sentiment regression (`num_outputs=1`) and IMDB
    classification. The `output` dropout site acts on the last output before
    the dense layer (Gal's "dense" dropout).

    Attributes:
      num_outputs: number of classes (logits) or 1 for regression.
      hidden_sizes: recurrent widths (an int for one layer).
      vocab_size: if set, inputs are token ids embedded to `embed_size`.
      embed_size: E; the embedding is uniform in [-init_scale, init_scale], or in
        [-0.05, 0.05] (Keras' `uniform`) with `init_scale=None` (orthogonal under
        `orthogonal_init`); `init_scale=0` draws it zero.
      head_init: "lecun_normal" (Flax's default, or orthogonal under `orthogonal_init`) or
        "glorot_uniform" (`head_initializers`).
      and the keyword-only `nn.RecurrentOptions`.
    """

    num_outputs: int
    hidden_sizes: Sequence[int] | int
    vocab_size: int | None = None
    embed_size: int = 128
    head_init: str = "lecun_normal"

    @nn.compact
    def __call__(self, inputs: jax.Array, deterministic: bool = True,
                 use_running_average: bool | None = None, *,
                 seq_lengths: jax.Array | None = None):
        """`[B, T]` ids or `[B, T, F]` floats -> `[B, num_outputs]`
        (`use_running_average`: "lstm_bn" only, see `nn.StackedRNN`).

        `seq_lengths`: int `[B]`, each example's valid steps, padding after them (see
        `rnn.unroll`); the head reads each example's last valid output `y[b, L_b - 1]`
        instead of `y[:, -1]`."""
        check_sequence_inputs(inputs, token_ids=self.vocab_size is not None)
        check_embedding_noise(self.reg, self.vocab_size)
        deterministic = check_modes(deterministic, use_running_average)
        cells.check_size(self.num_outputs, "num_outputs")
        weights_key = _model_noise_key(self, self.reg, deterministic)
        x = inputs
        own, stack_axes = partitioning.split_model_axes(self.param_axes)
        partitioning.check_model_names(own, sequence_model_arrays(self.vocab_size))
        boxed = lambda init, path: partitioning.boxed_array_init(init, own.get(path), path)
        if self.vocab_size is not None:
            cells.check_size(self.vocab_size, "vocab_size")
            cells.check_size(self.embed_size, "embed_size")
            scale = sequence_embedding_scale(self.init_scale)
            embed = nn.Embed(self.vocab_size, self.embed_size,
                             embedding_init=boxed(weight_init(scale, self.orthogonal_init),
                                                  "embed/embedding"),
                             dtype=self.dtype, param_dtype=self.param_dtype, name="embed")
            x = look_up(embedding_table(self.reg, embed.embedding, weights_key), x,
                        self.dtype)
            key = None
            if not deterministic and self.reg.embedding_noise:
                key = dropout_key(self)
            mask = noise.embedding_mask(self.reg, key, inputs, self.vocab_size, deterministic,
                                        precision.mask_dtype(x.dtype))
            if mask is not None:
                x = x * mask
        stack = StackedRNN(layer_sizes(self.hidden_sizes),
                           **dict(self.recurrent_options(), param_axes=stack_axes), name="rnn")
        y, _ = stack(x, None, deterministic, use_running_average, seq_lengths=seq_lengths)
        head = head_initializers(self.head_init, self.orthogonal_init)
        head = dict(kernel_init=boxed(head["kernel_init"], "head/kernel"),
                    bias_init=boxed(head["bias_init"], "head/bias"))
        head_layer = _output_layer(self.reg, weights_key, self.num_outputs, "head",
                                   dtype=self.dtype, param_dtype=self.param_dtype, **head)
        return head_layer(lengths.last_valid(y, seq_lengths))
