"""Flax linen wrappers: parameters plus one `dropout` PRNG stream -> the pure core.

    layer = StackedRNN(hidden_sizes=(650, 650), reg=variational(0.35, 0.2, 0.35))
    variables = layer.init(jax.random.key(0), x)                     # x: [B, T, F]
    ys, carry = layer.apply(variables, x, deterministic=False,
                            rngs={"dropout": jax.random.key(1)})

Each layer's parameters live under `layer_<l>` as `{"w_x", "w_h", "b"}` (plus
`"b_h"` for the GRU), exactly the dicts `rnnreg_jax.rnn.unroll` takes, so
`variables["params"]` ports to the pure API and to PyTorch
(`rnnreg_jax.torch_port`) without renaming. The loss terms (norm stabilizer,
AR and TAR) are sown into the `penalties` collection in training only; a
training loop that applies the model with `mutable=["penalties"]` adds every
entry to the loss without knowing which regularizer produced it.

A cell that keeps running statistics (`cells.statistics_of`: `cell="lstm_bn"`,
recurrent batch normalization, keeps its population statistics) has each layer's in the
`batch_stats` collection, under `layer_<l>`. In training (`deterministic=False`) the
cell uses the window's own statistics and the running ones are updated, which needs
`mutable=["batch_stats"]` like Flax's `BatchNorm`; otherwise (`deterministic=True`, or
`use_running_average=True` as in MC evaluation) the running statistics are used.

Mixed precision: `dtype` (compute) and `param_dtype` (storage), as in Flax's own layers;
`rnnreg_jax.precision` says what stays float32 and why. Sharding: `param_axes` boxes a
layer's arrays in `nn.LogicallyPartitioned` (`rnnreg_jax.partitioning`), leaving the
parameter tree's paths and values as they are.

Return order: `(outputs, carry)`, the pure API's (`rnn.unroll`); `flax.linen.RNN(
return_carry=True)` returns `(carry, outputs)`, which `carry_first=True` gives here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnreg_jax import batchnorm, bidirectional, cells, partitioning, precision, rnn
from rnnreg_jax.regularizers.base import Regularizer, check_regularizer, penalties_of
from rnnreg_jax.regularizers.chain import NONE
from rnnreg_jax.regularizers.checks import check_flag
from rnnreg_jax.stack_layers import layer_init, layer_sizes, takes_gate_inputs


def dropout_key(module: nn.Module) -> jax.Array:
    """The module's `dropout` PRNG key (Flax falls back to `params` during init); a
    one-sentence error instead of Flax's InvalidRngError when the caller gave neither."""
    if not (module.has_rng("dropout") or module.has_rng("params")):
        raise ValueError("Training mode (deterministic=False) with noise regularizers needs "
                         "a dropout PRNG key: apply(..., rngs={'dropout': key}).")
    return module.make_rng("dropout")


def option(default):
    """A keyword-only module attribute (how `RecurrentOptions` declares its fields, and
    how a subclass gives one another default)."""
    return dataclasses.field(default=default, kw_only=True)


