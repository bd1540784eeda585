"""Pieces every preset shares: the regularization block and the base config.

A config has five blocks:
  data   what to read and how to batch it
  model  the network
  reg    the regularizers, one sub-block per constructor (`reg.zoneout.hiddens`), turned
         into a regularizer by `regularization(config.reg)`
  train  the engine's settings (`rnnreg_jax.train.default_train_config`)
  paper  the numbers the preset should reproduce and where they come from

Every field is read by the code that builds or trains the run (tested by
tests/test_presets_run.py), except the informational ones below.
"""

from __future__ import annotations

import inspect
import math

import ml_collections

import rnnreg_jax as rj
from rnnreg_jax.train.config import is_finite_number, is_whole

# Fields that record rather than configure: `preset` names the run and `paper` holds
# the reference numbers; experiments.report reads both from config.json.
INFORMATIONAL_FIELDS = ("preset", "paper")


def pick_preset(presets, name: str, where: str = "") -> ml_collections.ConfigDict:
    """`presets[name]()`, or a ValueError of one sentence naming the valid presets (the
    message of a bare `--config=NAME` and of `--config=FILE.py:NAME` alike)."""
    if name not in presets:
        raise ValueError(f"Unknown preset '{name}'{where}; valid presets: "
                         f"{', '.join(sorted(presets))}.")
    return presets[name]()


# The regularizers a config's reg block can switch on, keyed by their constructors in
# `rnnreg_jax.regularizers`, in the order they compose (weight drop before weight noise:
# W_h * m + sigma * eps). A block's fields
# are its constructor's arguments with their defaults (rates 0: off), so every option of
# the library's regularizers is a flag: `--config.reg.zoneout.tie=sequence`.
REG_CATALOG = ("variational", "dropout", "recurrent_dropout", "zoneout", "stochastic_depth",
               "weight_drop", "weight_noise", "norm_stabilizer", "activation_regularization",
               "temporal_activation_regularization")
# Arguments the library requires: in a config they start off (dropout's site is the one
# it has no other constructor for, AWD's dropout between layers).
_REQUIRED_DEFAULTS = {"site": "hidden"}

# The flat reg block of runs recorded before the block was keyed by constructor: field ->
# the (constructor, argument)s it set. `tie` and `per_gate` also set the hidden dropout's.
LEGACY_REG_FIELDS = {
    "input": (("variational", "input"),), "recurrent": (("variational", "recurrent"),),
    "output": (("variational", "output"),), "cell": (("variational", "cell"),),
    "embedding": (("variational", "embedding"),),
    "tie": (("variational", "tie"), ("dropout", "tie")),
    "per_gate": (("variational", "per_gate"), ("dropout", "per_gate")),
    "hidden": (("dropout", "rate"),),
    "update_dropout": (("recurrent_dropout", "rate"),),
    "update_tie": (("recurrent_dropout", "tie"),),
    "update_eval_scaling": (("recurrent_dropout", "eval_scaling"),),
    "output_zoneout": (("recurrent_dropout", "output_zoneout"),),
    "zoneout_cells": (("zoneout", "cells"),), "zoneout_hiddens": (("zoneout", "hiddens"),),
    "zoneout_shared": (("zoneout", "shared"),),
    "stochastic_depth": (("stochastic_depth", "rate"),),
    "weight_noise": (("weight_noise", "std"),), "weight_drop": (("weight_drop", "rate"),),
    "norm_stabilizer": (("norm_stabilizer", "beta"),),
    "activation_reg": (("activation_regularization", "alpha"),),
    "temporal_activation_reg": (("temporal_activation_regularization", "beta"),),
}


def _arguments(name: str) -> dict:
    """A constructor's arguments and their config defaults."""
    out = {}
    for param in inspect.signature(getattr(rj.regularizers, name)).parameters.values():
        if param.default is inspect.Parameter.empty:
            out[param.name] = _REQUIRED_DEFAULTS.get(param.name, 0.0)
        else:
            out[param.name] = param.default
    return out


