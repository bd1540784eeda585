"""Variable-length sequences: a batch padded to T steps with each example's length.

    ys, carry = unroll("lstm", params, x, seq_lengths=jnp.array([5, 2, 7]))

Example b's steps `t < L_b` are its own, the rest is padding (a prefix mask: valid
steps first, padding after). Past its length an example's carry stays frozen, so the
final carry is the state after its last valid step, and its outputs are zero. The
padding's contents never reach a valid step, nor a gradient (they must be finite, as
any input: a padded step still runs, and its result is discarded with `jnp.where`).

Lengths are checked when their values are concrete (`check`); under `jit` only their
dtype and shape are, and out-of-range values act as if clipped: a length above T as T
(every step valid), a length below 1 as 0 (the example keeps its initial carry, every
output zero).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rnnreg_jax.cells.base import check_size

Array = jax.Array


def concrete_values(value) -> np.ndarray | None:
    """`value` as numpy when it is concrete, None under a trace or when this process
    holds only part of it (a global array of several hosts)."""
    try:  # a tracer raises on both
        if not getattr(value, "is_fully_addressable", True):
            return None
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check(seq_lengths, batch: int | None, steps: int) -> Array:
    """`seq_lengths` as an int array `[B]`, after checking its dtype, shape and (when
    concrete) that every length is in `[1, T]`; a one-sentence ValueError otherwise.
    `batch` None: any B (one axis)."""
    want = "[B]" if batch is None else f"[B] = ({batch},)"
    try:  # None, a string or a ragged list failed inside jnp.asarray
        lengths = jnp.asarray(seq_lengths)
    except (TypeError, ValueError):
        raise ValueError(f"seq_lengths must be an integer array of shape {want}, got "
                         f"{seq_lengths!r:.80}.") from None
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"seq_lengths must be integers, got dtype {lengths.dtype}.")
    if lengths.ndim != 1 or (batch is not None and lengths.shape != (batch,)):
        raise ValueError(f"seq_lengths must have shape {want}, got "
                         f"{tuple(lengths.shape)}.")
    values = concrete_values(seq_lengths)
    if values is not None and values.size and (values.min() < 1 or values.max() > steps):
        raise ValueError(f"seq_lengths must be in [1, T] = [1, {steps}], got values from "
                         f"{values.min()} to {values.max()}.")
    return lengths


def valid_steps(seq_lengths: Array, steps: int) -> Array:
    """Time-major booleans `[T, B]`: whether step t is one of example b's own."""
    return jnp.arange(steps)[:, None] < seq_lengths[None, :]


def check_time_axis(time_axis) -> int:
    """`time_axis` as an int, or a one-sentence ValueError unless it is 0 or 1 (the batch
    being the other; 2 read another axis as time)."""
    if isinstance(time_axis, bool) or not isinstance(time_axis, (int, np.integer)) \
            or time_axis not in (0, 1):
        raise ValueError(f"time_axis must be 0 or 1 (the batch being the other), got "
                         f"{time_axis!r}.")
    return int(time_axis)


def valid_mask(seq_lengths: Array, steps: int, time_axis: int = 1) -> Array:
    """`valid_steps` with time on `time_axis`: `[B, T]` (1) or `[T, B]` (0); the lengths
    are checked as by `check` (their values where concrete)."""
    steps, time_axis = check_size(steps, "steps", least=0), check_time_axis(time_axis)
    valid = valid_steps(check(seq_lengths, None, steps), steps)
    return valid if time_axis == 0 else valid.T


def _rows(valid_t: Array, like: Array) -> Array:
    """`valid_t: [B]` shaped to broadcast over `like: [B, ...]`."""
    return valid_t.reshape(valid_t.shape + (1,) * (like.ndim - 1))


def freeze(valid_t: Array, carry, new_carry, y_t, aux_output: bool = False):
    """One step's `(carry, y_t)` with the examples past their length (`valid_t: [B]`
    False) keeping `carry` and giving a zero output; `aux_output`: `y_t` is
    `(h_t, aux_t)` and only `h_t` is per example."""
    new_carry = jax.tree.map(lambda n, o: jnp.where(_rows(valid_t, n), n, o), new_carry, carry)
    h_t, aux = y_t if aux_output else (y_t, None)
    h_t = jnp.where(_rows(valid_t, h_t), h_t, jnp.zeros((), h_t.dtype))
    return new_carry, ((h_t, aux) if aux_output else h_t)


def mask_rows(valid_t: Array, tree, keep: bool = True):
    """Every leaf `[B, ...]` of `tree` where `valid_t` is `keep`, zero elsewhere (the
    cotangents the fused backward pass routes to a step's update or past it)."""
    def select(a):
        rows = _rows(valid_t, a)
        return jnp.where(rows if keep else ~rows, a, jnp.zeros((), a.dtype))

    return jax.tree.map(select, tree)


def last_valid(ys: Array, seq_lengths: Array | None, time_axis: int = 1) -> Array:
    """Each example's output at its last valid step, `ys[b, L_b - 1]` (`ys[:, -1]`
    without lengths): `[B, T, ...]` (or time-major) -> `[B, ...]`. The lengths are
    checked as by `check`; under `jit` a length out of `[1, T]` reads the nearest step."""
    time_axis = check_time_axis(time_axis)
    shape = np.shape(ys)
    if len(shape) < 2 or shape[time_axis] < 1:
        raise ValueError(f"ys must be [B, T, ...] (or [T, B, ...] with time_axis=0) with at "
                         f"least one step, got shape {shape}.")
    if seq_lengths is None:
        return ys[:, -1] if time_axis == 1 else ys[-1]
    steps = shape[time_axis]
    seq_lengths = check(seq_lengths, shape[1 - time_axis], steps)
    index = jnp.clip(seq_lengths - 1, 0, steps - 1)
    y = ys if time_axis == 1 else jnp.swapaxes(ys, 0, 1)
    return y[jnp.arange(y.shape[0]), index]


def from_mask(mask, time_axis: int = 1) -> np.ndarray:
    """The lengths `[B]` (int32) of a concrete boolean prefix mask `[B, T]` (or `[T, B]`
    with `time_axis=0`): True on each example's steps, then False on its padding.

    A mask is turned into lengths on the host, before `jit`; a mask whose True steps are
    not a prefix (padding before or inside a sequence) is refused, since the recurrence
    reads an example's valid steps first."""
    time_axis = check_time_axis(time_axis)
    values = concrete_values(mask)
    if values is None:
        raise ValueError("from_mask needs a concrete mask; convert it to seq_lengths "
                         "outside jit.")
    if values.dtype != np.bool_ or values.ndim != 2:
        raise ValueError(f"The mask must be boolean [B, T], got {values.dtype} of shape "
                         f"{values.shape}.")
    per_example = values if time_axis == 1 else values.T
    lengths = per_example.sum(axis=1)
    prefix = np.arange(per_example.shape[1])[None, :] < lengths[:, None]
    if not np.array_equal(prefix, per_example):
        raise ValueError("The mask must be a prefix mask (each example's True steps first, "
                         "then only False); reorder the padding after the sequence.")
    return lengths.astype(np.int32)
