"""Bad inputs to the command-line binaries end in one sentence (`error: ...` on stderr,
exit code 2, no traceback): a --workdir that is a file or whose config.json is a folder,
damaged checkpoints (told apart from another model's), a report of no runs or with a
missing --intro, a pMNIST validation split as large as the training set, and MNIST labels
outside 0..9."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import evaluate, report, run_record
from experiments import generate as generate_binary
from rnnreg_jax.data import DataError, load_mnist
from rnnreg_jax.train import checkpoint as ckpt_lib
from tests import data_fixtures as fx
from tests.train_helpers import run_tiny_ptb

MAINS = {"evaluate": evaluate.main, "generate": generate_binary.main}


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in lines), lines
    return errors[0]


# -- --workdir: a file, or a config.json that is a folder ------------------------------------

@pytest.mark.parametrize("tool", ["evaluate", "generate"])
def test_a_workdir_that_is_a_file_is_one_line(tmp_path, capsys, tool):
    """It ended in NotADirectoryError's traceback (`.../config.json`)."""
    path = tmp_path / "run.txt"
    path.write_text("not a run\n")
    assert MAINS[tool]([f"--workdir={path}"]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: --workdir={path} is a file, not a run's folder.")


@pytest.mark.parametrize("tool", ["evaluate", "generate"])
def test_a_config_json_that_is_a_folder_is_one_line(tmp_path, capsys, tool):
    """It ended in IsADirectoryError's traceback."""
    (tmp_path / "wd" / "config.json").mkdir(parents=True)
    assert MAINS[tool]([f"--workdir={tmp_path / 'wd'}"]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: {tmp_path / 'wd' / 'config.json'} is not a run record (a folder, not a "
        "file).")


def test_run_record_read_of_a_file_or_a_path_through_one(tmp_path):
    path = tmp_path / "f"
    path.write_text("")
    with pytest.raises(run_record.NotARunFolder, match=r"f is a file, not a run's folder\.$"):
        run_record.read(path)
    with pytest.raises(FileNotFoundError):  # as any workdir that does not exist
        run_record.read(path / "below")
    (tmp_path / "wd" / "config.json").mkdir(parents=True)
    with pytest.raises(run_record.NotARunRecord, match=r"\(a folder, not a file\)\.$"):
        run_record.read(tmp_path / "wd")


# -- damaged checkpoints ---------------------------------------------------------------------

def _state(step: int) -> dict:
    return {"step": jnp.asarray(step), "w": jnp.full((3000,), float(step)),
            "v": jnp.ones((500, 4))}


def _save(directory: Path, steps) -> None:
    ckpt = ckpt_lib.Checkpointer(str(directory), keep=len(steps))
    for step in steps:
        ckpt.save(_state(step), step)
    ckpt.close()


def _truncate_arrays(step_dir: Path) -> None:
    """Cut every array data file of a step (those in its `d/` folders) to 10 bytes."""
    cut = 0
    for path in step_dir.rglob("*"):
        if path.is_file() and path.parent.name == "d":
            os.truncate(path, 10)
            cut += 1
    assert cut, sorted(map(str, step_dir.rglob("*")))


def _garble_metadata(step_dir: Path) -> None:
    (step_dir / "default" / "_METADATA").write_text("garbage{")


DAMAGE = {"truncated arrays": _truncate_arrays, "garbled metadata": _garble_metadata}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("target", ["model", "raw"])
def test_an_unreadable_checkpoint_is_not_blamed_on_the_config(tmp_path, damage, target):
    """A damaged checkpoint was "None of the checkpoints ... restores into this model,
    probably written with another config"."""
    _save(tmp_path, [2])
    DAMAGE[damage](tmp_path / "checkpoints" / "2")
    with pytest.raises(ckpt_lib.CheckpointUnreadableError) as info:
        if target == "model":  # a training's resume
            ckpt = ckpt_lib.Checkpointer(str(tmp_path))
            try:
                ckpt.restore_latest(_state(0))
            finally:
                ckpt.close()
        else:  # experiments.evaluate's read
            ckpt_lib.restore_state(str(tmp_path / "checkpoints"), None)
    message = str(info.value)
    assert message.startswith(f"The checkpoint in {tmp_path / 'checkpoints'} (step 2) is "
                              "unreadable (corrupt or incomplete: ")
    assert message.endswith("); restore it from a copy, or move it away to start the run "
                            "over.")
    assert "\n" not in message and "another config" not in message
    assert "TensorStore" not in message and len(message) < 400
    assert isinstance(info.value, ckpt_lib.CheckpointMismatchError)  # refused the same way
    if damage == "garbled metadata":
        assert "a metadata file is not JSON: Expecting value" in message


def test_a_torn_newest_checkpoint_falls_back_with_a_short_warning(tmp_path, caplog):
    """The newest step unreadable: the older one restores, and the warning is one short
    line (it held TensorStore's 1.7 KB spec)."""
    _save(tmp_path, [2, 4])
    _truncate_arrays(tmp_path / "checkpoints" / "4")
    ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
    try:
        with caplog.at_level(logging.WARNING):
            restored = ckpt.restore_latest(_state(0))
    finally:
        ckpt.close()
    assert int(restored["step"]) == 2 and float(restored["w"][0]) == 2.0
    (warning,) = [r.getMessage() for r in caplog.records if "Checkpoint step" in r.getMessage()]
    assert warning.startswith(f"Checkpoint step 4 in {tmp_path / 'checkpoints'} is unreadable (")
    assert warning.endswith("); trying step 2.") and "TensorStore" not in warning
    assert len(warning) < 400 and "\n" not in warning


def test_all_steps_unreadable_name_the_steps(tmp_path):
    _save(tmp_path, [2, 4])
    for step in (2, 4):
        _garble_metadata(tmp_path / "checkpoints" / str(step))
    with pytest.raises(ckpt_lib.CheckpointUnreadableError, match=(
            r"^The checkpoints in \S+ \(steps \[4, 2\]\) are unreadable \(corrupt or "
            r"incomplete; step 2: a metadata file is not JSON: .*\); restore them from a "
            r"copy, or move them away to start the run over\.$")):
        ckpt_lib.restore_state(str(tmp_path / "checkpoints"), None)


def test_another_models_checkpoint_keeps_its_message(tmp_path):
    _save(tmp_path, [2])
    other = dict(_state(0), w=jnp.zeros((30,)))
    ckpt = ckpt_lib.Checkpointer(str(tmp_path))
    try:
        with pytest.raises(ckpt_lib.CheckpointMismatchError) as info:
            ckpt.restore_latest(other)
    finally:
        ckpt.close()
    assert not isinstance(info.value, ckpt_lib.CheckpointUnreadableError)
    assert str(info.value) == (
        f"None of the checkpoints in {tmp_path / 'checkpoints'} (steps [2]) restores into "
        "this model (step 2: another model's state: w is float32[3000] there but "
        "float32[30] in this model), probably written with another config; use a fresh "
        "--workdir or move them away.")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Two steps of the ptb binary's `tiny` preset: (workdir, data dir)."""
    root = tmp_path_factory.mktemp("tiny")
    fx.write_repeated_ptb_word(root / "data")
    run_tiny_ptb(root / "wd", root / "data", max_steps=2, num_epochs=1)
    assert sorted(os.listdir(root / "wd" / "checkpoints")) == ["2"]
    return root / "wd", root / "data"


@pytest.mark.parametrize("damage", DAMAGE)
def test_evaluate_of_a_damaged_checkpoint_is_one_line(tiny_run, tmp_path, capsys, damage):
    workdir, data_dir = tiny_run
    copy = tmp_path / "wd"
    shutil.copytree(workdir, copy)
    DAMAGE[damage](copy / "checkpoints" / "2")
    assert evaluate.main([f"--workdir={copy}", f"--data_dir={data_dir}"]) == 2
    err = capsys.readouterr().err
    line = _one_error_line(err)
    assert line.startswith(f"error: The checkpoint in {copy / 'checkpoints'} (step 2) is "
                           "unreadable (corrupt or incomplete: ")
    assert "TensorStore" not in err and "another config" not in err


def test_resuming_a_damaged_checkpoint_is_one_line_and_keeps_the_run(tiny_run, tmp_path):
    workdir, data_dir = tiny_run
    copy = tmp_path / "wd"
    shutil.copytree(workdir, copy)
    _truncate_arrays(copy / "checkpoints" / "2")
    record = (copy / "config.json").read_text()
    files = sorted((p.relative_to(copy), p.stat().st_size) for p in
                   (copy / "checkpoints").rglob("*"))
    out = subprocess.run(
        [sys.executable, "-m", "experiments.ptb", "--config=tiny", f"--workdir={copy}",
         f"--data_dir={data_dir}", "--config.data.batch_size=2",
         "--config.data.eval_batch_size=2", "--config.train.max_steps=2",
         "--config.train.mc_samples=0", "--config.train.tensorboard=False"],
        capture_output=True, text=True, check=False)
    assert out.returncode == 2, out.stderr[-2000:]
    line = _one_error_line(out.stderr)
    assert line.startswith(f"error: The checkpoint in {copy / 'checkpoints'} (step 2) is "
                           "unreadable (corrupt or incomplete: "), line
    assert "TensorStore" not in out.stderr and "another config" not in out.stderr
    assert (copy / "config.json").read_text() == record
    assert sorted((p.relative_to(copy), p.stat().st_size) for p in
                  (copy / "checkpoints").rglob("*")) == files


# -- experiments.report ----------------------------------------------------------------------

@pytest.mark.parametrize("contents", ["empty", "torn record"])
def test_a_report_of_no_runs_is_refused_and_writes_nothing(tmp_path, capsys, contents):
    """It wrote "No runs found." over --out (RESULTS.md by default) and exited 0."""
    runs = tmp_path / "runs"
    runs.mkdir()
    if contents == "torn record":
        (runs / "torn").mkdir()
        (runs / "torn" / "config.json").write_text('{"task": "ptb", "conf')
    out = tmp_path / "RESULTS.md"
    out.write_text("the report of earlier runs\n")
    assert report.main([f"--runs={runs}", f"--out={out}", "--plots="]) == 2
    err = capsys.readouterr().err
    assert _one_error_line(err) == (
        f"error: No run under --runs={runs} (a run is a folder with a readable "
        "config.json); nothing written.")
    if contents == "torn record":  # why it is no run, as a report of many runs says
        assert f"warning: skipping {runs / 'torn'}: " in err
    assert out.read_text() == "the report of earlier runs\n"


def test_a_missing_intro_names_the_flag(tmp_path, capsys):
    missing = tmp_path / "intro.md"
    assert report.main([f"--runs={tmp_path}", f"--out={tmp_path / 'R.md'}",
                        f"--intro={missing}"]) == 2
    assert _one_error_line(capsys.readouterr().err) == f"error: --intro={missing}: no such file."
    assert report.main([f"--runs={tmp_path}", f"--out={tmp_path / 'R.md'}",
                        f"--intro={tmp_path}"]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"error: cannot read --intro={tmp_path} (Is a directory).")
    assert not (tmp_path / "R.md").exists()


# -- MNIST -----------------------------------------------------------------------------------

def test_a_validation_split_of_the_whole_training_set_names_the_field(tmp_path):
    fx.write_mnist(tmp_path, n_train=40)
    with pytest.raises(ValueError) as info:
        load_mnist(tmp_path, validation_size=40, verify=False)
    assert str(info.value) == ("config.data.validation_size must be in [0, 40) (40 training "
                               "images), got 40.")


def _bad_labels(root: Path) -> Path:
    fx.write_mnist(root, n_train=40)
    labels = (np.arange(40) % 10).astype(np.uint8)
    labels[7] = 12
    return fx.write(root / "mnist" / "train-labels-idx1-ubyte", fx.idx_bytes(labels, 2049),
                    gz=True)


def test_labels_outside_0_to_9_are_refused(tmp_path):
    """They trained to "The training loss became nan at step 1"."""
    path = _bad_labels(tmp_path)
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path, validation_size=8, verify=False)
    assert str(info.value) == (
        f"MNIST file {path} holds label 12 at index 7, where MNIST's labels are the digits 0 "
        "to 9; delete it and download or copy it again (see docs/DATA.md).")


@pytest.mark.parametrize("case", ["validation_size", "labels"])
def test_pmnist_binary_refuses_bad_data_in_one_line(tmp_path, case):
    if case == "labels":
        path = _bad_labels(tmp_path / "data")
        expected = f"error: MNIST file {path} holds label 12 at index 7"
        size = 8
    else:
        fx.write_mnist(tmp_path / "data", n_train=40)
        expected = ("error: config.data.validation_size must be in [0, 40) (40 training "
                    "images), got 40.")
        size = 40
    out = subprocess.run(
        [sys.executable, "-m", "experiments.pmnist", "--config=tiny",
         f"--workdir={tmp_path / 'wd'}", f"--data_dir={tmp_path / 'data'}",
         f"--config.data.validation_size={size}", "--config.data.verify_checksums=False"],
        capture_output=True, text=True, check=False)
    assert out.returncode == 2, out.stderr[-2000:]
    assert _one_error_line(out.stderr).startswith(expected)
