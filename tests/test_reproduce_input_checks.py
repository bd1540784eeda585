"""Bad input to `experiments.reproduce` and to the binaries' `--config.x VALUE` form is
one line (exit status 2) before anything runs, and a run that fails in a batch is said
on the driver's stderr and in its exit status, after the bundle is written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import bundle, cli
from experiments import reproduce_plan as plan_lib
from experiments.configs import ptb
from tests import data_fixtures as fx
from tests.test_reproduce import FLAGS, ROOT, _refusal

STEP_TIMES = ROOT / "results" / "step_times_h200.json"


# 1. A run spec's config gets the binaries' checks before the plan and before a batch.

@pytest.mark.parametrize("override, message", [
    # a plan of "0/0 steps" was printed (exit 0); the batch ran it, to fail in console.log
    ("--config.train.num_epochs=-3", "config.train.num_epochs must be a whole number >= 0, "
     "got -3."),
    ("--config.train.learning_rate=-1", "config.train.learning_rate must be a finite number "
     ">= 0, got -1.0."),
    ("--config.train.optimizer=adam;--config.train.decay_factor=0.5",
     "config.train.decay_factor must be a finite number >= 1 (the learning rate is divided "
     "by it), got 0.5."),
    ("--config.reg.dropout.rate=2", "config.reg.dropout: Dropout (hidden) rate must be a "
     "probability in [0, 1), got 2.0."),
    ("--config.model.hidden_sizes=(8,0)", "config.model.hidden_sizes must be a non-empty "
     "sequence of whole numbers >= 1; got (8, 0)."),
    ("--config.train.nope=1", "Unknown config field 'train.nope'; fields of train: "),
    ("--config.paper.source;--workdir=w", "--config.paper.source needs a value "
     "(--config.paper.source=VALUE)."),
    ("--workdir=w", "a run spec takes only --config flags, got ['--workdir=w']."),
])
@pytest.mark.parametrize("plan", [True, False])
def test_a_run_spec_the_binaries_refuse_is_refused_before_anything_runs(
        tmp_path, capsys, override, message, plan):
    args = ([f"--step_times={STEP_TIMES}", "--plan"] if plan else
            ["--calibrate_s=0", "--budget_s=100", f"--step_times={STEP_TIMES}",
             f"--out={tmp_path / 'out'}"])
    lines = _refusal(capsys, [f"--runs=ptb:tiny:ok,ptb:tiny:t1:{override}",
                              f"--root={tmp_path / 'w'}",
                              f"--data_dir={tmp_path / 'none'}", *args])
    assert len(lines) == 1 and lines[0].startswith(f"error: run t1: {message}"), lines
    assert lines[0].endswith(".")
    assert not (tmp_path / "w").exists() and not (tmp_path / "out").exists()


def test_a_library_check_without_its_block_gets_the_blocks_name():
    """The train block's library check speaks of `config.learning_rate`; in a run spec it
    is `config.train.learning_rate`. Fields of other blocks keep their names."""
    spec = plan_lib.Spec.parse("ptb:tiny:t1")
    blocks = tuple(spec.config().keys())
    err = spec.error(ValueError("config.learning_rate must be a finite number >= 0, got -1."),
                     blocks)
    assert str(err) == ("run t1: config.train.learning_rate must be a finite number >= 0, "
                        "got -1.")
    err = spec.error(ValueError("config.data.seq_len must be a whole number >= 1; got 0."),
                     blocks)
    assert str(err) == "run t1: config.data.seq_len must be a whole number >= 1; got 0."


def test_an_mc_split_the_task_lacks_is_refused_before_calibration(tmp_path, capsys):
    """`check_for_task`, which needs the task: counted before the calibration runs start
    (they failed, and the plan said it "measured no steps")."""
    data = tmp_path / "data"
    fx.write_repeated_ptb_word(data)
    lines = _refusal(capsys, [
        f"--runs=ptb:tiny:t1:{FLAGS};--config.train.mc_samples=2;"
        "--config.train.mc_splits=(nope,)", "--budget_s=100", f"--data_dir={data}",
        f"--root={tmp_path / 'w'}", f"--out={tmp_path / 'out'}"])
    assert lines == ["error: run t1: config.train.mc_splits names ['nope'], which this task "
                     "does not evaluate (its splits: ['test', 'valid'])."]
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("case", ["missing", "too_small"])
@pytest.mark.parametrize("plan", [True, False])
def test_data_a_run_cannot_use_is_refused_naming_the_run(tmp_path, capsys, case, plan):
    """Counting a run's work reads its data: a missing data set (DataError) and a data
    set's own check (ValueError) said neither run nor data set of the batch, as in
    `error: MNIST folder .../mnist is missing; pass --data_dir ...`."""
    data = tmp_path / "data"
    fx.write_repeated_ptb_word(data)  # the ptb run's data is there
    if case == "missing":  # no mnist folder
        override, message = "", (f"MNIST folder {data / 'mnist'} is missing; pass "
                                 "--data_dir or set RNNREG_DATA_DIR to a folder laid out as "
                                 "in docs/DATA.md.")
    else:
        fx.write_mnist(data, n_train=40)
        override, message = ":--config.data.validation_size=40", (
            "config.data.validation_size must be in [0, 40) (40 training images), got 40.")
    args = ([f"--step_times={STEP_TIMES}", "--plan"] if plan else
            ["--calibrate_s=0", "--budget_s=100", f"--step_times={STEP_TIMES}",
             f"--out={tmp_path / 'out'}"])
    lines = _refusal(capsys, [f"--runs=ptb:tiny:ok:{FLAGS},pmnist:tiny:p1{override}",
                              f"--root={tmp_path / 'w'}", f"--data_dir={data}", *args])
    assert lines == [f"error: run p1: {message}"]
    assert not (tmp_path / "w").exists() and not (tmp_path / "out").exists()


def test_count_work_names_the_run_and_keeps_the_errors_type(tmp_path):
    """A DataError stays one (the driver's and a caller's `except DataError`), a data
    set's ValueError stays a ValueError; both now say which run."""
    from rnnreg_jax.data import DataError

    with pytest.raises(DataError) as data_err:
        plan_lib.count_work(plan_lib.Spec.parse("ptb:tiny:t1"), str(tmp_path / "empty"))
    assert str(data_err.value) == (
        f"run t1: PTB folder {tmp_path / 'empty' / 'ptb_word'} is missing; pass --data_dir "
        "or set RNNREG_DATA_DIR to a folder laid out as in docs/DATA.md.")
    fx.write_mnist(tmp_path / "data", n_train=40)
    with pytest.raises(ValueError) as value_err:
        plan_lib.count_work(plan_lib.Spec.parse("pmnist:tiny:p2:--config.data.validation_size=40"),
                            str(tmp_path / "data"))
    assert str(value_err.value) == ("run p2: config.data.validation_size must be in [0, 40) "
                                    "(40 training images), got 40.")