def reg_config(**blocks: dict) -> ml_collections.ConfigDict:
    """The reg block: one sub-block per constructor of `REG_CATALOG` with its arguments'
    defaults, updated from `blocks` (`zoneout=dict(hiddens=0.25)`); every rate is a drop
    probability, 0 = off."""
    reg = ml_collections.ConfigDict({name: _arguments(name) for name in REG_CATALOG})
    check_reg_names(blocks)
    for name, fields in blocks.items():
        for field, value in fields.items():
            reg[name][field] = value
    return reg


def check_reg_names(blocks: dict) -> None:
    """ValueError (one sentence) for a sub-block `REG_CATALOG` does not have or an
    argument its constructor does not take: a typo there would otherwise train without
    it, silently, while the run's record kept the block."""
    for name, fields in blocks.items():
        if name not in REG_CATALOG:
            raise ValueError(f"Unknown regularizer {name!r} in the reg block; choose from "
                             f"{', '.join(REG_CATALOG)}.")
        arguments = _arguments(name)
        if not isinstance(fields, dict):
            raise ValueError(f"reg.{name} must be a block of {name}'s arguments "
                             f"({', '.join(arguments)}), got {fields!r}.")
        for field in fields:
            if field not in arguments:
                raise ValueError(f"{name} has no argument {field!r}; its arguments: "
                                 f"{', '.join(arguments)}.")


def migrate_reg(reg: dict) -> dict:
    """A recorded reg block in today's layout: a flat block (runs recorded before it was
    keyed by constructor) becomes the keyed one with the same meaning; a keyed one is
    returned as it is."""
    if not any(name in reg for name in LEGACY_REG_FIELDS) or any(
            isinstance(value, dict) for value in reg.values()):
        return reg
    out = reg_config().to_dict()
    for field, value in reg.items():
        for name, argument in LEGACY_REG_FIELDS.get(field, ()):
            out[name][argument] = value
    return out


def regularizers(reg) -> dict[str, rj.Regularizer]:
    """The regularizer of each sub-block of a reg block (a flat block of older runs too),
    by constructor name in `REG_CATALOG` order."""
    if not isinstance(reg, dict):  # a ConfigDict: read field by field (reads are tracked)
        reg = {name: {k: reg[name][k] for k in reg[name].keys()} if isinstance(
            reg[name], ml_collections.ConfigDict) else reg[name] for name in reg.keys()}
    reg = migrate_reg(reg)
    check_reg_names(reg)
    members = {}
    for name in (n for n in REG_CATALOG if n in reg):
        try:
            members[name] = getattr(rj.regularizers, name)(**reg[name])
        except ValueError as err:  # the constructor's sentence names a field, not its block
            raise ValueError(f"config.reg.{name}: {err}") from None
    return members


def regularization(reg) -> rj.Regularizer:
    """The regularizer a reg block describes (a flat block of older runs too)."""
    return rj.compose(*regularizers(reg).values())


# Each experiment binary's data sets (experiments/<task>.py).
TASK_DATASETS = {"ptb": ("ptb_word", "ptb_char"), "pmnist": ("pmnist",),
                 "sentiment": ("cornell", "imdb")}


def choices() -> dict[str, tuple[str, ...]]:
    """The fields that name one of a fixed set of options, and the options (the
    library's own tables where it has them)."""
    from rnnreg_jax import cells, noise, tasks
    from rnnreg_jax.data.sentiment import CORNELL_SPLITS, PADDINGS
    from rnnreg_jax.model_init import HEAD_INITS, SOFTMAX_BIAS_INITS
    from rnnreg_jax.train import optim

    return {
        "model.cell": cells.CELL_TYPES + cells.EXTRA_CELL_TYPES,
        "model.head_init": HEAD_INITS,
        "model.softmax_bias_init": SOFTMAX_BIAS_INITS,
        "train.optimizer": optim.OPTIMIZERS,
        "train.lr_schedule": optim.LR_SCHEDULES,
        "train.mc_masks": noise.MC_MASKS,
        "data.dataset": tuple(d for sets in TASK_DATASETS.values() for d in sets),
        "data.batching": tasks.LM_BATCHINGS,
        "data.eval_tail": tasks.EVAL_TAILS,
        "data.source": ("files", "tfds"),
        "data.padding": PADDINGS,
        "data.split": CORNELL_SPLITS,
    }


