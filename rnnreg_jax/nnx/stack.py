"""The NNX stack of recurrent layers: `rnnreg_jax.rnn.unroll` over `nnx.Param`s.

    stack = StackedRNN(8, (32, 32), reg=variational(0.35, 0.2, 0.35),
                       rngs=nnx.Rngs(params=0, dropout=1))
    ys, carry = stack(x)                     # training mode: one dropout draw per call
    stack.eval(); ys, carry = stack(x, carry)

Layer l is the attribute `layer_<l>`, a `LayerParams` whose attributes are the arrays of
the dict `rnn.unroll` takes (`w_x`, `w_h`, `b`, ...), one `nnx.Param` each, so the
`nnx.Param` state is the linen `StackedRNN`'s `params` tree path for path.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen
import jax
import jax.numpy as jnp
from flax import nnx

from rnnreg_jax import cells, nn, partitioning, rnn, stack_layers
from rnnreg_jax.nnx.base import (
    RecurrentModule,
    dropout_stream,
    get_value,
    linen_key,
    linen_options,
    set_value,
)
from rnnreg_jax.regularizers.base import penalties_of


class LayerParams(nnx.Module):
    """One layer's arrays as attributes named as in linen's variables: each parameter an
    `nnx.Param` (`w_x`, `w_h`, `b`, ..., and a regularizer's own), each running
    statistic of a cell that keeps them ("lstm_bn": `x_mean`, ..., `weight`) an
    `nnx.BatchStat`. One variable per array, so each carries its own metadata: an array
    given boxed in `nn.LogicallyPartitioned` (`partitioning.boxed_init`, the `param_axes`
    option) becomes an `nnx.Param` whose `out_sharding` metadata holds its axis names,
    which `nnx.get_partition_spec` reads (flax 0.12.8), without placing the array
    (`eager_sharding=False`, as linen's boxes place nothing)."""

    def __init__(self, params: dict, statistics: Any = None):
        if statistics is not None and not isinstance(statistics, dict):
            raise ValueError("rnnreg_jax.nnx keeps a cell's running statistics by name: "
                             "its CellStatistics.init must return a dict.")
        statistics = statistics or {}
        for name in (*params, *statistics):
            if (not name.isidentifier() or hasattr(LayerParams, name)
                    or name in ("param_names", "statistic_names")):
                raise ValueError(f"{name!r} cannot name a layer's parameter or statistic in "
                                 "rnnreg_jax.nnx; name it otherwise.")
        clash = sorted(set(params) & set(statistics))
        if clash:
            raise ValueError(f"{clash[0]!r} names both a parameter and a running statistic.")
        self.param_names, self.statistic_names = tuple(params), tuple(statistics)
        for name, value in params.items():
            setattr(self, name, as_param(value))
        for name, value in statistics.items():
            setattr(self, name, nnx.BatchStat(value))

    def params(self) -> dict:
        """The layer's parameters as the dict `rnn.unroll` takes."""
        return {name: get_value(getattr(self, name)) for name in self.param_names}

    def statistics(self) -> dict:
        return {name: get_value(getattr(self, name)) for name in self.statistic_names}

    def set_statistics(self, statistics: dict) -> None:
        for name in self.statistic_names:
            set_value(getattr(self, name), statistics[name])


def as_param(value: Any) -> nnx.Param:
    """An array as an `nnx.Param`; one boxed in `nn.LogicallyPartitioned` with its axis
    names as `out_sharding` metadata (metadata only: no mesh needed, nothing placed)."""
    if isinstance(value, flax.linen.LogicallyPartitioned):
        return nnx.Param(value.value, out_sharding=value.names, eager_sharding=False)
    return nnx.Param(value)


class StackedRNN(RecurrentModule):
    """A stack of recurrent layers regularized by one regularizer (the NNX twin of
    `rnnreg_jax.nn.StackedRNN`).

    Args:
      input_size: F, the inputs' width.
      hidden_sizes: width of each layer, bottom first (an int for one layer).
      time_major: whether inputs and outputs are `[T, B, F]`.
      project_first_input: False: the first layer has no `w_x` and its inputs are its
        gates' pre-activations (F = G*H; "lstm", "gru", "rnn").
      carry_first: calls return `(carry, outputs)` (`nnx.RNN(return_carry=True)`'s and
        linen's `carry_first` order) instead of `(outputs, carry)`.
      deterministic, use_running_average: the modes (`RecurrentModule`).
      rngs: `params` draws the weights; `dropout` (or `default`), if present, is forked
        into the module's own stream, as `nnx.Dropout` does.
      **options: the recurrent options of `nn.RecurrentOptions` (`cell`, `reg`,
        `init_scale`, `unroll`, `implementation`, `bn_max_steps`, `bn_momentum`,
        `recurrent_bias`, `forget_bias`, `orthogonal_init`, `dtype`, `param_dtype`,
        `param_axes`), with the same defaults: parameters drawn and stored in
        `param_dtype`, computed in `dtype` (`rnnreg_jax.precision`), and the arrays
        `param_axes` names carrying their axis names as `out_sharding` metadata.
    """

    LINEN = nn.StackedRNN

    def __init__(self, input_size: int, hidden_sizes: Sequence[int] | int, *,
                 time_major: bool = False, project_first_input: bool = True,
                 carry_first: bool = False, deterministic: bool = False,
                 use_running_average: bool | None = None, rngs: nnx.Rngs, **options):
        self._set_options(options, deterministic, use_running_average)
        self.input_size = input_size
        self.hidden_sizes = stack_layers.layer_sizes(hidden_sizes)
        self.time_major, self.project_first_input = time_major, project_first_input
        self.carry_first = carry_first
        self.rngs = dropout_stream(rngs)
        self.reg.check_cell(self.cell)
        kept = cells.statistics_of(self.cell)
        if kept is not None:
            kept.check(self.bn_max_steps, self.bn_momentum)
        # The linen twin's own init steps, so both stacks hold the same arrays: the
        # regularizer's parameters from their own key, the gates-input first layer's checks.
        twin = self.linen_module()
        in_size, drawn = input_size, []
        for index, hidden in enumerate(self.hidden_sizes):
            adapt = None
            if index == 0 and not project_first_input:
                adapt = functools.partial(twin._gates_input_init,  # noqa: SLF001
                                          in_size=in_size, hidden=hidden)
            init = stack_layers.layer_init(self, in_size, hidden, index, adapt)
            drawn.append(init(rngs["params"]()))
            stats = None if kept is None else kept.init(hidden, self.bn_max_steps)
            setattr(self, f"layer_{index}", LayerParams(drawn[-1], stats))
            in_size = hidden
        if self.param_axes is not None:
            partitioning.check_names(self.param_axes, drawn)
        self.penalty_terms: nnx.Intermediate[dict[str, jax.Array]] = nnx.Intermediate({})

    @property
    def layers(self) -> list[LayerParams]:
        return [getattr(self, f"layer_{i}") for i in range(len(self.hidden_sizes))]

    def stack(self) -> StackedRNN:
        return self

    def __call__(self, inputs: jax.Array, carry=None, *, deterministic: bool | None = None,
                 use_running_average: bool | None = None, rngs: Any = None,
                 seq_lengths: jax.Array | None = None):
        """Run the stack over a window.

        Args:
          inputs: `[B, T, F]` (or `[T, B, F]` if `time_major`).
          carry: the per-layer states of a previous window, or None (zeros).
          deterministic, use_running_average: override the attributes for this call.
          rngs: this call's dropout key, or a stream to draw it from (an `nnx.Rngs`'s
            `dropout`, an `nnx.RngStream`); default: the module's own stream. The key
            gives the masks linen's `apply(..., rngs={"dropout": key})` gives.
          seq_lengths: int `[B]`, each example's valid steps, padding after them (see
            `rnn.unroll`): its carry is frozen and its outputs zero past them, and the
            penalties count valid steps only. None: every step is valid. Training
            "lstm_bn" on the window's statistics refuses it.

        Returns:
          `(outputs [B, T, H_last], carry)`, or `(carry, outputs)` with `carry_first`;
          the outputs in `dtype` when it is set, the carry in its own dtypes.
        """
        deterministic, average = self.modes(deterministic, use_running_average)
        key = self.call_key(rngs, not deterministic and self.reg.stack_noise)
        outputs, carry = self.run(inputs, carry, deterministic, average,
                                  None if key is None else linen_key(key), seq_lengths)
        return (carry, outputs) if self.carry_first else (outputs, carry)

    def run(self, inputs: jax.Array, carry, deterministic: bool, use_running_average: bool,
            key: jax.Array | None, seq_lengths: jax.Array | None = None):
        """`__call__` with its modes resolved and the stack's own noise key (what linen's
        `make_rng("dropout")` gives it), as a parent module calls it: `(outputs,
        carry)` whatever `carry_first`."""
        layers = self.layers
        params = [layer.params() for layer in layers]
        kept = cells.statistics_of(self.cell)
        populations = None
        if kept is not None and use_running_average:
            populations = [layer.statistics() for layer in layers]
        outputs, carry, hiddens, stats = rnn.unroll(
            self.cell, params, inputs, carry, reg=self.reg, key=key,
            deterministic=deterministic, time_major=self.time_major, unroll=self.unroll,
            return_hiddens=True, implementation=self.implementation,
            cell_stats=populations, return_cell_stats=True, forget_bias=self.forget_bias,
            dtype=self.dtype, seq_lengths=seq_lengths)
        if kept is not None and not use_running_average:
            for layer, window in zip(layers, stats, strict=True):
                layer.set_statistics(kept.update(layer.statistics(),
                                                 jax.lax.stop_gradient(window),
                                                 self.bn_momentum))
        terms = {}
        if self.reg.has_penalty and not deterministic:  # loss terms, training only
            time_axis = 0 if self.time_major else 1
            terms = penalties_of(self.reg, params, hiddens, outputs, time_axis, seq_lengths)
        self.penalty_terms = nnx.Intermediate(terms)
        return outputs, carry

    def initial_carry(self, batch_size: int, dtype: Any = jnp.float32) -> list[cells.Carry]:
        """Zero state for every layer."""
        return [cells.init_carry(self.cell, batch_size, h, dtype,
                                 output_gate=self.reg.needs_output_gate)
                for h in self.hidden_sizes]

    def linen_module(self) -> nn.StackedRNN:
        return nn.StackedRNN(self.hidden_sizes, self.time_major, self.project_first_input,
                             carry_first=self.carry_first, **self.recurrent_options())

    @classmethod
    def _twin_of(cls, module: nn.StackedRNN, variables: dict, rngs: nnx.Rngs) -> StackedRNN:
        first = variables["params"]["layer_0"]
        input_size = (first["w_x"].shape[0] if module.project_first_input
                      else first["w_h"].shape[1])
        return cls(input_size, module.hidden_sizes, time_major=module.time_major,
                   project_first_input=module.project_first_input,
                   carry_first=module.carry_first, rngs=rngs, **linen_options(module))
