"""Losses and metrics.

Steps return *sums* (`loss_sum`, `count`, `errors`), so metrics aggregated
over many batches and devices are exact; `summarize` turns them into the
reported numbers. The logged loss is always per token (LM) or per example:

    lm:             loss = mean NLL per token, ppl = exp(loss), bpc = loss / ln 2
    classification: loss = mean cross entropy, error = misclassified fraction
    regression:     loss = MSE (normalized targets), rmse = sqrt(MSE) * target_scale
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def _weights(batch: dict, shape) -> Array:
    w = batch.get("weights")
    if w is None:
        return jnp.ones(shape, jnp.float32)
    _same_shape("weights", w.shape, "the targets", shape)
    return w.astype(jnp.float32)


def _same_shape(name: str, shape, what: str, expected) -> None:
    """A one-sentence ValueError (at trace time: shapes are static) where a batch field
    has another shape than it pairs with: `[B, 1]` targets against `[B]` predictions
    broadcast to `[B, B]` and trained on wrong numbers without a word."""
    if tuple(shape) != tuple(expected):
        raise ValueError(f"The batch's {name} have shape {tuple(shape)}, but {what} have "
                         f"{tuple(expected)}.")


def token_nll(logits: Array, targets: Array) -> Array:
    """NLL of integer targets: logits `[..., V]`, targets `[...]` -> `[...]`, in float32.

    optax's; a hand-written VJP (one elementwise pass for `softmax - onehot`) was
    slower on CPU: the 10k-vocabulary head with its cross entropy took 276-282 ms
    against 240-246 ms (2-core x86 CPU, a throwaway row added to
    `benchmarks/lm_step_breakdown.py` and removed with the VJP).
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def target_logit(logits: Array, targets: Array) -> Array:
    """`logits[..., targets]`: `[..., V]`, `[...]` -> `[...]`."""
    return jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]


def misclassified(logits: Array, targets: Array) -> Array:
    """1.0 where the target's logit is below the largest (argmax != target, up to ties):
    the max the NLL already computes (XLA merges the two) instead of an argmax pass over
    V, which cost 9.4 ms of the zoneout word model's 380-440 ms step on a 2-core
    x86 CPU (a throwaway timing; BENCHMARKS.md)."""
    logits = logits.astype(jnp.float32)
    return (target_logit(logits, targets) < jnp.max(logits, axis=-1)).astype(jnp.float32)


def objective_and_stats(kind: str, outputs: Array, batch: dict, sum_over_time: bool = False):
    """The differentiated loss (without penalties) and the metric sums.

    Args:
      kind: "lm", "classification" or "regression".
      outputs: logits `[B, T, V]` (lm), `[B, C]` (classification) or
        predictions `[B, 1]` / `[B]` (regression).
      batch: the batch dict (`targets` or `labels`, optional `weights`).
      sum_over_time: LM: sum the NLL over the T steps of the window and average
        over the batch (Zaremba's scale) instead of averaging over all tokens.

    Returns:
      `(objective, {"loss_sum", "count", "errors"})`.
    """
    if kind == "lm":
        targets = batch["targets"]
        _same_shape("targets", targets.shape, "the logits' positions", outputs.shape[:-1])
        w = _weights(batch, targets.shape)
        nll = token_nll(outputs, targets) * w
        loss_sum = jnp.sum(nll)
        count = jnp.sum(w)
        if sum_over_time:
            objective = loss_sum / targets.shape[0]
        else:
            objective = loss_sum / jnp.maximum(count, 1.0)
        errors = jnp.sum(misclassified(outputs, targets) * w)
    elif kind == "classification":
        labels = batch["labels"]
        _same_shape("labels", labels.shape, "the logits' examples", outputs.shape[:-1])
        w = _weights(batch, labels.shape)
        nll = token_nll(outputs, labels) * w
        loss_sum, count = jnp.sum(nll), jnp.sum(w)
        objective = loss_sum / jnp.maximum(count, 1.0)
        errors = jnp.sum((jnp.argmax(outputs, -1) != labels) * w)
    elif kind == "regression":
        preds = outputs.reshape(outputs.shape[0]).astype(jnp.float32)
        targets = batch["targets"].astype(jnp.float32)
        _same_shape("targets", targets.shape, "the predictions", preds.shape)
        w = _weights(batch, targets.shape)
        loss_sum, count = jnp.sum(jnp.square(preds - targets) * w), jnp.sum(w)
        objective = loss_sum / jnp.maximum(count, 1.0)
        errors = jnp.zeros((), jnp.float32)
    else:
        raise ValueError(f"Unknown task kind {kind!r}.")
    return objective, {"loss_sum": loss_sum, "count": count, "errors": errors.astype(jnp.float32)}