class RecurrentOptions(nn.Module):
    """The options of every recurrent module here (`StackedRNN`, `RecurrentLayer`,
    `models.LanguageModel`, `models.SequenceModel`), defined once and keyword-only; a
    model passes them on to its stack with `recurrent_options()`, and a config's model
    block passes them straight in (`rnnreg_jax.tasks`).

    Attributes:
      cell: "lstm", "gru", "rnn", "lstm_ln", "lstm_bn", "keras_lstm", "keras_gru", or a
        user's `cells.Cell` (or its registered name).
      reg: the regularizer (`rnnreg_jax.regularizers`).
      init_scale: weights uniform in [-init_scale, init_scale]; None uses
        1/sqrt(H) (PyTorch's default).
      unroll: `lax.scan` unroll factor.
      implementation: "auto" (by batch size), "fused" (hoisted `dW_h` backward
        pass) or "autodiff"; see `rnn.scan_layer`.
      bn_max_steps: "lstm_bn": T_max, the steps with their own population
        statistics; later steps use those of step T_max - 1.
      bn_momentum: "lstm_bn": `running = m * running + (1 - m) * batch` per
        training apply (Flax's convention; PyTorch's momentum 0.1 is m = 0.9).
      recurrent_bias: "lstm"/"rnn": a second additive bias per layer, as in
        Zaremba's Lua LSTM (`cells.init_params`).
      forget_bias: LSTM cells: a constant on the forget gate's pre-activation
        (the zoneout authors' +1, `cells.with_forget_bias`).
      orthogonal_init: orthogonal `w_x`, `w_h` and zero biases instead of the
        uniform draw (`cells.init_params`).
      dtype: the compute dtype (None: the inputs' and parameters' own, as without
        mixed precision): products and gate nonlinearities run in it, while the carry
        (an LSTM's `c`), the masks and the penalties stay at least float32
        (`rnnreg_jax.precision`); outputs are in `dtype`.
      param_dtype: the dtype parameters are initialized and stored in.
      param_axes: logical axis names per array of a recurrent layer, `{"w_x": ("embed",
        "gates"), "w_h": ("hidden", "gates"), "b": ("gates",)}` (a dict, or a tuple of
        `(name, axes)` pairs to keep the module hashable): those arrays are boxed in
        `nn.LogicallyPartitioned`, so `nn.get_partition_spec(variables)` has a spec per
        array (`rnnreg_jax.partitioning`); None boxes nothing.
    """

    # `option` makes the fields below keyword-only at runtime; type checkers read
    # `kw_only` only from the field specifiers flax.linen's dataclass transform names, so
    # they are told with the KW_ONLY sentinel, hidden from the runtime dataclass (there it
    # would make flax's `parent` and `name` keyword-only too). Subclasses do the same.
    if TYPE_CHECKING:
        _: dataclasses.KW_ONLY
    cell: Any = option("lstm")
    reg: Regularizer = option(NONE)
    init_scale: float | None = option(None)
    unroll: int = option(1)
    implementation: str = option("auto")
    bn_max_steps: int = option(batchnorm.DEFAULT_MAX_STEPS)
    bn_momentum: float = option(batchnorm.DEFAULT_MOMENTUM)
    recurrent_bias: bool = option(False)
    forget_bias: float = option(0.0)
    orthogonal_init: bool = option(False)
    dtype: Any = option(None)
    param_dtype: Any = option(jnp.float32)
    param_axes: Any = option(None)

    def __post_init__(self):
        check_regularizer(self.reg)  # at construction, not deep inside the first call
        check_switches(self)
        precision.check_module_dtypes(self.param_dtype, self.dtype)
        super().__post_init__()

    def recurrent_options(self) -> dict:
        """The options as keyword arguments of another recurrent module."""
        return {name: getattr(self, name) for name in OPTION_FIELDS}


def check_switches(module) -> None:
    """Each bool attribute of a module dataclass (those whose default is a bool) True or
    False: the string "False" from a config turned `time_major`, `embed_to_gates` or
    `tie_embeddings` on without a word."""
    for field in dataclasses.fields(module):
        if isinstance(field.default, bool):
            check_flag(getattr(module, field.name), field.name)


def check_modes(deterministic: Any, use_running_average: Any = None) -> bool:
    """A call's `deterministic` as a bool, and its `use_running_average` (None or a bool),
    checked before anything reads them, each in one line (the linen modules' calls)."""
    if use_running_average is not None:
        check_flag(use_running_average, "use_running_average")
    return check_flag(deterministic, "deterministic")


def check_input_width(module: nn.Module, inputs) -> None:
    """The library's one sentence, not Flax's ScopeParamShapeError, for inputs of another
    width than the first layer's stored `w_x` reads (the NNX twins say the same)."""
    if jnp.ndim(inputs) < 1 or not module.has_variable("params", "layer_0"):
        return
    stored = nn.unbox(module.get_variable("params", "layer_0"))
    for part in (stored[d] for d in bidirectional.DIRECTIONS) if "forward" in stored else (
            stored,):
        w_x: Any = part.get("w_x") if isinstance(part, Mapping) else None
        if getattr(w_x, "ndim", 0) == 2 and w_x.shape[0] != inputs.shape[-1]:
            raise ValueError(f"Layer 0's w_x reads {w_x.shape[0]} features, but its input "
                             f"(the inputs) has {inputs.shape[-1]}.")


