"""Faults around the epoch-end commits: a kill between the best and the latest checkpoint
loses neither, and a best/ lost by an earlier engine is repaired on resume."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest
import train_helpers as th

from rnnreg_jax import train
from rnnreg_jax.train import checkpoint as ckpt_lib
from rnnreg_jax.train.logging import read_metrics

th.enable_compilation_cache()

STEPS_PER_EPOCH = 5


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (not even `except Exception`)."""


def _task():
    return train.Task(
        model=th.tiny_seq(num_outputs=1), kind="regression",
        train=th.SeqSource(kind="regression", num_batches=STEPS_PER_EPOCH),
        evals={"valid": th.SeqSource(kind="regression", num_batches=1, seed=1)})


def _config(epochs):
    c = train.default_train_config()
    c.num_epochs, c.optimizer, c.learning_rate = epochs, "adam", 1e-2
    c.log_every_steps, c.tensorboard = 5, False
    return c


def _steps(workdir):
    manager = ckpt_lib.Checkpointer(str(workdir))
    try:
        return manager.latest.all_steps(), manager.best.all_steps()
    finally:
        manager.close()


def _best_params(workdir):
    return ckpt_lib.restore_state(str(workdir / "best"), None)["params"]


def test_a_kill_between_the_two_epoch_end_writes_loses_neither(tmp_path, monkeypatch):
    reference = train.train_and_evaluate(_task(), _config(2), str(tmp_path / "ref"))
    # Kill the latest checkpoint's write at the end of epoch 1, after best/ is written.
    original = ckpt_lib.Checkpointer.save

    def killed_at_epoch_end(self, state, step):
        if step == STEPS_PER_EPOCH:
            raise Killed
        return original(self, state, step)

    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", killed_at_epoch_end)
    with pytest.raises(Killed):
        train.train_and_evaluate(_task(), _config(2), str(tmp_path / "wd"))
    latest, best = _steps(tmp_path / "wd")
    assert latest == [] and best == [STEPS_PER_EPOCH]  # best first: it survived the kill
    monkeypatch.setattr(ckpt_lib.Checkpointer, "save", original)
    resumed = train.train_and_evaluate(_task(), _config(2), str(tmp_path / "wd"))
    assert _steps(tmp_path / "wd") == _steps(tmp_path / "ref")
    for a, b in zip(jax.tree.leaves(_best_params(tmp_path / "wd")),
                    jax.tree.leaves(_best_params(tmp_path / "ref")), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed["valid/loss"] == reference["valid/loss"]


def test_resume_repairs_a_lost_best_checkpoint(tmp_path):
    """An epoch-end checkpoint that improved (bad_epochs 0) with best/ missing, as a kill
    between the writes left it when the latest was written first."""
    train.train_and_evaluate(_task(), _config(1), str(tmp_path / "wd"))
    before = _best_params(tmp_path / "wd")
    shutil.rmtree(tmp_path / "wd" / "best")
    (tmp_path / "wd" / "best").mkdir()
    train.train_and_evaluate(_task(), _config(1), str(tmp_path / "wd"))
    assert _steps(tmp_path / "wd")[1] == [STEPS_PER_EPOCH]
    for a, b in zip(jax.tree.leaves(_best_params(tmp_path / "wd")), jax.tree.leaves(before),
                    strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("how", [pytest.param("time_limit", marks=pytest.mark.slow), "sigterm",
                                 pytest.param("sigint", marks=pytest.mark.slow)])
def test_a_run_stopped_at_its_deadline_saves_and_resumes_bit_identical(tmp_path, monkeypatch,
                                                                        how):
    """A time limit (or SIGTERM, as a runner's deadline sends it, or a first Ctrl-C)
    stops the run at a step boundary with a checkpoint and no final evaluation; the same
    call resumes to the uninterrupted run's numbers."""
    import os
    import signal

    reference = train.train_and_evaluate(_task(), _config(2), str(tmp_path / "ref"))
    config = _config(2)
    if how == "time_limit":
        config.time_limit_s = 1e-9  # up after the first step
    else:
        original = th.SeqSource.iterate

        def iterate_then_sigterm(self, epoch, start=0):
            for i, batch in enumerate(original(self, epoch, start)):
                if self.steps_per_epoch == STEPS_PER_EPOCH and epoch == 1 and start + i == 2:
                    sent = signal.SIGINT if how == "sigint" else signal.SIGTERM
                    os.kill(os.getpid(), sent)  # handled at the step boundary
                yield batch

        monkeypatch.setattr(th.SeqSource, "iterate", iterate_then_sigterm)
    stopped = train.train_and_evaluate(_task(), config, str(tmp_path / "wd"))
    assert stopped["stopped"] is True and "valid/loss" not in stopped
    expected_step = 1 if how == "time_limit" else STEPS_PER_EPOCH + 3
    assert stopped["step"] == expected_step
    assert max(_steps(tmp_path / "wd")[0]) == expected_step
    assert signal.getsignal(signal.SIGTERM) is not None  # the handler was put back
    if how != "time_limit":  # Ctrl-C was a KeyboardInterrupt wherever it fell
        stop = [e for e in read_metrics(str(tmp_path / "wd")) if e["split"] == "stopped"]
        assert stop[-1]["reason"] == how.upper()
    monkeypatch.undo()
    resumed = train.train_and_evaluate(_task(), _config(2), str(tmp_path / "wd"))
    assert resumed["valid/loss"] == reference["valid/loss"]
    for a, b in zip(jax.tree.leaves(_best_params(tmp_path / "wd")),
                    jax.tree.leaves(_best_params(tmp_path / "ref")), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_prune_cut_short_leaves_a_step_resume_skips_and_the_next_prune_removes(tmp_path):
    # orbax prunes the oldest step by deleting it in place: a kill inside that deletion
    # leaves it listed with part of its files gone (its pytree metadata, say).
    import jax.numpy as jnp

    def state(step):
        return {"step": jnp.asarray(step), "w": jnp.full((3,), float(step))}

    ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
    for step in (4, 6):
        ckpt.save(state(step), step)
    ckpt.close()
    half_deleted = tmp_path / "checkpoints" / "4" / "default"
    (half_deleted / "_METADATA").unlink()

    ckpt = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
    assert sorted(ckpt.latest.all_steps()) == [4, 6]           # still listed
    restored = ckpt.restore_latest(state(0))
    assert int(restored["step"]) == 6 and float(restored["w"][0]) == 6.0
    ckpt.save(state(8), 8)                                     # the next prune
    assert sorted(ckpt.latest.all_steps()) == [6, 8]
    assert not (tmp_path / "checkpoints" / "4").exists()
    ckpt.close()


def test_restore_state_reads_only_a_save_in_progress_stays_and_nothing_is_created(tmp_path):
    """`restore_state` (notebooks, `experiments.evaluate`, which may run beside the
    training) neither removes another process's unfinished save, as a writing manager's
    cleanup of temporary directories would, nor creates a missing folder."""
    in_progress = tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp-1234"
    in_progress.mkdir(parents=True)
    assert train.restore_state(str(tmp_path / "checkpoints"), None) is None
    assert train.restore_state(str(tmp_path / "best"), None) is None
    assert in_progress.is_dir()
    assert not (tmp_path / "best").exists()
    with pytest.raises(ValueError, match=r"is a run's workdir, not a checkpoint folder: "
                                         r"pass \S+/checkpoints\."):
        train.restore_state(str(tmp_path), None)  # read as "no checkpoint" before
