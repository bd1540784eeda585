"""Bidirectional stacks: each layer scans the sequence forward and, with parameters of
its own, backward; the layer above reads both directions' outputs merged, as PyTorch's
`nn.LSTM(bidirectional=True)` does.

    params = init_params(key, "lstm", input_size=8, hidden_sizes=(16, 16))
    ys, carry = unroll_bidirectional("lstm", params, x, reg=rj.variational(0.3, 0.2, 0.3),
                                     key=key, deterministic=False)     # ys: [B, T, 32]

Layout (ports 1:1 to PyTorch, `torch_port.from_torch_bidirectional`):

* params: a list, bottom layer first, of `{"forward": p, "backward": p}`, each `p` a
  layer's dict as `cells.init_params` makes it. PyTorch's `weight_ih_l{k}` (and the
  other `_l{k}` entries) are layer k's "forward", `weight_ih_l{k}_reverse` its
  "backward". Layer k > 0 reads the merged output of layer k - 1: `2 H` features
  concatenated (`merge="concat"`, PyTorch's layout: forward first), `H` summed
  (`merge="sum"`).
* carry: a list of `{"forward": c, "backward": c}`, each `c` a layer's carry dict;
  PyTorch's `h_n[2 k + d]` (d = 0 forward, 1 backward) is layer k's direction d. The
  backward direction's final carry is its state after reading the first step.

Noise: every regularizer acts on each direction as on a layer of `rnn.unroll`, with the
direction's own key, `direction_key(key, direction)`, so the two directions' masks are
independent draws and a mask tied per sequence stays tied within its direction (the
backward scan reuses it at each of its steps). Input masks apply to each direction's
copy of the layer's input, `weights` hooks (weight drop, weight noise) to each
direction's parameters, the output mask (network level, the window's key itself) to
the merged output of the last layer. Penalties are each the mean of their value over
the two directions (`penalties`), counting each example's valid steps only when there
are lengths.

Variable lengths (`seq_lengths`, int `[B]`, `rnnreg_jax.lengths`): the backward
direction reads each example's valid steps in reverse (`reverse_padded`), and
`seq_lengths` goes on to `rnn.scan_layer`, which freezes an example's carry past its
length and zeroes its outputs there (PyTorch's packed sequences).

Mixed precision (`dtype`): as in `rnn.unroll`, whose layer each direction runs
(`rnn.regularized_layer`): inputs and parameters cast to `dtype`, masks and the zero
carry at least float32, the merged output in `dtype`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from rnnreg_jax import cells, explicit_sharding, precision, rnn, unroll_checks
from rnnreg_jax import lengths as varlen
from rnnreg_jax.regularizers.base import Regularizer, penalties_of
from rnnreg_jax.regularizers.chain import NONE
from rnnreg_jax.regularizers.checks import check_flag, check_key
from rnnreg_jax.stack_layers import layer_sizes

Array = jax.Array

DIRECTIONS = ("forward", "backward")
MERGES = ("concat", "sum")
# The direction keys are folded into the window's key beside the ids noise.py folds in
# there (sites 1..12, layers from LAYER_BASE = 1000, users' sites from 2^20), so a
# direction's key is none of the network-level site keys (the output mask's).
DIRECTION_BASE = 1 << 19
DIRECTION_IDS = {"forward": DIRECTION_BASE, "backward": DIRECTION_BASE + 1}


def direction_key(key: Array, direction: str) -> Array:
    """The key of one direction's noise: `fold_in(key, DIRECTION_IDS[direction])`; its
    layers derive their site keys from it as `rnn.unroll`'s do from the window's key."""
    return jax.random.fold_in(key, DIRECTION_IDS[direction])


def reverse_padded(x: Array, lengths: Array | None, time_axis: int = 1) -> Array:
    """Each example's first `lengths[b]` steps in reverse order, its padding in place.

    `out[b, t] = x[b, lengths[b] - 1 - t]` for `t < lengths[b]`, `x[b, t]` after
    (batch-major; likewise time-major). Its own inverse. With `lengths` None, the
    whole time axis is reversed.

    Args:
      x: `[B, T, ...]` (`time_axis=1`) or `[T, B, ...]` (`time_axis=0`).
      lengths: int `[B]`, each in `[1, T]` (`lengths.check`: checked when concrete;
        under `jit` a length out of range acts as if clipped to `[0, T]`), or None.
      time_axis: 0 or 1; the batch is the other of the first two axes.
    """
    if time_axis not in (0, 1):
        raise ValueError(f"time_axis must be 0 or 1 (the batch being the other), got "
                         f"{time_axis}.")
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):  # a list failed in jnp.flip
        raise ValueError(f"x must be an array (jax or numpy), got a {type(x).__name__}.")
    if jnp.ndim(x) < 2:  # else an IndexError reading the batch
        raise ValueError(f"x must be [B, T, ...] (or [T, B, ...] with time_axis=0), got "
                         f"shape {jnp.shape(x)}.")
    if lengths is None:
        return jnp.flip(x, time_axis)
    steps, batch = x.shape[time_axis], x.shape[1 - time_axis]
    lengths = jnp.clip(varlen.check(lengths, batch, steps), 0, steps)
    t = jnp.arange(steps)[:, None]
    source = jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # [T, B]
    xt = jnp.moveaxis(x, time_axis, 0) if time_axis else x  # [T, B, ...]
    index = source.reshape(source.shape + (1,) * (xt.ndim - 2))
    out = jnp.take_along_axis(xt, index, axis=0)
    return jnp.moveaxis(out, 0, time_axis) if time_axis else out


def init_params(key: Array, cell: Any, input_size: int, hidden_sizes: Sequence[int] | int,
                merge: str = "concat", **kwargs) -> list[dict]:
    """A bidirectional stack's parameters, bottom first (`cells.init_params` per layer and
    direction, `kwargs` passed on: init_scale, dtype, recurrent_bias, orthogonal)."""
    check_merge(merge)
    check_cell(cell)  # parameters no bidirectional stack would run ("lstm_bn")
    check_key(key, "key", required=True)  # fold_in failed on None or split keys
    sizes = layer_sizes(hidden_sizes)  # the linen stacks' reading: an int is one layer
    layers, width = [], input_size
    for index, hidden in enumerate(sizes):
        keys = jax.random.split(jax.random.fold_in(key, index))
        layers.append({d: cells.init_params(k, cell, width, hidden, **kwargs)
                       for d, k in zip(DIRECTIONS, keys, strict=True)})
        width = merged_width(hidden, merge)
    return layers


def merged_width(hidden: int, merge: str) -> int:
    """The width of a layer's merged output."""
    return 2 * hidden if merge == "concat" else hidden


