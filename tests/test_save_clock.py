"""Time-based mid-epoch checkpoints (`train.checkpoint_every_s`, `train.save_clock`): a
run killed without warning mid-epoch resumes from its last timed save."""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest
import train_helpers as th

from rnnreg_jax import regularizers, train
from rnnreg_jax.train import checkpoint as ckpt_lib
from rnnreg_jax.train import mesh as mesh_lib
from rnnreg_jax.train import save_clock
from rnnreg_jax.train.save_clock import SaveClock

th.enable_compilation_cache()


@pytest.fixture
def clock(monkeypatch):
    """A clock of the test's own (a loaded machine may stall at any point)."""
    now = [500.0]
    monkeypatch.setattr(save_clock, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    return now


def test_a_save_is_due_once_the_interval_passed_since_the_last(clock):
    c = SaveClock(60.0, 10)
    clock[0] += 59.9
    assert not c.due(1)
    clock[0] += 0.1
    assert c.due(2)  # one process: at any step
    c.saved()
    assert not c.due(3)
    clock[0] += 61
    assert c.due(4)


@pytest.mark.parametrize("every_s", [0.0, None])
def test_no_interval_never_saves(clock, every_s):
    c = SaveClock(every_s, 10)
    clock[0] += 1e9
    assert not c.due(10)


def test_several_processes_decide_together_at_log_steps_only(clock, monkeypatch):
    asked = []
    monkeypatch.setattr(mesh_lib, "on_any_process", lambda flag: asked.append(flag) or flag)
    c = SaveClock(60.0, 4)
    c.multihost = True  # as with several processes: the decision is a collective
    clock[0] += 100
    assert not c.due(3) and not asked  # no collective between log steps
    assert c.due(4) and asked == [True]
    c.saved()
    assert not c.due(8) and asked == [True, False]
    c.log_every_steps = 0  # no point every process reaches mid-epoch: no timed save
    clock[0] += 100
    assert not c.due(12) and asked == [True, False]


def _task():
    return train.Task(model=th.tiny_lm(hidden=8, reg=regularizers.zaremba(0.2)), kind="lm",
                      train=th.LMSource(batch=4, steps=5, num_windows=6),
                      evals={"valid": th.LMSource(batch=4, steps=5, num_windows=2, seed=1)},
                      carry_state=True)


def _config(every_s):
    c = train.default_train_config()
    c.num_epochs, c.learning_rate, c.log_every_steps = 2, 0.5, 3
    c.checkpoint_every_s, c.keep_checkpoints, c.mc_samples = every_s, 50, 0
    return c


def test_the_interval_adds_saves_within_epochs_and_zero_keeps_epoch_ends(tmp_path):
    for every_s, expected in ((0.0, [6, 12]), (1e-9, list(range(1, 13)))):
        workdir = tmp_path / f"every_{every_s:g}"
        train.train_and_evaluate(_task(), _config(every_s), str(workdir))
        manager = ckpt_lib.Checkpointer(str(workdir), 50)
        assert manager.latest.all_steps() == expected, every_s
        manager.close()


class _Crash(Exception):
    pass


class _CrashingLM(th.LMSource):
    """Dies (as if killed) when it is asked for batch `at` of the first epoch."""

    def __init__(self, at, **kwargs):
        super().__init__(**kwargs)
        self.at = at

    def iterate(self, epoch, start_batch=0):
        for i, batch in enumerate(super().iterate(epoch, start_batch), start_batch):
            if epoch == 0 and i == self.at:
                raise _Crash
            yield batch


def test_a_run_killed_mid_epoch_resumes_from_its_timed_save_to_the_same_numbers(tmp_path):
    whole = train.train_and_evaluate(_task(), _config(0.0), str(tmp_path / "whole"))
    crashing = _task()
    crashing.train = _CrashingLM(4, batch=4, steps=5, num_windows=6)
    workdir = str(tmp_path / "killed")
    with pytest.raises(_Crash):
        train.train_and_evaluate(crashing, _config(1e-9), workdir)
    manager = ckpt_lib.Checkpointer(workdir, 50)
    assert max(manager.latest.all_steps()) == 4  # the step before the crash: nothing lost
    manager.close()
    resumed = train.train_and_evaluate(_task(), _config(1e-9), workdir)
    assert resumed["step"] == whole["step"] == 12
    assert resumed["valid/loss"] == whole["valid/loss"]
    a = ckpt_lib.restore_state(str(tmp_path / "whole" / "checkpoints"), None)
    b = ckpt_lib.restore_state(workdir + "/checkpoints", None)
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
        np.testing.assert_array_equal(x, y)

