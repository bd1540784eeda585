"""Loss terms on the hidden states: Krueger & Memisevic's norm stabilizer and AWD-LSTM's
activation regularization (AR) and temporal activation regularization (TAR). A model
adds them in training only (`nn.StackedRNN` sows them into `penalties`).

Each is computed in at least float32 (`precision.at_least_float32`): with bfloat16
hiddens (mixed precision) the squares, norms and their differences would otherwise
round to 8 significant bits before the mean sums them.

With `seq_lengths` (a variable-length batch, `rnnreg_jax.lengths`) each mean runs over
the examples' valid steps only (differences: over the pairs of steps both valid), so
a batch's term is that of its examples' valid steps pooled, whatever the padding.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnreg_jax import lengths, precision
from rnnreg_jax.regularizers.base import Family, Regularizer
from rnnreg_jax.regularizers.chain import compose
from rnnreg_jax.regularizers.checks import check_non_negative

Array = jax.Array


def _check_arguments(hiddens: Array, weight: Any, names: tuple[str, str], time_axis: Any,
                     seq_lengths: Array | None) -> Array | None:
    """One-sentence errors for a penalty's arguments (`names`: the weight's and the
    hiddens' argument names), else `seq_lengths` checked by `lengths.check`. Shapes,
    dtypes and concrete values only, so the penalties stay jit-compatible."""
    weight_name, hiddens_name = names
    _check_weight(weight, weight_name)
    if isinstance(time_axis, bool) or not isinstance(time_axis, (int, np.integer)) \
            or time_axis not in (0, 1):
        raise ValueError(f"time_axis must be 0 or 1 (the batch being the other), got "
                         f"{time_axis!r}.")
    shape = jnp.shape(hiddens)
    if len(shape) != 3:
        raise ValueError(f"{hiddens_name} must be [B, T, H] (or [T, B, H] with "
                         f"time_axis=0), got shape {shape}.")
    if seq_lengths is None:
        return None
    return lengths.check(seq_lengths, shape[1 - time_axis], shape[time_axis])


def _check_weight(weight: Any, name: str) -> None:
    """A non-negative weight; a jax array (a scheduled or learned coefficient, maybe
    traced) must be a real scalar, its value checked only where it is concrete."""
    if isinstance(weight, jax.Array):
        if weight.ndim != 0 or not (jnp.issubdtype(weight.dtype, jnp.floating)
                                    or jnp.issubdtype(weight.dtype, jnp.integer)):
            raise ValueError(f"{name} must be a real scalar, got an array of shape "
                             f"{tuple(weight.shape)} and dtype {weight.dtype}.")
        weight = lengths.concrete_values(weight)
        if weight is None:
            return  # traced: its value is unknown here
        weight = weight.item()
    check_non_negative(weight, name)


def _valid_mean(values: Array, seq_lengths: Array, time_axis: int, first: int = 0) -> Array:
    """The mean of `values` (`[B, T', ...]` or time-major) over the steps `first + t'` each
    example has (`t' < L_b - first`); 0 when there are none."""
    steps = values.shape[time_axis] + first
    valid = jax.lax.slice_in_dim(lengths.valid_mask(seq_lengths, steps, time_axis), first,
                                 steps, axis=time_axis)
    valid = valid.reshape(valid.shape + (1,) * (values.ndim - 2))
    total = jnp.sum(jnp.where(valid, values, jnp.zeros((), values.dtype)))
    count = jnp.sum(valid) * (values.size // max(valid.size, 1))
    return total / jnp.maximum(count, 1).astype(values.dtype)


def norm_stabilizer_penalty(hiddens: Array, beta: float, time_axis: int = 1,
                            seq_lengths: Array | None = None) -> Array:
    """`beta * mean_{b,t} (||h_t|| - ||h_{t-1}||)^2` over the window.

    Differences are taken inside the window (t = 1 .. T-1, so T-1 terms per
    example), so a state reset to zero at the window start is not penalised.
    The norm's gradient at h_t = 0 (a zero state kept by zoneout or stochastic
    depth) is taken as 0 instead of `jnp.linalg.norm`'s NaN.

    Args:
      hiddens: hidden states `[B, T, H]` (or time-major with `time_axis=0`).
      beta: penalty weight, >= 0 (a number, or a scalar jax array: a scheduled or
        learned coefficient, whose value is checked only where it is concrete).
      time_axis: the time axis of `hiddens`, 0 or 1.
      seq_lengths: int `[B]`: the mean runs over the pairs of steps within each
        example's length (`L_b - 1` terms each) instead.

    Returns:
      A scalar.
    """
    seq_lengths = _check_arguments(hiddens, beta, ("beta", "hiddens"), time_axis, seq_lengths)
    hiddens = _wide(hiddens)
    squares = jnp.sum(jnp.square(hiddens), axis=-1)
    nonzero = squares > 0
    norms = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, squares, 1.0)), 0.0)
    diffs = jnp.diff(norms, axis=time_axis)
    if seq_lengths is not None:
        return beta * _valid_mean(jnp.square(diffs), seq_lengths, time_axis, first=1)
    return beta * _mean_or_zero(jnp.square(diffs))


def activation_penalty(outputs: Array, alpha: float, time_axis: int = 1,
                       seq_lengths: Array | None = None) -> Array:
    """AR: `alpha * mean_{b,t,k} h[b,t,k]^2`, a scalar.

    Merity et al. apply it to the *dropped* output of the last layer (the
    tensor the softmax sees in training); the mean runs over every element (with
    `seq_lengths`, int `[B]`, over each example's valid steps; `time_axis`: the time
    axis of `outputs`, 0 or 1). `alpha` >= 0, as `beta` of `norm_stabilizer_penalty`.
    """
    seq_lengths = _check_arguments(outputs, alpha, ("alpha", "outputs"), time_axis,
                                   seq_lengths)
    if seq_lengths is not None:
        return alpha * _valid_mean(jnp.square(_wide(outputs)), seq_lengths, time_axis)
    return alpha * _mean_or_zero(jnp.square(_wide(outputs)))


def temporal_activation_penalty(hiddens: Array, beta: float, time_axis: int = 1,
                                seq_lengths: Array | None = None) -> Array:
    """TAR: `beta * mean_{b,t,k} (h[b,t,k] - h[b,t-1,k])^2` for t = 1..T-1, a scalar.

    Merity et al. apply it to the *undropped* output of the last layer. As for
    the norm stabilizer, differences are taken within the window (no term
    against the state carried in).

    Args:
      hiddens: `[B, T, H]` (or time-major with `time_axis=0`).
      beta: penalty weight, >= 0 (a number, or a scalar jax array: a scheduled or
        learned coefficient, whose value is checked only where it is concrete).
      time_axis: the time axis of `hiddens`, 0 or 1.
      seq_lengths: int `[B]`: the mean runs over the pairs of steps within each
        example's length instead.
    """
    seq_lengths = _check_arguments(hiddens, beta, ("beta", "hiddens"), time_axis, seq_lengths)
    diffs = jnp.diff(_wide(hiddens), axis=time_axis)
    if seq_lengths is not None:
        return beta * _valid_mean(jnp.square(diffs), seq_lengths, time_axis, first=1)
    return beta * _mean_or_zero(jnp.square(diffs))


def _mean_or_zero(x: Array) -> Array:
    """The mean of `x`, or 0 when it is empty (a one-step window has no differences;
    `jnp.mean` would give NaN, as the `seq_lengths` path gives 0 for length 1)."""
    return jnp.mean(x) if x.size else jnp.zeros((), x.dtype)


def _wide(x: Array) -> Array:
    """`x` in at least float32 (the penalty's precision)."""
    return precision.cast(x, precision.at_least_float32(x.dtype))


@dataclasses.dataclass(frozen=True)
class _Penalty(Family):
    """A loss term of weight `weight` (0: off), sown under `NAME`."""

    weight: float = 0.0
    NAME = ""

    def __post_init__(self):
        object.__setattr__(self, "weight", check_non_negative(self.weight, self.NAME))

    @property
    def active(self):
        return self.weight > 0

    def sites(self):
        return frozenset({self.NAME}) if self.active else frozenset()


@dataclasses.dataclass(frozen=True)
class NormStabilizer(_Penalty):
    """Krueger & Memisevic 2016: the norm-stabilizer penalty of every layer's hiddens."""

    NAME = "norm_stabilizer"

    def penalties(self, params, hiddens, outputs, time_axis, seq_lengths=None):
        if not self.active:
            return {}
        return {self.NAME: sum(norm_stabilizer_penalty(h, self.weight, time_axis, seq_lengths)
                               for h in hiddens)}


@dataclasses.dataclass(frozen=True)
class ActivationRegularization(_Penalty):
    """AR on the last layer's dropped output."""

    NAME = "activation_reg"

    def penalties(self, params, hiddens, outputs, time_axis, seq_lengths=None):
        if not self.active:
            return {}
        return {self.NAME: activation_penalty(outputs, self.weight, time_axis, seq_lengths)}


@dataclasses.dataclass(frozen=True)
class TemporalActivationRegularization(_Penalty):
    """TAR on the last layer's undropped output."""

    NAME = "temporal_activation_reg"

    def penalties(self, params, hiddens, outputs, time_axis, seq_lengths=None):
        if not self.active:
            return {}
        return {self.NAME: temporal_activation_penalty(hiddens[-1], self.weight, time_axis,
                                                       seq_lengths)}


def norm_stabilizer(beta: float) -> Regularizer:
    """Krueger & Memisevic 2016: penalty beta mean_t (|h_t| - |h_{t-1}|)^2.

    A loss term, not noise: `StackedRNN` sows `norm_stabilizer_penalty` of each
    layer's hiddens into the `penalties` collection in training only.
    """
    return compose(NormStabilizer(beta))


def activation_regularization(alpha: float) -> Regularizer:
    """Merity et al. 2017: AR, `alpha * mean(h_t^2)` on the last layer's dropped output.

    A loss term: `StackedRNN` sows `activation_penalty` into `penalties` in
    training only.
    """
    return compose(ActivationRegularization(alpha))


def temporal_activation_regularization(beta: float) -> Regularizer:
    """Merity et al. 2017: TAR, `beta * mean((h_t - h_{t-1})^2)` on the last
    layer's undropped output, differences within the window.

    A loss term: `StackedRNN` sows `temporal_activation_penalty` into
    `penalties` in training only.
    """
    return compose(TemporalActivationRegularization(beta))