def check_merge(merge: str) -> str:
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {MERGES}, got {merge!r}.")
    return merge


def initial_carry(cell: Any, params: Sequence[dict], batch_size: int, reg: Regularizer = NONE,
                  dtype: Any = jnp.float32) -> list[dict]:
    """Zero state of a bidirectional stack: per layer `{"forward": c, "backward": c}`."""
    return [{d: cells.init_carry(cell, batch_size, layer[d]["w_h"].shape[0], dtype,
                                 output_gate=reg.needs_output_gate) for d in DIRECTIONS}
            for layer in _check_params(params)]


def _check_params(params: Any) -> list[dict]:
    layers = unroll_checks.as_layers(params)[0]  # None or a number: rnn.unroll's message
    if not layers:
        raise ValueError("A bidirectional stack needs at least one layer of params.")
    for index, layer in enumerate(layers):
        if not isinstance(layer, Mapping) or set(layer) != set(DIRECTIONS):
            keys = sorted(layer) if isinstance(layer, Mapping) else type(layer).__name__
            raise ValueError(f"Layer {index}'s params must be a dict with keys 'forward' and "
                             f"'backward' (one layer's params each), got {keys}.")
    return layers


def _check_carries(carry: Any, num_layers: int) -> list[Mapping]:
    carries = [carry] if isinstance(carry, Mapping) else list(carry)
    if len(carries) != num_layers:
        raise ValueError(f"Got {len(carries)} carries for {num_layers} bidirectional layers.")
    for index, c in enumerate(carries):
        if not isinstance(c, Mapping) or set(c) != set(DIRECTIONS):
            raise ValueError(f"Layer {index}'s carry must be a dict with keys 'forward' and "
                             "'backward' (one layer's carry each).")
    return carries


