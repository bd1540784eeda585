"""The NNX bidirectional stack: `bidirectional.unroll_bidirectional` over `nnx.Param`s.

    stack = Bidirectional(8, (32, 32), reg=variational(0.25, 0.25),
                          rngs=nnx.Rngs(params=0, dropout=1))
    ys, carry = stack(x)                     # [B, T, 64]: forward and backward, concatenated

Layer l is the attribute `layer_<l>`, whose `forward` and `backward` attributes are
`LayerParams` (one `nnx.Param` per array), so the `nnx.Param` state is the linen
`nn.Bidirectional`'s `params` tree path for path (`layer_<l>/forward/w_h`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rnnreg_jax import bidirectional, cells, nn, partitioning, stack_layers
from rnnreg_jax.nnx.base import RecurrentModule, dropout_stream, linen_key, linen_options
from rnnreg_jax.nnx.stack import LayerParams
from rnnreg_jax.regularizers.checks import check_flag


class DirectionPair(nnx.Module):
    """One bidirectional layer: the `forward` and `backward` directions' arrays."""

    def __init__(self, forward: dict, backward: dict):
        self.forward, self.backward = LayerParams(forward), LayerParams(backward)

    def params(self) -> dict:
        """The layer as `unroll_bidirectional` takes it: `{"forward": ..., "backward": ...}`."""
        return {"forward": self.forward.params(), "backward": self.backward.params()}


class Bidirectional(RecurrentModule):
    """A stack of bidirectional layers (the NNX twin of `rnnreg_jax.nn.Bidirectional`):
    each layer runs one scan forward and one backward, the layer above reads their
    merged outputs, as PyTorch's `nn.LSTM(bidirectional=True)`.

    Args:
      input_size: F, the inputs' width.
      hidden_sizes: width of each layer's directions, bottom first (an int for one layer).
      merge: "concat" (outputs `2 H` wide, forward first) or "sum".
      time_major: whether inputs and outputs are `[T, B, F]`.
      carry_first: calls return `(carry, outputs)` instead of `(outputs, carry)`.
      deterministic: evaluation mode (`RecurrentModule`).
      rngs: `params` draws the weights; `dropout` (or `default`), if present, is forked
        into the module's own stream.
      **options: the recurrent options of `nn.RecurrentOptions`, as `StackedRNN` takes
        them; cells with running statistics ("lstm_bn") are refused, as in linen.
    """

    LINEN = nn.Bidirectional

    def __init__(self, input_size: int, hidden_sizes: Sequence[int] | int, *,
                 merge: str = "concat", time_major: bool = False, carry_first: bool = False,
                 deterministic: bool = False, rngs: nnx.Rngs, **options):
        self._set_options(options, deterministic, None)
        bidirectional.check_merge(merge)
        bidirectional.check_cell(self.cell)
        self.input_size, self.hidden_sizes = input_size, stack_layers.layer_sizes(hidden_sizes)
        self.merge = merge
        # as the StackedRNN's linen twin checks them: the string "no" was taken as True
        self.time_major = check_flag(time_major, "time_major")
        self.carry_first = check_flag(carry_first, "carry_first")
        self.rngs = dropout_stream(rngs)
        self.reg.check_cell(self.cell)
        in_size = input_size
        drawn: list[dict] = []
        for index, hidden in enumerate(self.hidden_sizes):
            pair = {d: stack_layers.layer_init(self, in_size, hidden, index)(rngs["params"]())
                    for d in bidirectional.DIRECTIONS}
            drawn.extend(pair.values())
            setattr(self, f"layer_{index}", DirectionPair(pair["forward"], pair["backward"]))
            in_size = bidirectional.merged_width(hidden, merge)
        if self.param_axes is not None:
            partitioning.check_names(self.param_axes, drawn)
        self.penalty_terms: nnx.Intermediate[dict[str, jax.Array]] = nnx.Intermediate({})

    @property
    def layers(self) -> list[DirectionPair]:
        return [getattr(self, f"layer_{i}") for i in range(len(self.hidden_sizes))]

    def stack(self) -> Bidirectional:
        return self

    def __call__(self, inputs: jax.Array, carry=None, *, deterministic: bool | None = None,
                 rngs: Any = None, seq_lengths: jax.Array | None = None):
        """Run the stack over a window.

        Args:
          inputs: `[B, T, F]` (or `[T, B, F]` if `time_major`).
          carry: per layer `{"forward": c, "backward": c}` from a previous window, or None.
          deterministic: overrides the attribute for this call.
          rngs: this call's dropout key or a stream to draw it from (as `StackedRNN`'s);
            the key gives the masks linen's `apply(..., rngs={"dropout": key})` gives.
          seq_lengths: int `[B]`, each example's valid steps (padding after them); the
            backward direction starts at each example's last valid step.

        Returns:
          `(outputs [B, T, W], carry)`, W the last layer's merged width, or `(carry,
          outputs)` with `carry_first`.
        """
        deterministic, _ = self.modes(deterministic, None)
        key = self.call_key(rngs, not deterministic and self.reg.stack_noise)
        params = [layer.params() for layer in self.layers]
        outputs, carry, hiddens = bidirectional.unroll_bidirectional(
            self.cell, params, inputs, carry, reg=self.reg,
            key=None if key is None else linen_key(key), deterministic=deterministic,
            merge=self.merge, time_major=self.time_major, unroll=self.unroll,
            implementation=self.implementation, seq_lengths=seq_lengths,
            forget_bias=self.forget_bias, dtype=self.dtype, return_hiddens=True)
        terms = {}
        if self.reg.has_penalty and not deterministic:  # loss terms, training only
            time_axis = 0 if self.time_major else 1
            terms = bidirectional.penalties(self.reg, params, hiddens, outputs, time_axis,
                                            seq_lengths)
        self.penalty_terms = nnx.Intermediate(terms)
        return (carry, outputs) if self.carry_first else (outputs, carry)

    def initial_carry(self, batch_size: int, dtype: Any = jnp.float32) -> list[dict]:
        """Zero state of every layer's two directions."""
        return [{d: cells.init_carry(self.cell, batch_size, h, dtype,
                                     output_gate=self.reg.needs_output_gate)
                 for d in bidirectional.DIRECTIONS} for h in self.hidden_sizes]

    def linen_module(self) -> nn.Bidirectional:
        return nn.Bidirectional(self.hidden_sizes, self.merge, self.time_major,
                                carry_first=self.carry_first, **self.recurrent_options())

    @classmethod
    def _twin_of(cls, module: nn.Bidirectional, variables: dict,
                 rngs: nnx.Rngs) -> Bidirectional:
        input_size = variables["params"]["layer_0"]["forward"]["w_x"].shape[0]
        return cls(input_size, module.hidden_sizes, merge=module.merge,
                   time_major=module.time_major, carry_first=module.carry_first, rngs=rngs,
                   **linen_options(module))
