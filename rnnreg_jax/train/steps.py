"""Jitted steps: state init and the train step (evaluation: `evaluator`).

The train step is ONE `jax.jit` with explicit shardings (state replicated
except the carried LM state, batch sharded on `data`) that donates the state.
Step s draws its noise from `fold_in(state.key, s)` over the global batch.
Model variables other than parameters (`TrainState.model_state`, e.g. the
population statistics of `lstm_bn` in `batch_stats`) are mutable in the train
step, which stores their update, and read-only in evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnreg_jax.train import losses, optim
from rnnreg_jax.train import mesh as mesh_lib
from rnnreg_jax.train.state import TrainState

MODEL_STATE_COLLECTIONS = ("batch_stats",)  # the non-parameter collections a TrainState keeps


def apply_model(model, kind, params, inputs, carry, deterministic, key, mutable=False,
                model_state=None, use_running_average=None, seq_lengths=None):
    """Run the model; returns `(outputs, new_carry_or_None, penalties, new_model_state)`.

    `model_state` (`{collection: variables}`) joins the parameters; with
    `mutable` (training) its collections are mutable and come back updated.
    `seq_lengths`: a variable-length batch's `"lengths"` (the model's `seq_lengths`).
    """
    model_state = model_state or {}
    variables = {"params": params, **model_state}
    rngs = {} if key is None else {"dropout": key}
    kwargs = {"deterministic": deterministic, "rngs": rngs}
    if use_running_average is not None and "batch_stats" in model_state:
        kwargs["use_running_average"] = use_running_average
    if mutable:
        kwargs["mutable"] = ["penalties", *model_state]
    if seq_lengths is not None:
        kwargs["seq_lengths"] = seq_lengths
    if kind == "lm":
        res = model.apply(variables, inputs, carry, **kwargs)
    else:
        res = model.apply(variables, inputs, **kwargs)
    out, mutated = res if mutable else (res, {})
    new_carry = None
    if kind == "lm":
        out, new_carry = out
    new_state = {name: mutated.get(name, value) for name, value in model_state.items()}
    return out, new_carry, mutated.get("penalties", {}), new_state


def total_penalty(penalties) -> jax.Array:
    """Sum of every value sown into the `penalties` collection."""
    leaves = jax.tree.leaves(penalties)
    return sum((jnp.sum(x) for x in leaves), jnp.zeros((), jnp.float32))


def zero_carry(model, params, inputs_shape, inputs_dtype, sharding=None, model_state=None):
    """Zero LM state for inputs of this shape (structure from `eval_shape`),
    created by a jitted function placed with `sharding` (multi-host safe)."""
    inputs = jax.ShapeDtypeStruct(inputs_shape, inputs_dtype)
    _, carry = jax.eval_shape(
        lambda p, s, x: model.apply({"params": p, **s}, x, None, deterministic=True), params,
        model_state or {}, inputs)
    make = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), carry)  # noqa: E731
    return jax.jit(make, out_shardings=sharding)()


def _variables(task, tx, sample: dict[str, np.ndarray]):
    """`key -> (params, model_state, opt_state)`: the model's variables for `sample`'s
    shape (one row) and the optimizer's state."""
    x = sample["inputs"]
    x1 = jnp.zeros((1, *x.shape[1:]), x.dtype)

    def init(key):
        if task.kind == "lm":
            variables = task.model.init({"params": key}, x1, None, deterministic=True)
        else:
            variables = task.model.init({"params": key}, x1, deterministic=True)
        params = variables["params"]
        model_state = {k: variables[k] for k in MODEL_STATE_COLLECTIONS if k in variables}
        return params, model_state, tx.init(params)

    return init


def checkpoint_bytes(task, tx, sample: dict[str, np.ndarray]) -> int:
    """Bytes of one checkpoint's arrays (parameters, model and optimizer state; the
    carried LM state and the scalars left out), from shapes alone."""
    shapes = jax.eval_shape(_variables(task, tx, sample), jax.random.PRNGKey(0))
    return sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in jax.tree.leaves(shapes))


def init_state(task, config, mesh, tx, sample: dict[str, np.ndarray]) -> TrainState:
    """A fresh state from `config.seed`; `sample` is one (host-local) batch."""
    rep = mesh_lib.replicated(mesh)
    init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
    x = sample["inputs"]
    params, model_state, opt_state = jax.jit(_variables(task, tx, sample),
                                             out_shardings=rep)(init_key)
    carry = {}
    if task.kind == "lm" and task.carry_state:
        gb = mesh_lib.global_batch_size(x.shape[0], mesh)
        carry = zero_carry(task.model, params, (gb, *x.shape[1:]), x.dtype,
                           mesh_lib.batch_sharding_for(mesh, gb), model_state)

    def put(value, dtype=np.int32):  # host value -> replicated array (same on every host)
        return jax.device_put(np.asarray(value, dtype), rep)

    return TrainState(
        step=put(0), epoch=put(0), batch_in_epoch=put(0), params=params, opt_state=opt_state,
        key=put(jax.device_get(run_key), np.uint32), carry=carry,
        best_metric=put(np.inf, np.float32), bad_epochs=put(0), model_state=model_state)