def test_a_calibration_run_that_fails_says_why(tmp_path, capsys, monkeypatch):
    """It said "calibration measured no steps of a; give it more --calibrate_s", whatever
    ended the run."""
    from experiments import reproduce

    data = tmp_path / "data"
    fx.write_repeated_ptb_word(data)
    monkeypatch.setattr(reproduce, "_command", lambda spec, workdir, extra: [
        sys.executable, "-c", "import sys; sys.exit('RuntimeError: out of memory.')"])
    lines = _refusal(capsys, [f"--runs=ptb:tiny:a:{FLAGS}", "--budget_s=100",
                              "--calibrate_s=2", f"--data_dir={data}",
                              f"--root={tmp_path / 'w'}", f"--out={tmp_path / 'out'}"])
    assert lines[-1] == ("error: run a failed in calibration (exit 1); its console.log "
                         "ends: RuntimeError: out of memory.")
    assert not (tmp_path / "out").exists()


# 1b. A run that fails in a batch: the bundle, its console's last lines, exit status 1.

def test_a_failed_run_of_a_batch_is_said_and_ends_the_driver_with_status_1(
        tmp_path, capsys, monkeypatch):
    """The batch printed `t1: failed (exit 2), step 0` and ended with status 0, the reason
    only in the bundle's console.log."""
    from experiments import reproduce

    data = tmp_path / "data"
    fx.write_repeated_ptb_word(data)
    script = "import sys\nfor i in range(8):\n    print(f'line {i}', file=sys.stderr)\nsys.exit(3)"
    monkeypatch.setattr(reproduce, "_command",
                        lambda spec, workdir, extra: [sys.executable, "-c", script])
    reproduce.FLAGS(["reproduce", f"--runs=ptb:tiny:t1:{FLAGS}", "--budget_s=200",
                     "--calibrate_s=0", f"--step_times={STEP_TIMES}", f"--data_dir={data}",
                     f"--root={tmp_path / 'w'}", f"--out={tmp_path / 'out'}"])
    try:
        with pytest.raises(SystemExit) as exit_:
            reproduce.main(["reproduce"])
    finally:
        reproduce.FLAGS.unparse_flags()
    assert exit_.value.code == reproduce.RUN_FAILED == 1
    captured = capsys.readouterr()
    assert "t1: failed (exit 3), step 0" in captured.out
    assert captured.err.strip().splitlines() == [
        *(f"t1 console: line {i}" for i in range(3, 8)),
        f"error: 1 of 1 runs failed (t1, exit 3); the bundle {tmp_path / 'out'} holds what "
        "the batch did, with each run's console.log."]
    [run] = bundle.read_manifest(tmp_path / "out")["runs"]
    assert run["status"] == "failed" and run["exit_code"] == 3


