"""The training API's argument checks: a misspelt field, a word where a switch belongs and
an LR factor that would make the rate grow are one-sentence ValueErrors, not silent runs."""

from __future__ import annotations

import re

import pytest
import train_helpers as th

from experiments.configs import common, pmnist, ptb, sentiment
from rnnreg_jax import train
from rnnreg_jax.train import optim
from rnnreg_jax.train.config import EXPERIMENT_FIELDS, check, known_fields

ALL_PRESETS = [(module.__name__.rsplit(".", 1)[-1], name, fn)
               for module in (ptb, pmnist, sentiment) for name, fn in module.PRESETS.items()]


def _task():
    return train.Task(model=th.tiny_lm(), kind="lm", train=th.LMSource(),
                      evals={"valid": th.LMSource(seed=1)})


def _refused(config, message, name="config"):
    with pytest.raises(ValueError) as err:
        check(config, name)
    assert str(err.value) == message


# --- unknown fields ------------------------------------------------------------------

def test_a_misspelt_field_is_refused_with_the_field_it_meant(tmp_path):
    """It used to be kept beside the default: the run trained at learning_rate 1.0."""
    message = "Unknown training setting 'learning_rte'; did you mean 'learning_rate'?"
    _refused({"learning_rte": 0.1}, message)
    _refused({"learning_rte": 0.1}, "Unknown training setting 'learning_rte' in "
             "config.train; did you mean 'learning_rate'?", "config.train")
    config = train.default_train_config()
    config.learning_rte = 0.1  # a ConfigDict takes a new field without a word
    _refused(config, message)
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        train.train_and_evaluate(_task(), config, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()  # refused before the workdir was made


def test_a_field_like_no_setting_names_where_the_settings_are():
    _refused({"colour": "red"}, "Unknown training setting 'colour'; the settings are "
             "default_train_config()'s fields and carry_state, eval_carry_state, report_best.")


def test_a_config_that_is_not_a_mapping_is_one_sentence():
    _refused("sgd", "config must be a ConfigDict or other mapping of training settings "
             "(such as config.train), got str.")
    with pytest.raises(ValueError, match=r"^config must be a ConfigDict .* got int\.$"):
        train.with_defaults(3)


def test_every_default_and_experiment_field_passes():
    check(None)
    check({})
    check(train.default_train_config())
    check({"carry_state": True, "eval_carry_state": None, "report_best": True})
    # the experiments' extra fields are the ones the library knows
    assert set(common.EXTRA_TRAIN_FIELDS) == set(EXPERIMENT_FIELDS)
    assert set(common.train_config().keys()) == set(known_fields())


@pytest.mark.parametrize("task, name, preset", ALL_PRESETS,
                         ids=[f"{t}:{n}" for t, n, _ in ALL_PRESETS])
def test_every_preset_passes_the_checks(task, name, preset):
    config = preset()
    check(config.train, "config.train")
    common.check_config(config)  # the binaries' check
    assert set(config.train.keys()) <= set(known_fields())


def test_a_preset_with_a_misspelt_train_field_is_refused():
    config = ptb.tiny()
    with config.train.unlocked():
        config.train.plateau_facter = 2.0
    with pytest.raises(ValueError) as err:
        common.check_config(config)
    assert str(err.value) == ("Unknown training setting 'plateau_facter' in config.train; "
                              "did you mean 'plateau_factor'?")


# --- switches ------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["False", "True", 0.5, None])
def test_make_optimizer_refuses_a_word_for_clip_update(value):
    """bool("False") is True: the clip moved onto the step without a word."""
    config = train.default_train_config()
    with config.ignore_type():
        config.clip_update = value
    with pytest.raises(ValueError) as err:
        train.make_optimizer(config)
    assert str(err.value) == f"config.clip_update must be True or False, got {value!r}."


def test_a_word_for_a_switch_through_check_is_one_sentence():
    """ml_collections' "Could not override field 'clip_update' (reference)" TypeError before."""
    _refused({"clip_update": "False"}, "config.clip_update must be True or False, got 'False'.")
    _refused({"clip_update": "False"}, "config.train.clip_update must be True or False, got "
             "'False'.", "config.train")
    _refused({"learning_rate": "0.1"},
             "config.learning_rate must be a finite number >= 0, got '0.1'.")
    _refused({"num_epochs": 1.5}, "config.num_epochs must be a whole number >= 0, got 1.5.")


# --- learning-rate factors ---------------------------------------------------------------

def _rule(**fields):
    config = train.default_train_config()
    with config.ignore_type():
        config.update(fields)
    return config


@pytest.mark.parametrize("field, schedule", [("decay_factor", "zaremba"),
                                             ("plateau_factor", "plateau")])
@pytest.mark.parametrize("value", [0.0, -2.0, 0.5, float("inf"), float("nan"), "2"])
def test_an_lr_factor_that_is_not_a_divisor_of_at_least_one_is_refused(field, schedule, value):
    """0 divided by zero, -2 made the rate negative, 0.5 made it grow on a plateau."""
    message = (f"config.{field} must be a finite number >= 1 (the learning rate is divided "
               f"by it), got {value!r}.")
    config = _rule(lr_schedule=schedule, **{field: value})
    for call in (lambda: train.next_learning_rate(config, 10, 1.0, False),
                 lambda: optim.lr_rule(config), lambda: check(config)):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == message


def test_a_factor_of_one_keeps_the_rate_and_the_presets_factors_shrink_it():
    assert train.next_learning_rate(_rule(lr_schedule="plateau", plateau_factor=1.0),
                                    3, 0.5, False) == 0.5
    for factor in (2.0, 1.2, 1.15):  # Zaremba's small / medium / large, Gal's large
        lr = train.next_learning_rate(_rule(lr_schedule="zaremba", decay_factor=factor,
                                            decay_after=1), 2, 1.0, True)
        assert lr == pytest.approx(1.0 / factor) and lr < 1.0
    assert train.next_learning_rate(_rule(lr_schedule="plateau", plateau_factor=1.5),
                                    2, 1.0, False) == pytest.approx(1 / 1.5)


@pytest.mark.parametrize("value", [4.5, "4", -1])
def test_lr_rule_refuses_a_decay_after_that_is_not_whole(value):
    """int() cut 4.5 to 4 and took "4"."""
    with pytest.raises(ValueError) as err:
        optim.lr_rule(_rule(lr_schedule="zaremba", decay_after=value))
    assert str(err.value) == f"config.decay_after must be a whole number >= 0, got {value!r}."


# --- a plain mapping for the optimizer and the LR rules -------------------------------------

def test_a_dict_of_training_settings_makes_the_optimizer_of_the_equal_configdict():
    """A dict failed inside: `AttributeError: 'dict' object has no attribute 'optimizer'`."""
    import jax.numpy as jnp
    import numpy as np

    fields = {"optimizer": "adam", "learning_rate": 0.01, "clip_norm": 1.0,
              "weight_decay": 0.1, "weight_decay_mode": "step", "clip_update": True}
    config = train.default_train_config()
    config.update(fields)
    params = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array([0.5])}
    grads = {"w": jnp.array([4.0, 0.0, -1.0]), "b": jnp.array([2.0])}
    updates = []
    for given in (config, config.to_dict(), fields):  # whole, or the defaults filled in
        tx = optim.make_optimizer(given)
        state = tx.init(params)
        for _ in range(2):
            step, state = tx.update(grads, state, params)
        updates.append(step)
    for step in updates[1:]:
        for key in params:
            np.testing.assert_array_equal(step[key], updates[0][key])
    # the field checks apply to a dict as to a ConfigDict
    with pytest.raises(ValueError) as err:
        optim.make_optimizer({**fields, "learning_rate": -1.0})
    assert str(err.value) == "config.learning_rate must be a finite number >= 0, got -1.0."


