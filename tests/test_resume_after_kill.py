"""A run killed without warning and run again ends where the run never killed ends: the
loop's host copies of the learning rate and of the best validation metric are the
float32 values its checkpoints hold, which a resumed run reads back; and the ptb binary,
SIGKILLed mid-epoch and in its final MC pass, logs what the uninterrupted run logs."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import train_helpers as th
from data_fixtures import write_repeated_ptb_word

from experiments.report_runs import load_run
from rnnreg_jax import regularizers, train
from rnnreg_jax.train import checkpoint as ckpt_lib
from rnnreg_jax.train.evaluator import Evaluator
from rnnreg_jax.train.logging import read_metrics

th.enable_compilation_cache()

STEPS = 3  # batches an epoch
TIMING = ("wall_time", "tokens_per_sec", "steps_per_sec")


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (not even `except Exception`)."""


def _task():
    return train.Task(
        model=th.tiny_lm(hidden=8, reg=regularizers.zaremba(0.3)), kind="lm",
        train=th.LMSource(batch=4, steps=4, num_windows=STEPS),
        evals={"valid": th.LMSource(batch=2, steps=4, num_windows=2, seed=1)},
        carry_state=True)


def _config(**fields):
    c = train.default_train_config()
    c.num_epochs, c.learning_rate, c.log_every_steps = 4, 0.5, 3
    c.tensorboard, c.mc_samples = False, 0
    c.update(fields)
    return c


def _killed_then_resumed(monkeypatch, workdir: str, config, step: int) -> dict:
    """Kill the run once checkpoint `step` is written, then run it again."""
    save = ckpt_lib.Checkpointer.save

    def killed_after(self, state, at):
        save(self, state, at)
        if at == step:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(ckpt_lib.Checkpointer, "save", killed_after)
        with pytest.raises(Killed):
            train.train_and_evaluate(_task(), config, workdir)
    return train.train_and_evaluate(_task(), config, workdir)


def _epoch_ends(workdir) -> dict:
    """(split, epoch) -> its last epoch-end event, wall time left out."""
    return {(e["split"], e["epoch"]): {k: v for k, v in e.items() if k not in TIMING}
            for e in read_metrics(str(workdir)) if e.get("phase") == "epoch_end"}


def _assert_same_params(workdir, other) -> None:
    a, b = (ckpt_lib.restore_state(os.path.join(str(w), "checkpoints"), None)
            for w in (workdir, other))
    assert int(a["step"]) == int(b["step"])
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_learning_rate_decayed_by_1_15_takes_the_same_rates_after_a_kill(
        tmp_path, monkeypatch):
    """1 / 1.15 is no float32: a host rate kept in float64 while the checkpoint holds its
    float32 rounding decayed on resume from another number (ulps apart at epoch 4)."""
    config = _config(lr_schedule="zaremba", decay_after=1, decay_factor=1.15)
    whole = train.train_and_evaluate(_task(), config, str(tmp_path / "whole"))
    resumed = _killed_then_resumed(monkeypatch, str(tmp_path / "killed"), config, 2 * STEPS)
    assert _epoch_ends(tmp_path / "killed") == _epoch_ends(tmp_path / "whole")  # "lr" too
    _assert_same_params(tmp_path / "killed", tmp_path / "whole")
    assert resumed["valid/loss"] == whole["valid/loss"]


