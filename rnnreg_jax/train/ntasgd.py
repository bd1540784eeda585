"""NT-ASGD (Merity et al. 2017): SGD that starts averaging its iterates when
validation stops improving.

    tx = optax.chain(optax.clip_by_global_norm(0.25), ntasgd(30.0))
    state = tx.init(params)
    ...                                           # plain SGD: w <- w - lr * g
    if nonmono_trigger(history, val_loss, 5):     # decided on the host
        state = start_averaging(state)            # from now on: running average
    history.append(val_loss)
    eval_params = averaged_params(state, params)  # the average once averaging is on

The transform updates like `optax.sgd(learning_rate)`. Its state keeps
`averaging` (a bool scalar), `avg_params` and `count`; once averaging is on,
every update folds the *new* iterate into the running mean,
`avg <- avg + (w_new - avg) / (count + 1)`, so after k updates `avg` is the mean
of the k iterates produced since the trigger (PyTorch's `ASGD(t0=0,
lambd=0)`, which AWD-LSTM switches to). The update needs `params`
(`tx.update(grads, state, params)`), so the transform must be the last of a
chain (the updates it sees are the final ones).

The trigger is host-side because it looks at the validation history:
`nonmono_trigger` is AWD's non-monotone criterion
`len(history) > n and value > min(history[:-n])`: the new validation loss is
worse than the best one seen more than `n` evaluations ago.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class NTASGDState(NamedTuple):
    """State of `ntasgd`.

    Attributes:
      averaging: bool scalar, whether the running average is on.
      avg_params: the mean of the iterates since averaging was switched on
        (the parameters' structure; meaningless while `averaging` is False).
      count: int32 scalar, how many iterates `avg_params` averages.
    """

    averaging: jax.Array
    avg_params: Any
    # The field shadows tuple.count, as the `count` of optax's own states does (only the
    # type checker minds).
    count: jax.Array  # type: ignore[assignment]


def ntasgd(learning_rate: float | jax.Array) -> optax.GradientTransformation:
    """SGD (`updates = -lr * grads`) with a running average of the iterates once
    `start_averaging` has been applied to the state.

    `learning_rate` is a number or a scalar array (e.g. injected by
    `optax.inject_hyperparams`), not a schedule.
    """
    if callable(learning_rate):
        raise TypeError("ntasgd takes a fixed learning rate (set it between epochs with "
                        "optax.inject_hyperparams), not a schedule.")
    if isinstance(learning_rate, (str, bytes, bool)) or learning_rate is None or (
            isinstance(learning_rate, numbers.Real) and not 0 <= learning_rate < math.inf):
        raise ValueError(f"ntasgd's learning_rate must be a finite number >= 0, got "
                         f"{learning_rate!r}.")

    def init_fn(params):
        return NTASGDState(averaging=jnp.zeros((), jnp.bool_),
                           avg_params=jax.tree.map(jnp.zeros_like, params),
                           count=jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("ntasgd needs the parameters: tx.update(grads, state, params).")
        updates = jax.tree.map(lambda g: -learning_rate * g, updates)
        count = state.count + state.averaging.astype(jnp.int32)
        weight = 1.0 / jnp.maximum(count, 1).astype(jnp.float32)

        def fold(avg, p, u):
            new = p + u
            mean = avg + (new - avg) * weight.astype(avg.dtype)
            return jnp.where(state.averaging, mean, avg)

        avg = jax.tree.map(fold, state.avg_params, params, updates)
        return updates, NTASGDState(state.averaging, avg, count)

    return optax.GradientTransformation(init_fn, update_fn)


def _is_state(node) -> bool:
    return isinstance(node, NTASGDState)


def _states(opt_state) -> list[NTASGDState]:
    return [s for s in jax.tree.leaves(opt_state, is_leaf=_is_state) if _is_state(s)]


def _the_state(opt_state) -> NTASGDState:
    found = _states(opt_state)
    if len(found) != 1:
        raise ValueError(f"Expected one ntasgd state in the optimizer state, found {len(found)}.")
    return found[0]


def start_averaging(opt_state):
    """The optimizer state (any optax nesting) with averaging switched on.

    The count restarts at 0, so the next update makes the average equal to
    the new iterate. Idempotent on the flag, but calling it again restarts the
    average: call it once (the loop keeps a host-side flag).
    """
    def switch(node):
        if not _is_state(node):
            return node
        return NTASGDState(jnp.ones_like(node.averaging), node.avg_params,
                           jnp.zeros_like(node.count))

    _the_state(opt_state)  # exactly one
    return jax.tree.map(switch, opt_state, is_leaf=_is_state)


def is_averaging(opt_state) -> jax.Array:
    """The `averaging` flag of the (single) ntasgd state inside `opt_state`."""
    return _the_state(opt_state).averaging


def typed_states(raw_opt_state):
    """An optimizer state restored without a target (orbax gives its NamedTuples back as
    dicts) with its ntasgd states typed again, so that `averaged_params` finds them."""
    def is_raw(node) -> bool:
        return isinstance(node, dict) and set(node) == set(NTASGDState._fields)

    return jax.tree.map(lambda n: NTASGDState(**n) if is_raw(n) else n, raw_opt_state,
                        is_leaf=is_raw)


def uses_ntasgd(opt_state) -> bool:
    """Whether `opt_state` holds an ntasgd state (exactly one, as `ntasgd` makes)."""
    return len(_states(opt_state)) == 1


def averaged_params(opt_state, params):
    """The parameters to evaluate: the running average once averaging is on
    (and has seen at least one update), else `params`. Works under `jax.jit`."""
    state = _the_state(opt_state)
    use = jnp.logical_and(state.averaging, state.count > 0)
    return jax.tree.map(lambda a, p: jnp.where(use, a, p), state.avg_params, params)


def nonmono_trigger(history: Sequence[float], value: float, nonmono: int) -> bool:
    """AWD-LSTM's non-monotone criterion (main.py): switch to averaging when
    `len(history) > nonmono and value > min(history[:-nonmono])`.

    Args:
      history: the validation losses of the previous evaluations, oldest first
        (without `value`).
      value: the new validation loss.
      nonmono: n, how many recent evaluations are exempt from the comparison.
    """
    if isinstance(nonmono, bool) or not isinstance(nonmono, numbers.Integral) or nonmono < 1:
        raise ValueError(f"nonmono must be a whole number >= 1, got {nonmono!r}.")
    return len(history) > nonmono and value > min(history[:-nonmono])
