"""The presets follow the authors' protocols: paper numbers on the right rows, the
zoneout character-level input map, window offsets and model selection, the pMNIST
split, the final evaluation's checkpoint and `experiments.evaluate`'s default."""

from __future__ import annotations

import json

import numpy as np
import pytest
import train_helpers as th

from experiments import evaluate
from experiments.configs import pmnist as pmnist_configs
from experiments.configs import ptb as ptb_configs
from experiments.configs import sentiment as sentiment_configs
from rnnreg_jax import train
from rnnreg_jax.train.logging import read_metrics
from tests import data_fixtures as fx

th.enable_compilation_cache()

CHAR_PRESETS = [name for name in ptb_configs.PRESETS if name.endswith("_char")
                or name.startswith("zoneout_char")]

# Gal & Ghahramani 2016, Table 1: (valid, test, MC test) per preset.
GAL_TABLE_1 = {
    "variational_medium": (81.8, 79.7, 79.0),  # tied weights
    "variational_medium_untied": (81.9, 79.7, 78.6),  # untied weights
    "variational_large": (77.3, 75.0, 74.1),  # tied weights
    "variational_large_untied": (77.9, 75.2, 73.4),  # untied weights (the v3 script's)
}


@pytest.mark.parametrize("name", sorted(GAL_TABLE_1))
def test_gal_presets_carry_their_own_rows_numbers(name):
    config = ptb_configs.PRESETS[name]()
    paper = config.paper
    assert (paper.valid, paper.test, paper.test_mc) == GAL_TABLE_1[name]
    untied = name.endswith("_untied")
    assert config.reg.variational.per_gate == untied  # "untied weights": one mask per gate
    assert ("untied" in paper.source) == untied
    # main_new_dropout_SOTA_v3.lua: the large model's 1e-7 decay taken every step after the
    # SGD step (not scaled by the decaying rate); the medium model has none
    large = "large" in name
    assert config.train.weight_decay == (1e-7 if large else 0.0)
    assert config.train.weight_decay_mode == ("step" if large else "gradient")


def test_zaremba_presets_carry_table_1():
    numbers = {name: (ptb_configs.PRESETS[name]().paper.valid,
                      ptb_configs.PRESETS[name]().paper.test)
               for name in ("zaremba_small", "zaremba_medium", "zaremba_large")}
    assert numbers == {"zaremba_small": (120.7, 114.5), "zaremba_medium": (86.2, 82.7),
                       "zaremba_large": (82.2, 78.4)}


def test_char_presets():
    assert len(CHAR_PRESETS) == 7
    for name in CHAR_PRESETS:
        config = ptb_configs.PRESETS[name]()
        # zoneout_char_ptb.py: Linear(50, 4*1000) into the gates, `--augment` True, a fixed
        # budget of 2000 epochs with the best validation parameters kept.
        assert config.model.embed_to_gates, name
        assert config.data.augment, name
        assert config.train.report_best and not config.train.early_stop_patience, name
        assert config.train.num_epochs == 2000, name


def test_no_other_ptb_preset_shifts_its_windows():
    for name, preset in ptb_configs.PRESETS.items():
        if name not in CHAR_PRESETS:
            assert not preset().data.augment, name


def test_pmnist_presets_split_50k_10k_and_report_the_best_validation_model():
    for name, preset in pmnist_configs.PRESETS.items():
        config = preset()
        assert config.data.validation_size == 10000, name
        assert config.train.report_best, name


def _char_data(root):
    line = " " + " ".join(f"w{i}" for i in range(20)) + " \n"
    for split, repeat in (("train", 20), ("valid", 4), ("test", 4)):
        fx.write(root / "ptb_char" / f"ptb.char.{split}.txt", fx.char_text(line * repeat))
    return str(root)


def test_the_char_task_shifts_training_windows_only(tmp_path):
    from experiments.configs.common import regularization
    from rnnreg_jax.tasks import build_task

    data_dir = _char_data(tmp_path)
    config = ptb_configs.zoneout_char()
    with config.unlocked():
        config.data.batch_size = config.data.eval_batch_size = 4
        config.data.seq_len = config.data.stride = 6
    task = build_task(config, regularization(config.reg), data_dir)
    assert task.train.random_offset
    assert {task.train.start_offset(e) for e in range(20)} != {0}
    assert all(not getattr(s, "random_offset", False) for s in task.evals.values())
    config.data.augment = False
    plain = build_task(config, regularization(config.reg), data_dir)
    assert {plain.train.start_offset(e) for e in range(20)} == {0}
    # A record written before the field existed had no shift.
    with config.unlocked():
        del config.data["augment"]
    assert not build_task(config, regularization(config.reg), data_dir).train.random_offset
    with config.unlocked():
        config.data.augment, config.data.batching = True, "contiguous"
    with pytest.raises(ValueError, match="data.augment"):
        build_task(config, regularization(config.reg), data_dir)


