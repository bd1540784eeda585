"""Optimizers (optax chains) and the epoch-level learning-rate rules.

    clip_by_global_norm -> add_decayed_weights -> sgd | momentum | adam | rmsprop | ntasgd
    (`clip_update=True`: the clip moves to the end and bounds the step itself;
    `weight_decay_mode="step"`: the decay moves after the optimizer, outside the rate)

The whole chain is wrapped in `optax.inject_hyperparams`, so the learning
rate is an array in the optimizer state: the epoch-level rules set it on the
host between epochs and it is checkpointed with the rest of the state.
Weight decay (`weight_decay_mode`): "gradient" adds `weight_decay * param` to the
clipped gradient, so the learning rate scales it (an L2 term in the loss: Gal's Keras
sentiment code, AWD-LSTM's PyTorch SGD); "step" subtracts `weight_decay * param` from
the parameters every step whatever the learning rate (Gal's Lua language-model scripts,
`paramx:add(-params.weight_decay, paramx)` after the SGD step; docs/FIDELITY.md).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import ml_collections
import optax

from rnnreg_jax.regularizers.checks import FLOAT32_MAX, check_flag
from rnnreg_jax.shown import shown
from rnnreg_jax.train import ntasgd as ntasgd_lib
from rnnreg_jax.train.config import (
    check_mapping,
    check_names,
    is_finite_number,
    is_whole,
    with_defaults,
)

OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop", "ntasgd")
WEIGHT_DECAY_MODES = ("gradient", "step")
LR_SCHEDULES = ("constant", "zaremba", "plateau")


# The optimizer's settings live in its float32 state: a larger one was inf there (a
# learning rate of 1e39 made every parameter inf at the first step, with a warning only).


def check_setting(value, name: str, below_one: bool = False) -> None:
    """A one-sentence ValueError unless `value` is a number >= 0 that float32 holds
    (and < 1 with `below_one`): a negative weight decay or clip norm was silently off, a
    string failed inside optax."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (number and 0 <= value < (1.0 if below_one else math.inf)):
        interval = "in [0, 1)" if below_one else "a finite number >= 0"
        raise ValueError(f"{name} must be {interval}, got {value!r}.")
    if value > FLOAT32_MAX:
        raise ValueError(f"{name} must be at most {FLOAT32_MAX:.4g} (the optimizer holds it "
                         f"in float32), got {value!r}.")


def check_lr_factor(value, name: str) -> None:
    """A one-sentence ValueError unless `value` is a finite number >= 1: the LR rules
    divide the rate by it, so 0 divided by zero, a negative one made the rate negative
    and one below 1 made it grow."""
    if not is_finite_number(value, 1.0):
        raise ValueError(f"{name} must be a finite number >= 1 (the learning rate is divided "
                         f"by it), got {value!r}.")


def _settings(config) -> ml_collections.ConfigDict:
    """`config` (a ConfigDict such as `config.train`, or any other mapping of training
    settings: a plain dict) as a ConfigDict on top of `default_train_config()`
    (`config.with_defaults`: a field it lacks takes its default), so that the fields
    are read and checked the same way whatever the mapping. Anything else (None, a
    string, a list of pairs) is a one-sentence ValueError naming the type expected, and
    so is a field no training config holds (`config.check_names`, as the training loop
    refuses it: a misspelt learning rate, or the whole config for `config.train`, gave
    the default SGD at rate 1.0)."""
    check_mapping(config, none_ok=False)
    check_names(config)
    return with_defaults(config)


def make_optimizer(config) -> optax.GradientTransformation:
    """The optax chain described by `config` (see `default_train_config`).

    `config`: a ConfigDict (`config.train`) or any mapping of its fields (a dict gives
    the optimizer of the equal ConfigDict); fields it lacks take their defaults.
    Anything else, or a setting out of range, is a one-sentence ValueError.
    """
    config = _settings(config)
    name = config.optimizer
    if name not in OPTIMIZERS:
        raise ValueError(f"config.optimizer must be one of {OPTIMIZERS}, got {name!r}.")
    check_setting(config.learning_rate, "config.learning_rate")
    for field in ("clip_norm", "weight_decay"):  # None or 0: off
        if config[field] is not None:
            check_setting(config[field], f"config.{field}")
    if name in ("momentum", "rmsprop"):
        field = "momentum" if name == "momentum" else "rmsprop_decay"
        check_setting(config[field], f"config.{field}", below_one=True)

    decay_mode = config.get("weight_decay_mode", "gradient")
    if decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"config.weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got "
                         f"{decay_mode!r}.")
    decay = config.weight_decay and config.weight_decay > 0
    clip = config.clip_norm and config.clip_norm > 0
    # bool("False") is True: a word from a config switched the clip onto the step
    clip_update = check_flag(config.get("clip_update", False), "config.clip_update")

    def chain(learning_rate):
        parts = []
        if clip and not clip_update:
            parts.append(optax.clip_by_global_norm(config.clip_norm))
        if decay and decay_mode == "gradient":
            parts.append(optax.add_decayed_weights(config.weight_decay))
        if name == "sgd":
            parts.append(optax.sgd(learning_rate))
        elif name == "momentum":
            parts.append(optax.sgd(learning_rate, momentum=config.momentum))
        elif name == "adam":
            parts.append(optax.adam(learning_rate))
        elif name == "ntasgd":  # SGD + iterate averaging switched on by the loop (AWD-LSTM)
            parts.append(ntasgd_lib.ntasgd(learning_rate))
        else:
            parts.append(optax.rmsprop(learning_rate, decay=config.rmsprop_decay))
        if clip and clip_update:  # Blocks' CompositeRule([Adam, StepClipping])
            parts.append(optax.clip_by_global_norm(config.clip_norm))
        if decay and decay_mode == "step":  # the update gains -weight_decay * param
            parts.append(optax.add_decayed_weights(-config.weight_decay))
        return optax.chain(*parts)

    return optax.inject_hyperparams(chain)(learning_rate=config.learning_rate)


