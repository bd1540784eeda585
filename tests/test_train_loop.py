"""train_and_evaluate end to end: learning, LR rule wiring, logs, NaN stop."""

from __future__ import annotations

import os

import numpy as np
import pytest
import train_helpers as th

from rnnreg_jax import regularizers, train
from rnnreg_jax.train import checkpoint as ckpt_lib
from rnnreg_jax.train import mesh as mesh_lib
from rnnreg_jax.train.evaluator import Evaluator
from rnnreg_jax.train.logging import read_metrics

th.enable_compilation_cache()


def test_lm_training_loss_falls_and_logs(tmp_path):
    task = train.Task(
        model=th.tiny_lm(hidden=16, reg=regularizers.zaremba(0.1)), kind="lm",
        train=th.LMSource(batch=8, steps=6, num_windows=8),
        evals={"valid": th.LMSource(batch=4, steps=6, num_windows=3, seed=1),
               "test": th.LMSource(batch=1, steps=6, num_windows=6, seed=2)},
        carry_state=True, test_protocol=True)
    c = train.default_train_config()
    c.num_epochs, c.learning_rate, c.loss_sum_over_time = 5, 1.0, True
    c.lr_schedule, c.decay_after, c.decay_factor = "zaremba", 3, 2.0
    c.log_every_steps, c.mc_samples = 4, 4
    final = train.train_and_evaluate(task, c, str(tmp_path))
    events = read_metrics(str(tmp_path))
    train_losses = [e["loss"] for e in events if e["split"] == "train"]
    valid = [e for e in events if e["split"] == "valid" and e["phase"] == "epoch_end"]
    print(f"train loss {train_losses[0]:.3f} -> {train_losses[-1]:.3f}, valid ppl "
          f"{valid[0]['ppl']:.2f} -> {valid[-1]['ppl']:.2f}, test ppl {final['test/ppl']:.2f}, "
          f"test MC ppl {final['test_mc/ppl']:.2f}")
    assert train_losses[-1] < 0.75 * train_losses[0], train_losses
    assert valid[-1]["loss"] < valid[0]["loss"]
    # Zaremba's rule wired into the loop: epochs 1..4 at lr 1, epoch 5 at 1/2
    assert [e["lr"] for e in valid] == [1.0, 1.0, 1.0, 1.0, 0.5]
    assert final["step"] == 40 and final["epoch"] == 5
    for key in ("valid/ppl", "test/ppl", "test_mc/ppl", "train/tokens_per_sec"):
        assert np.isfinite(final[key]), key
    assert {"step", "epoch", "split", "loss", "lr", "wall_time"} <= set(events[0])
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "tb"))
    assert sorted(os.listdir(tmp_path / "best"))  # best checkpoint kept apart
    # a finished run restarted on its workdir resumes and only re-evaluates
    again = train.train_and_evaluate(task, c, str(tmp_path))
    assert again["step"] == 40 and again["valid/loss"] == pytest.approx(final["valid/loss"])


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    source = th.SeqSource(kind="regression", num_batches=5, nan_at=7)   # epoch 2, batch 2
    task = train.Task(model=th.tiny_seq(num_outputs=1), kind="regression", train=source,
                      evals={"valid": th.SeqSource(kind="regression", num_batches=1, seed=1)})
    c = train.default_train_config()
    c.num_epochs, c.optimizer, c.learning_rate = 3, "adam", 1e-2
    c.log_every_steps, c.checkpoint_every_steps = 4, 0
    with pytest.raises(train.NonFiniteLossError, match=r"became nan at step 8 .*step 5"):
        train.train_and_evaluate(task, c, str(tmp_path))
    manager = ckpt_lib.Checkpointer(str(tmp_path))
    assert manager.latest.all_steps() == [5]
    restored = ckpt_lib.restore_state(str(tmp_path / "checkpoints"), None)
    assert int(restored["step"]) == 5
    for leaf in __import__("jax").tree.leaves(restored["params"]):
        assert np.all(np.isfinite(leaf))
    manager.close()


def test_a_non_finite_state_is_never_saved_though_its_loss_was_finite(tmp_path):
    """At lr 1e20 with a weight decay of 1e20 the first update (lr * decay * w, past
    float32's range) makes the parameters inf/NaN while the loss logged for that step
    (computed before the update) is finite: the save after step 1 must see the state,
    not the loss, and keep nothing."""
    task = train.Task(model=th.tiny_seq(num_outputs=1), kind="regression",
                      train=th.SeqSource(kind="regression", num_batches=5),
                      evals={"valid": th.SeqSource(kind="regression", num_batches=1, seed=1)})
    c = train.default_train_config()
    c.num_epochs, c.optimizer, c.learning_rate, c.clip_norm = 1, "sgd", 1e20, 0.0
    c.weight_decay = 1e20
    c.log_every_steps, c.checkpoint_every_steps = 1, 1
    with pytest.raises(train.NonFiniteLossError,
                       match=r"parameters or optimizer state became non-finite by step 1 "
                             r".*no checkpoint had been saved yet"):
        train.train_and_evaluate(task, c, str(tmp_path))
    manager = ckpt_lib.Checkpointer(str(tmp_path))
    assert manager.latest.all_steps() == []
    manager.close()
    said = [e["error_message"] for e in read_metrics(str(tmp_path)) if "error_message" in e]
    assert len(said) == 1 and "non-finite by step 1" in said[0]