def check_cell(cell: Any) -> None:
    """ValueError unless `cell` can run in both directions (no running statistics or
    auxiliary outputs, which follow one direction of time)."""
    cells.check_cell_type(cell)
    if cells.statistics_of(cell) is not None or cells.has_aux_output(cell):
        raise ValueError(f"Bidirectional stacks take cells without running statistics or "
                         f"auxiliary outputs, not {cells.cell_name(cell)!r}.")


def unroll_bidirectional(
    cell: Any,
    params: Sequence[dict],
    inputs: Array,
    carry: Sequence[dict] | None = None,
    *,
    reg: Regularizer = NONE,
    key: Array | None = None,
    deterministic: bool = True,
    merge: str = "concat",
    time_major: bool = False,
    unroll: int = 1,
    implementation: str = "auto",
    seq_lengths: Array | None = None,
    forget_bias: float = 0.0,
    dtype: Any = None,
    return_hiddens: bool = False,
):
    """Run a bidirectional stack over a window, regularized by `reg` (module docstring).

    Args:
      cell: "lstm", "gru", "rnn", "lstm_ln", or a user's cell without running statistics.
      params: a list, bottom first, of `{"forward": p, "backward": p}` (or one such
        dict: a single layer, whose carry is then one dict too, as in `rnn.unroll`).
      inputs: `[B, T, F]`, or `[T, B, F]` with `time_major=True`.
      carry: per layer `{"forward": c, "backward": c}`; zeros if None.
      reg: the regularization spec.
      key: PRNG key of this window; required in training mode when `reg` has noise.
      deterministic: evaluation mode (every noise replaced by its expectation).
      merge: "concat" (forward then backward features, PyTorch's) or "sum".
      time_major: layout of `inputs` and outputs.
      unroll: `lax.scan` unroll factor.
      implementation: "auto", "fused", "autodiff" or "pallas", see `rnn.scan_layer`.
      seq_lengths: int `[B]` in `[1, T]`, each example's valid steps (None: all T),
        checked and passed on as by `rnn.unroll`; the backward direction starts at each
        example's last valid step.
      forget_bias: LSTM cells: a constant on every forget gate's pre-activation.
      dtype: the compute dtype (None: none), as in `rnn.unroll`: inputs and parameters
        (after the weight transforms) cast to it, masks and the zero carry at least
        float32, a given carry kept in its dtypes.
      return_hiddens: also return each layer's undropped outputs per direction.

    Returns:
      `(outputs, carry)`: outputs `[B, T, W]` (or time-major; in `dtype` when given),
      W the last layer's merged width, and the final carries shaped like `carry`; with
      `return_hiddens` a third item, per layer `{"forward": [B, T, H], "backward": [B,
      T, H]}` in the inputs' layout and time order (the backward output at t is its
      state after reading step t).
    """
    check_cell(cell)
    check_merge(merge)
    check_flag(return_hiddens, "return_hiddens")
    layers = _check_params(params)
    unroll_checks.check_arguments(cell, reg, layers, inputs, time_major, dtype, forget_bias,
                                  unroll, caller="unroll_bidirectional",
                                  deterministic=deterministic, key=key)
    x = inputs if time_major else jnp.swapaxes(inputs, 0, 1)
    steps, batch = x.shape[0], x.shape[1]
    lengths = None if seq_lengths is None else varlen.check(seq_lengths, batch, steps)
    masks_dtype = precision.mask_dtype(x.dtype)
    carries: Sequence[Mapping]
    if carry is None:
        carries = initial_carry(cell, layers, batch, reg, precision.carry_dtype(x.dtype, dtype))
        carries = explicit_sharding.shard_like_batch(carries, x)  # explicit meshes only
    else:
        carries = _check_carries(carry, len(layers))
    if not deterministic and key is None and reg.stack_noise:
        raise ValueError("A PRNG key is required in training mode (deterministic=False) "
                         "when a noise regularizer is on.")
    keys = {d: None if key is None else direction_key(key, d) for d in DIRECTIONS}
    x = precision.cast(x, dtype)
    new_carries, hiddens = [], []
    _check_layers(cell, reg, layers, carries, batch)
    for index, (layer, c) in enumerate(zip(layers, carries, strict=True)):
        _check_input_width(layer, x.shape[-1], index)
        reversed_x = reverse_padded(x, lengths, 0)
        ys, finals = {}, {}
        for d, xs in (("forward", x), ("backward", reversed_x)):
            ys[d], finals[d] = rnn.regularized_layer(
                cell, layer[d], xs, c[d], reg, keys[d], index, deterministic, masks_dtype,
                unroll, implementation, forget_bias=forget_bias, dtype=dtype,
                seq_lengths=lengths)
        ys["backward"] = reverse_padded(ys["backward"], lengths, 0)
        x = _merge(ys, merge, index)
        new_carries.append(finals)
        hiddens.append(ys)
    x = rnn.stack_output(reg, key, x, len(layers), cell, deterministic, masks_dtype, dtype)
    if not time_major:
        x = jnp.swapaxes(x, 0, 1)
        hiddens = [{d: jnp.swapaxes(h[d], 0, 1) for d in DIRECTIONS} for h in hiddens]
    if isinstance(params, Mapping):
        return (x, new_carries[0]) + ((hiddens[0],) if return_hiddens else ())
    return (x, new_carries) + ((hiddens,) if return_hiddens else ())


