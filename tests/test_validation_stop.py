"""SIGTERM during an epoch-end validation: the pass ends at its next batch, the epoch's
training is saved, and the same command validates that epoch first and goes on as a run
never stopped would."""

from __future__ import annotations

import os
import signal

import jax
import numpy as np
import pytest
import train_helpers as th

from rnnreg_jax import regularizers, train
from rnnreg_jax.train import checkpoint as ckpt_lib
from rnnreg_jax.train import ntasgd
from rnnreg_jax.train.evaluation import validation_history
from rnnreg_jax.train.evaluator import Evaluator, PassStopped
from rnnreg_jax.train.logging import read_metrics

th.enable_compilation_cache()

STEPS_PER_EPOCH = 3


def _task(reg=None):
    return train.Task(
        model=th.tiny_lm(hidden=8, reg=reg or regularizers.zaremba(0.3)), kind="lm",
        train=th.LMSource(batch=4, steps=4, num_windows=STEPS_PER_EPOCH),
        evals={"valid": th.LMSource(batch=2, steps=4, num_windows=3, seed=1),
               "test": th.LMSource(batch=1, steps=4, num_windows=3, seed=2)},
        carry_state=True, test_protocol=True)


def _config():
    c = train.default_train_config()
    c.num_epochs, c.log_every_steps, c.mc_samples = 3, 3, 2
    c.lr_schedule, c.decay_after = "zaremba", 1  # the LR halves at each epoch end after 1
    c.tensorboard = False
    return c


def _epoch_ends(workdir):
    return [(e["epoch"], e["step"], e["loss"], e["lr"]) for e in read_metrics(workdir)
            if e.get("phase") == "epoch_end"]


