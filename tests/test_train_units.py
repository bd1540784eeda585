"""Optimizer chain, LR rules, losses, penalties, state sharding (fast, no big compiles)."""

from __future__ import annotations

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_helpers as th

from rnnreg_jax import train
from rnnreg_jax.train import losses, optim, steps

th.enable_compilation_cache()


def _cfg(**kw):
    c = train.default_train_config()
    c.update(kw)
    return c


def _lr_trajectory(config, valid):
    """Learning rate of each epoch (1-based) given validation metrics, via the loop's rules."""
    lr, best, lrs = config.learning_rate, math.inf, []
    for epoch, metric in enumerate(valid, start=1):
        lrs.append(lr)
        improved = optim.improved(metric, best)
        best = min(best, metric) if improved else best
        lr = optim.next_learning_rate(config, epoch, lr, improved)
    return lrs


def test_zaremba_rule_matches_main_lua():
    c = _cfg(lr_schedule="zaremba", learning_rate=1.0, decay_after=4, decay_factor=2.0)
    lrs = _lr_trajectory(c, [5.0, 4.0, 3.0, 2.0, 1.9, 1.8, 1.7, 1.6])
    assert lrs == [1, 1, 1, 1, 1, 0.5, 0.25, 0.125]   # epochs 1..5 at 1, epoch 6 at 1/2


def test_plateau_rule_divides_after_epochs_without_improvement():
    c = _cfg(lr_schedule="plateau", learning_rate=1.0, plateau_factor=1.5)
    lrs = _lr_trajectory(c, [5.0, 4.0, 4.5, 3.0, 3.0, 3.5, 2.0, float("nan")])
    assert np.allclose(lrs, [1, 1, 1, 1 / 1.5, 1 / 1.5, 1 / 1.5**2, 1 / 1.5**3, 1 / 1.5**3])


def test_constant_rule():
    assert _lr_trajectory(_cfg(lr_schedule="constant"), [3.0, 4.0, 5.0]) == [1.0, 1.0, 1.0]


def test_weight_decay_is_l2_added_to_the_gradient_before_lr():
    params = {"w": jnp.full((3,), 2.0)}
    zero = {"w": jnp.zeros(3)}
    for name in ("sgd", "momentum"):
        tx = optim.make_optimizer(_cfg(optimizer=name, learning_rate=0.5, weight_decay=0.1,
                                       clip_norm=0.0))
        updates, _ = tx.update(zero, tx.init(params), params)
        np.testing.assert_allclose(updates["w"], -0.5 * 0.1 * 2.0, rtol=1e-6)  # -lr * wd * w
    tx = optim.make_optimizer(_cfg(learning_rate=0.5, weight_decay=0.0, clip_norm=0.0))
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_array_equal(updates["w"], 0.0)


def test_step_weight_decay_takes_its_share_whatever_the_learning_rate():
    """Gal's Lua LM scripts: after the clipped SGD step, param -= weight_decay * param;
    the learning rate does not scale it, nor does the clip bound it."""
    params = {"w": jnp.array([2.0, -4.0])}
    grads = {"w": jnp.array([0.0, 30.0])}  # norm 30, clipped to 10: [0, 10]
    for lr in (1.0, 0.01):
        tx = optim.make_optimizer(_cfg(learning_rate=lr, weight_decay=0.1, clip_norm=10.0,
                                       weight_decay_mode="step"))
        updates, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_allclose(updates["w"], [-0.1 * 2.0, -lr * 10.0 + 0.1 * 4.0],
                                   rtol=1e-6)
    # the gradient form at lr 0.01: the decay is scaled by it, and clipped after it
    tx = optim.make_optimizer(_cfg(learning_rate=0.01, weight_decay=0.1, clip_norm=10.0))
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.01 * 0.1 * 2.0, -0.01 * (10.0 - 0.4)],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="weight_decay_mode must be one of"):
        optim.make_optimizer(_cfg(weight_decay=0.1, weight_decay_mode="decoupled"))