OPTION_FIELDS = ("cell", "reg", "init_scale", "unroll", "implementation", "bn_max_steps",
                 "bn_momentum", "recurrent_bias", "forget_bias", "orthogonal_init", "dtype",
                 "param_dtype", "param_axes")


class StackedRNN(RecurrentOptions):
    """A stack of recurrent layers regularized by one regularizer.

    Attributes:
      hidden_sizes: width of each layer, bottom first (an int for one layer).
      time_major: whether inputs and outputs are `[T, B, F]`.
      project_first_input: False: the first layer has no `w_x` and its inputs
        are its gates' pre-activations (`[.., G*H]`; "lstm", "gru", "rnn").
      carry_first: return `(carry, outputs)`, the order of `flax.linen.RNN(
        return_carry=True)`, instead of `(outputs, carry)` (the pure API's,
        `rnn.unroll`); keyword-only.
      and the keyword-only `RecurrentOptions`.
    """

    hidden_sizes: Sequence[int] | int
    time_major: bool = False
    project_first_input: bool = True
    if TYPE_CHECKING:  # keyword-only, as `RecurrentOptions` says
        _: dataclasses.KW_ONLY
    carry_first: bool = option(False)

    @property
    def sizes(self) -> tuple[int, ...]:
        return layer_sizes(self.hidden_sizes)

    def _gates_input_init(self, init, in_size: int, hidden: int):
        """The first layer's init without `w_x`, after checking that the inputs are
        as wide as its gates."""
        if not takes_gate_inputs(self.cell):
            raise ValueError(f"project_first_input=False applies to lstm, gru and rnn "
                             f"cells, not {self.cell!r}.")
        width = cells.NUM_GATES[self.cell] * hidden
        if in_size != width:
            raise ValueError(f"project_first_input=False needs inputs as wide as the first "
                             f"layer's gates ({width}), got {in_size}.")
        return lambda key: {k: v for k, v in init(key).items() if k != "w_x"}

    @nn.compact
    def __call__(self, inputs: jax.Array, carry=None, deterministic: bool = True,
                 use_running_average: bool | None = None, *,
                 seq_lengths: jax.Array | None = None):
        """Run the stack over a window.

        Args:
          inputs: `[B, T, F]` (or `[T, B, F]` if `time_major`).
          carry: list of per-layer state dicts from a previous window, or None.
          deterministic: evaluation mode (noise replaced by its expectation).
          use_running_average: a cell that keeps running statistics ("lstm_bn"): use
            them (True) or the window's own, updating them (False); None means
            `deterministic`. Training "lstm_bn" on the window's statistics refuses
            `seq_lengths`.
          seq_lengths: int `[B]`, each example's valid steps, padding after them (see
            `rnn.unroll`): its carry is frozen and its outputs zero past them, and the
            penalties count valid steps only. None: every step is valid.

        Returns:
          `(outputs [B, T, H_last], carry)`; `(carry, outputs)` with `carry_first`.
          The outputs are in `dtype` when it is set; the carry keeps its dtypes (zeros:
          float32 or wider, see `rnn.unroll`).
        """
        deterministic = check_modes(deterministic, use_running_average)
        self.reg.check_cell(self.cell)
        check_input_width(self, inputs)
        params, in_size = [], inputs.shape[-1]
        for index, hidden in enumerate(self.sizes):
            adapt = None
            if index == 0 and not self.project_first_input:
                adapt = functools.partial(self._gates_input_init, in_size=in_size,
                                          hidden=hidden)
            params.append(self.param(f"layer_{index}",
                                     layer_init(self, in_size, hidden, index, adapt)))
            in_size = hidden
        if self.param_axes is not None:
            partitioning.check_names(self.param_axes, params)
        key = None
        if not deterministic and self.reg.stack_noise:
            key = dropout_key(self)
        populations, to_update = self._statistics(use_running_average, deterministic)
        outputs, carry, hiddens, stats = rnn.unroll(
            self.cell, params, inputs, carry, reg=self.reg, key=key,
            deterministic=deterministic, time_major=self.time_major, unroll=self.unroll,
            return_hiddens=True, implementation=self.implementation,
            cell_stats=populations, return_cell_stats=True, forget_bias=self.forget_bias,
            dtype=self.dtype, seq_lengths=seq_lengths)
        kept = cells.statistics_of(self.cell)
        for var, layer_stats in zip(to_update, stats, strict=False):  # training only
            assert kept is not None  # nothing to update without statistics
            var.value = kept.update(var.value, jax.lax.stop_gradient(layer_stats),
                                    self.bn_momentum)
        if self.reg.has_penalty and not deterministic:  # loss terms, training only
            time_axis = 0 if self.time_major else 1
            for name, value in penalties_of(self.reg, params, hiddens, outputs, time_axis,
                                            seq_lengths).items():
                self.sow("penalties", name, value)
        return (carry, outputs) if self.carry_first else (outputs, carry)

    def _statistics(self, use_running_average, deterministic):
        """`(running statistics to use, or None for the window's own; variables to update)`
        of a cell that keeps them (`cells.statistics_of`), in the `batch_stats`
        collection."""
        kept = cells.statistics_of(self.cell)
        if kept is None:
            return None, []
        kept.check(self.bn_max_steps, self.bn_momentum)
        variables = [self.variable("batch_stats", f"layer_{i}", kept.init, h, self.bn_max_steps)
                     for i, h in enumerate(self.sizes)]
        use_average = (deterministic if use_running_average is None
                       else check_flag(use_running_average, "use_running_average"))
        if use_average:
            return [v.value for v in variables], []
        if self.is_initializing():  # like Flax's BatchNorm: init leaves the averages alone
            return None, []
        if not self.is_mutable_collection("batch_stats"):
            raise ValueError(f"Training a {cells.cell_name(self.cell)} stack "
                             "(deterministic=False) updates its running statistics: apply "
                             "with mutable=['batch_stats'], or pass use_running_average=True.")
        return None, variables

    def initial_carry(self, batch_size: int, dtype=jnp.float32) -> list[cells.Carry]:
        """Zero state for every layer (usable outside `apply`)."""
        return [cells.init_carry(self.cell, batch_size, h, dtype,
                                 output_gate=self.reg.needs_output_gate) for h in self.sizes]