def test_a_dict_of_training_settings_drives_the_lr_rules():
    rule = {"lr_schedule": "zaremba", "decay_after": 1, "decay_factor": 2.0}
    assert train.next_learning_rate(rule, 2, 1.0, True) == 0.5
    assert optim.lr_rule(rule)(1, 1.0, True) == 1.0
    assert optim.lr_rule({})(5, 0.3, False) == 0.3  # the default rule: constant
    with pytest.raises(ValueError) as err:
        optim.lr_rule({"lr_schedule": "plateau", "plateau_factor": 0.5})
    assert str(err.value) == ("config.plateau_factor must be a finite number >= 1 (the "
                              "learning rate is divided by it), got 0.5.")


@pytest.mark.parametrize("value", ["adam", None, [("optimizer", "adam")], 3])
def test_the_optimizer_and_lr_rules_refuse_what_is_no_mapping(value):
    """An AttributeError inside before (`'str' object has no attribute 'optimizer'`)."""
    message = ("config must be a ConfigDict or other mapping of training settings (such as "
               f"config.train), got {type(value).__name__}.")
    for call in (optim.make_optimizer, optim.lr_rule,
                 lambda c: train.next_learning_rate(c, 1, 1.0, True)):
        with pytest.raises(ValueError) as err:
            call(value)
        assert str(err.value) == message