def test_make_optimizer_refuses_hyperparameters_out_of_range():
    """A negative weight decay or clip norm was silently no decay or no clipping, a
    negative learning rate ascended, a momentum of 1 never forgets."""
    for fields, match in (({"weight_decay": -0.1}, "config.weight_decay must be a finite"),
                          ({"clip_norm": -1.0}, "config.clip_norm must be"),
                          ({"learning_rate": -1.0}, "config.learning_rate must be"),
                          ({"learning_rate": float("nan")}, "got nan"),
                          ({"optimizer": "momentum", "momentum": 1.0}, r"in \[0, 1\)"),
                          ({"optimizer": "rmsprop", "rmsprop_decay": -0.5},
                           "config.rmsprop_decay must be in")):
        with pytest.raises(ValueError, match=match):
            optim.make_optimizer(_cfg(**fields))
    optim.make_optimizer(_cfg(clip_norm=None, weight_decay=None, momentum=2.0))  # unused


def test_clipping_happens_before_weight_decay():
    params = {"w": jnp.array([1.0, 0.0])}
    grads = {"w": jnp.array([0.0, 100.0])}
    tx = optim.make_optimizer(_cfg(learning_rate=1.0, weight_decay=0.5, clip_norm=1.0))
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.5, -1.0], rtol=1e-6)


def test_clip_update_bounds_the_step_not_the_gradient():
    """Adam's step is about lr per coordinate whatever the gradient's size: clipping the
    gradient leaves it alone, clipping the step (the zoneout authors' rule) bounds it."""
    params = {"w": jnp.zeros(400)}
    grads = {"w": jnp.full((400,), 3.0)}
    norms = {}
    for clip_update in (False, True):
        tx = optim.make_optimizer(_cfg(optimizer="adam", learning_rate=0.002, clip_norm=0.01,
                                       clip_update=clip_update))
        updates, _ = tx.update(grads, tx.init(params), params)
        norms[clip_update] = float(jnp.linalg.norm(updates["w"]))
    assert norms[False] == pytest.approx(0.002 * 20, rel=1e-3)  # lr * sqrt(400)
    assert norms[True] == pytest.approx(0.01, rel=1e-4)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "rmsprop"])
def test_learning_rate_lives_in_the_state_and_can_be_set(name):
    params = {"w": jnp.ones(2)}
    tx = optim.make_optimizer(_cfg(optimizer=name, learning_rate=0.3, clip_norm=5.0))
    opt_state = tx.init(params)
    assert float(opt_state.hyperparams["learning_rate"]) == pytest.approx(0.3)
    hyper = dict(opt_state.hyperparams, learning_rate=jnp.asarray(0.0))
    updates, _ = tx.update({"w": jnp.ones(2)}, opt_state._replace(hyperparams=hyper), params)
    np.testing.assert_array_equal(updates["w"], 0.0)


