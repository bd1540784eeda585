"""Unrolling: `lax.scan` over time, one layer or a stack of layers.

    ys, carry = unroll("lstm", params, x)                       # [B, T, F] -> [B, T, H]
    ys, carry = unroll("lstm", [p0, p1], x, carry,              # a stack, state carried in
                       reg=variational(input=0.35, recurrent=0.2), key=key,
                       deterministic=False)

Inside, the scan runs time-major; per-step masks are scanned with the inputs
and masks tied per sequence are closed over, so a tied mask costs nothing per
step beyond its multiply. The input projection of each layer is one matmul
over all steps (`cells.project`), except on the autodiff path for an unmasked
input at most `IN_LOOP_PROJECTION_MAX_WIDTH` wide, which each step projects
inside the scan body.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from rnnreg_jax import (
    cells,
    explicit_sharding,
    fused,
    lengths,
    noise,
    pallas,
    precision,
    unroll_checks,
)
from rnnreg_jax.regularizers.base import LayerShape, Regularizer, check_regularizer
from rnnreg_jax.regularizers.chain import NONE
from rnnreg_jax.regularizers.checks import check_flag, check_output_mask, check_weights

Array = jax.Array


IMPLEMENTATIONS = ("auto", "fused", "autodiff", "pallas")
# "auto" runs the fused backward pass below this batch size and plain scan
# autodiff from it on. Measured on CPU (BENCHMARKS.md): hoisting dW_h pays
# when each step's rank-B update is a thin matmul (PTB, B = 20: 1.09x on
# medium), and costs when B is large enough for those updates to run well
# while the fused pass still re-derives every step's gates (pMNIST, B = 100:
# fused 0.85x of autodiff; the zoneout word model, B = 32: 0.89x-0.97x on a
# 2-core x86 CPU, though 1.05x in another run). On a GPU "auto" is
# always fused: on an H100 the fused pass ran at 1.34x autodiff's speed on the zoneout
# word model (B = 32), 1.58x on pMNIST (B = 100), 1.41x and 1.30x on PTB small and
# medium (B = 20): there each step's dW_h update is one more kernel launch. TPUs take the
# GPU's rule unmeasured.
AUTO_FUSED_BELOW_BATCH = 32
# Inputs at most this wide are projected inside the scan body (autodiff path, no input
# mask): hoisted, pMNIST's 1-wide pixel becomes a [T, B, G*H] array G*H times its size,
# written once and read back every step; in the body the projection fuses into the step's
# elementwise kernel, as Flax's cells do (BENCHMARKS.md).
IN_LOOP_PROJECTION_MAX_WIDTH = 4


def resolve_implementation(implementation: str, batch_size: int,
                           backend: str | None = None) -> str:
    """"fused", "autodiff" or "pallas" for `implementation`: "auto" is fused on
    accelerators and, on CPU, below `AUTO_FUSED_BELOW_BATCH` (`scan_layer` may then take
    "pallas" instead by `pallas.auto_prefers_pallas`, off until measured). `backend`
    defaults to JAX's default backend."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"Unknown implementation {implementation!r}; use one of "
                         f"{IMPLEMENTATIONS}.")
    if implementation != "auto":
        return implementation
    if (backend or jax.default_backend()) != "cpu":
        return "fused"
    return "fused" if batch_size < AUTO_FUSED_BELOW_BATCH else "autodiff"


