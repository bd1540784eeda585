"""The one-sentence errors of `rnn.unroll` and `rnn.scan_layer`: what XLA or the scan
would otherwise report deep inside a product, a KeyError or a carry type mismatch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from rnnreg_jax import cells, explicit_sharding, precision
from rnnreg_jax.cells import check_forget_bias  # here too: unroll's checks, one place
from rnnreg_jax.pallas import plan as pallas_plan
from rnnreg_jax.regularizers.base import Regularizer, check_regularizer
from rnnreg_jax.regularizers.checks import check_flag, check_key

Array = jax.Array


def pallas_refusal(params: cells.Params, xs: Array, carry: cells.Carry, dtype: Any,
                   seq_lengths: Array | None) -> str | None:
    """The one sentence saying why the Pallas kernels do not take this layer call, or
    None when they do (the cell and its hidden size are `pallas.make_plan`'s to check):
    `implementation="auto"` falls back to the scan where it is not None."""
    if seq_lengths is not None:
        return ("Variable lengths (seq_lengths) are not supported by "
                "implementation='pallas'; use 'fused' or 'autodiff'.")
    if dtype is not None:
        return ("Mixed precision (dtype=...) is not supported by "
                "implementation='pallas'; use 'fused' or 'autodiff'.")
    if explicit_sharding.axes_of(xs, 1) is not None:
        return ("Inputs sharded over an explicit mesh axis are not supported "
                "by implementation='pallas'; use 'fused' or 'autodiff'.")
    sharded = [name for name, w in params.items() if explicit_sharding.spec_of(w) is not None]
    if sharded:
        return (f"params[{sharded[0]!r}] is sharded over an explicit mesh axis, "
                "which implementation='pallas' does not support; use 'fused' "
                "or 'autodiff', or replicate the weights.")
    # the kernels run the layer in its input projection's dtype (that of the params);
    # the scan keeps a carry of another dtype in it, casting every step's new state
    return pallas_plan.dtype_refusal("params['w_h']", params["w_h"].dtype, {
        **{f"params[{name!r}]": w for name, w in params.items()},
        **{f"carry[{name!r}]": c for name, c in carry.items()}})


def refuse_for_pallas(params: cells.Params, xs: Array, carry: cells.Carry, dtype: Any,
                      seq_lengths: Array | None) -> None:
    """A one-sentence ValueError for a layer call the Pallas kernels do not take
    (`pallas_refusal`)."""
    reason = pallas_refusal(params, xs, carry, dtype, seq_lengths)
    if reason is not None:
        raise ValueError(reason)


def refuse_batch_statistics(cell, population) -> None:
    """Refuse `seq_lengths` for a cell normalized by the window's own batch statistics."""
    if population is None and cells.statistics_of(cell) is not None:
        raise ValueError(f"seq_lengths cannot be used with {cells.cell_name(cell)} "
                         "normalized by the window's batch statistics (training), which "
                         "would mix padded steps into them; pass its running statistics "
                         "(cell_stats, use_running_average=True) or batch equal lengths.")


def check_arguments(cell, reg: Regularizer, layers: list, inputs: Array, time_major: bool,
                    dtype: Any, forget_bias, unroll: int = 1, caller: str = "unroll",
                    deterministic: Any = True, key: Any = None) -> None:
    """`unroll`'s (or `caller`'s) one-sentence errors for a bad cell, regularizer, empty
    stack, inputs of another rank or an integer dtype, a bad compute dtype or
    `forget_bias`, a scan unroll factor below 1, a `deterministic` or `time_major` that
    is not a bool (the string "False" would mean evaluation, or read the batch as time)
    and a key that is not one PRNG key."""
    check_flag(deterministic, "deterministic")
    check_flag(time_major, "time_major")
    check_key(key)
    cells.check_cell_type(cell)
    cells.check_size(unroll, "unroll")
    check_regularizer(reg)
    if not layers:
        raise ValueError(f"{caller} needs the params of at least one layer, got none.")
    check_inputs(inputs, caller, "[T, B, F]" if time_major else "[B, T, F]")
    precision.check_floating(jnp.result_type(inputs), "The inputs' dtype")
    if dtype is not None:
        precision.check_floating(dtype, "dtype")
    check_forget_bias(forget_bias)


def check_inputs(inputs: Any, caller: str, layout: str) -> None:
    """The inputs of `caller` an array (jax or numpy, traced or not) of rank 3 in
    `layout`; a list failed in JAX's dtype inference, None or a str read as shape ()."""
    if not (hasattr(inputs, "shape") and hasattr(inputs, "dtype")):
        raise ValueError(f"The inputs of {caller} must be an array (jax or numpy) {layout}, "
                         f"got a {type(inputs).__name__}.")
    if jnp.ndim(inputs) != 3:
        raise ValueError(f"The inputs of {caller} must be {layout}, got shape "
                         f"{jnp.shape(inputs)}.")


def as_layers(params: Any) -> tuple[list, bool]:
    """`(the layers' params, whether one layer's dict was given)` of a stack given as one
    layer's params (a dict, a FrozenDict) or a list of them; a one-sentence error for
    anything else (None, a number: a TypeError iterating it)."""
    if isinstance(params, Mapping):  # one layer (a dict, a FrozenDict)
        return [params], True
    if isinstance(params, (str, bytes)) or not isinstance(params, Sequence):
        raise ValueError(f"params must be one layer's (a dict) or a list of them, bottom "
                         f"first, got {type(params).__name__}.")
    return list(params), False


def as_populations(cell_stats: Any, num_layers: int, single: bool) -> list:
    """`unroll`'s `cell_stats` as one entry per layer (None: the window's statistics):
    one layer's pytree, or for a stack a list of them; a dict or a str given for a stack
    (read as its keys or characters, then a TypeError) is named instead."""
    if cell_stats is None:
        return [None] * num_layers
    if single:
        return [cell_stats]
    if isinstance(cell_stats, Mapping):
        raise ValueError(f"A stack of {num_layers} layers takes a list of cell_stats, one per "
                         f"layer, got one dict (of {sorted(cell_stats)}).")
    if isinstance(cell_stats, (str, bytes)) or not isinstance(cell_stats, Sequence):
        raise ValueError(f"cell_stats must be a list of {num_layers} layers' running "
                         f"statistics (or None), got a {type(cell_stats).__name__}.")
    return list(cell_stats)


def check_population(cell, population: Any, params: Any, name: str) -> None:
    """A layer's running statistics (`name` in the messages) as its cell's
    `CellStatistics.validate` takes them (the batch-normalized LSTM: every statistic,
    each `[T_max, 4H]` or `[T_max, H]`); None (the window's own) and cells without a
    validator pass. A missing statistic was a KeyError, a string a TypeError."""
    statistics = cells.statistics_of(cell)
    if population is None or statistics is None or statistics.validate is None:
        return  # a cell without statistics refuses any in scan_layer
    w_h: Any = params.get("w_h") if isinstance(params, Mapping) else None
    statistics.validate(population, w_h.shape[0] if getattr(w_h, "ndim", 0) == 2 else None,
                        name)


def check_stack(cell, reg: Regularizer, layers: list, carries: list, populations: list,
                x: Array, time_major: bool) -> None:
    """One carry and one `cell_stats` per layer, each layer's params, carry and running
    statistics fit for the cell, and their shapes for the inputs (`x`: time-major)."""
    if len(carries) != len(layers):
        raise ValueError(f"Got {len(carries)} carries for {len(layers)} layers.")
    if len(populations) != len(layers):
        raise ValueError(f"Got {len(populations)} cell_stats for {len(layers)} layers.")
    for index, (p, c) in enumerate(zip(layers, carries, strict=True)):
        if not isinstance(p, Mapping):  # a nested list failed on a missing attribute
            raise ValueError(f"Layer {index}'s params must be a dict of arrays (as "
                             f"cells.init_params makes), got a {type(p).__name__}.")
        cells.check_layer(cell, p, c, index, reg.needs_output_gate)
        check_population(cell, populations[index], p, f"Layer {index}'s cell_stats")
    check_shapes(cell, layers, carries, x, time_major)


def check_shapes(cell, layers: list, carries: list, x: Array, time_major: bool) -> None:
    """One-sentence errors for the shape mistakes XLA would report as a failed product:
    inputs of another rank, a layer whose `w_x` does not take the width it is fed (or
    without `w_x`, fed its gates' pre-activations, of another width), a carry of another
    batch size or width (`x` is time-major here)."""
    layout = "[T, B, F]" if time_major else "[B, T, F]"
    width, source = x.shape[-1], "the inputs"
    record = cells.the_record(cell)
    for index, (p, c) in enumerate(zip(layers, carries, strict=True)):
        w_x = p.get("w_x") if isinstance(p, Mapping) else None
        if w_x is not None and getattr(w_x, "ndim", 0) == 2 and w_x.shape[0] != width:
            raise ValueError(f"Layer {index}'s w_x reads {w_x.shape[0]} features, but its input "
                             f"({source}) has {width}.")
        known = isinstance(p, Mapping) and getattr(p.get("w_h"), "ndim", 0) == 2
        if known and w_x is None and record.project is None and (
                width != p["w_h"].shape[1]):
            raise ValueError(f"Layer {index} has no w_x, so it takes its gates' "
                             f"pre-activations ({p['w_h'].shape[1]} wide), but its input "
                             f"({source}) has {width} features.")
        check_carry(c, index, x.shape[1], p["w_h"].shape[0] if known else None, layout)
        if not known:
            return  # a layout this check does not know: leave the rest to the cells
        width, source = p["w_h"].shape[0], f"layer {index}'s outputs"


def check_carry(carry: Any, index: int | str, batch: int, hidden: int | None,
                layout: str = "[B, T, F]") -> None:
    """Each array of a layer's carry (a dict, `cells.check_layer`) `[batch, hidden]` and
    floating (`hidden` None: any width): a wrong width failed in a product, a wrong rank
    in the scan's carry check, an integer carry silently held zeros. `index` names the
    layer in the messages."""
    for name, leaf in carry.items():
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):  # nested lists: a
            # TypeError in JAX's dtype inference
            raise ValueError(f"Layer {index}'s carry[{name!r}] must be an array [B, H] (jax "
                             f"or numpy), got a {type(leaf).__name__}.")
        shape = tuple(jnp.shape(leaf))
        if len(shape) != 2:
            raise ValueError(f"Layer {index}'s carry[{name!r}] must be [B, H], got shape "
                             f"{shape}.")
        if shape[0] != batch:
            raise ValueError(f"Layer {index}'s carry has batch size {shape[0]}, but the "
                             f"inputs have {batch} ({layout}).")
        if hidden is not None and shape[1] != hidden:
            raise ValueError(f"Layer {index}'s carry[{name!r}] has {shape[1]} units, but "
                             f"its w_h has {hidden}.")
        precision.check_floating(jnp.result_type(leaf),
                                 f"The dtype of layer {index}'s carry[{name!r}]")