def _check_layers(cell: Any, reg: Regularizer, layers: list, carries: Sequence[Mapping],
                  batch: int) -> None:
    """Each direction's params and carry fit for the cell and the batch (`rnn.unroll`'s
    checks, per direction)."""
    for index, (layer, c) in enumerate(zip(layers, carries, strict=True)):
        for d in DIRECTIONS:
            cells.check_layer(cell, layer[d], c[d], index, reg.needs_output_gate)
            w_h: Any = layer[d]["w_h"] if isinstance(layer[d], Mapping) else None
            hidden = w_h.shape[0] if getattr(w_h, "ndim", 0) == 2 else None
            unroll_checks.check_carry(c[d], f"{index} ({d})", batch, hidden)


def _check_input_width(layer: dict, width: int, index: int) -> None:
    for d in DIRECTIONS:
        reads = layer[d]["w_x"].shape[0] if "w_x" in layer[d] else width
        if reads != width:
            raise ValueError(f"Layer {index}'s {d} w_x reads {reads} features, but its input "
                             f"has {width}.")


def _merge(ys: dict, merge: str, layer: int) -> Array:
    forward, backward = ys["forward"], ys["backward"]
    if merge == "concat":
        return jnp.concatenate([forward, backward], axis=-1)
    if forward.shape[-1] != backward.shape[-1]:
        raise ValueError(f"merge='sum' needs both directions of layer {layer} equally wide, "
                         f"got {forward.shape[-1]} and {backward.shape[-1]}.")
    return forward + backward


def penalties(reg: Regularizer, params: Sequence[dict], hiddens: Sequence[dict],
              outputs: Array, time_axis: int,
              seq_lengths: Array | None = None) -> dict[str, Array]:
    """`reg`'s loss terms of a bidirectional stack: each the mean over the two
    directions of its value for that direction's layers (`params` and `hiddens` as
    `unroll_bidirectional` takes and returns them; the backward hiddens in input time
    order), `outputs` being the merged, dropped output both times. So AR (on the
    output) is the unidirectional one, TAR the mean of both top directions', the norm
    stabilizer the mean over directions of its sum over layers. With `seq_lengths`
    each term counts every example's valid steps only (`penalties_of`); in input time
    order those are the first `L_b` of both directions."""
    terms = [penalties_of(reg, [p[d] for p in params], [h[d] for h in hiddens], outputs,
                          time_axis, seq_lengths) for d in DIRECTIONS]
    return {name: (terms[0][name] + terms[1][name]) / 2 for name in terms[0]}