def test_classification_runs_and_reports_error(tmp_path):
    task = train.Task(model=th.tiny_seq(num_outputs=2), kind="classification",
                      train=th.SeqSource(num_batches=4),
                      evals={"valid": th.SeqSource(num_batches=2, seed=1)})
    c = train.default_train_config()
    c.num_epochs, c.optimizer, c.learning_rate = 2, "rmsprop", 1e-2
    c.rmsprop_decay, c.lr_schedule, c.max_steps = 0.5, "plateau", 6
    final = train.train_and_evaluate(task, c, str(tmp_path))
    assert final["step"] == 6
    assert 0.0 <= final["valid/error"] <= 1.0


def test_checkpoints_of_another_model_are_a_one_sentence_error(tmp_path):
    """Resuming a workdir written by a different model must not start over on top of it."""
    def task(hidden):
        return train.Task(model=th.tiny_lm(hidden=hidden), kind="lm",
                          train=th.LMSource(batch=4, steps=5, num_windows=2),
                          evals={"valid": th.LMSource(batch=4, steps=5, num_windows=1, seed=1)})
    c = train.default_train_config()
    c.num_epochs = 1
    train.train_and_evaluate(task(8), c, str(tmp_path))
    saved = sorted(os.listdir(tmp_path / "checkpoints"))
    with pytest.raises(ckpt_lib.CheckpointMismatchError, match="use a fresh --workdir"):
        train.train_and_evaluate(task(12), c, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == saved  # nothing replaced


class _ReversedLM(th.LMSource):
    """The training stream's rule run backwards (token t+1 = token t - 1): the
    better a model learns the training data, the worse it does here."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.data = np.ascontiguousarray(self.data[:, ::-1])


def test_early_stopping_evaluates_the_best_validation_checkpoint(tmp_path):
    task = train.Task(model=th.tiny_lm(hidden=16), kind="lm",
                      train=th.LMSource(batch=8, steps=6, num_windows=8),
                      evals={"valid": _ReversedLM(batch=8, steps=6, num_windows=3, seed=1)},
                      carry_state=False)
    c = train.default_train_config()
    c.num_epochs, c.learning_rate, c.early_stop_patience = 10, 1.0, 2
    c.loss_sum_over_time = True  # Zaremba's scale: fast learning, so a clear rise
    final = train.train_and_evaluate(task, c, str(tmp_path))
    valid = [e["loss"] for e in read_metrics(str(tmp_path))
             if e["split"] == "valid" and e["phase"] == "epoch_end"]
    best_epoch = int(np.argmin(valid)) + 1
    print(f"valid loss per epoch {np.round(valid, 3).tolist()}, final {final['valid/loss']:.3f}")
    assert len(valid) < c.num_epochs and valid[-1] > min(valid)  # stopped early, past the best
    assert final["valid/loss"] == pytest.approx(min(valid), rel=1e-5)
    assert final["eval_epoch"] == best_epoch and final["epoch"] == len(valid)


def test_evaluation_can_carry_the_state_that_training_resets(tmp_path):
    """eval_carry_state=True with carry_state=False (the zoneout word presets): the
    same training, evaluated along the streams instead of from zero every window."""
    def run(name, **kw):
        task = train.Task(model=th.tiny_lm(hidden=16), kind="lm",
                          train=th.LMSource(batch=8, steps=6, num_windows=8),
                          evals={"valid": th.LMSource(batch=4, steps=3, num_windows=6, seed=1)},
                          **kw)
        c = train.default_train_config()
        c.num_epochs, c.learning_rate, c.loss_sum_over_time = 3, 1.0, True
        c.log_every_steps = 8
        final = train.train_and_evaluate(task, c, str(tmp_path / name))
        train_losses = [e["loss"] for e in read_metrics(str(tmp_path / name))
                        if e["split"] == "train"]
        return task, final, train_losses

    reset_task, reset, reset_train = run("reset")
    task, streams, streams_train = run("streams", eval_carry_state=True)
    assert not task.carry_state and task.evaluation_carries_state
    assert not reset_task.evaluation_carries_state
    assert streams_train == reset_train  # training is the same
    assert streams["valid/loss"] < reset["valid/loss"]  # context across windows helps
    state = ckpt_lib.restore_state(str(tmp_path / "streams" / "checkpoints"), None)
    evaluator = Evaluator(reset_task, mesh_lib.make_mesh())
    carried = evaluator.evaluate(state["params"], task.evals["valid"], carry_state=True)
    assert carried["loss"] == pytest.approx(streams["valid/loss"], rel=1e-6)