def scan_layer(
    cell: str, params: cells.Params, xs: Array, carry: cells.Carry,
    layer_noise: noise.LayerNoise = noise.LayerNoise(), unroll: int = 1,
    implementation: str = "auto", population: dict | None = None, forget_bias: float = 0.0,
    dtype: Any = None, *, seq_lengths: Array | None = None,
) -> tuple[Array, cells.Carry]:
    """Run one layer over a time-major window.

    Args:
      cell: "lstm", "gru", "rnn", "lstm_ln", "lstm_bn", "keras_lstm", "keras_gru", or a
        user's `cells.Cell` (or its registered name).
      params: the layer's parameters.
      xs: inputs `[T, B, F]`.
      carry: initial state, dict of `[B, H]`.
      layer_noise: the layer's masks (see `noise.layer_noise`).
      unroll: `lax.scan` unroll factor.
      implementation: "fused" (hand-written backward pass with `dW_h` hoisted
        out of the loop, `rnnreg_jax.fused`), "autodiff" (plain scan of the
        step function; supports forward-mode differentiation), "pallas" (one
        persistent Pallas kernel pair for the lstm, gru and rnn cells,
        `rnnreg_jax.pallas`; interpreted on CPU; one sentence refuses what it does
        not take: seq_lengths, dtype, explicit sharding, a carry or params in another
        dtype than the layer's, other cells) or "auto" (fused on GPU/TPU, and on CPU
        for batches below `AUTO_FUSED_BELOW_BATCH`, else autodiff; on a GPU "pallas"
        where `pallas.auto_prefers_pallas` says so and the kernels take the call,
        never on CPU; all give the same numbers up to float rounding).
      population: a cell that keeps running statistics (`cells.statistics_of`: the
        batch-normalized LSTM's population): the layer's; None uses the window's own.
      forget_bias: LSTM cells: a constant added to the forget gate's
        pre-activation (`cells.with_forget_bias`).
      dtype: the compute dtype `W_h` is cast to (None: none); the other parameters come
        cast by `unroll`. On the autodiff path the cast is inside the scan body, so the
        transpose sums `dW_h` over the steps in `W_h`'s stored precision (bfloat16
        sums over T steps drift: 2x the fused pass's error at T = 35); the fused pass
        computes it in one product.
      seq_lengths: int `[B]` in `[1, T]`, each example's number of valid steps (the
        rest is padding, `rnnreg_jax.lengths`): past it the example's carry stays as it
        is and its outputs are zero; None: every step is valid. A cell normalized by
        the window's batch statistics (lstm_bn without `population`) refuses it.

    Returns:
      `(ys [T, B, H], final carry)`; for a cell with a per-step auxiliary output
      (`cells.has_aux_output`) the ys are the pair `(ys [T, B, H], aux [T, ...])`.
    """
    unroll_checks.check_layer_call(cell, params, xs, carry, layer_noise, unroll, dtype,
                                   forget_bias, population)
    explicit_sharding.check_carry(carry, xs)
    explicit_sharding.check_weights(params, xs, carry)
    if population is not None and cells.statistics_of(cell) is None:
        raise ValueError(f"Running statistics apply to cells that keep them (lstm_bn), not "
                         f"{cell!r}.")
    valid = None
    if seq_lengths is not None:
        unroll_checks.refuse_batch_statistics(cell, population)
        valid = lengths.valid_steps(lengths.check(seq_lengths, xs.shape[1], xs.shape[0]),
                                    xs.shape[0])
    chosen = resolve_implementation(implementation, xs.shape[1])
    if implementation == "auto" and pallas.auto_prefers_pallas(
            cell, params["w_h"].shape[0], xs.shape[0], jax.default_backend()) and (
            unroll_checks.pallas_refusal(params, xs, carry, dtype, seq_lengths) is None):
        chosen = "pallas"  # never, until a GPU run measures AUTO_PALLAS_MIN_STEPS
    fused_pass = chosen != "autodiff"
    in_loop = (not fused_pass and xs.shape[-1] <= IN_LOOP_PROJECTION_MAX_WIDTH
               and cell in cells.CELL_TYPES and "w_x" in params and layer_noise.input is None)
    # in the loop, each step projects its own input slice with these (unmasked) params
    input_params = params if in_loop else None
    xw = xs if in_loop else cells.project(cell, params, xs, layer_noise.input,
                                          layer_noise.input_per_gate, population=population,
                                          forget_bias=forget_bias)
    if chosen == "pallas":
        unroll_checks.refuse_for_pallas(params, xs, carry, dtype, seq_lengths)
        return pallas.recurrence(cell, params, xw, carry, layer_noise.tied, layer_noise.per_step)
    if fused_pass:
        if dtype is not None:  # the fused pass sums dW_h in one product
            params = dict(params, w_h=precision.cast(params["w_h"], dtype))
        return fused.recurrence(cell, params, xw, carry, layer_noise.tied, layer_noise.per_step,
                                unroll, seq_lengths=seq_lengths)
    return _autodiff_scan(cell, params, xw, carry, layer_noise, unroll, dtype, valid,
                          input_params, forget_bias)


