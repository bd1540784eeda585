"""The one-sentence errors of `rnn.unroll` and `rnn.scan_layer`: what XLA or the scan
would otherwise report deep inside a product, a KeyError or a carry type mismatch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from rnnreg_jax import cells, explicit_sharding, precision
from rnnreg_jax.regularizers.base import Regularizer, check_regularizer

Array = jax.Array


def refuse_for_pallas(params: cells.Params, xs: Array, dtype: Any,
                      seq_lengths: Array | None) -> None:
    """One sentence for each option the Pallas kernels do not take."""
    if seq_lengths is not None:
        raise ValueError("Variable lengths (seq_lengths) are not supported by "
                         "implementation='pallas'; use 'fused' or 'autodiff'.")
    if dtype is not None:
        raise ValueError("Mixed precision (dtype=...) is not supported by "
                         "implementation='pallas'; use 'fused' or 'autodiff'.")
    if explicit_sharding.axes_of(xs, 1) is not None:
        raise ValueError("Inputs sharded over an explicit mesh axis are not supported "
                         "by implementation='pallas'; use 'fused' or 'autodiff'.")
    sharded = [name for name, w in params.items() if explicit_sharding.spec_of(w) is not None]
    if sharded:
        raise ValueError(f"params[{sharded[0]!r}] is sharded over an explicit mesh axis, "
                         "which implementation='pallas' does not support; use 'fused' "
                         "or 'autodiff', or replicate the weights.")


def refuse_batch_statistics(cell, population) -> None:
    """Refuse `seq_lengths` for a cell normalized by the window's own batch statistics."""
    if population is None and cells.statistics_of(cell) is not None:
        raise ValueError(f"seq_lengths cannot be used with {cells.cell_name(cell)} "
                         "normalized by the window's batch statistics (training), which "
                         "would mix padded steps into them; pass its running statistics "
                         "(cell_stats, use_running_average=True) or batch equal lengths.")


def check_arguments(cell, reg: Regularizer, layers: list, inputs: Array, time_major: bool,
                    dtype: Any, forget_bias, unroll: int = 1) -> None:
    """`unroll`'s one-sentence errors for a bad cell, regularizer, empty stack, inputs of
    another rank or an integer dtype, a bad compute dtype, a string `forget_bias` or a
    scan unroll factor below 1."""
    cells.check_cell_type(cell)
    cells.check_size(unroll, "unroll")
    check_regularizer(reg)
    if not layers:
        raise ValueError("unroll needs the params of at least one layer, got none.")
    if jnp.ndim(inputs) != 3:
        raise ValueError(f"The inputs of unroll must be "
                         f"{'[T, B, F]' if time_major else '[B, T, F]'}, got shape "
                         f"{jnp.shape(inputs)}.")
    precision.check_floating(jnp.result_type(inputs), "The inputs' dtype")
    if dtype is not None:
        precision.check_floating(dtype, "dtype")
    if isinstance(forget_bias, (str, bytes)) or forget_bias is None:  # arrays may be traced
        raise ValueError(f"forget_bias must be a number, got {forget_bias!r}.")


def check_stack(cell, reg: Regularizer, layers: list, carries: list, populations: list,
                x: Array, time_major: bool) -> None:
    """One carry and one `cell_stats` per layer, each layer's params and carry fit for
    the cell, and their shapes for the inputs (`x`: time-major)."""
    if len(carries) != len(layers):
        raise ValueError(f"Got {len(carries)} carries for {len(layers)} layers.")
    if len(populations) != len(layers):
        raise ValueError(f"Got {len(populations)} cell_stats for {len(layers)} layers.")
    for index, (p, c) in enumerate(zip(layers, carries, strict=True)):
        cells.check_layer(cell, p, c, index, reg.needs_output_gate)
    check_shapes(layers, carries, x, time_major)


def check_shapes(layers: list, carries: list, x: Array, time_major: bool) -> None:
    """One-sentence errors for the shape mistakes XLA would report as a failed product:
    inputs of another rank, a layer whose `w_x` does not take the width it is fed, a
    carry of another batch size (`x` is time-major here)."""
    layout = "[T, B, F]" if time_major else "[B, T, F]"
    width, source = x.shape[-1], "the inputs"
    for index, (p, c) in enumerate(zip(layers, carries, strict=True)):
        w_x = p.get("w_x") if isinstance(p, Mapping) else None
        if w_x is not None and getattr(w_x, "ndim", 0) == 2 and w_x.shape[0] != width:
            raise ValueError(f"Layer {index}'s w_x reads {w_x.shape[0]} features, but its input "
                             f"({source}) has {width}.")
        h = c.get("h") if isinstance(c, Mapping) else None
        if h is not None and getattr(h, "ndim", 0) == 2 and h.shape[0] != x.shape[1]:
            raise ValueError(f"Layer {index}'s carry has batch size {h.shape[0]}, but the "
                             f"inputs have {x.shape[1]} ({layout}).")
        if not (isinstance(p, Mapping) and getattr(p.get("w_h"), "ndim", 0) == 2):
            return  # a layout this check does not know: leave the rest to the cells
        width, source = p["w_h"].shape[0], f"layer {index}'s outputs"