def test_lm_losses_and_metrics():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))  # [1, 2, 3]
    batch = {"targets": jnp.array([[0, 1]])}
    per_token, stats = losses.objective_and_stats("lm", logits, batch, sum_over_time=False)
    summed, _ = losses.objective_and_stats("lm", logits, batch, sum_over_time=True)
    nll = (-math.log(0.5) - math.log(0.8)) / 2
    assert float(per_token) == pytest.approx(nll, rel=1e-5)
    assert float(summed) == pytest.approx(2 * nll, rel=1e-5)   # summed over T, mean over B
    m = losses.summarize("lm", jax.device_get(stats))
    assert m["ppl"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert m["bpc"] == pytest.approx(nll / math.log(2), rel=1e-5)
    assert m["error"] == 0.0


def test_perplexity_is_inf_past_float_range_and_nan_for_nan():
    assert losses.perplexity(700.0) == pytest.approx(math.exp(700.0))  # finite, ~1e304
    assert losses.perplexity(710.0) == math.inf  # math.exp raises OverflowError here
    assert losses.perplexity(-math.inf) == 0.0
    assert math.isnan(losses.perplexity(math.nan))  # not inf: a nan loss is no big loss
    stats = {"loss_sum": np.float32(math.nan), "count": 1.0, "errors": 0.0}
    assert math.isnan(losses.summarize("lm", stats)["ppl"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_misclassified_is_argmax_against_the_target(dtype):
    """The LM error from the target logit against the row max equals argmax != target."""
    k1, k2 = jax.random.split(jax.random.key(0))
    logits = (3.0 * jax.random.normal(k1, (4, 6, 50))).astype(dtype)
    targets = jax.random.randint(k2, (4, 6), 0, 50)
    targets = targets.at[::2].set(jnp.argmax(logits, -1)[::2])  # some right, some wrong
    wrong = np.asarray(jnp.argmax(logits, -1) != targets, np.float32)
    np.testing.assert_array_equal(jax.jit(losses.misclassified)(logits, targets), wrong)
    assert 0 < wrong.mean() < 1


def test_classification_and_regression_metrics():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = {"labels": jnp.array([0, 1, 1])}
    _, stats = losses.objective_and_stats("classification", logits, labels)
    assert losses.summarize("classification", stats)["error"] == pytest.approx(1 / 3)
    preds = jnp.array([[1.0], [2.0]])
    _, stats = losses.objective_and_stats("regression", preds, {"targets": jnp.array([0.0, 2.0])})
    m = losses.summarize("regression", stats, target_scale=3.0)
    assert m["loss"] == pytest.approx(0.5)
    assert m["rmse"] == pytest.approx(math.sqrt(0.5) * 3.0)


def test_mc_stats_average_probabilities_not_log_probabilities():
    # two samples: p(target) = 0.9 and 0.1 -> NLL of the mean = -log 0.5
    p = jnp.array([[[[0.9, 0.1]]], [[[0.1, 0.9]]]])           # [K=2, B=1, T=1, V=2]
    batch = {"targets": jnp.array([[0]])}
    summary = losses.mc_summary("lm", jnp.log(p), batch)
    stats = losses.mc_stats("lm", summary, batch, 2)
    assert float(stats["loss_sum"]) == pytest.approx(-math.log(0.5), rel=1e-5)


class _Sower(nn.Module):
    """Regression model that sows two penalties of known value."""

    @nn.compact
    def __call__(self, x, deterministic=True):
        y = nn.Dense(1)(x[:, -1])
        if not deterministic:
            self.sow("penalties", "a", jnp.asarray(0.25))
            self.sow("penalties", "b", jnp.asarray(1.5))
        return y


def test_every_penalty_is_added_to_the_training_loss():
    source = th.SeqSource(kind="regression")
    task = train.Task(model=_Sower(), kind="regression", train=source)
    config = _cfg(learning_rate=0.0)
    mesh = train.make_mesh()
    tx = optim.make_optimizer(config)
    batch = next(iter(source.iterate(0)))
    state = steps.init_state(task, config, mesh, tx, batch)
    step = steps.make_train_step(task, config, tx, mesh, steps.state_shardings(state, mesh))
    _, metrics = step(state, train.global_batch(mesh, batch))
    mse = float(metrics["loss_sum"]) / float(metrics["count"])
    assert float(metrics["penalty"]) == pytest.approx(1.75)
    assert float(metrics["objective"]) == pytest.approx(mse + 1.75, rel=1e-5)


def test_norm_stabilizer_penalty_reaches_the_loss():
    from rnnreg_jax import regularizers
    source = th.LMSource(batch=2, steps=3, num_windows=1)
    task = train.Task(model=th.tiny_lm(hidden=4, reg=regularizers.norm_stabilizer(10.0)),
                      kind="lm", train=source)
    config = _cfg()
    mesh = train.make_mesh()
    tx = optim.make_optimizer(config)
    batch = next(iter(source.iterate(0)))
    state = steps.init_state(task, config, mesh, tx, batch)
    step = steps.make_train_step(task, config, tx, mesh, steps.state_shardings(state, mesh))
    _, metrics = step(state, train.global_batch(mesh, batch))
    nll = float(metrics["loss_sum"]) / float(metrics["count"])
    assert float(metrics["penalty"]) > 0
    assert float(metrics["objective"]) == pytest.approx(nll + float(metrics["penalty"]), rel=1e-5)


def test_every_error_docs_training_names_is_rnnreg_jax_train_s():
    """The exceptions docs/TRAINING.md says the engine raises can be caught as
    `rnnreg_jax.train.<Name>`."""
    import pathlib
    import re

    page = pathlib.Path(__file__).resolve().parents[1] / "docs" / "TRAINING.md"
    named = set(re.findall(r"`(\w+Error)`", page.read_text()))
    assert {"CheckpointMismatchError", "CheckpointWriteError", "NonFiniteLossError"} <= named
    for name in named:
        assert issubclass(getattr(train, name), Exception), name
        assert name in train.__all__, name


@pytest.mark.parametrize("field, value, message", [
    ("mc_samples", -2, "config.mc_samples must be a whole number >= 0, got -2."),
    ("keep_checkpoints", 0, "config.keep_checkpoints must be a whole number >= 1, got 0."),
    # jax.random.PRNGKey(2**32) is PRNGKey(0): the run would repeat seed 0's
    ("seed", 2 ** 32, "config.seed must be below 2**32, got 4294967296."),
    ("seed", 2 ** 70, "config.seed must be below 2**32"),
    ("max_steps", True, "config.max_steps must be a whole number >= 0, got True."),
    ("time_limit_s", -5.0, "config.time_limit_s must be a finite number >= 0, got -5.0."),
    ("time_limit_s", float("inf"), "config.time_limit_s must be a finite number >= 0"),
    ("checkpoint_every_s", -1.0, "config.checkpoint_every_s must be a finite number >= 0, "
                                 "got -1.0."),
    ("decay_factor", 0.0, "config.decay_factor must be a finite number >= 1 (the learning "
                          "rate is divided by it), got 0.0."),
    ("learning_rate", -1.0, "config.learning_rate must be a finite number >= 0"),
    # float32's range: the optimizer state held inf, every parameter inf after a step
    ("learning_rate", 1e39, "config.learning_rate must be at most 3.403e+38 (the optimizer "
                            "holds it in float32), got 1e+39."),
    ("clip_norm", 1e39, "config.clip_norm must be at most 3.403e+38"),
    ("lr_schedule", "cosine", "config.lr_schedule must be one of"),
    # words where a switch belongs were taken as True (a field whose default is None
    # takes any type, one the defaults lack too)
    ("eval_carry_state", "maybe",
     "config.eval_carry_state must be True or False or None, got 'maybe'."),
    ("carry_state", 1, "config.carry_state must be True or False, got 1."),
    ("mc_masks", "Pass", "config.mc_masks must be one of ('pass', 'window'), got 'Pass'."),
    ("mc_splits", ("test", 3), "config.mc_splits must be a tuple of split names"),
])
def test_a_field_out_of_range_is_refused_before_anything_runs(tmp_path, field, value, message):
    from rnnreg_jax.train.config import check

    config = train.default_train_config()
    check(config)  # the defaults pass
    with config.unlocked():
        config[field] = value
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        check(config)
    with pytest.raises(ValueError, match="^config.train." + field):
        check(config, "config.train")
    task = train.Task(model=th.tiny_lm(), kind="lm", train=th.LMSource(),
                      evals={"valid": th.LMSource(seed=1)})
    with pytest.raises(ValueError, match=field):
        train.train_and_evaluate(task, config, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()  # refused before the workdir was made


def test_an_mc_split_the_task_lacks_is_refused_before_anything_runs(tmp_path):
    """An unknown `mc_splits` entry was ignored: the run ended without the MC pass."""
    config = train.default_train_config()
    config.mc_samples, config.mc_splits = 2, ("valid", "nosuch")
    task = train.Task(model=th.tiny_lm(), kind="lm", train=th.LMSource(),
                      evals={"valid": th.LMSource(seed=1)})
    with pytest.raises(ValueError, match=re.escape(
            "config.mc_splits names ['nosuch'], which this task does not evaluate (its "
            "splits: ['valid'])")):
        train.train_and_evaluate(task, config, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize("fields, message", [
    ({"test_protocol": True}, "Task.test_protocol=True evaluates the 'test' source, and "
     "Task.evals has none (it has ['valid'])."),  # the protocol was skipped quietly
    ({"kind": "seq2seq"}, "Task.kind must be one of ('lm', 'classification', 'regression'), "
     "got 'seq2seq'."),
    ({"train": None}, "Task.train must be a data source (with iterate(epoch, start_batch) and "
     "steps_per_epoch), got None."),  # an AttributeError at the first batch before
    ({"evals": [th.LMSource()]}, "Task.evals must map split names to data sources, got list."),
    ({"evals": {"valid": "valid.txt"}}, "Task.evals['valid'] must be a data source (with "
     "iterate(epoch, start_batch)), got 'valid.txt'."),
])
def test_a_task_of_the_wrong_parts_is_one_sentence(fields, message):
    parts = dict(model=th.tiny_lm(), kind="lm", train=th.LMSource(),
                 evals={"valid": th.LMSource(seed=1)})
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        train.Task(**{**parts, **fields})


class _Lying(th.SeqSource):
    """Promises `steps_per_epoch` batches and yields `yields` of them."""

    def __init__(self, yields, **kwargs):
        super().__init__(**kwargs)
        self.yields = yields

    def iterate(self, epoch, start_batch=0):
        for b, batch in enumerate(super().iterate(epoch, start_batch), start_batch):
            if b < self.yields:
                yield batch


def train_lib_task(source, evals, kind):
    """A tiny sequence model's task on `source`, evaluated on `evals`."""
    return train.Task(model=th.tiny_seq(num_outputs=1 if kind == "regression" else 2),
                      kind=kind, train=source, evals=evals)


def test_a_source_that_yields_fewer_batches_than_it_promised_is_named(tmp_path):
    """4 of 6 promised batches ended training as if max_steps had stopped it, then ran the
    final evaluation, on every rerun."""
    config = train.default_train_config()
    config.num_epochs = 3
    task = train_lib_task(_Lying(4, kind="regression", num_batches=6),
                          {"valid": th.SeqSource(kind="regression", num_batches=1, seed=1)},
                          "regression")
    with pytest.raises(ValueError, match=re.escape(
            "The training source yielded 4 of the 6 batches its steps_per_epoch promised "
            "for epoch 1 (the steps so far are saved).")):
        train.train_and_evaluate(task, config, str(tmp_path))
    assert (tmp_path / "checkpoints" / "4").exists()


@pytest.mark.parametrize("part, message", [
    ("train", "The training source yields no batch (epoch 0)."),
    ("valid", "The evaluation source 'valid' yields no batch."),  # a TypeError after training
])
def test_an_empty_source_is_named_before_training(tmp_path, part, message):
    empty = _Lying(0, kind="regression", num_batches=2)
    full = th.SeqSource(kind="regression", num_batches=2)
    task = train_lib_task(empty if part == "train" else full,
                          {"valid": empty if part == "valid" else full}, "regression")
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        train.train_and_evaluate(task, train.default_train_config(), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists() or not any(
        (tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize("kind, field, shape, message", [
    ("regression", "targets", (8, 1), r"targets have shape \(8, 1\), but the predictions "
                                      r"have \(8,\)"),  # broadcast to [B, B]: loss 64
    ("classification", "weights", (8, 1), r"weights have shape \(8, 1\), but the targets "
                                          r"have \(8,\)"),  # error 3.0, accuracy -2.0
])
def test_batch_fields_of_another_shape_are_refused(tmp_path, kind, field, shape, message):
    class Reshaped(th.SeqSource):
        def iterate(self, epoch, start_batch=0):
            for batch in super().iterate(epoch, start_batch):
                base = batch.get(field, np.ones(8, np.float32))
                yield dict(batch, **{field: np.reshape(base, shape)})

    task = train_lib_task(Reshaped(kind=kind, num_batches=2),
                          {"valid": th.SeqSource(kind=kind, num_batches=1, seed=1)}, kind)
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(task, train.default_train_config(), str(tmp_path))


def test_early_stopping_without_a_validation_split_is_refused(tmp_path):
    """Every epoch counted as one without improvement: the run stopped after `patience`."""
    config = train.default_train_config()
    config.early_stop_patience = 2
    task = train_lib_task(th.SeqSource(kind="regression", num_batches=2), {}, "regression")
    with pytest.raises(ValueError, match="config.early_stop_patience needs a validation split"):
        train.train_and_evaluate(task, config, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()



@pytest.mark.parametrize("setting, value, named", [
    ("early_stop_patience", 2, "early_stop_patience"),
    ("lr_schedule", "plateau", "lr_schedule='plateau'"),
    ("optimizer", "ntasgd", "optimizer='ntasgd'"),
    ("report_best", True, "report_best"),
])
def test_choosing_on_the_test_split_is_refused(tmp_path, setting, value, named):
    """A task whose only evaluation split is "test" (pMNIST with validation_size=0):
    early stopping, the plateau rule, NT-ASGD's trigger and the best epoch's report
    decided on the test set, silently."""
    config = train.default_train_config()
    with config.unlocked():
        config[setting] = value
    task = train_lib_task(th.SeqSource(kind="regression", num_batches=2),
                          {"test": th.SeqSource(kind="regression", num_batches=1)},
                          "regression")
    with pytest.raises(ValueError, match=rf"config.{re.escape(named)} decides on the "
                                         r"validation metric, and this task's only "
                                         r"evaluation split is 'test'"):
        train.train_and_evaluate(task, config, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


SMALLER_LAST_BATCH = '''
import sys
sys.path.insert(0, "tests")
import train_helpers as th
from rnnreg_jax import train

class Ragged(th.SeqSource):  # batches of 8, 8 and a last one of 6
    def iterate(self, epoch, start_batch=0):
        for b, batch in enumerate(super().iterate(epoch, start_batch), start_batch):
            yield {k: v[:6] for k, v in batch.items()} if b == 2 else batch

task = train.Task(model=th.tiny_seq(num_outputs=1), kind="regression",
                  train=Ragged(kind="regression", num_batches=3),
                  evals={"valid": th.SeqSource(kind="regression", num_batches=1, seed=1)})
try:
    train.train_and_evaluate(task, train.default_train_config(), sys.argv[1])
except ValueError as err:
    print("refused:", err)
'''


@pytest.mark.slow  # a subprocess compiling on 4 host devices: ~15-25 s on 2 cores
def test_a_smaller_last_batch_that_does_not_divide_over_the_devices_is_named(tmp_path):
    """Only the first batch was checked: on 4 devices a last batch of 6 failed in the
    sharding (IndivisibleError) part-way through the epoch."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", SMALLER_LAST_BATCH, str(tmp_path / "wd")],
                         cwd=th.ROOT, env=th.host_devices_env(4), capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert ("refused: Training batch 2 of epoch 1 (6) must divide over the 4 devices of "
            "the data mesh.") in out.stdout, out.stdout + out.stderr[-2000:]


def test_an_eval_batch_shared_by_the_processes_must_divide_over_the_devices(monkeypatch):
    """Two processes holding 5 rows each of a batch of 10 on 8 devices: `global_batch`
    replicated it, each process's 5 rows taken for the whole batch, and every metric of
    the split was silently wrong. A batch every process reads whole is replicated rightly."""
    import types

    from rnnreg_jax.train.task import check_shared_eval_batches

    def source(whole, share):
        return types.SimpleNamespace(global_batch_size=whole, local_batch_size=share)

    task = types.SimpleNamespace(evals={"test": source(1, 1), "valid": source(10, 5)})
    check_shared_eval_batches(task, 8)  # one process: every batch is its own
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match=re.escape(
            "The evaluation source 'valid''s global batch (10, 5 rows a process) must divide "
            "over the 8 devices of the data mesh")):
        check_shared_eval_batches(task, 8)
    task.evals["valid"] = source(16, 8)
    check_shared_eval_batches(task, 8)
    task.evals["custom"] = object()  # a source of the user's own, without the sizes
    check_shared_eval_batches(task, 8)