@pytest.mark.slow  # two real window-script calls, as tests/test_gpu_window_split.py's
def test_the_window_scripts_bring_back_the_bundle_of_a_batch_with_a_failed_run(tmp_path):
    """The real binary fails at once (the runs get the caller's JAX_PLATFORMS, here one
    that does not exist; the driver counts on the CPU): one call (gpu_window.sh) ends
    with status 1 and the bundle in $OUT; the split runner's `start` copies the bundle,
    its window.log and progress say why, and it ends with status 1 (it ended with 0); so
    does `collect`, which reads the failure from the manifest (the driver is not its
    child)."""
    data = tmp_path / "data"
    fx.write_repeated_ptb_word(data)
    env = {**os.environ, "WINDOW_DIR": str(tmp_path / "state"), "WATCH_S": "240",
           "WHEELS": str(tmp_path / "no_wheels"), "RNNREG_DATA_DIR": str(data),
           "JAX_PLATFORMS": "no_such_platform",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    args = [f"--runs=ptb:tiny:a:{FLAGS}", "--budget_s=200", "--calibrate_s=0",
            f"--step_times={STEP_TIMES}", f"--data_dir={data}"]
    one = subprocess.run(["bash", "scripts/gpu_window.sh", *args, f"--root={tmp_path / 'w'}"],
                         cwd=ROOT, env={**env, "OUT": str(tmp_path / "out1")},
                         capture_output=True, text=True, timeout=300, check=False)
    assert one.returncode == 1, one.stderr[-3000:]
    lines = one.stderr.strip().splitlines()
    assert lines[-1] == (f"error: 1 of 1 runs failed (a, exit 1); the bundle "
                         f"{tmp_path / 'out1'} holds what the batch did, with each run's "
                         "console.log.")
    tail = [line for line in lines if line.startswith("a console: ")]
    assert 1 <= len(tail) <= 5 and "no_such_platform" in tail[-1], lines
    [run] = bundle.read_manifest(tmp_path / "out1")["runs"]
    assert run["status"] == "failed"

    start = subprocess.run(["bash", "scripts/gpu_window_split.sh", "start", *args], cwd=ROOT,
                           env={**env, "OUT": str(tmp_path / "out2")}, capture_output=True,
                           text=True, timeout=300, check=False)
    assert start.returncode == 1, start.stderr[-3000:]
    [run] = bundle.read_manifest(tmp_path / "out2")["runs"]
    assert run["status"] == "failed"
    log = (tmp_path / "out2" / "window.log").read_text()
    assert "error: 1 of 1 runs failed (a, exit 1)" in log and "a console: " in log
    assert "error: 1 of 1 runs failed (a, exit 1)" in start.stdout  # its progress lines

    collect = subprocess.run(["bash", "scripts/gpu_window_split.sh", "collect"], cwd=ROOT,
                             env={**env, "OUT": str(tmp_path / "out3")}, capture_output=True,
                             text=True, timeout=120, check=False)
    assert collect.returncode == 1, collect.stderr[-3000:]
    assert collect.stderr.strip().splitlines()[-1] == (
        "gpu_window_split.sh: the bundle came back with runs failed: a (each run's "
        "console.log is in runs.tar.gz).")
    assert bundle.read_manifest(tmp_path / "out3")["runs"][0]["status"] == "failed"


# 2. A tuple override inside a run spec.

@pytest.mark.parametrize("text, runs", [
    ("ptb:tiny:t1:--config.model.hidden_sizes=(8,8)",
     ["ptb:tiny:t1:--config.model.hidden_sizes=(8,8)"]),
    ("ptb:tiny:t1:--config.model.hidden_sizes=(8,8),ptb:tiny:t2",
     ["ptb:tiny:t1:--config.model.hidden_sizes=(8,8)", "ptb:tiny:t2"]),
    ("ptb:tiny:a:--config.train.mc_splits=[valid, test];--config.train.seed=1, ptb:tiny:b",
     ["ptb:tiny:a:--config.train.mc_splits=[valid, test];--config.train.seed=1",
      "ptb:tiny:b"]),
    # the forms absl's list flag took
    ("ptb:tiny:a,ptb:tiny:b", ["ptb:tiny:a", "ptb:tiny:b"]),
    ("ptb:tiny:a, ptb:tiny:b", ["ptb:tiny:a", "ptb:tiny:b"]),
    ('"ptb:tiny:a:--config.model.hidden_sizes=(8,8)",ptb:tiny:b',
     ["ptb:tiny:a:--config.model.hidden_sizes=(8,8)", "ptb:tiny:b"]),
    ("ptb:tiny", ["ptb:tiny"]),
    ("", []),
])
def test_runs_split_at_commas_outside_brackets(text, runs):
    from experiments import reproduce

    assert plan_lib.split_runs(text) == runs
    reproduce.FLAGS(["reproduce", f"--runs={text}"])
    try:
        assert reproduce.FLAGS.runs == runs
    finally:
        reproduce.FLAGS.unparse_flags()


def test_a_tuple_override_in_a_run_spec_reaches_its_config(tmp_path, capsys):
    """absl's list flag split it at the comma: `error: Run spec ')' is not ...`."""
    from experiments import reproduce

    spec = plan_lib.Spec.parse(
        plan_lib.split_runs("ptb:tiny:t1:--config.model.hidden_sizes=(8,8)")[0])
    assert spec.checked_config().model.hidden_sizes == (8, 8)
    data = tmp_path / "data"
    fx.write_repeated_ptb_word(data)
    reproduce.FLAGS(["reproduce", f"--runs=ptb:tiny:t1:{FLAGS};--config.model.hidden_sizes="
                     f"(8,8),ptb:tiny:t2:{FLAGS}", "--plan", f"--step_times={STEP_TIMES}",
                     f"--data_dir={data}", f"--root={tmp_path / 'w'}"])
    try:
        reproduce.main(["reproduce"])
    finally:
        reproduce.FLAGS.unparse_flags()
    plan = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in plan[1:]] == ["t1", "t2"]


