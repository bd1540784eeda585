"""Bad command lines the tools took silently, or refused with a traceback or a usage dump:
each is now one line `error: ...` (exit status 2) naming the flag or field, before
anything is read or written."""

from __future__ import annotations

import json
import os
import types

import launch_sandbox
import pytest
import train_helpers as th

from experiments import cli
from experiments.configs import ptb, sentiment
from experiments.configs.common import check_config
from tests import data_fixtures as fx

# launch_sandbox's fixtures, bound here so that this file's tests find them
root, sandbox = launch_sandbox.root, launch_sandbox.sandbox
STEP_TIMES = launch_sandbox.REPO / "results" / "step_times_h100.json"


def _only_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _refused_run(capsys, config, *argv: str, task: str = "ptb") -> str:
    from experiments.main import run

    with th.binary_argv(*argv), pytest.raises(SystemExit) as done:
        run(task, config)
    assert done.value.code == 2
    return _only_error_line(capsys)


def _tiny(*overrides: str, presets=ptb.PRESETS):
    return cli.split_config_args(["prog", "--config=tiny", *overrides], presets)[0]


# --- overrides ---------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("--config.train.num_epochs=1.5", "Bad value for config field 'train.num_epochs': "
     "expected a whole number, got '1.5'."),
    ("--config.model.hidden_sizes=\"(8,8)\"", "Bad value for config field "
     "'model.hidden_sizes': expected a tuple such as (16, 16), got '\"(8,8)\"'."),
    ("--config.train.learning_rate='0.1'", "Bad value for config field "
     "'train.learning_rate': expected a number, got \"'0.1'\"."),
])
def test_a_value_of_another_type_says_what_the_field_takes(override, message):
    """ml_collections' two sentences: `Could not override field 'num_epochs' (reference).
    1.5 is of original type <class 'float'> and cannot be casted to type <class 'int'>.`"""
    with pytest.raises(cli.ConfigError) as err:
        _tiny(override)
    assert str(err.value) == message


def test_the_preset_name_is_not_an_override():
    """`--config.preset=zaremba_large` on `--config=tiny` renamed the run: its default
    workdir, its report row and the preset the report compared its settings with."""
    with pytest.raises(cli.ConfigError, match=r"^config\.preset is the name --config gives"):
        _tiny("--config.preset=zaremba_large")


@pytest.mark.parametrize("overrides, message", [
    (["--config.model.tie_embeddings=True", "--config.model.embed_size=12"],
     "config.model.tie_embeddings shares the embedding with the softmax, so the embedding's "
     "width (12) must equal the last of config.model.hidden_sizes (16, 16); set "
     "config.model.embed_size=16 or tie_embeddings=False."),
    # a traceback at the first training step, after the run's record was written
    (["--config.model.embed_to_gates=True"], "config.model.embed_to_gates feeds the "
     "embedding straight into the first layer's gates, which take no input dropout;"),
    (["--config.model.softmax_bias_init=zero"], "config.model.softmax_bias_init must be one "
     "of uniform, zeros; got 'zero'."),
])
def test_embedding_settings_that_clash_are_refused_by_the_config_check(overrides, message):
    """Refused by the model after the workdir was locked, in its own argument names."""
    with pytest.raises(ValueError) as err:
        check_config(_tiny(*overrides))
    assert str(err.value).startswith(message)


def test_mc_samples_without_an_mc_split_is_refused():
    """The run ended without the MC pass asked for. The PTB protocol's test pass takes MC
    samples whatever the splits: there it goes on."""
    from rnnreg_jax.train.config import check_for_task

    task = types.SimpleNamespace(evals={"valid": None, "test": None}, validation_split="valid",
                                 test_protocol=False)
    config = {"mc_samples": 2, "mc_splits": ()}
    with pytest.raises(ValueError) as err:
        check_for_task(config, task, "config.train")
    assert str(err.value) == (
        "config.train.mc_samples=2 asks for MC dropout evaluation, and config.train.mc_splits "
        "is empty; name the splits (such as ('test',); this task's: ['test', 'valid']) or set "
        "mc_samples=0.")
    check_for_task(config, types.SimpleNamespace(**{**vars(task), "test_protocol": True}))


# --- the training binaries' flags ----------------------------------------------------------

def test_an_empty_workdir_is_refused_not_taken_as_the_default(tmp_path, monkeypatch, capsys):
    """`--workdir=$DIR` with DIR unset trained (or resumed) in runs/ptb_tiny."""
    monkeypatch.chdir(tmp_path)
    line = _refused_run(capsys, _tiny(), "--workdir=", f"--data_dir={tmp_path / 'none'}")
    assert line == ("error: --workdir is empty; pass a folder, or leave the flag out for the "
                    "default runs/ptb_tiny.")
    assert os.listdir(tmp_path) == []