def _autodiff_scan(cell, params: cells.Params, xw: Array, carry: cells.Carry,
                   layer_noise: noise.LayerNoise, unroll: int, dtype: Any, valid: Array | None,
                   input_params: cells.Params | None, forget_bias: float):
    """`scan_layer`'s "autodiff" path: a `lax.scan` of the cell's step, differentiated
    by JAX. `input_params`: each step projects its own `[B, F]` input slice `xw_t` with
    them (narrow inputs); None: `xw` is already projected."""
    step = cells.get_step(cell)
    gates = cells.per_gate_recurrent(layer_noise.tied, layer_noise.per_step)
    weights: Mapping[str, Array | tuple[Array, ...]] = params
    if gates is not None:  # laid out once here, not in every step
        weights = dict(params, w_h=cells.per_gate_weights(params["w_h"], gates))

    aux_output = cells.has_aux_output(cell)

    def body(c, inputs):
        xw_t, noise_t = inputs[:2]
        if input_params is not None:
            # the [B, F] slice itself: projecting a [1, B, F] window made XLA take d w_x
            # from a transposed copy of the gates' cotangent every step
            xw_t = cells.project(cell, input_params, xw_t, forget_bias=forget_bias)
        step_params = weights
        if dtype is not None:  # per step: the transpose then sums dW_h in W_h's dtype
            step_params = dict(weights, w_h=precision.cast_floating(weights["w_h"], dtype))
        new_c, y_t = step(step_params, c, xw_t, cells.merge_noise(layer_noise.tied, noise_t))
        new_c = precision.like(new_c, c)  # the state in its own dtype (mixed precision)
        # and sharding (explicit axes: gate-sharded weights shard the step's results)
        new_c, y_t = explicit_sharding.step_like(new_c, y_t, c, aux_output)
        if valid is not None:  # examples past their length keep their state
            new_c, y_t = lengths.freeze(inputs[2], c, new_c, y_t, aux_output)
        return new_c, y_t

    scanned = (xw, layer_noise.per_step) + (() if valid is None else (valid,))
    final, ys = jax.lax.scan(body, carry, scanned, unroll=unroll)
    return ys, final


def regularized_layer(
    cell: str, params: cells.Params, xs: Array, carry: cells.Carry, reg: Regularizer,
    key: Array | None, index: int, deterministic: bool, masks_dtype: Any, unroll: int = 1,
    implementation: str = "auto", population: dict | None = None, forget_bias: float = 0.0,
    dtype: Any = None, *, seq_lengths: Array | None = None,
) -> tuple[Array, cells.Carry]:
    """Layer `index` of `unroll`: `scan_layer` with `reg`'s noise drawn from `key` (masks
    in `masks_dtype`), its weight transforms applied to `params`, and those cast to the
    compute `dtype`. `xs`: time-major, already in `dtype`; the other arguments as in
    `scan_layer`. `rnnreg_jax.bidirectional` runs each direction of a layer through it."""
    if reg.needs_output_gate and "o" not in carry:
        carry = dict(carry, o=jnp.zeros_like(carry["h"]))
    ln = noise.layer_noise(reg, key, index, cell, xs.shape[1], xs.shape[0], xs.shape[-1],
                           params["w_h"].shape[0], deterministic, masks_dtype)
    # weight drop, weight noise, ...: the transforms keep every array and its shape
    params = check_weights(reg.weights(params, key, index, deterministic), params, reg)
    if dtype is not None:  # W_h is cast by scan_layer
        params = dict(precision.cast_floating(params, dtype), w_h=params["w_h"])
    return scan_layer(cell, params, xs, carry, ln, unroll, implementation, population,
                      forget_bias, dtype, seq_lengths=seq_lengths)


