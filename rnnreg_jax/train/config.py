"""The training configuration: every field with its default and meaning, and the
check that refuses a bad value before anything runs."""

from __future__ import annotations

import difflib
import math
import numbers

import ml_collections


def default_train_config() -> ml_collections.ConfigDict:
    """Defaults for `train_and_evaluate`; experiment presets override fields."""
    c = ml_collections.ConfigDict()
    c.seed = 0                    # PRNG seed: parameter init, dropout keys, MC keys.
    c.num_epochs = 1              # passes over the training source.
    c.max_steps = 0               # stop after this many optimizer steps in all (0 = no cap).
    # Optimizer: clip_by_global_norm -> add_decayed_weights -> update rule.
    c.optimizer = "sgd"           # "sgd" | "momentum" | "adam" | "rmsprop" | "ntasgd".
    c.learning_rate = 1.0         # initial learning rate (Zaremba: 1 on the summed loss).
    c.momentum = 0.9              # "momentum" only.
    c.rmsprop_decay = 0.9         # "rmsprop" only: decay of the squared-gradient average
                                  # (0.5 in the zoneout preset).
    c.ntasgd_nonmono = 5          # "ntasgd" only: start averaging the iterates after a
                                  # validation loss worse than the best one older than this
                                  # many evaluations (AWD-LSTM's non-monotone trigger); once
                                  # averaging, evaluation and checkpoints' eval use the average.
    c.clip_norm = 5.0             # clip gradients to this global norm (0 = off).
    c.clip_update = False         # clip the optimizer's step (the update) to clip_norm
                                  # instead of the gradient (the zoneout authors' Adam).
    c.weight_decay = 0.0          # weight decay, in the form weight_decay_mode says.
    c.weight_decay_mode = "gradient"  # "gradient": weight_decay * param added to the clipped
                                  # gradient, scaled by the lr (an L2 loss term: Gal's Keras
                                  # code, AWD-LSTM); "step": param -= weight_decay * param
                                  # every step, whatever the lr (Gal's Lua LM scripts).
    c.lr_window_reference = 0     # N > 0: each step's learning rate times T / N, T its
                                  # window's length (AWD-LSTM's lr * seq_len / bptt with
                                  # variable-length windows, N = 70); 0: off.
    # Epoch-level learning-rate rules, applied after each epoch's validation.
    c.lr_schedule = "constant"    # "constant" | "zaremba" | "plateau".
    c.decay_after = 4             # zaremba: if epoch (1-based) > decay_after: lr /= decay_factor.
    c.decay_factor = 2.0          # zaremba divisor (>= 1).
    c.plateau_factor = 1.5        # plateau: lr /= plateau_factor (>= 1) after an epoch whose
                                  # validation metric did not improve (zoneout paper).
    c.early_stop_patience = 0     # stop after this many epochs in a row without validation
                                  # improvement (0 = never; the zoneout presets' rule).
    # Loss.
    c.loss_sum_over_time = False  # LM: cross entropy summed over the T steps of a window and
                                  # averaged over the batch (Zaremba's scale); else averaged
                                  # over all tokens. Logged loss/ppl are always per token.
    # Evaluation.
    c.mc_samples = 0              # K for MC dropout evaluation at the end (0 = off).
    c.mc_chunk = 0                # MC samples per forward pass (0 = all K at once); halves
                                  # automatically on out-of-memory.
    c.mc_splits = ("test",)       # eval splits that also get MC evaluation at the end.
    # The library keeps the Keras-style MC pass of Gal's sentiment code (every mask redrawn
    # each batch, word types dropped too) and the numbers of runs made before these fields;
    # the Gal PTB presets take his PTB protocol (False and "pass", docs/FIDELITY.md).
    c.mc_embedding_dropout = True  # word-type (embedding) dropout also in MC passes
                                  # (False: off, as in Gal's PTB MC test pass).
    c.mc_masks = "window"         # "pass": one mask set per MC sample for the whole pass
                                  # (Gal's PTB code: one network per sample over the carried
                                  # stream); "window": redrawn every window / batch.
    # Checkpoints (workdir/checkpoints and workdir/best).
    c.checkpoint_every_steps = 0  # also save every N steps (0 = only at epoch ends).
    c.checkpoint_every_s = 600.0  # also save this many seconds after the last save (0 =
                                  # never): what a run killed without warning loses.
    c.keep_checkpoints = 3        # latest checkpoints kept; the best is kept apart.
    # Logs (workdir/metrics.jsonl, workdir/tb, console).
    c.log_every_steps = 100       # training-metrics event + NaN check every N steps.
    c.tensorboard = True          # write TensorBoard event files in workdir/tb.
    # Runtime.
    c.distributed = False         # call jax.distributed.initialize() (multi-host runs).
    c.stop_on_nan = True          # raise NonFiniteLossError on a NaN/inf training loss.
    c.time_limit_s = 0.0          # save and stop at the first step this many seconds after the
                                  # run started (0 = none); SIGTERM does the same. The same
                                  # command resumes; the final evaluation runs when training ends.
    return c


