"""What every recurrent stack reads of its layers, whether Flax Linen (`rnnreg_jax.nn`),
NNX (`rnnreg_jax.nnx`) or a bidirectional one's pure parameters
(`bidirectional.init_params`): its widths (`layer_sizes`), whether its first layer may
take the gates' pre-activations as inputs (`takes_gate_inputs`) and how one layer's
parameters are drawn from the stack's options (`layer_init`), so that a Linen and an
NNX stack of the same options and key hold the same arrays."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax

from rnnreg_jax import cells, partitioning
from rnnreg_jax.regularizers.base import Regularizer


def layer_sizes(hidden_sizes: Sequence[int] | int) -> tuple[int, ...]:
    """The stack's widths, bottom first, from an int (one layer) or a sequence; a
    one-line error for an empty one or a width that is not a whole number >= 1 (they
    failed in an index, an embedding or MLIR)."""
    widths: Iterable[object] = (hidden_sizes,)  # an int, or a value check_size refuses
    if isinstance(hidden_sizes, Iterable) and not isinstance(hidden_sizes, (str, bytes)):
        widths = hidden_sizes
    sizes = tuple(cells.check_size(size, "Each of hidden_sizes") for size in widths)
    if not sizes:
        raise ValueError("hidden_sizes must name at least one layer, got none.")
    return sizes


def takes_gate_inputs(cell: object) -> bool:
    """Whether a stack of `cell` may take its gates' pre-activations as the first layer's
    inputs (`project_first_input=False`, a language model's `embed_to_gates`)."""
    return cell in cells.CELL_TYPES


def with_regularizer_params(reg: Regularizer, init, layer: int):
    """`init` plus the parameters `reg` adds to layer `layer` (a learned noise scale,
    say), drawn from a key of their own so the cell's draws stay as they are."""
    def with_extra(key):
        params = init(key)
        extra = reg.init_params(jax.random.fold_in(key, 1 << 16), layer, params)
        clash = sorted(set(extra) & set(params))
        if clash:
            raise ValueError(f"The regularizer's parameter {clash[0]!r} is also a "
                             "parameter of the cell; name it otherwise.")
        return {**params, **extra}

    return with_extra


def layer_init(options, input_size: int, hidden: int, layer: int, adapt=None):
    """`key -> one layer's parameters` as every stack (linen and NNX, one direction or
    two) draws them from its recurrent `options` (a module with `cell`, `reg`,
    `init_scale`, `param_dtype`, `recurrent_bias`, `orthogonal_init`, `param_axes`): the
    cell's arrays (`cells.init_params`), passed through `adapt` if given (the first layer
    fed gates' pre-activations), then the regularizer's own (`with_regularizer_params`),
    boxed by `param_axes`."""
    def cell_init(key):
        return cells.init_params(key, options.cell, input_size, hidden, options.init_scale,
                                 options.param_dtype, options.recurrent_bias,
                                 options.orthogonal_init)

    init = with_regularizer_params(options.reg, cell_init if adapt is None
                                   else adapt(cell_init), layer)
    if options.param_axes is not None:
        init = partitioning.boxed_init(init, options.param_axes)
    return init