def test_an_empty_data_dir_is_refused_not_taken_as_the_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RNNREG_DATA_URL", "http://127.0.0.1:9")  # never the internet
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("RNNREG_DATA_DIR", raising=False)
    line = _refused_run(capsys, _tiny(), f"--workdir={tmp_path / 'w'}", "--data_dir=")
    assert line.startswith("error: --data_dir is empty; pass the data folder, or leave the "
                           "flag out for $RNNREG_DATA_DIR")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("flags, message", [
    # jax: an IndexError, then ValueErrors of its own, each with a traceback
    (["--coordinator_address=localhost", "--num_processes=1", "--process_id=0"],
     "error: --coordinator_address must be HOST:PORT with a port in 1..65535, got "
     "'localhost'."),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=0", "--process_id=0"],
     "error: --num_processes must be at least 1, got 0."),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"],
     "error: --process_id must be in [0, 2) (one per process of --num_processes), got 2."),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=-1"],
     "error: --process_id must be a whole number >= 0, got -1."),
    # jax's own refusal (no count; in this process also a backend started already)
    (["--coordinator_address=127.0.0.1:1"], "error: jax.distributed could not start ("),
])
def test_bad_process_flags_are_one_line(tmp_path, capsys, flags, message):
    import jax

    line = _refused_run(capsys, _tiny(), f"--workdir={tmp_path / 'w'}", *flags)
    assert line.startswith(message) and line.endswith(
        "." if message.endswith(".") else
        "); check --coordinator_address, --num_processes and --process_id.")
    assert not jax.distributed.is_initialized() and not (tmp_path / "w").exists()


def test_settings_that_clash_only_in_training_leave_the_workdir_as_it_was(tmp_path, capsys):
    """Lengths with lstm_bn's batch statistics raised at the first step's trace, after the
    record was written: a traceback, and a config.json of a run that never trained."""
    fx.write_cornell(tmp_path / "data")
    config = _tiny("--config.data.padding=lengths", "--config.model.cell=lstm_bn",
                   "--config.data.batch_size=2", "--config.train.mc_samples=0",
                   "--config.train.tensorboard=False", presets=sentiment.PRESETS)
    workdir = tmp_path / "w"
    line = _refused_run(capsys, config, f"--workdir={workdir}",
                        f"--data_dir={tmp_path / 'data'}", task="sentiment")
    assert line.startswith("error: seq_lengths cannot be used with lstm_bn")
    assert not (workdir / "config.json").exists() and not (workdir / "metrics.jsonl").exists()


@pytest.mark.parametrize("kept", [False, True])
def test_a_refused_start_takes_away_the_workdir_it_made(tmp_path, capsys, kept):
    """A setting refused only once the run has started (sequence lengths beside
    lstm_bn's batch statistics, found by the training step's trace) left a new workdir
    behind with its lock and an empty tb/; a workdir that held a file before stays as it
    was."""
    fx.write_cornell(tmp_path / "data")
    workdir = tmp_path / "w"
    if kept:
        workdir.mkdir()
        (workdir / "notes.txt").write_text("mine")
    config = _tiny("--config.data.padding=lengths", "--config.model.cell=lstm_bn",
                   "--config.data.batch_size=2", "--config.train.mc_samples=0",
                   presets=sentiment.PRESETS)
    line = _refused_run(capsys, config, f"--workdir={workdir}",
                        f"--data_dir={tmp_path / 'data'}", task="sentiment")
    assert line.startswith("error: seq_lengths cannot be used with lstm_bn")
    assert workdir.exists() == kept
    if kept:
        assert (workdir / "notes.txt").read_text() == "mine"


# --- experiments.evaluate, generate, curves, report ----------------------------------------

def _argparse_tool(name: str):
    import importlib

    return importlib.import_module(name).main


def _status(main, argv) -> int:
    """`main(argv)`'s exit status, returned or raised (argparse and flag refusals exit)."""
    try:
        return main(argv)
    except SystemExit as done:
        return done.code


