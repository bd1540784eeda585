"""Preset selection and overrides of the experiment binaries."""

import re
import subprocess
import sys

import pytest

import rnnreg_jax as rj
from experiments import cli
from experiments.configs import pmnist, ptb, sentiment
from experiments.configs.common import REG_CATALOG, regularization

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
         "--config.reg.zoneout.tie", "sequence", "--config.model.hidden_sizes=(8,8)",
         "--config.train.loss_sum_over_time=false", "--config.reg.dropout.rate=0.2",
         "--workdir=/tmp/x"], ptb.PRESETS)
    assert rest == ["prog", "--workdir=/tmp/x"]
    assert config.preset == "zaremba_small"
    assert config.train.num_epochs == 3 and isinstance(config.train.num_epochs, int)
    assert config.reg.zoneout.tie == "sequence" and config.reg.dropout.rate == 0.2
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


@pytest.mark.parametrize("text, expected", [
    ("valid", ("valid",)), ("valid,test", ("valid", "test")), ("valid, test", ("valid", "test")),
    ("('valid',)", ("valid",)), ("['test']", ("test",)),
    # as override_text writes a stored list back in a rebuild command
    (cli.override_text(["valid", "test"]), ("valid", "test")),
    (cli.override_text(["valid"]), ("valid",)),
])
def test_a_list_of_names_takes_bare_words(text, expected):
    """`--config.train.mc_splits=valid` was "Cannot parse 'valid' as tuple"."""
    config, _ = cli.split_config_args(
        ["prog", "--config=zaremba_small", f"--config.train.mc_splits={text}"], ptb.PRESETS)
    assert tuple(config.train.mc_splits) == expected


@pytest.mark.parametrize("field, text", [("model.hidden_sizes", "big"),
                                         ("train.mc_splits", "valid,,test")])
def test_other_lists_still_refuse_words(field, text):
    with pytest.raises(cli.ConfigError, match=f"Cannot parse '{text}' as tuple"):
        cli.split_config_args(["prog", "--config=zaremba_small", f"--config.{field}={text}"],
                              ptb.PRESETS)


