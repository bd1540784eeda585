"""Preset selection and overrides of the experiment binaries."""

import subprocess
import sys

import pytest

from experiments import cli
from experiments.configs import pmnist, ptb, sentiment
from experiments.configs.common import regularization

ALL_PRESETS = [(mod, name) for mod in (ptb, pmnist, sentiment) for name in mod.PRESETS]


@pytest.mark.parametrize("module,name", ALL_PRESETS,
                         ids=[f"{m.__name__.split('.')[-1]}:{n}" for m, n in ALL_PRESETS])
def test_every_preset_builds_a_valid_regularization(module, name):
    config = module.PRESETS[name]()
    reg = regularization(config.reg)
    reg.check_cell(config.model.cell)
    assert config.train.num_epochs > 0
    assert config.paper.source


def test_overrides_are_typed():
    config, rest = cli.split_config_args(
        ["prog", "--config=zaremba_small", "--config.train.num_epochs=3",
         "--config.reg.input", "0.25", "--config.model.hidden_sizes=(8,8)",
         "--config.train.loss_sum_over_time=false", "--workdir=/tmp/x"], ptb.PRESETS)
    assert rest == ["prog", "--workdir=/tmp/x"]
    assert config.preset == "zaremba_small"
    assert config.train.num_epochs == 3 and isinstance(config.train.num_epochs, int)
    assert config.reg.input == 0.25
    assert tuple(config.model.hidden_sizes) == (8, 8)
    assert config.train.loss_sum_over_time is False


@pytest.mark.parametrize("argv,message", [
    (["prog"], "Pass --config=NAME"),
    (["prog", "--config=nope"], "Unknown preset 'nope'; valid presets: awd, awd_small, baseline"),
    (["prog", "--config=zoneout", "--config.train.lr=1"], "Unknown config field 'train.lr'"),
    (["prog", "--config=zoneout", "--config.bogus=1"], "fields of config:"),
    (["prog", "--config=zoneout", "--config.train.num_epochs=many"], "Cannot parse 'many'"),
])
def test_bad_configs_are_one_sentence(argv, message):
    with pytest.raises(cli.ConfigError, match=message.replace("(", r"\(")):
        cli.split_config_args(argv, ptb.PRESETS)


def test_binary_reports_unknown_preset_in_one_line():
    out = subprocess.run([sys.executable, "-m", "experiments.ptb", "--config=nope"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "valid presets" in lines[0] and "zaremba_small" in lines[0]
    assert "Traceback" not in out.stderr