def test_an_unclosed_bracket_in_runs_is_one_line(capsys):
    from experiments import reproduce  # noqa: F401 - defines --runs
    from experiments.flag_parsing import parse_flags

    with pytest.raises(SystemExit) as exit_:
        parse_flags(["reproduce", "--runs=ptb:tiny:t1:--config.model.hidden_sizes=(8,8"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: flag --runs=ptb:tiny:t1:--config.model.hidden_sizes=(8,8: the run spec "
        "'ptb:tiny:t1:--config.model.hidden_sizes=(8,8' opens a bracket it does not close."]


# 3. `--config.x VALUE`: a flag (or nothing) where the value belongs is refused.

@pytest.mark.parametrize("argv, message", [
    (["--config.paper.source", "--workdir=/tmp/w"],
     "--config.paper.source needs a value (--config.paper.source=VALUE)."),
    (["--config.train", "--workdir=/tmp/w"],
     "--config.train needs a value (--config.train=VALUE)."),
    (["--config.paper.source"], "--config.paper.source needs a value "
     "(--config.paper.source=VALUE)."),
])
def test_a_space_form_override_without_its_value_is_refused(argv, message):
    with pytest.raises(cli.ConfigError) as err:
        cli.split_config_args(["prog", "--config=tiny", *argv], ptb.PRESETS)
    assert str(err.value) == message


def test_a_bare_config_flag_without_its_preset_is_refused():
    with pytest.raises(cli.ConfigError) as err:
        cli.split_config_args(["prog", "--config", "--workdir=/tmp/w"], ptb.PRESETS)
    assert str(err.value) == "--config needs a value (--config=NAME)."


def test_space_form_values_still_parse():
    config, rest = cli.split_config_args(
        ["prog", "--config", "tiny", "--config.train.seed", "-3", "--config.paper.source",
         "a b", "--workdir=/tmp/w"], ptb.PRESETS)
    assert config.train.seed == -3 and config.paper.source == "a b"
    assert rest == ["prog", "--workdir=/tmp/w"]


def test_a_block_set_as_a_value_is_one_sentence():
    """ml_collections' cast error, without a period: `Could not override field 'train'
    (reference). 5 is of original type <class 'str'> ...`."""
    with pytest.raises(cli.ConfigError) as err:
        cli.split_config_args(["prog", "--config=tiny", "--config.paper=5"], ptb.PRESETS)
    assert str(err.value) == ("Config field 'paper' is a block of fields (source, test, "
                              "test_mc, valid); set one of them: --config.paper.FIELD=VALUE.")


def test_the_binary_refuses_a_flag_taken_as_an_override_value(tmp_path):
    """It trained into the default workdir and recorded paper.source='--workdir=...'."""
    out = subprocess.run(
        [sys.executable, "-m", "experiments.ptb", "--config=tiny", "--config.paper.source",
         f"--workdir={tmp_path / 'w'}"], capture_output=True, text=True, cwd=ROOT,
        check=False, timeout=300)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [
        "error: --config.paper.source needs a value (--config.paper.source=VALUE)."]
    assert not (tmp_path / "w").exists()