def test_a_validation_metric_tied_with_the_best_is_no_improvement_after_a_kill(
        tmp_path, monkeypatch):
    """Every epoch validates to 0.1, whose float32 rounding is above it: a resumed run
    compared it with the checkpoint's float32 best, counted an improvement, and moved
    best/ and the early stop (the run never killed stops after 3 epochs)."""
    evaluate = Evaluator.evaluate

    def tied(ev, *args, label="", **kwargs):
        out = evaluate(ev, *args, label=label, **kwargs)
        return dict(out, loss=0.1) if label.startswith("epoch ") else out

    monkeypatch.setattr(Evaluator, "evaluate", tied)
    config = _config(early_stop_patience=2)
    whole = train.train_and_evaluate(_task(), config, str(tmp_path / "whole"))
    resumed = _killed_then_resumed(monkeypatch, str(tmp_path / "killed"), config, STEPS)
    assert whole["step"] == 3 * STEPS and whole["eval_epoch"] == 1
    for key in ("step", "epoch", "eval_epoch", "valid/loss"):
        assert resumed[key] == whole[key], key
    assert _epoch_ends(tmp_path / "killed") == _epoch_ends(tmp_path / "whole")
    best = [ckpt_lib.Checkpointer(str(tmp_path / w)) for w in ("whole", "killed")]
    assert best[0].best.all_steps() == best[1].best.all_steps() == [STEPS]
    for c in best:
        c.close()


# ---------------------------------------------------------------- the binary, SIGKILLed

SCRIPT = os.path.join(os.path.dirname(__file__), "kill_at_script.py")
# 4 epochs of 20 batches; the LR divided by 1.15 after epochs 2 and 3; saves every 7 steps
PTB_FLAGS = ("--config=tiny", "--config.data.batch_size=2", "--config.data.eval_batch_size=2",
             "--config.train.max_steps=0", "--config.train.num_epochs=4",
             "--config.train.decay_factor=1.15", "--config.train.log_every_steps=3",
             "--config.train.checkpoint_every_steps=7", "--config.train.tensorboard=False")


def _ptb(workdir, data, moment: str = "none") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, SCRIPT, moment, "experiments.ptb", f"--workdir={workdir}",
         f"--data_dir={data}", *PTB_FLAGS], cwd=th.ROOT, env=th.host_devices_env(1),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _ended(proc, killed: bool) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == (-9 if killed else 0), err[-3000:]


def _logged(workdir) -> tuple[dict, dict, dict]:
    """Train events by step (each repeat the same), epoch ends and final passes (the last)."""
    train_steps: dict = {}
    for e in read_metrics(str(workdir)):
        if e["split"] == "train":
            e = {k: v for k, v in e.items() if k not in TIMING}
            assert train_steps.setdefault(e["step"], e) == e  # a repeat after a resume
    finals = {e["split"]: e for e in read_metrics(str(workdir)) if e.get("phase") == "final"}
    return train_steps, _epoch_ends(workdir), {
        k: {f: v for f, v in e.items() if f != "wall_time"} for k, e in finals.items()}


@pytest.mark.slow
def test_the_ptb_binary_killed_mid_epoch_and_in_its_mc_pass_logs_the_same_run(tmp_path):
    data = tmp_path / "data"
    write_repeated_ptb_word(data)
    whole = _ptb(tmp_path / "whole", data)
    workdir = tmp_path / "killed"
    # epoch 3, 5 steps after its save at 42 (taken at lr 1 / 1.15); the MC pass's 3rd batch
    for moment in ("step:47", "pass:MC dropout:3"):
        _ended(_ptb(workdir, data, moment), killed=True)
    _ended(_ptb(workdir, data), killed=False)
    _ended(whole, killed=False)
    resumes = [e["step"] for e in read_metrics(str(workdir)) if e["split"] == "resume"]
    assert resumes == [42, 80]
    assert _logged(workdir) == _logged(tmp_path / "whole")
    _assert_same_params(workdir, tmp_path / "whole")
    runs = [load_run(str(w)) for w in (workdir, tmp_path / "whole")]
    for read in (lambda r: (r.epochs_trained(), r.total_epochs), lambda r: r.final_missing(),
                 lambda r: r.epoch_curve(), lambda r: r.final()["test_mc"]["ppl"]):
        assert read(runs[0]) == read(runs[1])
    assert runs[0].epochs_trained() == runs[0].total_epochs == 4