@pytest.mark.parametrize("tool, argv, message", [
    ("experiments.evaluate", ["--workdir=w", "extra"], "error: unrecognized arguments: extra; "
     "see python -m experiments.evaluate --help."),
    ("experiments.generate", ["--workdir=w", "--length=many"], "error: argument --length: "
     "invalid int value: 'many'; see python -m experiments.generate --help."),
    ("experiments.curves", ["--runs=r"], "error: the following arguments are required: "
     "--epochs; see python -m experiments.curves --help."),
    ("experiments.report", [], "error: the following arguments are required: --runs; see "
     "python -m experiments.report --help."),
    ("rnnreg_jax.data.__main__", ["mnsit"], "error: argument dataset: invalid choice: "
     "'mnsit' (choose from 'ptb_word', 'ptb_char', 'mnist', 'cornell', 'imdb'); see "
     "python -m rnnreg_jax.data --help."),
])
def test_a_command_line_argparse_refuses_is_one_line(capsys, tool, argv, message):
    """argparse printed its usage (four lines for evaluate) before the error."""
    with pytest.raises(SystemExit) as done:
        _argparse_tool(tool)(argv)
    assert done.value.code == 2
    assert _only_error_line(capsys) == message


@pytest.mark.parametrize("tool, argv, message", [
    # evaluated, then wrote no JSON
    ("experiments.evaluate", ["--workdir=w", "--json="], "error: --json is empty; pass a "
     "file, or leave the flag out for none."),
    # read ./config.json
    ("experiments.evaluate", ["--workdir="], "error: --workdir is empty; pass the workdir "
     "of a run."),
    ("experiments.generate", ["--workdir=w", "--data_dir="], "error: --data_dir is empty; "
     "pass the data folder, or leave the flag out for $RNNREG_DATA_DIR, then the download "
     "cache."),
    ("experiments.report", ["--runs=r", "--intro="], "error: --intro is empty; pass a "
     "markdown file, or leave the flag out for none."),
    # "error: [Errno 2] No such file or directory: ''"
    ("experiments.report", ["--runs=r", "--out="], "error: --out is empty; pass the report's "
     "file, or leave the flag out for RESULTS.md."),
])
def test_an_empty_flag_is_refused_not_taken_as_left_out(capsys, tool, argv, message):
    assert _status(_argparse_tool(tool), argv) == 2
    assert _only_error_line(capsys) == message


def _record_only_workdir(tmp_path) -> str:
    """A ptb run's config.json without checkpoints."""
    (tmp_path / "config.json").write_text(json.dumps(
        {"task": "ptb", "command": "x", "config": ptb.tiny().to_dict()}, default=str))
    return str(tmp_path)


@pytest.mark.parametrize("argv, message", [
    # greedy decoding never read --top_k: let through with a note
    (["--top_k=0", "--temperature=0"], "error: --top_k must be a whole number >= 1, got 0."),
    (["--temperature=nan"], "error: --temperature must be a finite number >= 0, got nan."),
])
def test_generate_refuses_bad_sampling_flags_before_reading_the_checkpoint(tmp_path, capsys,
                                                                         argv, message):
    from experiments import generate

    assert _status(generate.main, [f"--workdir={_record_only_workdir(tmp_path)}", *argv]) == 2
    assert _only_error_line(capsys) == message