class RecurrentLayer(RecurrentOptions):
    """One recurrent layer; the carry is a single state dict.

    Returns `(outputs, carry)` like `StackedRNN`, or with `carry_first=True` `(carry,
    outputs)`, the order of `flax.linen.RNN(return_carry=True)`.

    Attributes: `hidden_size`, `time_major`, the keyword-only `carry_first` and
    `RecurrentOptions`.
    """

    hidden_size: int
    time_major: bool = False
    if TYPE_CHECKING:  # keyword-only, as `RecurrentOptions` says
        _: dataclasses.KW_ONLY
    carry_first: bool = option(False)

    @nn.compact
    def __call__(self, inputs: jax.Array, carry=None, deterministic: bool = True,
                 use_running_average: bool | None = None, *,
                 seq_lengths: jax.Array | None = None):
        """`StackedRNN.__call__` for one layer: `(outputs, carry)`."""
        stack = StackedRNN((self.hidden_size,), self.time_major, **self.recurrent_options(),
                           name="stack")
        outputs, carries = stack(inputs, None if carry is None else [carry], deterministic,
                                 use_running_average, seq_lengths=seq_lengths)
        return (carries[0], outputs) if self.carry_first else (outputs, carries[0])

    def initial_carry(self, batch_size: int, dtype=jnp.float32) -> cells.Carry:
        """The layer's zero state, the dict its calls take and return (usable outside
        `apply`)."""
        return cells.init_carry(self.cell, batch_size, self.hidden_size, dtype,
                                output_gate=self.reg.needs_output_gate)