def state_shardings(state: TrainState, mesh) -> TrainState:
    """Replicated everywhere except the carried state (batch-sharded)."""
    rep = mesh_lib.replicated(mesh)
    shardings = jax.tree.map(lambda _: rep, state)
    carry = jax.tree.map(lambda x: x.sharding, state.carry)
    return shardings.replace(carry=carry)


def make_train_step(task, config, tx, mesh, shardings: TrainState) -> jax.stages.Wrapped:
    """`train_step(state, batch) -> (state, metrics)`, jitted and donating the state.

    Under the data mesh the batch axis is sharded, so the batch statistics of
    `lstm_bn` are taken over the global batch (jit inserts the all-reduce) and
    the updated `model_state` stays replicated.

    metrics: sums `loss_sum`, `count`, `errors`, plus `objective` (the
    differentiated loss incl. penalties), `penalty`, `grad_norm`.
    """
    kind, model = task.kind, task.model
    carry_state = task.kind == "lm" and task.carry_state
    sum_over_time = bool(config.loss_sum_over_time)
    window_scale = window_lr_scale(config.get("lr_window_reference", 0))

    def step(state: TrainState, batch):
        key = jax.random.fold_in(state.key, state.step)

        def loss_fn(params):
            carry = state.carry if carry_state else None
            out, new_carry, pens, model_state = apply_model(
                model, kind, params, batch["inputs"], carry, False, key, mutable=True,
                model_state=state.model_state, seq_lengths=batch.get("lengths"))
            objective, stats = losses.objective_and_stats(kind, out, batch, sum_over_time)
            penalty = total_penalty(pens)
            return objective + penalty, (stats, new_carry, penalty, model_state)

        (loss, (stats, new_carry, penalty, model_state)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        updates, opt_state = _update(tx, grads, state, window_scale(batch))
        params = optax.apply_updates(state.params, updates)
        carry = jax.lax.stop_gradient(new_carry) if carry_state else state.carry
        metrics = dict(stats, objective=loss, penalty=penalty, grad_norm=optax.tree.norm(grads))
        new_state = state.replace(step=state.step + 1, batch_in_epoch=state.batch_in_epoch + 1,
                                  params=params, opt_state=opt_state, carry=carry,
                                  model_state=model_state)
        return new_state, metrics

    rep = mesh_lib.replicated(mesh)
    return jax.jit(step, in_shardings=(shardings, mesh_lib.batch_sharded(mesh)),
                   out_shardings=(shardings, rep), donate_argnums=(0,))


def window_lr_scale(reference) -> Callable[[dict], jax.Array | float | None]:
    """`batch -> factor` of the step's learning rate (None: none): `T / reference` for a
    window of `T` steps (AWD-LSTM's `lr * seq_len / bptt`, main.py lines 134-135), None
    with `reference` 0. `T` is the batch's `drawn_length` where it has one (variable
    windows: the length drawn, which the code scales by even where the stream's end cuts
    the window), else its `lengths` (a window padded to a bucket of steps), else its
    static length."""
    optim.check_setting(reference, "config.lr_window_reference")
    if not reference:
        return lambda batch: None

    def scale(batch):
        for key in ("drawn_length", "lengths"):
            if key in batch:
                return jnp.max(batch[key]).astype(jnp.float32) / reference
        return batch["inputs"].shape[1] / reference

    return scale


def _update(tx, grads, state: TrainState, lr_scale):
    """`tx.update` at the state's learning rate times `lr_scale` (None: unscaled); the
    state keeps the unscaled rate (`inject_hyperparams` reads it from the given state)."""
    if lr_scale is None:
        return tx.update(grads, state.opt_state, state.params)
    lr = state.opt_state.hyperparams["learning_rate"]

    def with_lr(opt_state, value):
        return opt_state._replace(hyperparams=dict(opt_state.hyperparams, learning_rate=value))

    updates, opt_state = tx.update(grads, with_lr(state.opt_state, lr * lr_scale), state.params)
    return updates, with_lr(opt_state, lr)


# XLA's CPU collectives can deadlock when too many multi-device steps are in
# flight (seen with 4 host-platform devices: an all-reduce waits forever with
# 3 of 4 participants). On CPU with several devices, wait every few steps.
_CPU_SYNC_EVERY = 8


def throttle(mesh, step: int, value) -> None:
    """Block on `value` every few steps on a multi-device CPU mesh (see above)."""
    if (step % _CPU_SYNC_EVERY == 0 and mesh.devices.size > 1
            and mesh.devices.flat[0].platform == "cpu"):
        jax.block_until_ready(value)


def finite(x) -> bool:
    return bool(np.all(np.isfinite(np.asarray(x))))


def is_finite_metrics(metrics_list) -> bool:
    return all(math.isfinite(float(m["objective"])) for m in metrics_list)


def epoch_end_update(state, lr, best, bad_epochs, epoch):
    """The state after an epoch's end: the next epoch at its first batch, the LR rule's
    rate and the early-stopping bookkeeping (jitted by the loop)."""
    state = state.replace(epoch=jnp.asarray(epoch, jnp.int32),
                          batch_in_epoch=jnp.zeros((), jnp.int32),
                          best_metric=jnp.asarray(best, jnp.float32),
                          bad_epochs=jnp.asarray(bad_epochs, jnp.int32))
    hyper = dict(state.opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(lr, hyper["learning_rate"].dtype)
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyper))


def all_finite(*trees) -> jax.Array:
    """Whether every floating-point leaf of `trees` is finite (one scalar)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)
