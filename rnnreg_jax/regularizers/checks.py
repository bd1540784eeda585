"""The checks of the regularizers: each turns a bad setting of a constructor (a string
from a config, NaN, a rate out of range) into one ValueError sentence naming it, at
construction, and a hook's result that breaks its contract (`regularizers.base`: masks
that do not broadcast to their site, `step_noise` that is not two dicts of
`cells.StepNoise` fields, weights that lose a parameter or change its shape, a penalty
that is no scalar) into one naming the regularizer, rather than a wrong mask or an
error deep inside a traced step. Shapes only, at trace time: nothing runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from rnnreg_jax.noise import PROBABILITY_BITS, quantize_probability
from rnnreg_jax.shown import shown

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
    string "False" from a config would switch the option on), echoing it in one line
    (`shown`: a carry passed where `deterministic` belongs printed every state)."""
    try:
        is_bool = not isinstance(value, (str, bytes)) and value is not None and (
            value in (True, False))
    except ValueError:  # an array's ambiguous truth value
        is_bool = False
    if not is_bool:
        raise ValueError(f"{name} must be True or False, got {shown(value)}.")
    return bool(value)


def is_key(key: Any) -> bool:
    """Whether `key` is one PRNG key: typed (`jax.random.key`) or raw
    (`jax.random.PRNGKey`, uint32 `[2]`), traced or not."""
    if not isinstance(key, jax.Array):
        return False
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.shape == ()
    return key.dtype == np.uint32 and key.shape == (2,)


def check_key(key: Any, name: str = "key", required: bool = False) -> None:
    """One PRNG key (or None, unless `required`), or a one-sentence ValueError naming
    `name` (an int, a float array or a batch of split keys otherwise failed inside
    jax.random's draws)."""
    if (key is not None or required) and not is_key(key):
        shape = getattr(key, "shape", None)
        got = (f"an array of shape {tuple(shape)} and dtype {key.dtype}" if shape is not None
               else repr(key))
        raise ValueError(f"{name} must be one PRNG key (jax.random.key(seed), or "
                         f"jax.random.PRNGKey(seed)), got {got}.")


def check_tie(tie: str, name: str = "tie") -> str:
    """`tie` must be "sequence" (one mask per window) or "step" (fresh each step)."""
    if tie not in TIES:
        raise ValueError(f"{name} must be one of {TIES}, got {tie!r}.")
    return tie


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_non_negative(value: float, name: str) -> float:
    """A finite, non-negative weight (a penalty's, weight noise's std), as a float; at
    most float32's largest, where it is applied (past it, every loss or weight was inf)."""
    value = check_number(value, name)
    if not 0 <= value <= FLOAT32_MAX:  # also rejects NaN
        raise ValueError(f"{name} must be finite and non-negative, at most "
                         f"{FLOAT32_MAX:.4g} (it is applied in float32), got {value}.")
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
    gates = (shape.num_gates,) if per_gate else ()
    _check_mask(mask, (*gates, shape.batch, shape.input_size), shape.steps,
                short=not per_gate, what=f"{name}'s input mask", layer=shape.layer)
    return masked


def check_output_mask(mask, shape: LayerShape, owner: Regularizer):
    """An `output_mask` hook's result: None, a scalar, or a mask broadcasting to `[B, W]`
    or `[T, B, W]` (W the last layer's width); else a one-sentence ValueError."""
    if mask is not None:
        _check_mask(mask, (shape.batch, shape.hidden_size), shape.steps, short=True,
                    what=f"{type(owner).__name__}'s output mask", layer=None)
    return mask


def _check_mask(mask, tied: tuple, steps: int, short: bool, what: str, layer) -> None:
    """`mask` (unless a scalar) must have `tied`'s rank and broadcast to it, or one more
    axis of `steps` in front (a mask per step); with `short`, fewer axes that broadcast
    to `tied` do too (a `[F]` mask, say)."""
    if not hasattr(mask, "shape"):
        return  # a Python scalar: an evaluation's scale
    wants = [tied, (steps, *tied)]
    fits = any(len(mask.shape) == len(want) and _broadcasts_to(mask.shape, want)
               for want in wants)
    if not (fits or (short and len(mask.shape) < len(tied)
                     and _broadcasts_to(mask.shape, tied))):
        where = "the stack's output" if layer is None else f"layer {layer}"
        raise ValueError(f"{what} has shape {mask.shape}; {where} needs one that "
                         f"broadcasts to {wants[0]} or {wants[1]}.")


def check_embedding_mask(mask, ids, owner: Regularizer):
    """An `embedding_mask` hook's result: None, a scalar, or multipliers that broadcast
    against the embedded tokens `[B, T, E]` (`[B, T, 1]`, one per token); else a
    one-sentence ValueError naming the regularizer."""
    if mask is None or not hasattr(mask, "shape"):
        return mask
    batch, steps = ids.shape[:2]
    # E is the model's, not known here: the last axis may be anything, the others
    # must line up with the tokens
    lead = mask.shape[:-1]
    if not (len(mask.shape) <= 3
            and _broadcasts_to(lead, (batch, steps)[2 - len(lead):])):
        raise ValueError(f"{type(owner).__name__}'s embedding mask has shape {mask.shape}; "
                         f"tokens of shape {tuple(ids.shape)} need one that broadcasts "
                         f"to ({batch}, {steps}, 1) or ({batch}, {steps}, E).")
    return mask


def check_weights(out, given: Mapping, owner: Regularizer, hook: str = "weights"):
    """A `weights` or `model_weights` hook's result: a dict holding every array it was
    given, each in its shape (a transform, such as weight drop or noise, may change the
    values and add entries, never drop one or reshape it); else a one-sentence
    ValueError naming the regularizer."""
    name = type(owner).__name__
    if not isinstance(out, Mapping):
        raise ValueError(f"{name}.{hook} must return the dict of arrays it was given, "
                         f"transformed; got {type(out).__name__} {out!r:.80}.")
    missing = sorted(key for key in given if key not in out)
    if missing:
        raise ValueError(f"{name}.{hook} dropped {missing} from the arrays it was given "
                         f"({sorted(given)}); return them all, as dict(params, w_h=...) "
                         "does.")
    for key, value in given.items():
        before, after = _shapes(value), _shapes(out[key])
        if before != after:
            raise ValueError(f"{name}.{hook} changed {key!r} from shape "
                             f"{_one(before)} to {_one(after)}; a weight transform keeps "
                             "each array's shape.")
    return out


def _shapes(tree) -> list:
    return [tuple(np.shape(leaf)) for leaf in jax.tree.leaves(tree)]


def _one(shapes: list):
    return shapes[0] if len(shapes) == 1 else shapes


def check_penalties(terms, owner: Regularizer) -> dict:
    """A `penalties` hook's result: a dict of named scalar loss terms; else a
    one-sentence ValueError naming the regularizer (a term per example broadcast the
    loss to a vector, and the gradient failed far from the hook)."""
    name = type(owner).__name__
    if not (isinstance(terms, Mapping) and all(isinstance(k, str) for k in terms)):
        raise ValueError(f"{name}.penalties must return a dict of named scalar loss terms, "
                         f"{{name: scalar}}; got {type(terms).__name__} {terms!r:.80}.")
    for key, value in terms.items():
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (numeric or hasattr(value, "dtype")) or np.ndim(value) != 0:
            shape = f"shape {tuple(np.shape(value))}" if hasattr(value, "shape") else \
                f"a {type(value).__name__}"
            raise ValueError(f"{name}'s penalty {key!r} is {shape}; a loss term must be a "
                             "scalar (sum or average it).")
    return dict(terms)
