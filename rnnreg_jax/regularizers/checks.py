"""The checks of the regularizers: each turns a bad setting of a constructor (a string
from a config, NaN, a rate out of range) into one ValueError sentence naming it, at
construction, and an `input_mask` or `step_noise` hook's result that breaks its
contract (`step_noise`: two dicts of `cells.StepNoise` fields, tied arrays broadcasting
to `[B, H]`, per-step ones to `[T, B, H]`, a gate axis inside for a `cells.PerGate`)
into one naming the regularizer, rather than a wrong mask or an error deep inside a
traced step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from rnnreg_jax.noise import PROBABILITY_BITS, quantize_probability

if TYPE_CHECKING:
    from rnnreg_jax.regularizers.base import LayerShape, Regularizer

TIES = ("sequence", "step")


def check_number(value: Any, name: str) -> float:
    """`value` as a Python float, or a one-sentence ValueError naming `name` if it is not
    a real number (a string from a config, None, a bool, a traced array: the settings of
    a regularizer are static)."""
    if isinstance(value, (str, bytes, bool, complex)) or value is None:
        raise ValueError(f"{name} must be a number, got {value!r}.")
    try:
        return float(value)
    except (TypeError, OverflowError):  # an integer past float's range
        raise ValueError(f"{name} must be a number, got {value!r}.") from None


def check_rate(rate: float, name: str, allow_one: bool = False) -> float:
    """A drop probability in [0, 1) (or [0, 1] for mixing coefficients), as a float.

    Dropout rates exclude 1 (inverted scaling divides by `1 - rate`), and so every
    rate whose keep probability quantizes to 0 (`noise.quantize_probability`: above
    1 - 2^-17); zoneout and stochastic-depth probabilities may be 1 (the state never
    changes). NaN and anything but a real number (a string, None, a bool) are rejected.
    """
    rate = check_number(rate, f"{name} rate")
    ok = 0.0 <= rate <= 1.0 if allow_one else 0.0 <= rate < 1.0
    if not ok:
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{name} rate must be a probability in {interval}, got {rate}.")
    if not allow_one and quantize_probability(1.0 - rate) == 0.0:
        raise ValueError(f"{name} rate must keep at least 2^-{PROBABILITY_BITS} of the "
                         f"units (masks are drawn in steps of 2^-{PROBABILITY_BITS}), "
                         f"got {rate}.")
    return rate


def check_flag(value: Any, name: str) -> bool:
    """`value` as a bool, or a one-sentence ValueError naming `name` if it is not one (the
    string "False" from a config would switch the option on)."""
    if isinstance(value, (str, bytes)) or value is None or value not in (True, False):
        raise ValueError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def check_tie(tie: str, name: str = "tie") -> str:
    """`tie` must be "sequence" (one mask per window) or "step" (fresh each step)."""
    if tie not in TIES:
        raise ValueError(f"{name} must be one of {TIES}, got {tie!r}.")
    return tie


def check_non_negative(value: float, name: str) -> float:
    """A finite, non-negative weight (a penalty's, weight noise's std), as a float."""
    value = check_number(value, name)
    if not 0 <= value < float("inf"):  # also rejects NaN
        raise ValueError(f"{name} must be finite and non-negative, got {value}.")
    return value


def check_step_noise(noise, shape: LayerShape, owner: Regularizer) -> tuple[dict, dict]:
    """A `step_noise` hook's `(tied, per_step)`, or a one-sentence ValueError naming what
    is wrong with it (a regularizer of one's own otherwise failed deep in the scan, with
    a broadcasting or unpacking error). Shapes only: nothing runs."""
    from rnnreg_jax import cells

    what = (f"{type(owner).__name__}.step_noise must return (tied, per_step), two dicts "
            "of cells.StepNoise fields")
    if not (isinstance(noise, tuple) and len(noise) == 2
            and all(isinstance(part, dict) for part in noise)):
        raise ValueError(f"{what}; got {type(noise).__name__} {noise!r:.80}.")
    lead = {"tied": (), "per-step": (shape.steps,)}
    for (kind, steps), part in zip(lead.items(), noise, strict=True):
        for name, value in part.items():
            if name not in cells.StepNoise._fields:
                raise ValueError(f"{what}; {name!r} is none of {cells.StepNoise._fields}.")
            per_gate = cells.is_per_gate(value)
            array = value.masks if per_gate else value
            if array is None or not hasattr(array, "shape"):
                continue  # off, or a scalar coefficient (an evaluation's expectation)
            gates = (shape.num_gates,) if per_gate else ()
            want = (*steps, *gates, shape.batch, shape.hidden_size)
            # a tied array may drop leading axes ([H], a scalar array); a per-step or
            # per-gate one has them all, for the scan and the gates to slice
            fewer = not steps and not per_gate and len(array.shape) < len(want)
            if not ((len(array.shape) == len(want) or fewer)
                    and _broadcasts_to(array.shape, want)):
                raise ValueError(f"{type(owner).__name__}'s {kind} step noise {name!r} has "
                                 f"shape {array.shape}; layer {shape.layer} needs one that "
                                 f"broadcasts to {want}.")
    return noise


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == target
    except ValueError:
        return False


def check_input_mask(masked, shape: LayerShape, owner: Regularizer):
    """An `input_mask` hook's result: None, or `(mask, per_gate)` with `per_gate` a bool
    and the mask broadcasting to `[B, F]` or `[T, B, F]`, a gate axis `G` before `B`
    when per gate; else a one-sentence ValueError naming the regularizer (a bare mask
    was unpacked along its first axis)."""
    name = type(owner).__name__
    if masked is None:
        return None
    if not (isinstance(masked, tuple) and len(masked) == 2 and isinstance(masked[1], bool)):
        raise ValueError(f"{name}.input_mask must return None or (mask, per_gate) with "
                         f"per_gate a bool; got {type(masked).__name__} {masked!r:.80}.")
    mask, per_gate = masked
    if not hasattr(mask, "shape"):
        return masked  # a scalar: an evaluation's scale
    gates = (shape.num_gates,) if per_gate else ()
    wants = [(*gates, shape.batch, shape.input_size),
             (shape.steps, *gates, shape.batch, shape.input_size)]
    fits = any(len(mask.shape) == len(want) and _broadcasts_to(mask.shape, want)
               for want in wants)
    if not (fits or (not per_gate and len(mask.shape) < 2
                     and _broadcasts_to(mask.shape, wants[0]))):
        raise ValueError(f"{name}'s input mask has shape {mask.shape}; layer {shape.layer} "
                         f"needs one that broadcasts to {wants[0]} or {wants[1]}.")
    return masked