def stack_output(reg: Regularizer, key: Array | None, x: Array, num_layers: int, cell: str,
                 deterministic: bool, masks_dtype: Any, dtype: Any = None) -> Array:
    """The last layer's time-major outputs `[T, B, W]` through `reg`'s output site
    (dropout on the stack's output), in the compute `dtype` (None: as they are)."""
    steps, batch, width = x.shape
    shape = LayerShape(num_layers - 1, cell, batch, steps, width, width, 1, masks_dtype)
    mask = check_output_mask(reg.output_mask(key, shape, deterministic), shape, reg)
    if mask is not None:
        x = x * mask
    return precision.cast(x, dtype)


def _as_list(params: cells.Params | Sequence[cells.Params]) -> tuple[list, bool]:
    return unroll_checks.as_layers(params)


def initial_carry(cell: str, params: cells.Params | Sequence[cells.Params], batch_size: int,
                  reg: Regularizer = NONE, dtype: Any = jnp.float32):
    """Zero state for one layer (a dict) or a stack (a list of dicts)."""
    layers, single = _as_list(params)
    check_regularizer(reg)
    for index, p in enumerate(layers):
        if not (isinstance(p, Mapping) and "w_h" in p):
            what = "a dict without w_h" if isinstance(p, Mapping) else f"of type {type(p).__name__}"
            raise ValueError(f"initial_carry takes one layer's params (a dict with w_h "
                             f"[H, G*H]) or a list of them; layer {index} is {what}.")
        cells.check_w_h(p["w_h"], index)
    carries = [cells.init_carry(cell, batch_size, p["w_h"].shape[0], dtype,
                                output_gate=reg.needs_output_gate) for p in layers]
    return carries[0] if single else carries