def lr_rule(config) -> Callable[[int, float, bool], float]:
    """The epoch-level learning-rate rule of `config.lr_schedule`, as a function
    `(epoch, lr, improved) -> lr` giving the rate after epoch `epoch` (1-based) and
    its validation. Its settings are read here, once, so that a bad schedule fails
    before training starts.

    - "constant": unchanged.
    - "zaremba": `if epoch > decay_after: lr /= decay_factor` (Zaremba's
      main.lua with `max_epoch = decay_after`); with `decay_after=4` epochs
      1..5 train at the initial lr, epoch 6 at lr / decay_factor, ...
    - "plateau": `lr /= plateau_factor` after an epoch whose validation metric
      did not improve on the best so far (the zoneout paper).

    `config`: a ConfigDict (`config.train`) or any mapping of its fields, fields it
    lacks taking their defaults. Anything else, an unknown schedule or a factor below
    1 (the rate would grow), not finite or not a number is a one-sentence ValueError.
    """
    config = _settings(config)
    rule = config.lr_schedule
    if rule == "constant":
        return _checked(lambda epoch, lr, improved: lr)
    if rule == "zaremba":
        if not is_whole(config.decay_after, 0):  # int() cut 4.5 to 4, took "4"
            raise ValueError(f"config.decay_after must be a whole number >= 0, got "
                             f"{config.decay_after!r}.")
        check_lr_factor(config.decay_factor, "config.decay_factor")
        after, factor = int(config.decay_after), float(config.decay_factor)
        return _checked(lambda epoch, lr, improved: lr / factor if epoch > after else lr)
    if rule == "plateau":
        check_lr_factor(config.plateau_factor, "config.plateau_factor")
        factor = float(config.plateau_factor)
        return _checked(lambda epoch, lr, improved: lr if improved else lr / factor)
    raise ValueError(f"config.lr_schedule must be one of {LR_SCHEDULES}, got {rule!r}.")


def _checked(rule: Callable[[int, float, bool], float]) -> Callable[[int, float, bool], float]:
    """`rule` refusing, in one sentence, an epoch that is not a whole number >= 1, a rate
    that is not a finite number >= 0 and an `improved` that is not a bool (a string
    epoch or None rate failed inside the rule with an operator's TypeError, and
    `improved="no"` counted as an improvement). A few isinstance checks, once an epoch."""

    def apply(epoch, lr, improved):
        if not is_whole(epoch, 1):
            raise ValueError(f"epoch must be a whole number >= 1 (epochs count from 1), got "
                             f"{shown(epoch)}.")
        if not (is_finite_number(lr, 0.0) or _is_rate_array(lr)):
            raise ValueError(f"lr must be a finite number >= 0, got {shown(lr)}.")
        check_flag(improved, "improved")
        return rule(epoch, lr, improved)

    return apply


def _is_rate_array(value) -> bool:
    """A finite, non-negative 0-d array of floats or integers (the optimizer state's
    learning rate, say)."""
    dtype = getattr(value, "dtype", None)
    return (dtype is not None and getattr(value, "shape", None) == ()
            and getattr(dtype, "kind", None) in ("f", "i", "u")
            and is_finite_number(float(value), 0.0))


def next_learning_rate(config, epoch: int, lr: float, improved: bool) -> float:
    """The learning rate after epoch `epoch` (1-based): `lr_rule(config)` applied once
    (`config`: a ConfigDict or any mapping of training settings, as `lr_rule` takes)."""
    return lr_rule(config)(epoch, lr, improved)


def improved(metric: float, best: float) -> bool:
    """Whether a validation metric (lower is better) beats the best so far."""
    return math.isfinite(metric) and metric < best