class _ReversedLM(th.LMSource):
    """The training stream's rule run backwards: learning the training data makes
    this validation worse, so the best epoch comes early."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.data = np.ascontiguousarray(self.data[:, ::-1])


@pytest.mark.parametrize("report_best", [True, False])
def test_report_best_evaluates_the_best_validation_checkpoint(tmp_path, report_best):
    """`train.report_best` without early stopping: every epoch runs, and the final
    evaluation reads best/ (the zoneout char and pMNIST scripts); without it, the last
    epoch's model (Zaremba, Gal)."""
    task = train.Task(model=th.tiny_lm(hidden=16), kind="lm",
                      train=th.LMSource(batch=8, steps=6, num_windows=8),
                      evals={"valid": _ReversedLM(batch=8, steps=6, num_windows=3, seed=1)},
                      carry_state=False)
    c = train.default_train_config()
    c.num_epochs, c.learning_rate, c.loss_sum_over_time = 4, 1.0, True
    c.report_best = report_best
    final = train.train_and_evaluate(task, c, str(tmp_path))
    valid = [e["loss"] for e in read_metrics(str(tmp_path))
             if e["split"] == "valid" and e["phase"] == "epoch_end"]
    assert len(valid) == c.num_epochs and valid[-1] > min(valid)  # no early stop, past best
    if report_best:
        assert final["valid/loss"] == pytest.approx(min(valid), rel=1e-5)
        assert final["eval_epoch"] == int(np.argmin(valid)) + 1
    else:
        assert final["valid/loss"] == pytest.approx(valid[-1], rel=1e-5)
        assert final["eval_epoch"] == c.num_epochs


def _all_presets():
    for module in (ptb_configs, pmnist_configs, sentiment_configs):
        for name, preset in module.PRESETS.items():
            yield module.__name__.rsplit(".", 1)[1], name, preset


def _record(tmp_path, config_dict) -> str:
    (tmp_path / "config.json").write_text(json.dumps({"config": config_dict}))
    return str(tmp_path)


def test_evaluate_defaults_to_the_checkpoint_the_run_reports(tmp_path):
    expected_best = {("ptb", n) for n in ("zoneout", "recurrent_dropout_output_zoneout",
                                          "zoneout_cells_states", "recurrent_dropout",
                                          "stochastic_depth", "norm_stabilizer",
                                          "zoneout_cells", "baseline", "weight_noise")}
    expected_best |= {("ptb", n) for n in CHAR_PRESETS}
    expected_best |= {("pmnist", n) for n in pmnist_configs.PRESETS}
    # AWD's main.py tests the model it saved at the best validation loss.
    expected_best |= {("ptb", "awd"), ("ptb", "awd_small")}
    # Zaremba, Gal (PTB and sentiment): the final model.
    for task, name, preset in _all_presets():
        config = json.loads(json.dumps(preset().to_dict(), default=str))
        got = evaluate.default_checkpoint(evaluate.load_config(_record(tmp_path, config)))
        assert got == ("best" if (task, name) in expected_best else "latest"), (task, name)
    # A record from before `report_best`: best only under early stopping.
    config = json.loads(json.dumps(pmnist_configs.zoneout().to_dict(), default=str))
    del config["train"]["report_best"]
    assert evaluate.default_checkpoint(evaluate.load_config(_record(tmp_path, config))) \
        == "latest"
    config["train"]["early_stop_patience"] = 3
    assert evaluate.default_checkpoint(evaluate.load_config(_record(tmp_path, config))) \
        == "best"


def test_every_preset_names_options_the_binaries_accept():
    """`check_choices`, `check_ranges` and the training config's check (which the
    binaries run before anything else) pass on every preset of every task: a preset
    naming an option its table lacks, or a value out of range, could not run."""
    from experiments.configs.common import RANGES, check_config

    checked = set()
    for task, name, preset in _all_presets():
        config = preset()
        try:
            check_config(config)
        except ValueError as err:
            raise AssertionError(f"{task}:{name}: {err}") from err
        checked |= {d for d in RANGES if d.split(".")[1] in config[d.split(".")[0]]}
    assert checked == set(RANGES)  # every field of the table is some preset's


@pytest.mark.parametrize("dotted, value, expected", [
    ("model.hidden_sizes", (16, 0), "a non-empty sequence of whole numbers >= 1; got (16, 0)."),
    ("model.init_scale", float("nan"), "a finite number >= 0 or None; got nan."),
    ("model.embed_size", 2.0, "a whole number >= 1; got 2.0."),
    ("data.window_short_prob", -0.1, "a finite number in [0, 1]; got -0.1."),
    ("data.validation_size", -1, "a whole number >= 0; got -1."),
    ("model.forget_bias", float("nan"), "a finite number; got nan."),  # said ">= -inf"
])
def test_a_value_out_of_range_is_one_sentence(dotted, value, expected):
    from experiments.configs.common import check_ranges

    config = ptb_configs.get_config("tiny")
    section, field = dotted.split(".")
    with config.unlocked(), config[section].ignore_type():
        config[section][field] = value
    with pytest.raises(ValueError) as err:
        check_ranges(config)
    assert str(err.value) == f"config.{dotted} must be {expected}"


def test_presets_without_noise_ask_for_no_mc_dropout():
    """MC dropout of a model that draws no noise repeats its deterministic pass K times
    (on IMDB's 25,000 test reviews, 50 of them): a preset without noise sets 0 samples."""
    from experiments.configs.common import regularization

    noiseless = []
    for task, name, preset in _all_presets():
        config = preset()
        if not regularization(config.reg).has_noise:
            noiseless.append(name)
            assert config.train.mc_samples == 0, f"{task}:{name}"
    assert {"no_dropout", "imdb_baseline", "zaremba_small"} <= set(noiseless), noiseless


def test_a_regularizers_refusal_names_its_reg_block():
    """The constructor's sentence names its field (`tie`), not where it is set."""
    from experiments.configs.common import regularization

    with pytest.raises(ValueError, match=r"^config.reg.zoneout: Zoneout's tie must be one of "):
        regularization({"zoneout": {"cells": 0.1, "tie": "steps"}})