def check_choices(config) -> None:
    """Raise ValueError (one sentence) where a field names no option it has, before
    any data is read or anything is written."""
    for dotted, options in choices().items():
        section, field = dotted.split(".")
        block = config.get(section)
        if block is None or field not in block:
            continue
        if block[field] not in options:
            raise ValueError(f"config.{dotted} must be one of {', '.join(options)}; got "
                             f"{block[field]!r}.")


def _whole(least: int):
    return (lambda value: is_whole(value, least)), f"a whole number >= {least}"


def _finite(least: float, most: float = math.inf, none_ok: bool = False):
    def ok(value):
        return none_ok if value is None else is_finite_number(value, least, most)
    bound = (f" in [{least:g}, {most:g}]" if math.isfinite(most) and math.isfinite(least)
             else f" >= {least:g}" if math.isfinite(least)
             else f" <= {most:g}" if math.isfinite(most) else "")  # no bound said: any
    return ok, f"a finite number{bound}" + (" or None" if none_ok else "")


def _widths(value) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) > 0
            and all(is_whole(width, 1) for width in value))


# The numeric fields of the model and data blocks and the values they take (the
# training block's: `rnnreg_jax.train.config.check`).
RANGES = {
    "model.hidden_sizes": (_widths, "a non-empty sequence of whole numbers >= 1"),
    "model.embed_size": _whole(1),
    "model.unroll": _whole(1),
    "model.init_scale": _finite(0.0, none_ok=True),
    "model.embed_init_scale": _finite(0.0, none_ok=True),
    "model.forget_bias": _finite(-math.inf),
    "data.batch_size": _whole(1),
    "data.eval_batch_size": _whole(1),
    "data.test_batch_size": _whole(1),
    "data.seq_len": _whole(1),
    "data.stride": _whole(1),
    "data.vocab_size": _whole(1),
    "data.validation_size": _whole(0),
    "data.shuffle_seed": _whole(0),
    "data.permutation_seed": _whole(0),
    "data.split_seed": _whole(0),
    "data.window_min_len": _whole(1),
    "data.window_bucket": _whole(1),
    "data.window_std": _finite(0.0),
    "data.window_short_prob": _finite(0.0, 1.0),
}


def check_ranges(config) -> None:
    """Raise ValueError (one sentence) where a numeric field of the model or data block
    is out of its range, before any data is read or anything is written (a negative
    width failed inside JAX, a zero embedding or unroll ran)."""
    for dotted, (ok, expected) in RANGES.items():
        section, field = dotted.split(".")
        block = config.get(section)
        if block is None or field not in block:
            continue
        if not ok(block[field]):
            raise ValueError(f"config.{dotted} must be {expected}; got {block[field]!r}.")


def check_config(config) -> None:
    """Every check a binary makes of an experiment config before anything runs: the
    options (`check_choices`), the model and data numbers (`check_ranges`), the model
    settings that clash with each other, with the cell or with the reg block
    (`combinations.check_model`) and the train block (`rnnreg_jax.train.config.check`);
    ValueError, one sentence."""
    from experiments.configs.combinations import check_model
    from rnnreg_jax.train.config import check

    check_choices(config)
    check_ranges(config)
    check_model(config)
    check(config.train, "config.train")


def paper_config(source: str = "", **numbers) -> ml_collections.ConfigDict:
    """Reference numbers of the preset (None where the paper gives none)."""
    paper = ml_collections.ConfigDict()
    paper.source = source
    for key in ("valid", "test", "test_mc"):
        paper[key] = numbers.pop(key, None)
    if numbers:
        raise ValueError(f"Unknown paper numbers {sorted(numbers)}.")
    return paper


# Fields the experiments add to the engine's config: `carry_state` decides how
# the task is built (LM state carried between windows and the batch-1 test protocol);
# `eval_carry_state` (None: as `carry_state`) whether evaluation carries it;
# `report_best` whether the final evaluation (and `experiments.evaluate` by default)
# reads the best validation checkpoint without early stopping (the zoneout authors'
# char-level and pMNIST scripts); early stopping always does.
EXTRA_TRAIN_FIELDS = {"carry_state": False, "eval_carry_state": None, "report_best": False}