def mc_summary(kind: str, outputs: Array, batch: dict) -> Array:
    """Sufficient statistic of K stacked MC samples, additive over chunks.

    Args:
      outputs: K samples on a leading axis: `[K, B, T, V]` (lm), `[K, B, C]`
        (classification), `[K, B, 1]` (regression).

    Returns:
      lm: `log sum_k p_k(target)` `[B, T]`; classification: `log sum_k p_k`
      `[B, C]` (combine chunks with `logaddexp`); regression: `sum_k pred_k`
      `[B]` (combine with `+`).
    """
    if kind == "regression":
        return jnp.sum(outputs.astype(jnp.float32).reshape(outputs.shape[:2]), axis=0)
    logp = jax.nn.log_softmax(outputs.astype(jnp.float32), axis=-1)
    if kind == "lm":
        logp = jnp.take_along_axis(logp, batch["targets"][None, ..., None], -1)[..., 0]
    return jax.nn.logsumexp(logp, axis=0)


def combine_mc_summaries(kind: str, a: Array | None, b: Array) -> Array:
    if a is None:
        return b
    return a + b if kind == "regression" else jnp.logaddexp(a, b)


def mc_stats(kind: str, summary: Array, batch: dict, num_samples: int) -> dict:
    """Metric sums of MC evaluation from the combined summary of K samples.

    Probabilities are averaged over the K samples (not log-probabilities):
    the NLL is `-log(mean_k p_k(target))`; regression averages predictions.
    LM error counts are not computed under MC (they would need the full
    averaged distribution) and are reported as 0.
    """
    log_k = math.log(num_samples)
    if kind == "regression":
        return objective_and_stats("regression", summary / num_samples, batch)[1]
    targets = batch["targets"] if kind == "lm" else batch["labels"]
    w = _weights(batch, targets.shape)
    if kind == "lm":
        nll = -(summary - log_k)
        errors = jnp.zeros((), jnp.float32)
    else:
        mean_logp = summary - log_k
        nll = -jnp.take_along_axis(mean_logp, targets[..., None], -1)[..., 0]
        errors = jnp.sum((jnp.argmax(mean_logp, -1) != targets) * w).astype(jnp.float32)
    return {"loss_sum": jnp.sum(nll * w), "count": jnp.sum(w), "errors": errors}


def perplexity(loss: float) -> float:
    """exp(mean nats): inf past float range (a loss above about 709.78), nan for nan."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def summarize(kind: str, stats: dict, target_scale: float = 1.0) -> dict[str, float]:
    """Reported metrics from accumulated sums (host floats)."""
    count = max(float(stats["count"]), 1e-12)
    loss = float(stats["loss_sum"]) / count
    out = {"loss": loss}
    if kind == "lm":
        out["ppl"] = perplexity(loss)
        out["bpc"] = loss / math.log(2.0)
        out["error"] = float(stats["errors"]) / count
    elif kind == "classification":
        out["error"] = float(stats["errors"]) / count
        out["accuracy"] = 1.0 - out["error"]
    else:
        out["rmse"] = math.sqrt(max(loss, 0.0)) * target_scale if math.isfinite(loss) else loss
    return out


def summarize_steps(kind: str, fetched: list[dict], target_scale: float = 1.0) -> dict:
    """The training event of some steps' fetched metrics: the task's metrics over all
    their tokens or examples (accuracy left out: the error says it), the mean objective,
    penalty and gradient norm of a step, and `count`, the tokens or examples."""
    totals = {k: sum(float(m[k]) for m in fetched) for k in ("loss_sum", "count", "errors")}
    metrics = summarize(kind, totals, target_scale)
    metrics.pop("accuracy", None)
    for key in ("objective", "penalty", "grad_norm"):
        metrics[key] = sum(float(m[key]) for m in fetched) / len(fetched)
    metrics["count"] = totals["count"]
    return metrics


def task_metric(kind: str) -> str:
    """The metric (lower is better) that drives LR rules and the best checkpoint."""
    return {"lm": "loss", "classification": "error", "regression": "rmse"}[kind]


def add_stats(a: dict | None, b: dict) -> dict:
    return b if a is None else jax.tree.map(jnp.add, a, b)
