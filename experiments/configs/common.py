"""Pieces every preset shares: the regularization block and the base config.

A config has five blocks:
  data   what to read and how to batch it
  model  the network
  reg    the regularizers, a flat block turned into a regularizer by
         `regularization(config.reg)`
  train  the engine's settings (`rnnreg_jax.train.default_train_config`)
  paper  the numbers the preset should reproduce and where they come from

Every field is read by the code that builds or trains the run (tested by
tests/test_presets_run.py), except the informational ones below.
"""

from __future__ import annotations

import ml_collections

import rnnreg_jax as rj

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


def reg_config(**overrides) -> ml_collections.ConfigDict:
    """The regularization block; every rate is a drop probability, 0 = off."""
    reg = ml_collections.ConfigDict()
    reg.input = 0.0  # dropout on every layer's input (embedding output, between layers);
    #                  the first layer's only when `hidden` > 0 (AWD's dropouti)
    reg.hidden = 0.0  # dropout between layers only (AWD's dropouth); 0 = `input` everywhere
    reg.recurrent = 0.0  # dropout on h_{t-1} into W_h (variational / naive)
    reg.output = 0.0  # dropout on the last layer's output
    reg.cell = 0.0  # rnnDrop mask on the cell state
    reg.tie = "step"  # "sequence": Gal's tied masks; "step": Zaremba / naive dropout
    reg.per_gate = False  # a separate mask per gate's copy of x and h (Gal's untied variant)
    reg.embedding = 0.0  # Gal's embedding dropout: word types dropped per sequence
    reg.update_dropout = 0.0  # Semeniuta recurrent dropout on the cell update g
    reg.update_tie = "step"  # tying of the update mask
    reg.update_eval_scaling = False  # zoneout authors' form: {0,1} mask, x keep prob at eval
    reg.output_zoneout = False  # where the update was dropped, keep o_{t-1}
    reg.zoneout_cells = 0.0  # zoneout probability of c
    reg.zoneout_hiddens = 0.0  # zoneout probability of h
    reg.zoneout_shared = False  # one zoneout mask for c and h
    reg.stochastic_depth = 0.0  # probability that the layer keeps its state
    reg.weight_noise = 0.0  # std of Gaussian noise on W_h, per minibatch
    reg.norm_stabilizer = 0.0  # beta of the norm-stabilizer penalty
    reg.weight_drop = 0.0  # DropConnect on W_h, one mask per minibatch (AWD-LSTM)
    reg.activation_reg = 0.0  # AR alpha: alpha * mean(h^2) of the dropped last output
    reg.temporal_activation_reg = 0.0  # TAR beta: beta * mean((h_t - h_{t-1})^2), last layer
    for key, value in overrides.items():
        if key not in reg:
            raise ValueError(f"Unknown reg field {key!r}.")
        reg[key] = value
    return reg


def regularization(reg: ml_collections.ConfigDict) -> rj.Regularizer:
    """The regularizer a reg block describes."""
    parts = [
        rj.variational(input=reg.input, recurrent=reg.recurrent, output=reg.output,
                       cell=reg.cell, embedding=reg.embedding, per_gate=reg.per_gate,
                       tie=reg.tie),
        rj.recurrent_dropout(reg.update_dropout, tie=reg.update_tie,
                             output_zoneout=reg.output_zoneout,
                             eval_scaling=reg.update_eval_scaling),
        rj.zoneout(reg.zoneout_cells, reg.zoneout_hiddens, shared=reg.zoneout_shared),
        rj.stochastic_depth(reg.stochastic_depth),
        rj.norm_stabilizer(reg.norm_stabilizer),
        rj.dropout("hidden", reg.hidden, tie=reg.tie, per_gate=reg.per_gate),
        rj.weight_drop(reg.weight_drop),  # before weight noise: W_h * m + sigma * eps
        rj.weight_noise(reg.weight_noise),
        rj.activation_regularization(reg.activation_reg),
        rj.temporal_activation_regularization(reg.temporal_activation_reg),
    ]
    return rj.compose(*parts)


def choices() -> dict[str, tuple[str, ...]]:
    """The fields that name one of a fixed set of options, and the options (the
    library's own tables where it has them)."""
    from rnnreg_jax import cells, noise
    from rnnreg_jax.train import optim

    return {
        "model.cell": cells.CELL_TYPES + cells.EXTRA_CELL_TYPES,
        "train.optimizer": optim.OPTIMIZERS,
        "train.lr_schedule": optim.LR_SCHEDULES,
        "train.mc_masks": noise.MC_MASKS,
        "data.dataset": ("ptb_word", "ptb_char", "pmnist", "cornell", "imdb"),
        "data.batching": ("contiguous", "shuffled", "overlapping"),
        "data.source": ("files", "tfds"),
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
# dropout until `mc_embedding_dropout` made it a choice).
VALUE_BEFORE_ADDED = {("train", "mc_embedding_dropout"): True}


def config_differences(stored: dict, current: dict, sections=FIXED_SECTIONS):
    """`(section, field, stored_value, current_value)` where two configs (as JSON
    dicts) differ in `sections` (those the stored config has). A field the stored
    config lacks was added to the code later and counts as unset there: equal to
    False, 0 or None, or its `VALUE_BEFORE_ADDED`."""
    out = []
    for section in sections:
        if section not in stored:
            continue  # not a run of this code (or a hand-made record): nothing to compare
        old, new = stored[section], current.get(section, {})
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