def train_config(**overrides) -> ml_collections.ConfigDict:
    """The engine's defaults (`rnnreg_jax.train.default_train_config`) with overrides."""
    from rnnreg_jax.train import default_train_config

    train = default_train_config()
    with train.unlocked():
        for key, value in EXTRA_TRAIN_FIELDS.items():
            if key not in train:
                train[key] = value
    for key, value in overrides.items():
        if key not in train:
            raise ValueError(f"Unknown train field {key!r}.")
        train[key] = value
    return train


# The sections that define what a run trained: a workdir resumes only under the same
# values, and the report flags commands whose preset has changed in them since.
FIXED_SECTIONS = ("model", "data", "reg")


# Fields added after runs were recorded whose earlier behaviour is not "off": the value
# that does what the code did before the field existed (MC passes kept word-type
# dropout until `mc_embedding_dropout` made it a choice; sentiment batches were
# left-padded until `data.padding` made lengths a choice).
VALUE_BEFORE_ADDED = {("train", "mc_embedding_dropout"): True, ("data", "padding"): "left",
                      ("train", "weight_decay_mode"): "gradient",
                      ("model", "head_init"): "lecun_normal",
                      ("model", "softmax_bias_init"): "uniform",
                      ("model", "embed_init_scale"): None,
                      # the draws of data.batching=variable, which did nothing before
                      ("data", "window_short_prob"): 0.05, ("data", "window_std"): 5.0,
                      ("data", "window_min_len"): 5, ("data", "window_bucket"): 1,
                      # off before, and unlike most training numbers it changes the run
                      ("train", "lr_window_reference"): 0,
                      # evaluation dropped the streams' tail before
                      ("data", "eval_tail"): "drop"}


def flat_block(block: dict) -> dict:
    """A block's fields, a sub-block's as `name.field` (the reg block's constructors)."""
    out = {}
    for field, value in block.items():
        if isinstance(value, dict):
            out.update({f"{field}.{k}": v for k, v in value.items()})
        else:
            out[field] = value
    return out


def _built(name: str, block) -> rj.Regularizer | str:
    try:
        return getattr(rj.regularizers, name)(**block)
    except (TypeError, ValueError) as err:  # a block no constructor takes: compare fields
        return f"{type(err).__name__}: {err}"


def _differing_regularizers(old: dict, new: dict) -> tuple[dict, dict]:
    """The two reg blocks without the constructors that build the same regularizer from
    both (so settings that do nothing, such as the tie of a rate-0 mask, never differ)."""
    same = {name for name in set(old) & set(new)
            if isinstance(old[name], dict) and isinstance(new[name], dict)
            and _built(name, old[name]) == _built(name, new[name])}
    return ({k: v for k, v in old.items() if k not in same},
            {k: v for k, v in new.items() if k not in same})


def config_differences(stored: dict, current: dict, sections=FIXED_SECTIONS):
    """`(section, field, stored_value, current_value)` where two configs (as JSON
    dicts) differ in `sections` (those the stored config has); sub-blocks' fields as
    `name.field`, a stored flat reg block read in today's layout (`migrate_reg`), and a
    reg constructor that builds the same regularizer from both left out. A field
    the stored config lacks was added to the code later and counts as unset there: equal
    to False, 0 or None, or its `VALUE_BEFORE_ADDED`."""
    out = []
    for section in sections:
        if section not in stored:
            continue  # not a run of this code (or a hand-made record): nothing to compare
        old, new = stored[section], current.get(section, {})
        if section == "reg":
            old, new = _differing_regularizers(migrate_reg(old), new)
        old, new = flat_block(old), flat_block(new)
        for field in sorted(set(old) | set(new)):
            value = new.get(field)
            if field in old:
                before = old[field]
            elif (section, field) in VALUE_BEFORE_ADDED:
                before = VALUE_BEFORE_ADDED[section, field]
            elif value in (False, 0, None):
                continue
            else:
                before = False if isinstance(value, bool) else 0
            if before != value:
                out.append((section, field, before, value))
    return out