class Bidirectional(RecurrentOptions):
    """A stack of bidirectional layers (`rnnreg_jax.bidirectional`): each layer runs one
    scan forward and one backward, and the layer above reads their merged outputs, as
    PyTorch's `nn.LSTM(bidirectional=True)`.

    Each layer's parameters live under `layer_<l>` as `{"forward": {...}, "backward":
    {...}}`, the layout `bidirectional.unroll_bidirectional` takes (and
    `torch_port.from_torch_bidirectional` makes). Penalties are sown as by `StackedRNN`
    (`bidirectional.penalties`: each the mean over the two directions, over the valid
    steps with `seq_lengths`). `dtype`, `param_dtype` and `param_axes` act as in
    `StackedRNN`, `param_axes` on each direction's arrays (`layer_<l>/forward/w_h`).

    Attributes:
      hidden_sizes: width of each layer's directions, bottom first (an int for one layer).
      merge: "concat" (outputs `2 H` wide, forward first) or "sum".
      time_major: whether inputs and outputs are `[T, B, F]`.
      carry_first: return `(carry, outputs)` instead of `(outputs, carry)`, as
        `StackedRNN`'s; keyword-only.
      and the keyword-only `RecurrentOptions` (cells with running statistics, "lstm_bn",
      are refused).
    """

    hidden_sizes: Sequence[int] | int
    merge: str = "concat"
    time_major: bool = False
    if TYPE_CHECKING:  # keyword-only, as `RecurrentOptions` says
        _: dataclasses.KW_ONLY
    carry_first: bool = option(False)

    @property
    def sizes(self) -> tuple[int, ...]:
        return layer_sizes(self.hidden_sizes)

    @nn.compact
    def __call__(self, inputs: jax.Array, carry=None, deterministic: bool = True,
                 seq_lengths: jax.Array | None = None):
        """Run the stack over a window.

        Args:
          inputs: `[B, T, F]` (or `[T, B, F]` if `time_major`).
          carry: per layer `{"forward": c, "backward": c}` from a previous window, or None.
          deterministic: evaluation mode (noise replaced by its expectation).
          seq_lengths: int `[B]`, each example's valid steps, or None (all of them); the
            penalties then count valid steps only.

        Returns:
          `(outputs [B, T, W], carry)`, W the last layer's merged width;
          `(carry, outputs)` with `carry_first`. Outputs in `dtype` when it is set, the
          carry in its dtypes (zeros: float32 or wider, see `rnn.unroll`).
        """
        deterministic = check_modes(deterministic)
        bidirectional.check_merge(self.merge)
        self.reg.check_cell(self.cell)
        check_input_width(self, inputs)
        params, in_size = [], inputs.shape[-1]
        for index, hidden in enumerate(self.sizes):
            init = lambda key, f=in_size, h=hidden, layer=index: {
                d: layer_init(self, f, h, layer)(k)
                for d, k in zip(bidirectional.DIRECTIONS, jax.random.split(key), strict=True)}
            params.append(self.param(f"layer_{index}", init))
            in_size = bidirectional.merged_width(hidden, self.merge)
        if self.param_axes is not None:
            partitioning.check_names(self.param_axes, [layer[d] for layer in params
                                                       for d in bidirectional.DIRECTIONS])
        key = None
        if not deterministic and self.reg.stack_noise:
            key = dropout_key(self)
        outputs, carry, hiddens = bidirectional.unroll_bidirectional(
            self.cell, params, inputs, carry, reg=self.reg, key=key,
            deterministic=deterministic, merge=self.merge, time_major=self.time_major,
            unroll=self.unroll, implementation=self.implementation, seq_lengths=seq_lengths,
            forget_bias=self.forget_bias, dtype=self.dtype, return_hiddens=True)
        if self.reg.has_penalty and not deterministic:  # loss terms, training only
            time_axis = 0 if self.time_major else 1
            for name, value in bidirectional.penalties(self.reg, params, hiddens, outputs,
                                                       time_axis, seq_lengths).items():
                self.sow("penalties", name, value)
        return (carry, outputs) if self.carry_first else (outputs, carry)

    def initial_carry(self, batch_size: int, dtype=jnp.float32) -> list[dict]:
        """Zero state of every layer's two directions (usable outside `apply`)."""
        return [{d: cells.init_carry(self.cell, batch_size, h, dtype,
                                     output_gate=self.reg.needs_output_gate)
                 for d in bidirectional.DIRECTIONS} for h in self.sizes]
