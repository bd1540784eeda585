"""The final evaluation: every evaluation split of a task, deterministic and MC dropout,
as `train_and_evaluate` runs it at the end and `experiments.evaluate` reruns it; and what
a resumed run reads back of the evaluations it recorded."""

from __future__ import annotations

import dataclasses
import functools

import jax

from rnnreg_jax.train.config import with_defaults
from rnnreg_jax.train.evaluator import Evaluator, PassStopped
from rnnreg_jax.train.task import Task, steps_in_epoch

MC_KEY_SALT = 0x4D43  # MC evaluation key: fold_in(PRNGKey(seed), MC_KEY_SALT)
# What a metrics.jsonl event adds to a pass's metrics.
EVENT_FIELDS = ("step", "epoch", "split", "phase", "eval_epoch", "evaluated_as", "wall_time")


@dataclasses.dataclass(frozen=True)
class Pass:
    """One pass of the final evaluation: its record `name`, the `signature` naming every
    setting its numbers depend on besides the parameters (None: unknown, so a record of
    it is never reused), the `split` it reads (None: the task's own test protocol),
    `mc_samples` (0: deterministic) and `carry_state`."""

    name: str
    signature: str | None
    split: str | None = None
    mc_samples: int = 0
    carry_state: bool | None = None


def final_passes(task: Task, config) -> list[Pass]:
    """The final evaluation's passes, in order: each split of `task.evals`
    deterministically, followed by MC dropout where `config.mc_samples` and
    `config.mc_splits` (or the PTB test protocol, batch 1 with carried state) ask for
    it; a callable `task.test_protocol` last."""
    config = with_defaults(config)
    out = []
    for name in task.evals:
        protocol = task.test_protocol is True and name == "test"
        carry = True if protocol else None
        reads = _reads(task, name, carry)
        out.append(Pass(name, f"deterministic, {reads}", name, 0, carry))
        if config.mc_samples and (name in config.mc_splits or protocol):
            signature = (f"MC dropout: {config.mc_samples} samples, masks per "
                         f"{config.mc_masks}, word-type dropout "
                         f"{'on' if config.mc_embedding_dropout else 'off'}, seed "
                         f"{config.seed}, {reads}")
            out.append(Pass(f"{name}_mc", signature, name, config.mc_samples, carry))
    if callable(task.test_protocol):
        out.append(Pass("test_protocol", None))
    return out


def _reads(task: Task, split: str, carry_state: bool | None) -> str:
    """What a pass over `split` reads, as far as its numbers depend on it: the batches'
    count and shape, and whether the LM state is carried across them."""
    source = task.evals[split]
    try:
        shape = "x".join(str(n) for n in next(iter(source.iterate(0)))["inputs"].shape)
        batches = f"{steps_in_epoch(source, 0)} batches of {shape}"
    except (AttributeError, TypeError, StopIteration):  # a plain iterable: not said
        batches = "batches of an unknown shape"
    carried = (task.evaluation_carries_state if carry_state is None
               else task.kind == "lm" and carry_state)
    return f"{batches}, state {'carried' if carried else 'reset'}"


def evaluate_all(task: Task, evaluator: Evaluator, params, model_state, config,
                 on_batch=None, done: dict | None = None, on_result=None,
                 should_stop=None) -> dict:
    """Every pass of `final_passes`, as the final evaluation runs them.

    Returns `{name: metrics}` in that order: `"<split>"`, `"<split>_mc"` (MC keyed by
    `fold_in(fold_in(PRNGKey(seed), MC_KEY_SALT), split index)`) and
    `"test_protocol"` (the callable's dict). `on_batch(split, metrics)`, if given,
    sees each batch of the deterministic evaluations (`Evaluator.evaluate`).
    `done`: results of passes already run for these parameters (whose signatures
    match), returned as they are; `on_result(name, metrics)` hears each pass as it
    ends (to record it at once); `should_stop()`, asked before each pass to run,
    True leaves it and the rest out, as does a pass the evaluator stops part-way
    (`PassStopped`: its own `should_stop`).
    """
    config = with_defaults(config)
    mc_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), MC_KEY_SALT)
    split_index = {name: index for index, name in enumerate(task.evals)}
    done = done or {}
    out: dict = {}
    for p in final_passes(task, config):
        if p.name in done:
            out[p.name] = done[p.name]
            continue
        if should_stop is not None and should_stop():
            break
        label = f"final evaluation, {p.split}"
        try:
            if p.split is None:
                assert callable(task.test_protocol)
                out[p.name] = task.test_protocol(params, evaluator)
            elif p.mc_samples:
                out[p.name] = evaluator.evaluate_mc(
                    params, task.evals[p.split], p.mc_samples,
                    jax.random.fold_in(mc_key, split_index[p.split]),
                    carry_state=p.carry_state, model_state=model_state,
                    label=f"{label} with MC dropout ({p.mc_samples} samples)")
            else:
                out[p.name] = evaluator.evaluate(
                    params, task.evals[p.split], carry_state=p.carry_state,
                    model_state=model_state, label=label,
                    on_batch=None if on_batch is None else functools.partial(on_batch, p.split))
        except PassStopped:
            break
        if on_result is not None:
            on_result(p.name, out[p.name])
    return out


def recorded_passes(events, passes: list[Pass], step: int,
                    eval_epoch: int | None = None) -> dict[str, dict]:
    """name -> metrics of the `passes` a run's metrics.jsonl `events` hold as final
    events of `step` (and of the model of `eval_epoch`, where given) computed with the
    same signature: the passes a restart need not run again."""
    signatures = {p.name: p.signature for p in passes}
    out = {}
    for e in events:
        signature = signatures.get(str(e.get("split")))
        if (e.get("phase") == "final" and e.get("step") == step
                and (eval_epoch is None or e.get("eval_epoch") == eval_epoch)
                and signature is not None and signature == e.get("evaluated_as")):
            out[e["split"]] = {k: v for k, v in e.items() if k not in EVENT_FIELDS}
    return out


def validation_history(events, split: str | None, metric: str, before_epoch: int) -> list[float]:
    """The epoch-end `metric` on `split` of epochs 0 .. `before_epoch` - 1, in order, one
    value an epoch: the last recorded (an epoch whose event was written but whose
    checkpoint was not, before a kill, is validated again and recorded twice)."""
    by_epoch = {}
    for e in events:
        if (e.get("phase") == "epoch_end" and e.get("split") == split
                and int(e["epoch"]) < before_epoch):
            by_epoch[int(e["epoch"])] = float(e[metric])
    return [by_epoch[k] for k in sorted(by_epoch)]


def flat_results(results: dict) -> dict:
    """`evaluate_all`'s results as one flat dict: a split's metrics as
    `"<split>/<metric>"`, a custom test protocol's dict as it is."""
    out: dict = {}
    for name, metrics in results.items():
        if name == "test_protocol":
            out.update(metrics)
        else:
            out.update({f"{name}/{k}": v for k, v in metrics.items()})
    return out