def unroll(
    cell: str,
    params: cells.Params | Sequence[cells.Params],
    inputs: Array,
    carry: cells.Carry | Sequence[cells.Carry] | None = None,
    *,
    reg: Regularizer = NONE,
    key: Array | None = None,
    deterministic: bool = True,
    time_major: bool = False,
    unroll: int = 1,
    return_hiddens: bool = False,
    implementation: str = "auto",
    cell_stats: cells.Params | Sequence[cells.Params] | None = None,
    return_cell_stats: bool = False,
    forget_bias: float = 0.0,
    dtype: Any = None,
    seq_lengths: Array | None = None,
):
    """Run a layer or a stack of layers over a window, regularized by `reg`.

    Dropout on layer inputs applies to every layer (the embedding output and
    between layers; with `reg.hidden` set, `input` masks the first layer's
    input and `hidden` the others); dropout on the output applies to the last
    layer's outputs. The regularizer's `weights` hooks (weight drop, weight noise, a
    user's DropConnect) transform every layer's parameters once per call, in
    composition order.

    Args:
      cell: "lstm", "gru", "rnn", "lstm_ln", "lstm_bn", "keras_lstm", "keras_gru", or a
        user's `cells.Cell` (or its registered name).
      params: one layer's params (a dict) or a list of them, bottom first.
      inputs: `[B, T, F]`, or `[T, B, F]` with `time_major=True`.
      carry: initial state (dict, or list of dicts for a stack); zeros if None. Under a
        mesh with explicit axes the zeros are sharded over the batch like `inputs`, and
        a given carry must be (`rnnreg_jax.explicit_sharding`).
      reg: the regularization spec.
      key: PRNG key of this window; required in training mode when `reg` has
        noise. The same key gives the same masks.
      deterministic: evaluation mode (every noise replaced by its expectation).
      time_major: layout of `inputs` and outputs.
      unroll: `lax.scan` unroll factor.
      return_hiddens: also return each layer's (undropped) outputs.
      implementation: "auto", "fused", "autodiff" or "pallas", see `scan_layer`.
      cell_stats: a cell that keeps running statistics (`cells.statistics_of`; the
        batch-normalized LSTM's population statistics): each layer's (a pytree, or a
        list of them for a stack, as `CellStatistics.init` makes them), used whatever
        `deterministic` says; None uses the window's own (training).
      return_cell_stats: also return each layer's per-step auxiliary output
        (`cells.has_aux_output`; the statistics each step used), shaped like
        `cell_stats` (one, or a list); empty dicts for cells without one.
      forget_bias: LSTM cells: a constant added to every layer's forget-gate
        pre-activation (the zoneout authors' +1; `cells.with_forget_bias`).
      dtype: the compute dtype (mixed precision, `rnnreg_jax.precision`): inputs and
        every layer's parameters (after the regularizer's weight transforms) are cast
        to it, so the products and gates run in it; None (the default) casts nothing.
        Carry dtype policy: a carry keeps the dtype it is given, and every step's new
        state is cast back to it; the zero carry (`carry=None`) has the inputs' dtype
        without `dtype` and at least float32 with it (bfloat16 -> float32), so an
        LSTM's `c` and a GRU's `h` accumulate in float32. Masks are drawn in at least
        float32.
      seq_lengths: int `[B]`, each example's number of valid steps, in `[1, T]`
        (`rnnreg_jax.lengths`; checked when concrete, under `jit` only its dtype and
        shape): the valid steps come first, then padding. Past its length an example's
        carry stays frozen (the final carry is the state after its last valid step)
        and its outputs and hiddens are zero. Masks are drawn for the whole `[B, T]`
        window as without lengths, so an example's valid steps see the same masks
        whatever follows them. Refused with the batch statistics of lstm_bn (no
        `cell_stats`). None: every step is valid (the program is the same as before
        the option existed).

    Returns:
      `(outputs, carry)` with outputs `[B, T, H_last]` (or time-major, in `dtype` when
      given) and carry shaped like the input carry, in its dtypes; with
      `return_hiddens` a third item, the list of each layer's outputs in the same
      layout (as the steps computed them: an LSTM's in its carry's dtype); with
      `return_cell_stats` a last item, the auxiliary outputs.
    """
    layers, single = _as_list(params)
    unroll_checks.check_arguments(cell, reg, layers, inputs, time_major, dtype, forget_bias,
                                  unroll, deterministic=deterministic, key=key)
    check_flag(return_hiddens, "return_hiddens")
    check_flag(return_cell_stats, "return_cell_stats")
    x = inputs if time_major else jnp.swapaxes(inputs, 0, 1)
    steps, batch = x.shape[0], x.shape[1]
    masks_in = precision.mask_dtype(x.dtype)
    if carry is None:
        carries = _as_list(initial_carry(cell, layers, batch, reg,
                                         precision.carry_dtype(x.dtype, dtype)))[0]
        carries = explicit_sharding.shard_like_batch(carries, x)  # explicit meshes only
    elif not single and isinstance(carry, Mapping):  # one layer's carry for a stack
        raise ValueError(f"A stack of {len(layers)} layers takes a list of carries, one dict "
                         f"per layer, got one dict (of {sorted(carry)}).")
    else:
        carries = [carry] if single else list(carry)
    populations: list[Any] = unroll_checks.as_populations(cell_stats, len(layers), single)
    unroll_checks.check_stack(cell, reg, layers, carries, populations, x, time_major)
    if not deterministic and key is None and reg.stack_noise:
        raise ValueError("A PRNG key is required in training mode (deterministic=False) "
                         "when a noise regularizer is on.")
    if seq_lengths is not None:
        seq_lengths = lengths.check(seq_lengths, batch, steps)
        for population in populations:
            unroll_checks.refuse_batch_statistics(cell, population)
    x = precision.cast(x, dtype)
    new_carries, hiddens = [], []
    stats: list[Any] = []
    for index, (p, c) in enumerate(zip(layers, carries, strict=True)):
        x, c = regularized_layer(cell, p, x, c, reg, key, index, deterministic, masks_in,
                                 unroll, implementation, populations[index], forget_bias,
                                 dtype, seq_lengths=seq_lengths)
        x, layer_stats = x if cells.has_aux_output(cell) else (x, {})
        stats.append(layer_stats)
        new_carries.append(c)
        hiddens.append(x)
    x = stack_output(reg, key, x, len(layers), cell, deterministic, masks_in, dtype)
    if not time_major:
        x = jnp.swapaxes(x, 0, 1)
        hiddens = [jnp.swapaxes(h, 0, 1) for h in hiddens]
    out_carry = new_carries[0] if single else new_carries
    out = (x, out_carry) + ((hiddens,) if return_hiddens else ())
    return out + ((stats[0] if single else stats,) if return_cell_stats else ())