# Fields the experiment binaries add to the train block (`EXTRA_TRAIN_FIELDS` of
# experiments/configs/common.py) and the engine or `tasks.build_task` reads when present.
EXPERIMENT_FIELDS = ("carry_state", "eval_carry_state", "report_best")


def known_fields() -> tuple[str, ...]:
    """Every field a training config may hold: the defaults' and `EXPERIMENT_FIELDS`."""
    return tuple(default_train_config().keys()) + EXPERIMENT_FIELDS


def check_mapping(config, name: str = "config", none_ok: bool = True) -> None:
    """A ConfigDict or other mapping of training settings (None, all defaults, where
    `none_ok`), else one sentence (an AttributeError inside before): the one check of
    the loop's config, `with_defaults` and the optimizer's builders."""
    if (config is None and not none_ok) or (config is not None
                                            and not hasattr(config, "items")):
        raise ValueError(f"{name} must be a ConfigDict or other mapping of training "
                         f"settings (such as config.train), got {type(config).__name__}.")


def with_defaults(config) -> ml_collections.ConfigDict:
    """`config` on top of the defaults (missing fields take default values). A value of
    another type than its default's, a bool where a number belongs among them, is kept
    as given, for `check` to refuse in one sentence."""
    check_mapping(config)
    merged = default_train_config()
    for key, value in (config.items() if config is not None else []):
        if key in merged:
            try:
                if isinstance(value, bool) and not isinstance(merged[key], bool):
                    raise TypeError  # a float field took True as 1.0, silently
                merged[key] = value
            except TypeError:  # another type than the default's ("False" for a bool):
                # kept as given, for `check`'s one-sentence message on that field
                with merged.unlocked():
                    del merged[key]
                    merged[key] = value
        else:
            with merged.unlocked():
                merged[key] = value
    return merged


def is_whole(value, least: int) -> bool:
    """A whole number (numpy integers too, not a bool) of at least `least`."""
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and int(value) >= least)


