"""The final evaluation: every evaluation split of a task, deterministic and MC dropout,
as `train_and_evaluate` runs it at the end and `experiments.evaluate` reruns it."""

from __future__ import annotations

import functools

import jax

from rnnreg_jax.train import steps
from rnnreg_jax.train.config import with_defaults
from rnnreg_jax.train.task import Task

MC_KEY_SALT = 0x4D43  # MC evaluation key: fold_in(PRNGKey(seed), MC_KEY_SALT)


def evaluate_all(task: Task, evaluator: steps.Evaluator, params, model_state, config,
                 on_batch=None) -> dict:
    """Every evaluation split of `task`, as the final evaluation runs them.

    Returns `{split: metrics}` in `task.evals` order, each followed by
    `"<split>_mc"` where `config.mc_samples` and `config.mc_splits` (or the PTB
    test protocol, batch 1 with carried state) ask for MC dropout, keyed by
    `fold_in(fold_in(PRNGKey(seed), MC_KEY_SALT), split index)`; a callable
    `task.test_protocol`'s dict comes last under `"test_protocol"`.
    `on_batch(split, metrics)`, if given, sees each batch of the deterministic
    evaluations (`Evaluator.evaluate`).
    """
    config = with_defaults(config)
    mc_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), MC_KEY_SALT)
    out: dict = {}
    for index, (name, source) in enumerate(task.evals.items()):
        protocol = task.test_protocol is True and name == "test"
        carry = True if protocol else None
        out[name] = evaluator.evaluate(
            params, source, carry_state=carry, model_state=model_state,
            on_batch=None if on_batch is None else functools.partial(on_batch, name),
            label=f"final evaluation, {name}")
        if config.mc_samples and (name in config.mc_splits or protocol):
            out[f"{name}_mc"] = evaluator.evaluate_mc(
                params, source, config.mc_samples, jax.random.fold_in(mc_key, index),
                carry_state=carry, model_state=model_state,
                label=f"final evaluation, {name} with MC dropout ({config.mc_samples} "
                      "samples)")
    if callable(task.test_protocol):
        out["test_protocol"] = task.test_protocol(params, evaluator)
    return out