def test_curves_skip_lines_the_training_loop_does_not_write(tmp_path, capsys):
    """Another tool's lines in metrics.jsonl (a split that is a number, an epoch that is
    text) ended curves with a TypeError."""
    from experiments import curves

    workdir = tmp_path / "run"
    workdir.mkdir()
    _record_only_workdir(workdir)
    events = [{"phase": "epoch_end", "split": "valid", "epoch": 0, "step": 5, "ppl": 9.5},
              {"phase": "epoch_end", "split": 3, "epoch": 0, "step": 5, "ppl": 1.0},
              {"phase": "epoch_end", "split": "valid", "epoch": "x", "step": 5, "ppl": 1.0},
              [1, 2], None]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert curves.main([f"--runs={workdir}", "--epochs=1", "--split=valid"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:2] == ["run", "9.5"]


# --- experiments.bench, experiments.reproduce, the data CLI --------------------------------

def test_bench_refuses_positional_arguments_and_empty_outputs(monkeypatch, capsys):
    """`bench ptb_small` ran every workload; `--json=` ran them and wrote no file."""
    from experiments import bench

    def ran(*_):
        raise AssertionError("the benchmark started")

    monkeypatch.setattr(bench, "matmul_gflops", ran)
    with pytest.raises(SystemExit) as done:
        bench.main(["bench", "ptb_small"])
    assert done.value.code == 2
    assert _only_error_line(capsys) == ("error: unexpected arguments ['ptb_small']; name "
                                        "workloads with --workloads.")
    assert bench.flags_problem(["ptb_small"], ["ours_none"], False, [], {"json": ""}) == (
        "--json is empty; pass a file, or leave the flag out for none.")
    with pytest.raises(SystemExit):  # a ValueError of str.split before
        bench.memory_child("ptb_small")
    assert _only_error_line(capsys).startswith("error: --_memory_child must be "
                                               "WORKLOAD:CONTENDER")


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", ".", ".."])
def test_a_run_name_that_leaves_the_root_is_refused(name):
    """The run's workdir, --root/NAME, was outside --root or --root itself."""
    from experiments import reproduce_plan as plan_lib

    with pytest.raises(ValueError, match=r"must be one folder name"):
        plan_lib.Spec.parse(f"ptb:tiny:{name}")


@pytest.mark.parametrize("root, message", [
    ("file", "error: --root={root} cannot hold the runs' workdirs: {root} is a file, not a "
             "folder."),
    ("file/sub", "error: --root={root} cannot hold the runs' workdirs: {file} is a file, not "
                 "a folder."),
    ("", "error: --root is empty; pass a folder, or leave the flag out for runs/reproduce."),
])
def test_reproduce_refuses_a_root_it_cannot_make(tmp_path, capsys, root, message):
    """A file in the way was a NotADirectoryError traceback once the runs started."""
    from tests.test_reproduce import _refusal

    (tmp_path / "file").write_text("")
    path = str(tmp_path / root) if root else ""
    lines = _refusal(capsys, ["--runs=ptb:tiny", f"--root={path}", "--plan",
                              f"--step_times={STEP_TIMES}",
                              f"--data_dir={tmp_path / 'none'}"])
    assert lines == [message.format(root=path, file=tmp_path / "file")]


def test_reproduce_refuses_an_out_under_a_file_before_the_runs(tmp_path, capsys):
    """The bundle could not be written there, found only after the whole batch."""
    from tests.test_reproduce import _refusal

    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "bundle"
    lines = _refusal(capsys, ["--runs=ptb:tiny", f"--root={tmp_path / 'w'}", "--calibrate_s=0",
                              "--budget_s=100", f"--step_times={STEP_TIMES}", f"--out={out}",
                              f"--data_dir={tmp_path / 'none'}"])
    assert lines == [f"error: --out {out} must be a new or empty folder: the bundle is written "
                     "there after the runs, and files already there would be mixed in or "
                     "block it."]


def test_the_data_cli_refuses_a_source_it_does_not_read_and_prefixes_its_errors(tmp_path,
                                                                               capsys):
    """`ptb_word --source=tfds` printed the files' stats; a data error had no `error:`."""
    from rnnreg_jax.data.__main__ import main

    fx.write_ptb_word(tmp_path)
    assert _status(main, ["ptb_word", "--data_dir", str(tmp_path), "--source=tfds"]) == 2
    assert _only_error_line(capsys) == ("error: --source=tfds applies to mnist and imdb; "
                                        "ptb_word has files only.")
    assert main(["ptb_char", "--data_dir", str(tmp_path)]) == 2
    assert _only_error_line(capsys).startswith(f"error: PTB folder {tmp_path}")


# --- launch.sh ------------------------------------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    # the whole usage, on stdout (launch.sh) or stderr (tpu), with status 2
    ([], "launch.sh: a command is needed: setup, test, run, multihost, tpu or help"),
    (["tpu", "--dry-run"], "launch.sh tpu: a tpu command is needed: create, setup, run,"),
    # ignored: setup ran
    (["setup", "extra"], "launch.sh: setup takes no argument, got 'extra'."),
    # ignored: the usage was printed with status 0
    (["help", "extra"], "launch.sh: help takes no argument, got 'extra'"),
    # after N it went to the experiment, and the processes started for real
    (["multihost", "2", "mh", "--config=tiny", "--dry-run"], "--dry-run goes first, before N"),
    # launch.sh's own came after them: absl kept those, silently
    (["multihost", "--dry-run", "2", "mh", "--config=tiny", "--num_processes=3"],
     "multihost sets --coordinator_address, --num_processes and --process_id itself"),
    (["multihost", "--dry-run", "2", "mh", "--config=tiny", "--workdir="],
     "multihost: --workdir is empty"),
])
def test_launch_refuses_in_one_line(sandbox, tmp_path, args, needle):
    run, calls = sandbox
    venv = tmp_path / "venv"  # installed already: setup, before the fix, did nothing more
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\nexit 0\n")
    (venv / "bin" / "python").chmod(0o755)
    (venv / ".rnnreg_installed").write_text("locked\n")
    result = run(*args, env={"VENV": str(venv)})
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert calls() == []