def is_finite_number(value, least: float, most: float = math.inf) -> bool:
    """A finite real number (not a bool) in `[least, most]`."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value) and least <= float(value) <= most)


# Whole-number fields and their least value (0: "off" where the field says so).
_WHOLE = {"seed": 0, "num_epochs": 0, "max_steps": 0, "ntasgd_nonmono": 1, "decay_after": 0,
          "early_stop_patience": 0, "mc_samples": 0, "mc_chunk": 0,
          "checkpoint_every_steps": 0, "keep_checkpoints": 1, "log_every_steps": 0}
SEED_LIMIT = 2 ** 32
# Number fields: finite and >= 0 (the LR rules' divisors: `optim.check_lr_factor`).
_AT_LEAST_ZERO = ("time_limit_s", "checkpoint_every_s", "lr_window_reference")
# Switches (and those the experiment presets add; None where a switch may be unset): a
# word where a bool belongs, "maybe" from a command line, was taken as True.
_FLAGS = ("clip_update", "loss_sum_over_time", "mc_embedding_dropout", "tensorboard",
          "distributed", "stop_on_nan", "carry_state", "report_best")
_FLAGS_OR_NONE = ("eval_carry_state",)


def check(config, name: str = "config") -> None:
    """Raise a one-sentence ValueError for a field out of its range (`config` completed
    with the defaults), so that a bad value fails before training rather than where it
    is first read (a negative `mc_samples` failed inside JAX after the whole training).
    The optimizer's own settings and the LR rule are checked by building them
    (`optim.make_optimizer`, `optim.lr_rule`). `name`: what the message calls the
    config (the experiment binaries': "config.train"). A field no training config
    holds (`known_fields`) is refused too: a misspelt one was kept beside the default
    it meant to set, and the run trained with the default."""
    check_mapping(config, name)
    check_names(config if config is not None else {}, name)
    try:
        _check(with_defaults(config))
    except ValueError as err:
        message = str(err)
        if name != "config" and message.startswith("config."):
            message = name + message[len("config"):]
        raise ValueError(message) from None


def check_names(config, name: str = "config") -> None:
    """A one-sentence ValueError naming the first field of `config` that is no training
    setting, with the closest setting's name where one is close."""
    known = known_fields()
    where = "" if name == "config" else f" in {name}"
    if "train" in config.keys():  # the whole experiment config: its train block unread
        raise ValueError(f"Unknown training setting 'train'{where}; pass the training "
                         "settings (config.train), not the whole config.")
    for key in config.keys():
        if key in known:
            continue
        near = difflib.get_close_matches(str(key), known, n=1)
        hint = (f"did you mean {near[0]!r}?" if near else
                "the settings are default_train_config()'s fields and "
                f"{', '.join(EXPERIMENT_FIELDS)}.")
        raise ValueError(f"Unknown training setting {key!r}{where}; {hint}")


def _check(config) -> None:
    from rnnreg_jax.train import optim

    for field, least in _WHOLE.items():
        value = config[field]
        if not is_whole(value, least):
            raise ValueError(f"config.{field} must be a whole number >= {least}, got "
                             f"{value!r}.")
    if config.seed >= SEED_LIMIT:  # past int64 jax.random.key overflows; past 2**32 the
        # seeds repeat (seed and seed + 2**32 draw the same run)
        raise ValueError(f"config.seed must be below 2**32, got {config.seed}.")
    for field in _AT_LEAST_ZERO:
        value = config[field]
        if not is_finite_number(value, 0.0):
            raise ValueError(f"config.{field} must be a finite number >= 0, got {value!r}.")
    for field in ("decay_factor", "plateau_factor"):  # whichever rule is on
        optim.check_lr_factor(config[field], f"config.{field}")
    for field in _FLAGS + _FLAGS_OR_NONE:
        value = config.get(field, False)
        if not isinstance(value, bool) and not (value is None and field in _FLAGS_OR_NONE):
            unset = " or None" if field in _FLAGS_OR_NONE else ""
            raise ValueError(f"config.{field} must be True or False{unset}, got {value!r}.")
    from rnnreg_jax import noise

    if config.mc_masks not in noise.MC_MASKS:  # checked where the evaluator is made, late
        raise ValueError(f"config.mc_masks must be one of {noise.MC_MASKS}, got "
                         f"{config.mc_masks!r}.")
    splits = config.mc_splits
    if isinstance(splits, str) or not all(isinstance(s, str) for s in splits):
        raise ValueError(f"config.mc_splits must be a tuple of split names, such as "
                         f"('test',), got {splits!r}.")
    optim.make_optimizer(config)
    optim.lr_rule(config)


def check_for_task(config, task, name: str = "config") -> None:
    """A one-sentence ValueError where `config` asks for what `task` lacks: MC dropout on
    an evaluation split it does not have (an unknown `mc_splits` entry was ignored, the
    run ending without the MC pass asked for; without MC samples the splits are not
    read) or on no split at all, or early stopping without a validation split."""
    config = with_defaults(config)
    unknown = [s for s in config.mc_splits if s not in task.evals]
    if config.mc_samples and unknown:
        raise ValueError(f"{name}.mc_splits names {unknown}, which this task does not "
                         f"evaluate (its splits: {sorted(task.evals)}).")
    if config.mc_samples and not config.mc_splits and task.test_protocol is not True:
        # the run ended without the MC pass it asked for (the PTB protocol's test pass
        # takes MC samples whatever the splits)
        raise ValueError(f"{name}.mc_samples={config.mc_samples} asks for MC dropout "
                         f"evaluation, and {name}.mc_splits is empty; name the splits "
                         f"(such as ('test',); this task's: {sorted(task.evals)}) or set "
                         "mc_samples=0.")
    if config.early_stop_patience and task.validation_split is None:
        raise ValueError(f"{name}.early_stop_patience needs a validation split, and this "
                         "task evaluates none (every epoch counted as one without "
                         "improvement).")
    if task.validation_split == "test":  # the fallback of a task without "valid"
        chooser = next((setting for setting, on in (
            ("early_stop_patience", config.early_stop_patience),
            ("lr_schedule='plateau'", config.lr_schedule == "plateau"),
            ("optimizer='ntasgd'", config.optimizer == "ntasgd"),
            ("report_best", config.get("report_best"))) if on), None)
        if chooser:
            raise ValueError(f"{name}.{chooser} decides on the validation metric, and this "
                             "task's only evaluation split is 'test': it would select on "
                             "the test set; give the task a validation split or turn it "
                             "off.")