def check_layer_call(cell, params: Any, xs: Array, carry: Any, layer_noise: Any,
                     unroll: Any = 1, dtype: Any = None, forget_bias: Any = 0.0,
                     population: Any = None) -> None:
    """`rnn.scan_layer`'s one-sentence errors: a bad cell, inputs that are not a
    `[T, B, F]` floating array (a `[T, F]` sequence broadcast over the carry's batch, a
    list failed in JAX's dtype inference), params that are not one layer's dict (a
    stack's list failed on a missing attribute) or a carry that do not fit the cell or
    the inputs, noise that is not a `noise.LayerNoise` (a regularizer or None there
    failed on a missing attribute), a scan unroll factor below 1, a compute dtype that
    is not floating (an integer one cast `W_h` and ran), a bad `forget_bias` and running
    statistics (`population`) that do not fit the cell."""
    from rnnreg_jax import noise

    cells.check_cell_type(cell)
    if not isinstance(params, Mapping):
        raise ValueError(f"scan_layer takes one layer's params (a dict), got a "
                         f"{type(params).__name__}; unroll runs a stack (a list of them).")
    if not isinstance(layer_noise, noise.LayerNoise):
        none = "; noise.LayerNoise() is no noise" if layer_noise is None else ""
        raise ValueError(f"layer_noise must be a noise.LayerNoise (noise.layer_noise makes "
                         f"one from a regularizer), got a {type(layer_noise).__name__}{none}.")
    cells.check_size(unroll, "unroll")
    if dtype is not None:
        precision.check_floating(dtype, "dtype")
    check_forget_bias(forget_bias)
    check_inputs(xs, "scan_layer", "[T, B, F]")
    precision.check_floating(jnp.result_type(xs), "The inputs' dtype")
    output_gate = isinstance(carry, Mapping) and "o" in carry  # as the layer's noise says
    cells.check_layer(cell, params, carry, 0, output_gate)
    check_population(cell, population, params, "population")
    check_shapes(cell, [params], [carry], xs, time_major=True)
