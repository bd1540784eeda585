"""MC dropout of a model that draws no noise: its K passes would all equal the
deterministic one, so the Evaluator runs that pass once, with the same numbers."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import pytest
import train_helpers as th
from numerics import assert_close_f32

from rnnreg_jax import models, regularizers, train
from rnnreg_jax.train import optim, steps
from rnnreg_jax.train.evaluator import Evaluator, mc_draws_noise

th.enable_compilation_cache()

KEY = jax.random.PRNGKey(3)
NOISELESS = regularizers.norm_stabilizer(50.0)  # a penalty only: nothing random
# What MC evaluation reports (an LM's errors are not counted under MC).
FIELDS = {"lm": {"loss", "ppl", "bpc"}, "classification": {"loss", "error", "accuracy"},
          "regression": {"loss", "rmse"}}


def _setup(kind, reg):
    if kind == "lm":
        source = th.LMSource(vocab=12, batch=2, steps=4, num_windows=3, seed=1)
        task = train.Task(model=th.tiny_lm(reg=reg, hidden=8), kind="lm", train=source,
                          carry_state=True)
    else:
        source = th.SeqSource(kind=kind, batch=4, num_batches=2)
        task = train.Task(model=th.tiny_seq(num_outputs=2 if kind == "classification" else 1,
                                            reg=reg),
                          kind=kind, train=source)
    config = train.default_train_config()
    mesh = train.make_mesh()
    params = steps.init_state(task, config, mesh, optim.make_optimizer(config),
                              next(iter(source.iterate(0)))).params
    return task, source, params, mesh


def _forbid_sampling(evaluator):
    def sampled(*args, **kwargs):
        raise AssertionError("an MC sample ran for a model without noise")
    evaluator._mc = sampled


@pytest.mark.parametrize("kind", ["lm", "classification", "regression"])
@pytest.mark.parametrize("reg", [pytest.param(regularizers.NONE, id="none"),
                                 pytest.param(NOISELESS, id="penalty", marks=pytest.mark.slow)])
def test_noiseless_mc_runs_the_deterministic_pass_once_with_the_samples_numbers(kind, reg):
    task, source, params, mesh = _setup(kind, reg)
    once = Evaluator(task, mesh)
    assert not once.mc_draws_noise
    _forbid_sampling(once)
    short = once.evaluate_mc(params, source, 5, KEY)
    sampled = Evaluator(task, mesh)
    sampled.mc_draws_noise = True  # force the 5 passes
    full = sampled.evaluate_mc(params, source, 5, KEY)
    assert short.keys() == full.keys(), (short, full)
    for name, value in full.items():
        assert_close_f32(short[name], value)
    assert set(short) == FIELDS[kind], short


def test_noisy_models_still_sample():
    task, source, params, mesh = _setup("lm", regularizers.zaremba(0.5))
    ev = Evaluator(task, mesh)
    assert ev.mc_draws_noise
    deterministic = ev.evaluate(params, source)["loss"]
    assert abs(ev.evaluate_mc(params, source, 3, KEY)["loss"] - deterministic) > 1e-4


def test_word_type_dropout_alone_is_noise_only_where_mc_passes_keep_it():
    task, _, _, mesh = _setup("lm", regularizers.embedding_dropout(0.5))
    assert Evaluator(task, mesh, mc_embedding_dropout=True).mc_draws_noise
    assert not Evaluator(task, mesh, mc_embedding_dropout=False).mc_draws_noise


class _UserLM(models.LanguageModel):
    """A user's subclass, free to draw noise of its own the regularizer does not know."""


def test_only_the_librarys_own_modules_are_trusted_to_be_noiseless():
    model = th.tiny_lm(reg=regularizers.NONE)
    assert not mc_draws_noise(model)
    assert mc_draws_noise(_UserLM(vocab_size=12, hidden_sizes=(8,), reg=regularizers.NONE))
    assert mc_draws_noise(dataclasses.replace(model, reg=regularizers.zaremba(0.3)))
    assert mc_draws_noise(nn.Dense(3))  # no regularizer at all
