"""Deterministic and Monte Carlo evaluation."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import train_helpers as th
from numerics import assert_close_f32

from rnnreg_jax import models, noise, regularizers, train
from rnnreg_jax.train import optim, steps
from rnnreg_jax.train.evaluator import Evaluator

th.enable_compilation_cache()

VOCAB = 12


@pytest.fixture(scope="module")
def setup():
    reg = regularizers.compose(regularizers.zaremba(0.5), regularizers.variational(recurrent=0.3))
    source = th.LMSource(vocab=VOCAB, batch=2, steps=4, num_windows=3, seed=3)
    model = models.LanguageModel(vocab_size=VOCAB, hidden_sizes=(8,), reg=reg, init_scale=0.8)
    task = train.Task(model=model, kind="lm",
                      train=source, carry_state=True)
    config = train.default_train_config()
    mesh = train.make_mesh()
    state = steps.init_state(task, config, mesh, optim.make_optimizer(config),
                             next(iter(source.iterate(0))))
    return task, source, state.params, mesh


_APPLY = {}


def _stochastic_target_probs(task, source, params, key, sample=None):
    """One stochastic pass with carried state: p(target) `[num_windows, B, T]`. Window w
    draws from `fold_in(key, w)`, or, given `sample`, from MC sample `sample`'s key under
    per-window masks (`noise.mc_sample_keys`, the Evaluator's default)."""
    if task.model not in _APPLY:
        _APPLY[task.model] = jax.jit(lambda p, x, c, k: task.model.apply(
            {"params": p}, x, c, deterministic=False, rngs={"dropout": k}))
    apply = _APPLY[task.model]
    carry, out = None, []
    for w, batch in enumerate(source.iterate(0)):
        wkey = (jax.random.fold_in(key, w) if sample is None
                else noise.mc_sample_keys(key, w, sample, 1, "window")[0])
        logits, carry = apply(params, batch["inputs"], carry, wkey)
        probs = jax.nn.softmax(logits.astype(np.float32), -1)
        out.append(np.take_along_axis(np.asarray(probs), batch["targets"][..., None], -1)[..., 0])
    return np.stack(out)


def test_mc_with_one_sample_equals_one_stochastic_pass(setup):
    task, source, params, mesh = setup
    key = jax.random.PRNGKey(7)
    mc = Evaluator(task, mesh).evaluate_mc(params, source, 1, key)
    p = _stochastic_target_probs(task, source, params, key, sample=0)
    assert mc["loss"] == pytest.approx(float(np.mean(-np.log(p))), rel=1e-5)


def test_mc_with_many_samples_matches_mean_of_separate_passes(setup):
    task, source, params, mesh = setup
    k = 200
    mc = Evaluator(task, mesh).evaluate_mc(params, source, k, jax.random.PRNGKey(1))
    samples = np.stack([_stochastic_target_probs(task, source, params, jax.random.PRNGKey(100 + i))
                        for i in range(k)])                              # [K, W, B, T]
    mean_p = samples.mean(0)
    nll_of_mean = float(np.mean(-np.log(mean_p)))
    mean_of_nll = float(np.mean(-np.log(samples)))
    # standard error of the per-token log of the mean, propagated to the mean NLL
    se = float(np.sqrt(np.mean((samples.std(0) / mean_p) ** 2) / k / mean_p.size))
    print(f"MC K={k}: {mc['loss']:.4f}, NLL of mean of {k} passes: {nll_of_mean:.4f} "
          f"(se {se:.4f}), mean NLL of passes: {mean_of_nll:.4f}")
    assert abs(mc["loss"] - nll_of_mean) < 6 * math.sqrt(2) * se + 1e-4, (mc, nll_of_mean, se)
    # averaging probabilities (not log-probabilities) gives a lower NLL (Jensen)
    assert mean_of_nll - nll_of_mean > 5 * se
    assert abs(mc["loss"] - nll_of_mean) < abs(mc["loss"] - mean_of_nll)
    deterministic = Evaluator(task, mesh).evaluate(params, source)["loss"]
    assert abs(deterministic - mc["loss"]) > 1e-3


@pytest.mark.parametrize("masks", ["pass", pytest.param("window", marks=pytest.mark.slow)])
def test_mc_in_chunks_equals_mc_at_once(setup, masks):
    """Sample k's key depends on k alone, so chunking (and the out-of-memory retry with
    smaller chunks) only changes float rounding, not the masks."""
    task, source, params, mesh = setup
    key = jax.random.PRNGKey(2)
    at_once = Evaluator(task, mesh, mc_masks=masks).evaluate_mc(params, source, 12, key)
    for chunk in (5, 4):
        chunked = Evaluator(task, mesh, mc_chunk=chunk, mc_masks=masks).evaluate_mc(
            params, source, 12, key)
        assert_close_f32(chunked["loss"], at_once["loss"], err_msg=f"chunks of {chunk}")
    other = Evaluator(task, mesh, mc_masks=masks).evaluate_mc(params, source, 12,
                                                              jax.random.PRNGKey(3))
    assert abs(other["loss"] - at_once["loss"]) > 1e-4  # the key does set the masks


def test_deterministic_eval_carries_state(setup):
    task, source, params, mesh = setup
    ev = Evaluator(task, mesh)
    carried = ev.evaluate(params, source)
    reset = ev.evaluate(params, source, carry_state=False)
    assert carried["loss"] != reset["loss"]
    assert carried["ppl"] == pytest.approx(math.exp(carried["loss"]))


def test_regression_mc_averages_predictions():
    reg = regularizers.zaremba(0.5)
    source = th.SeqSource(kind="regression", batch=4, num_batches=2)
    task = train.Task(model=th.tiny_seq(num_outputs=1, reg=reg), kind="regression", train=source,
                      target_scale=2.0)
    config = train.default_train_config()
    mesh = train.make_mesh()
    params = steps.init_state(task, config, mesh, optim.make_optimizer(config),
                              next(iter(source.iterate(0)))).params
    key = jax.random.PRNGKey(0)
    mc = Evaluator(task, mesh).evaluate_mc(params, source, 3, key)
    sq, n = 0.0, 0
    for w, batch in enumerate(source.iterate(0)):
        keys = noise.mc_sample_keys(key, w, 0, 3, "window")
        pred = [task.model.apply({"params": params}, batch["inputs"], deterministic=False,
                                 rngs={"dropout": k}) for k in keys]
        mean = np.asarray(pred).reshape(3, -1).mean(0)
        sq += float(np.sum((mean - batch["targets"]) ** 2))
        n += len(mean)
    assert mc["rmse"] == pytest.approx(math.sqrt(sq / n) * 2.0, rel=1e-5)


def test_long_passes_report_their_progress(setup):
    """A pass longer than `progress_every_s` says how far it is (0 s here: every batch),
    deterministic and MC alike; numbers unchanged; nothing without a `progress`."""
    task, source, params, mesh = setup
    quiet = Evaluator(task, mesh)
    told: list[str] = []
    ev = Evaluator(task, mesh)
    ev.progress, ev.progress_every_s = told.append, 0.0
    assert ev.evaluate(params, source, label="valid") == quiet.evaluate(params, source)
    assert [m.split(" batches")[0] for m in told] == ["valid: 1/3", "valid: 2/3", "valid: 3/3"]
    assert "ETA" in told[0]
    told.clear()
    key = jax.random.PRNGKey(0)
    mc = ev.evaluate_mc(params, source, 2, key, label="test MC")
    assert mc == quiet.evaluate_mc(params, source, 2, key)
    assert [m.split(" batches")[0] for m in told] == ["test MC: 1/3", "test MC: 2/3",
                                                     "test MC: 3/3"]
    told.clear()
    ev.progress_every_s = 3600.0  # a pass shorter than that is silent
    ev.evaluate(params, source)
    assert told == []


def test_pass_progress_without_a_count_gives_the_batches_done():
    from rnnreg_jax.train.logging import PassProgress

    told: list[str] = []
    tick = PassProgress(told.append, "pass", None, every_s=0.0)
    tick(4)
    (line,) = told
    assert line.startswith("pass: 4 batches in ") and "ETA" not in line, line