class _Validations:
    """Records the pass label of each stop check (before every batch of a pass but its
    first); SIGTERM as the pass `sigterm_at` starts (it then ends after its first batch)."""

    def __init__(self, monkeypatch, sigterm_at=None):
        self.batches: list[str] = []
        evaluate, check = Evaluator.evaluate, Evaluator._check_stop

        def det(ev, *args, label="", **kwargs):
            if label == sigterm_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return evaluate(ev, *args, label=label, **kwargs)

        def counted(ev, label):
            self.batches.append(label)
            return check(ev, label)

        monkeypatch.setattr(Evaluator, "evaluate", det)
        monkeypatch.setattr(Evaluator, "_check_stop", counted)

    def passes(self):
        return list(dict.fromkeys(self.batches))


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The run never stopped: (its workdir, its final metrics)."""
    workdir = str(tmp_path_factory.mktemp("whole"))
    return workdir, train.train_and_evaluate(_task(), _config(), workdir)


def _latest_position(workdir, task, config):
    mesh = train.make_mesh()
    state = train.init_state(task, config, mesh, train.make_optimizer(config),
                             next(iter(task.train.iterate(0))))
    restored = ckpt_lib.Checkpointer(workdir).restore_latest(state)
    return int(restored.step), int(restored.epoch), int(restored.batch_in_epoch)


def test_sigterm_in_a_validation_saves_the_epoch_and_the_rerun_validates_it_first(
        tmp_path, monkeypatch, whole):
    whole_dir, whole = whole
    workdir = str(tmp_path / "stopped")
    with monkeypatch.context() as m:
        seen = _Validations(m, sigterm_at="epoch 2 valid")
        stopped = train.train_and_evaluate(_task(), _config(), workdir)
    assert stopped == {"step": 2 * STEPS_PER_EPOCH, "epoch": 1, "stopped": True}
    assert seen.batches.count("epoch 2 valid") == 1  # 1 of its 3 batches
    assert _latest_position(workdir, _task(), _config()) == (2 * STEPS_PER_EPOCH, 1,
                                                             STEPS_PER_EPOCH)
    events = read_metrics(workdir)
    assert events[-1]["split"] == "stopped" and events[-1]["reason"] == "SIGTERM"
    assert events[-1]["during"] == "validation"  # what the GPU-window planner prices
    assert [epoch for epoch, *_ in _epoch_ends(workdir)] == [0]
    with monkeypatch.context() as m:
        seen = _Validations(m)
        resumed = train.train_and_evaluate(_task(), _config(), workdir)
    assert seen.passes()[0] == "epoch 2 valid"  # before any training: no train batch
    assert read_metrics(workdir)[-1]["phase"] == "final"
    resume = [e for e in read_metrics(workdir) if e["split"] == "resume"]
    assert [e["batch_in_epoch"] for e in resume] == [STEPS_PER_EPOCH]
    assert _epoch_ends(workdir) == _epoch_ends(whole_dir)  # losses and LR rule alike
    for key in ("valid/loss", "test/loss", "test_mc/loss", "step", "epoch", "eval_epoch"):
        assert resumed[key] == whole[key], key


def test_a_sigterm_in_the_last_validation_still_gives_the_final_evaluation(
        tmp_path, monkeypatch, whole):
    """The last epoch's validation stopped: no final evaluation yet; the rerun validates,
    saves the epoch end (best/ included) and evaluates as the whole run does."""
    _, whole = whole
    workdir = str(tmp_path / "stopped")
    with monkeypatch.context() as m:
        _Validations(m, sigterm_at="epoch 3 valid")
        assert train.train_and_evaluate(_task(), _config(), workdir)["stopped"]
    assert not [e for e in read_metrics(workdir) if e.get("phase") == "final"]
    resumed = train.train_and_evaluate(_task(), _config(), workdir)
    assert resumed["test/loss"] == whole["test/loss"]
    assert resumed["epoch"] == 3 and resumed["eval_epoch"] == whole["eval_epoch"]


@pytest.mark.slow
def test_max_steps_at_an_epoch_end_still_validates_a_stopped_epoch(tmp_path, monkeypatch):
    """`max_steps` reached with the epoch's validation pending runs that validation
    before the final evaluation, as a run never stopped does."""
    config = _config()
    config.max_steps = 2 * STEPS_PER_EPOCH
    whole_dir = str(tmp_path / "whole")
    whole = train.train_and_evaluate(_task(), config, whole_dir)
    workdir = str(tmp_path / "stopped")
    with monkeypatch.context() as m:
        _Validations(m, sigterm_at="epoch 2 valid")
        assert train.train_and_evaluate(_task(), config, workdir)["stopped"]
    resumed = train.train_and_evaluate(_task(), config, workdir)
    assert _epoch_ends(workdir) == _epoch_ends(whole_dir)
    assert resumed["valid/loss"] == whole["valid/loss"] and resumed["eval_epoch"] == 2


@pytest.mark.slow
def test_ntasgd_resumes_with_the_history_of_a_run_never_stopped(tmp_path, monkeypatch):
    """NT-ASGD's trigger reads the validation history back on resume. The epoch whose
    validation SIGTERM stopped is saved before its validation and its epoch-end save is
    then a step already on disk, so a later resume (here: after a SIGTERM in the final
    evaluation) validates it again: its first record must not be in the history."""
    heard: dict[str, list] = {"whole": [], "stopped": []}

    def config():
        c = _config()
        c.optimizer, c.learning_rate, c.clip_norm = "ntasgd", 1.0, 0.25
        c.lr_schedule = "constant"
        return c

    def run(name, sigterm_at=None):
        trigger = ntasgd.nonmono_trigger
        with monkeypatch.context() as m:
            m.setattr(ntasgd, "nonmono_trigger",
                      lambda h, v, n: heard[name].append(list(h)) or trigger(h, v, n))
            _Validations(m, sigterm_at=sigterm_at)
            return train.train_and_evaluate(_task(regularizers.awd_lstm()), config(),
                                            str(tmp_path / name))

    whole = run("whole")
    assert run("stopped", sigterm_at="epoch 3 valid")["stopped"]
    assert run("stopped", sigterm_at="final evaluation, valid")["stopped"]
    resumed = run("stopped")
    assert len(heard["whole"]) == 3  # never triggered: asked at every epoch end
    assert heard["stopped"] == heard["whole"] + [heard["whole"][2]]  # epoch 3 twice
    np.testing.assert_array_equal(resumed["valid/loss"], whole["valid/loss"])


def test_validation_history_is_one_value_an_epoch_the_last_recorded():
    """An epoch whose event was written but whose checkpoint was not (a kill between
    them) is validated again on resume: the history keeps the later value, once."""
    def end(epoch, loss, split="valid"):
        return {"phase": "epoch_end", "split": split, "epoch": epoch, "step": 3 * epoch,
                "loss": loss}

    events = [end(0, 5.0), {"split": "train", "epoch": 1, "step": 4, "loss": 9.0},
              end(1, 4.0), {"split": "resume", "epoch": 1, "step": 3}, end(1, 4.5),
              end(1, 1.0, split="test"), end(2, 3.0), end(3, 2.0)]
    assert validation_history(events, "valid", "loss", before_epoch=3) == [5.0, 4.5, 3.0]
    assert validation_history(events, "valid", "loss", before_epoch=0) == []
    assert validation_history(events, "test", "loss", before_epoch=9) == [1.0]


def test_a_stop_asked_during_the_last_batch_keeps_the_pass():
    """The stop is asked before each batch but the first: a pass of one batch always
    ends, a longer one stops after its first."""
    task = _task()
    mesh = train.make_mesh()
    state = train.init_state(task, _config(), mesh, train.make_optimizer(_config()),
                             next(iter(task.train.iterate(0))))
    ev = Evaluator(task, mesh)
    ev.should_stop = lambda: True
    one = th.LMSource(batch=2, steps=4, num_windows=1, seed=1)
    assert ev.evaluate(state.params, one)["loss"] > 0
    assert ev.evaluate_mc(state.params, one, 2, jax.random.key(0))["loss"] > 0
    for run in (lambda s: ev.evaluate(state.params, s),
                lambda s: ev.evaluate_mc(state.params, s, 2, jax.random.key(0))):
        with pytest.raises(PassStopped, match="stopped part-way"):
            run(task.evals["valid"])