def test_binary_reports_unknown_preset_in_one_line():
    out = subprocess.run([sys.executable, "-m", "experiments.ptb", "--config=nope"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "valid presets" in lines[0] and "zaremba_small" in lines[0]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("argv", [["--help"], ["--helpfull", "--config.train.seed=1"]])
def test_help_without_a_preset_names_the_presets_and_the_flags(argv):
    out = subprocess.run([sys.executable, "-m", "experiments.sentiment", *argv],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0  # asked-for help succeeds (absl alone exits 1)
    assert out.stdout.startswith("Presets (--config=NAME): imdb_baseline, imdb_variational,")
    assert "python -m experiments.sentiment --config=NAME --workdir=DIR" in out.stdout
    assert "Pass --config" not in out.stderr and "Traceback" not in out.stderr
    if "--helpfull" in argv:
        assert "--workdir: Directory for checkpoints" in out.stdout


def _stored_run(tmp_path, config, with_checkpoint=True):
    import json

    (tmp_path / "config.json").write_text(json.dumps(
        {"task": "ptb", "command": "x", "config": config}, default=str))
    if with_checkpoint:
        (tmp_path / "checkpoints" / "100").mkdir(parents=True)
    return str(tmp_path)


def test_resuming_with_another_model_config_is_refused_in_one_sentence(tmp_path):
    from experiments.main import resume_conflict

    old = ptb.baseline()
    old.model.forget_bias = 2.0
    workdir = _stored_run(tmp_path, old.to_dict())
    message = resume_conflict(workdir, ptb.baseline().to_dict())
    assert message == (f"{workdir} holds a run with model.forget_bias = 2.0, not 0.0: resume it "
                       "with --config.model.forget_bias=2.0, or use a fresh --workdir.")
    assert resume_conflict(workdir, old.to_dict()) is None
    longer = old.copy_and_resolve_references()
    longer.train.num_epochs = 200  # training length and logging may change on resume
    assert resume_conflict(workdir, longer.to_dict()) is None


def test_resume_check_lists_the_checkpoints_once(tmp_path, monkeypatch):
    """A listing of a gs:// workdir is a request: the check made two of the same folder."""
    from experiments import run_record
    from experiments.main import resume_conflict

    workdir = _stored_run(tmp_path, ptb.baseline().to_dict())
    listed = []
    listing = run_record.has_checkpoint
    monkeypatch.setattr(run_record, "has_checkpoint",
                        lambda path: listed.append(path) or listing(path))
    assert resume_conflict(workdir, ptb.baseline().to_dict()) is None
    assert len(listed) == 1
    assert resume_conflict(tmp_path / "fresh", ptb.baseline().to_dict()) is None
    assert len(listed) == 1  # no record there: nothing to list


def test_a_field_added_to_the_code_later_counts_as_its_default(tmp_path):
    from experiments.main import resume_conflict

    stored = ptb.zaremba_small().to_dict()
    del stored["model"]["recurrent_bias"]  # written before the field existed
    workdir = _stored_run(tmp_path, stored)
    assert "model.recurrent_bias = False, not True" in resume_conflict(
        workdir, ptb.zaremba_small().to_dict())
    same = ptb.zaremba_small()
    same.model.recurrent_bias = False
    assert resume_conflict(workdir, same.to_dict()) is None


def test_a_run_recorded_with_the_flat_reg_block_resumes_under_the_same_settings(tmp_path):
    """A workdir of a run recorded before the reg block was keyed by constructor."""
    from experiments.main import resume_conflict

    stored = ptb.zoneout().to_dict()
    stored["reg"] = {"input": 0.0, "hidden": 0.0, "recurrent": 0.0, "output": 0.0,
                     "cell": 0.0, "tie": "step", "per_gate": False, "embedding": 0.0,
                     "update_dropout": 0.0, "update_tie": "step",
                     "update_eval_scaling": False, "output_zoneout": False,
                     "zoneout_cells": 0.0, "zoneout_hiddens": 0.25, "zoneout_shared": False,
                     "stochastic_depth": 0.0, "weight_noise": 0.0, "norm_stabilizer": 0.0,
                     "weight_drop": 0.0, "activation_reg": 0.0, "temporal_activation_reg": 0.0}
    workdir = _stored_run(tmp_path, stored)
    assert resume_conflict(workdir, ptb.zoneout().to_dict()) is None
    other = ptb.zoneout()
    other.reg.zoneout.hiddens = 0.5
    assert resume_conflict(workdir, other.to_dict()) == (
        f"{workdir} holds a run with reg.zoneout.hiddens = 0.25, not 0.5: resume it with "
        "--config.reg.zoneout.hiddens=0.25, or use a fresh --workdir.")


def test_cornell_runs_of_the_chunk_shuffled_split_resume_only_with_it(tmp_path):
    """A Cornell run recorded before the split followed Gal's (no start_token field, the
    chunks shuffled) needs those settings to resume; an IMDB record's Cornell-only fields,
    which today's IMDB presets no longer have, are no conflict."""
    from experiments.main import resume_conflict

    old = sentiment.variational_lstm().to_dict()
    old["data"].update(split="chunks", vocab_size=20000)
    del old["data"]["start_token"]
    (tmp_path / "cornell").mkdir()
    (tmp_path / "imdb").mkdir()
    workdir = _stored_run(tmp_path / "cornell", old)
    today = sentiment.variational_lstm()
    assert resume_conflict(workdir, today.to_dict()) == (
        f"{workdir} holds a run with data.split = chunks, not shuffled_reviews: resume it with "
        "--config.data.split=chunks, or use a fresh --workdir.")
    today.data.update(dict(split="chunks", vocab_size=20000, start_token=True))
    assert "data.start_token = False, not True" in resume_conflict(workdir, today.to_dict())
    today.data.start_token = False
    assert resume_conflict(workdir, today.to_dict()) is None
    imdb = sentiment.imdb_variational().to_dict()
    assert "split" not in imdb["data"] and "start_token" not in imdb["data"]
    stored = {**imdb, "data": {**imdb["data"], "split": "chunks", "split_seed": 0}}
    assert resume_conflict(_stored_run(tmp_path / "imdb", stored), imdb) is None


def test_a_torn_record_beside_checkpoints_is_refused_in_one_sentence(tmp_path):
    from experiments.main import resume_conflict

    workdir = _stored_run(tmp_path, ptb.zoneout().to_dict())
    (tmp_path / "config.json").write_text('{"task": "ptb", "conf')  # as a full disk left it
    message = resume_conflict(workdir, ptb.zoneout().to_dict())
    assert message.startswith(f"{tmp_path / 'config.json'} is not a run record (")
    assert "\n" not in message


def test_without_checkpoints_or_a_log_any_config_may_start(tmp_path):
    from experiments.main import resume_conflict

    workdir = _stored_run(tmp_path, ptb.zoneout().to_dict(), with_checkpoint=False)
    assert resume_conflict(workdir, ptb.baseline().to_dict()) is None
    assert resume_conflict(str(tmp_path / "fresh"), ptb.baseline().to_dict()) is None


def test_the_log_of_a_run_killed_before_its_first_checkpoint_keeps_its_config(tmp_path):
    """A run killed before any checkpoint left its events in metrics.jsonl: another
    config would append another run's events to them (two runs in one log)."""
    from experiments.main import resume_conflict

    workdir = _stored_run(tmp_path, ptb.zoneout().to_dict(), with_checkpoint=False)
    (tmp_path / "metrics.jsonl").write_text('{"step": 50, "split": "train"}\n')
    assert resume_conflict(workdir, ptb.zoneout().to_dict()) is None  # the same run again
    wider = ptb.zoneout()
    wider.model.hidden_sizes = (32, 32)
    message = resume_conflict(workdir, wider.to_dict())
    assert message.startswith(f"{workdir} holds the log of a run with model.hidden_sizes = "
                              "(256,), not (32,32), stopped before its first checkpoint: "
                              "run it again with --config.model.hidden_sizes=(256,)")
    assert "\n" not in message


def test_a_resume_keeps_the_training_trajectory_settings(tmp_path):
    """A changed learning rate was ignored (the restored optimizer state holds it) while
    config.json, rewritten, claimed it; the number of epochs, logs and evaluation may
    change."""
    from experiments.main import resume_conflict

    workdir = _stored_run(tmp_path, ptb.zoneout().to_dict())
    faster = ptb.zoneout()
    faster.train.learning_rate = 0.1
    assert resume_conflict(workdir, faster.to_dict()) == (
        f"{workdir} holds a run with train.learning_rate = 1.0, not 0.1: resume it with "
        "--config.train.learning_rate=1.0, or use a fresh --workdir.")
    other = ptb.zoneout()
    other.train.optimizer = "adam"
    assert "train.optimizer = momentum, not adam" in resume_conflict(workdir,
                                                                        other.to_dict())
    carried = ptb.zoneout()  # the state carried across batches shaped the steps taken
    carried.train.carry_state = not carried.train.carry_state
    assert "train.carry_state = " in resume_conflict(workdir, carried.to_dict())
    allowed = ptb.zoneout()
    allowed.train.num_epochs = 3
    allowed.train.log_every_steps = 7
    allowed.train.mc_samples = 10
    allowed.train.time_limit_s = 60.0
    allowed.data.verify_checksums = not allowed.data.verify_checksums  # result-neutral
    assert resume_conflict(workdir, allowed.to_dict()) is None
    older = ptb.zoneout().to_dict()
    del older["train"]["lr_window_reference"]  # recorded before the field: not judged
    (tmp_path / "old").mkdir()
    workdir_old = _stored_run(tmp_path / "old", older)
    changed = ptb.zoneout()
    changed.train.lr_window_reference = 70
    assert resume_conflict(workdir_old, changed.to_dict()) is None


def test_another_tasks_workdir_is_named(tmp_path):
    """A pmnist run pointed at a ptb workdir was told to change its embedding width."""
    from experiments.configs import pmnist
    from experiments.main import resume_conflict

    workdir = _stored_run(tmp_path, ptb.zoneout().to_dict())
    assert resume_conflict(workdir, pmnist.zoneout().to_dict(), "pmnist") == (
        f"{workdir} holds a ptb run, not a pmnist one: use a fresh --workdir.")
    assert resume_conflict(workdir, ptb.zoneout().to_dict(), "ptb") is None


@pytest.mark.parametrize("override,message", [
    pytest.param("--config.train.optimizer=adamw",
                 "error: config.train.optimizer must be one of sgd, momentum, adam, rmsprop, "
                 "ntasgd; got 'adamw'.", marks=pytest.mark.slow),
    ("--config.model.cell=lstmm", "error: config.model.cell must be one of lstm, gru, rnn, "
     "lstm_ln, lstm_bn, keras_lstm, keras_gru; got 'lstmm'."),
    pytest.param("--config.train.lr_schedule=cosine", "error: config.train.lr_schedule must "
                 "be one of constant, zaremba, plateau; got 'cosine'.", marks=pytest.mark.slow),
    # refused after the whole training before (inside JAX, at the MC pass)
    pytest.param("--config.train.mc_samples=-2",
                 "error: config.train.mc_samples must be a whole number >= 0, got -2.",
                 marks=pytest.mark.slow),
    pytest.param("--config.train.learning_rate=-1",
                 "error: config.train.learning_rate must be a finite number >= 0, got -1.0.",
                 marks=pytest.mark.slow),
    ("--config.model.hidden_sizes=(16,-4)", "error: config.model.hidden_sizes must be a "
     "non-empty sequence of whole numbers >= 1; got (16, -4)."),
])
def test_an_unknown_option_is_one_line_and_touches_no_workdir(tmp_path, override, message):
    workdir = tmp_path / "wd"
    out = subprocess.run([sys.executable, "-m", "experiments.ptb", "--config=tiny",
                          f"--workdir={workdir}", override],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [message]
    assert not workdir.exists()


def test_a_diverging_run_ends_in_one_line(tmp_path):
    from tests import data_fixtures as fx

    fx.write_repeated_ptb_word(tmp_path / "data")
    out = subprocess.run(
        [sys.executable, "-m", "experiments.ptb", "--config=tiny",
         f"--workdir={tmp_path / 'wd'}", f"--data_dir={tmp_path / 'data'}",
         "--config.data.batch_size=2", "--config.data.eval_batch_size=2",
         "--config.train.learning_rate=1e20", "--config.train.weight_decay=1e20",
         "--config.train.clip_norm=0.0",
         "--config.train.log_every_steps=1", "--config.train.checkpoint_every_steps=1"],
        capture_output=True, text=True, check=False)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr[-2000:]
    assert "non-finite by step 1" in errors[0] and "no checkpoint had been saved" in errors[0]
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_a_refused_command_leaves_the_workdir_as_it_was(tmp_path):
    """Another model's checkpoints: refused with config.json there (before training) and
    without it (by the engine); either way config.json and the TensorBoard files are as
    before, and the message's override reads back."""
    import json
    import os

    from tests import data_fixtures as fx

    fx.write_repeated_ptb_word(tmp_path / "data")
    workdir = tmp_path / "wd"
    base = [sys.executable, "-m", "experiments.ptb", "--config=tiny", f"--workdir={workdir}",
            f"--data_dir={tmp_path / 'data'}", "--config.data.batch_size=2",
            "--config.data.eval_batch_size=2", "--config.train.max_steps=2",
            "--config.train.mc_samples=0"]
    assert subprocess.run(base, capture_output=True, check=False).returncode == 0
    record = (workdir / "config.json").read_text()
    tensorboard_files = sorted(os.listdir(workdir / "tb"))
    assert any(name.endswith(".hparams") for name in tensorboard_files)
    other = base + ["--config.model.hidden_sizes=(8,8)"]
    out = subprocess.run(other, capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "--config.model.hidden_sizes=(16,16)," in out.stderr
    assert (workdir / "config.json").read_text() == record
    os.remove(workdir / "config.json")
    for _ in range(3):  # orbax's reader threads once printed tracebacks in most tries
        out = subprocess.run(other, capture_output=True, text=True, check=False)
        assert out.returncode == 2, out.stderr[-2000:]
        errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "carry/0/c is float32[2, 16] there but float32[2, 8]" \
            in errors[0], out.stderr[-2000:]
        assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr
        # Besides the error, only absl's info and warning lines: no thread noise.
        noise = [line for line in out.stderr.splitlines() if line.strip()
                 and not line.startswith("error: ") and not re.match(r"[IW]\d{4} ", line)]
        assert not noise, noise[:5]
        assert not (workdir / "config.json").exists()
        # the refused start's hparams (another model's settings) and events are gone
        assert sorted(os.listdir(workdir / "tb")) == tensorboard_files
    json.loads(record)  # the first run's record was a whole JSON document


# --- config files (`--config=FILE.py:ARG`, the ml_collections convention) -------------------

USER_CONFIG = '''"""A config of my own, outside the repository."""
from experiments.configs import ptb


def get_config(arg=None):
    config = ptb.tiny()
    config.train.num_epochs = 7 if arg is None else int(arg)
    return config
'''


def test_a_config_file_gives_the_preset_of_the_bare_name():
    by_file, rest = cli.split_config_args(
        ["prog", "--config=experiments/configs/ptb.py:zaremba_small",
         "--config.train.num_epochs=3", "--workdir=w"], ptb.PRESETS)
    by_name, _ = cli.split_config_args(
        ["prog", "--config=zaremba_small", "--config.train.num_epochs=3"], ptb.PRESETS)
    assert rest == ["prog", "--workdir=w"]
    assert by_file.to_dict() == by_name.to_dict()
    assert by_file.preset == "zaremba_small" and by_file.train.num_epochs == 3
    for module in (ptb, pmnist, sentiment):
        assert module.get_config("tiny").to_dict() == module.tiny().to_dict()


def test_a_users_config_file_with_and_without_an_argument(tmp_path):
    path = tmp_path / "my-config.py"
    path.write_text(USER_CONFIG)
    config, _ = cli.split_config_args(["prog", f"--config={path}"], ptb.PRESETS)
    assert config.train.num_epochs == 7 and config.preset == "my-config"
    config, _ = cli.split_config_args(["prog", f"--config={path}:4",
                                       "--config.reg.variational.input=0.5"], ptb.PRESETS)
    assert config.train.num_epochs == 4 and config.preset == "4"
    assert config.reg.variational.input == 0.5


@pytest.mark.parametrize("text,spec,message", [
    (None, "{dir}/none.py", "Config file '{dir}/none.py' does not exist."),
    ("x = 1\n", "{path}", "Config file '{path}' defines no get_config(); add one that returns "
     "an ml_collections.ConfigDict."),
    ("def get_config(:\n", "{path}", "Cannot load config file '{path}': SyntaxError: "),
    ("def get_config():\n    return {}\n", "{path}",
     "get_config() of '{path}' returned a dict, not an ml_collections.ConfigDict."),
    ("def get_config():\n    return 1\n", "{path}:x", "get_config('x') of '{path}' failed: "
     "TypeError: "),
    # a config without a train block was an AttributeError before any check
    ("import ml_collections\ndef get_config():\n    c = ml_collections.ConfigDict()\n"
     "    c.model = ml_collections.ConfigDict({'cell': 'lstm'})\n    return c\n", "{path}",
     "get_config() of '{path}' returned a config without the blocks ['data', 'reg', 'train'] "
     "that every experiment config has"),
    ("def get_config(name):\n    raise ValueError('No preset ' + name)\n", "{path}:x",
     "No preset x."),
    (None, "experiments/configs/ptb.py", "Config file 'experiments/configs/ptb.py' needs an "
     "argument: --config=experiments/configs/ptb.py:NAME with NAME one of: awd, "),
    (None, "experiments/configs/ptb.py:nope", "Unknown preset 'nope' in "
     "experiments/configs/ptb.py; valid presets: awd, awd_small, baseline"),
])
def test_bad_config_files_are_one_sentence(tmp_path, text, spec, message):
    path = tmp_path / "conf.py"
    if text is not None:
        path.write_text(text)
    spec = spec.format(dir=tmp_path, path=path)
    with pytest.raises(cli.ConfigError) as err:
        cli.split_config_args(["prog", f"--config={spec}"], ptb.PRESETS)
    got = str(err.value)
    assert got.startswith(message.format(dir=tmp_path, path=path)) and "\n" not in got


def _tiny_run(tmp_path, workdir, config, *extra):
    """The ptb binary for 2 steps on fixture data; returns its config.json."""
    import json

    from tests import data_fixtures as fx

    data = tmp_path / "data"
    if not data.exists():
        fx.write_repeated_ptb_word(data)
    out = subprocess.run(
        [sys.executable, "-m", "experiments.ptb", f"--config={config}", f"--workdir={workdir}",
         f"--data_dir={data}", "--config.data.batch_size=2", "--config.data.eval_batch_size=2",
         "--config.train.max_steps=2", "--config.train.mc_samples=0",
         "--config.train.tensorboard=False", *extra],
        capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads((workdir / "config.json").read_text())


@pytest.mark.slow
def test_the_binary_records_the_same_config_from_a_file_or_a_name(tmp_path):
    """`--config=experiments/configs/ptb.py:tiny` and `--config=tiny` write the same
    config.json (all but the command line in its provenance), and a config file outside
    the repository trains too."""
    by_name = _tiny_run(tmp_path, tmp_path / "name", "tiny")
    by_file = _tiny_run(tmp_path, tmp_path / "file", "experiments/configs/ptb.py:tiny")
    assert by_file["config"] == by_name["config"] and by_file["task"] == by_name["task"]
    assert by_file["command"].replace("experiments/configs/ptb.py:", "").replace(
        "/file", "/name") == by_name["command"]
    user = tmp_path / "elsewhere" / "mine.py"
    user.parent.mkdir()
    user.write_text(USER_CONFIG)
    mine = _tiny_run(tmp_path, tmp_path / "mine", user)
    assert mine["config"]["preset"] == "mine" and mine["config"]["train"]["num_epochs"] == 7
    assert {k: v for k, v in mine["config"].items() if k not in ("preset", "train")} == {
        k: v for k, v in by_name["config"].items() if k not in ("preset", "train")}


def test_the_binary_reports_a_bad_config_file_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "experiments.ptb",
                          f"--config={tmp_path / 'none.py'}"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: Config file '{tmp_path / 'none.py'}' does not exist."]


def test_a_reg_block_the_catalog_lacks_is_refused_before_anything_is_written(tmp_path):
    """A misspelt or unknown sub-block of a config file's reg block trained without it,
    silently, while config.json recorded the block."""
    path = tmp_path / "mine.py"
    path.write_text("import ml_collections\nfrom experiments.configs import ptb\n"
                    "def get_config():\n    config = ptb.tiny()\n"
                    "    config.reg.zonout = ml_collections.ConfigDict({'cells': 0.5})\n"
                    "    return config\n")
    workdir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "experiments.ptb", f"--config={path}",
                          f"--workdir={workdir}", f"--data_dir={tmp_path}"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "error: Unknown regularizer 'zonout' in the reg block; choose from "
        f"{', '.join(REG_CATALOG)}.")
    assert not workdir.exists()


@pytest.mark.parametrize("reg,message", [
    ({"zonout": {"cells": 0.5}}, "Unknown regularizer 'zonout' in the reg block"),
    ({"zoneout": {"cellz": 0.5}}, "zoneout has no argument 'cellz'; its arguments: cells, "),
    ({"zoneout": 0.5}, "reg.zoneout must be a block of zoneout's arguments (cells, "),
])
def test_regularization_refuses_what_no_constructor_takes(reg, message):
    with pytest.raises(ValueError) as err:
        regularization(reg)
    assert str(err.value).startswith(message)
    # the flat blocks of older records still read as the keyed ones they stand for
    assert regularization({"recurrent": 0.2}).find(rj.regularizers.Dropout).recurrent.rate == 0.2


def test_the_older_flat_reg_flags_set_what_they_stand_for_today():
    """Commands recorded before the reg block was keyed by constructor keep working."""
    config, _ = cli.split_config_args(
        ["prog", "--config=zoneout", "--config.reg.zoneout_hiddens=0.1",
         "--config.reg.update_dropout=0.3", "--config.reg.tie=sequence",
         "--config.reg.hidden=0.2"], ptb.PRESETS)
    assert config.reg.zoneout.hiddens == 0.1 and config.reg.recurrent_dropout.rate == 0.3
    assert config.reg.variational.tie == config.reg.dropout.tie == "sequence"
    assert config.reg.dropout.rate == 0.2 and config.reg.dropout.site == "hidden"
    reg = regularization(config.reg)
    assert reg.find(rj.regularizers.Zoneout).hiddens == 0.1


def test_every_option_of_the_catalog_is_a_flag():
    """Each constructor of the reg block takes every argument it has from the config."""
    import inspect

    from experiments.configs.common import REG_CATALOG, reg_config

    reg = reg_config()
    for name in REG_CATALOG:
        arguments = set(inspect.signature(getattr(rj.regularizers, name)).parameters)
        assert set(reg[name]) == arguments, name
    with pytest.raises(ValueError, match="Unknown regularizer 'nope'"):
        reg_config(nope={})
    with pytest.raises(ValueError, match="zoneout has no argument 'rate'"):
        reg_config(zoneout=dict(rate=0.1))


def test_evaluate_names_a_bad_record_and_an_unwritable_json_first(tmp_path, capsys):
    """A record without its config (a KeyError) or torn (a message without the file's
    name), and a --json path that cannot be written (a FileNotFoundError after the whole
    evaluation), are one line each, before anything is evaluated."""
    from experiments import evaluate

    record = tmp_path / "config.json"
    for text, why in (('{"task": "ptb"}', "no 'config' entry"),
                      ('{"task": "ptb", "conf', "Unterminated string"),
                      ('{"config": [1]}', "its config is a list")):
        record.write_text(text)
        assert evaluate.main([f"--workdir={tmp_path}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {record} is not a run record ("), err
        assert why in err[0]
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for target, why in ((blocker / "sub" / "x.json", "(Not a directory)"),
                        (tmp_path, "(a directory)")):
        assert evaluate.main([f"--workdir={tmp_path}", f"--json={target}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: cannot write --json={target} {why}."], err


@pytest.mark.parametrize("module", ["bench", "reproduce"])
def test_the_tools_help_succeeds_and_a_bad_flag_is_one_line(module):
    """absl alone ends --help with status 1 and a bad flag with its whole usage (bench)
    or `FATAL Flags parsing error` (reproduce); the training binaries already did
    this."""
    help_out = subprocess.run([sys.executable, "-m", f"experiments.{module}", "--help"],
                              capture_output=True, text=True, check=False)
    assert help_out.returncode == 0 and "--" in help_out.stdout
    bad = subprocess.run([sys.executable, "-m", f"experiments.{module}", "--nosuchflag=1"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: Unknown command line flag 'nosuchflag'"]


@pytest.mark.slow  # a binary on 4 host devices: ~20-30 s on 2 cores
def test_a_run_that_cannot_start_on_the_devices_is_one_line_and_leaves_no_record(tmp_path):
    """A training batch of 6 on 4 devices raised from inside train_and_evaluate: a
    traceback, exit status 1, and the workdir kept a config.json of a run that never ran."""
    import train_helpers as th

    from tests import data_fixtures as fx

    fx.write_repeated_ptb_word(tmp_path / "data")
    workdir = tmp_path / "wd"
    out = subprocess.run(
        [sys.executable, "-m", "experiments.ptb", "--config=tiny", f"--workdir={workdir}",
         f"--data_dir={tmp_path / 'data'}", "--config.data.batch_size=6",
         "--config.data.eval_batch_size=2", "--config.train.tensorboard=False"],
        cwd=th.ROOT, env=th.host_devices_env(4), capture_output=True, text=True,
        timeout=300, check=False)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if not line.startswith(("I", "W"))]
    assert errors == ["error: The global training batch (6) must divide over the 4 devices "
                      "of the data mesh."], out.stderr[-3000:]
    assert not (workdir / "config.json").exists()


def test_process_flags_without_a_coordinator_are_refused(tmp_path):
    """--num_processes and --process_id without a coordinator were ignored: the run went
    on as one process of one, each of the intended processes training the whole batch."""
    out = subprocess.run(
        [sys.executable, "-m", "experiments.ptb", "--config=tiny", "--num_processes=2",
         "--process_id=1", f"--workdir={tmp_path / 'wd'}", f"--data_dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --num_processes and --process_id need --coordinator_address (or "
        "--config.train.distributed=True, where the coordinator is found)."]
    assert not (tmp_path / "wd").exists()


def test_another_tasks_config_file_is_refused(tmp_path):
    """pMNIST's config given to the PTB binary trained pMNIST under PTB's name and
    default workdir; now one line, nothing written."""
    from experiments import main

    out = subprocess.run(
        [sys.executable, "-m", "experiments.ptb", "--config=experiments/configs/pmnist.py:tiny",
         f"--workdir={tmp_path / 'w'}", f"--data_dir={tmp_path}"],
        capture_output=True, text=True, check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "error: config.data.dataset='pmnist' is not experiments.ptb's (it trains ptb_word, "
        "ptb_char); run it with python -m experiments.pmnist.")
    assert not (tmp_path / "w").exists()
    main.check_task_dataset("sentiment", "imdb")  # each binary's own pass
    with pytest.raises(ValueError, match=r"is not experiments.pmnist's \(it trains pmnist\); "
                                         r"run it with python -m experiments.sentiment\.$"):
        main.check_task_dataset("pmnist", "cornell")
