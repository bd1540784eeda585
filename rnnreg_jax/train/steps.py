"""Jitted steps: state init, the train step, deterministic and MC evaluation.

The train step is ONE `jax.jit` with explicit shardings (state replicated
except the carried LM state, batch sharded on `data`) that donates the state.
Step s draws its noise from `fold_in(state.key, s)` over the global batch.
Model variables other than parameters (`TrainState.model_state`, e.g. the
population statistics of `lstm_bn` in `batch_stats`) are mutable in the train
step, which stores their update, and read-only in evaluation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnreg_jax import noise
from rnnreg_jax.train import losses, optim
from rnnreg_jax.train import mesh as mesh_lib
from rnnreg_jax.train.logging import PassProgress
from rnnreg_jax.train.state import TrainState
from rnnreg_jax.train.task import steps_in_epoch

MODEL_STATE_COLLECTIONS = ("batch_stats",)  # the non-parameter collections a TrainState keeps


def _apply(model, kind, params, inputs, carry, deterministic, key, mutable=False,
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


def init_state(task, config, mesh, tx, sample: dict[str, np.ndarray]) -> TrainState:
    """A fresh state from `config.seed`; `sample` is one (host-local) batch."""
    rep = mesh_lib.replicated(mesh)
    init_key, run_key = jax.random.split(jax.random.PRNGKey(config.seed))
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

    params, model_state, opt_state = jax.jit(init, out_shardings=rep)(init_key)
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


def make_train_step(task, config, tx, mesh, shardings: TrainState) -> Callable:
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
            out, new_carry, pens, model_state = _apply(
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


def _is_oom(err: Exception) -> bool:
    msg = str(err)
    return "RESOURCE_EXHAUSTED" in msg or "Out of memory" in msg or "out of memory" in msg


# XLA's CPU collectives can deadlock when too many multi-device steps are in
# flight (seen with 4 host-platform devices: an all-reduce waits forever with
# 3 of 4 participants). On CPU with several devices, wait every few steps.
_CPU_SYNC_EVERY = 8


def throttle(mesh, step: int, value) -> None:
    """Block on `value` every few steps on a multi-device CPU mesh (see above)."""
    if (step % _CPU_SYNC_EVERY == 0 and mesh.devices.size > 1
            and mesh.devices.flat[0].platform == "cpu"):
        jax.block_until_ready(value)


def without_embedding_dropout(model):
    """`model` with its word-type (embedding) dropout off, every other noise site as it
    is: Gal's PTB code sets that noise to 1 in its MC test pass (classic dropout,
    `eval_scaling`, to its evaluation value q: `regularizers.embedding_at_evaluation`).
    The other sites' keys do not depend on it (`noise.site_key`; Flax's child modules
    draw their own keys)."""
    from rnnreg_jax.regularizers.embedding import embedding_at_evaluation

    reg = getattr(model, "reg", None)
    if reg is None or not reg.embedding_noise:
        return model
    return model.clone(reg=embedding_at_evaluation(reg))


class Evaluator:
    """Deterministic and Monte Carlo evaluation over a data source.

    LM sources with `carry_state` carry the hidden state from window to
    window through the whole stream (zeros at the start of each pass).

    MC evaluation (`evaluate_mc`): `mc_chunk` samples per forward pass (0: all);
    `mc_masks` "pass" draws each sample's masks once for the whole pass, "window"
    in every window (`noise.mc_sample_keys`); `mc_embedding_dropout` False keeps
    word-type dropout off in MC passes (Gal's PTB protocol).
    """

    def __init__(self, task, mesh, mc_chunk: int = 0, mc_masks: str = "window",
                 mc_embedding_dropout: bool = True):
        if mc_masks not in noise.MC_MASKS:
            raise ValueError(f"mc_masks must be one of {noise.MC_MASKS}; got {mc_masks!r}.")
        self.task, self.mesh, self.mc_chunk = task, mesh, mc_chunk
        self.mc_masks, self.mc_embedding_dropout = mc_masks, mc_embedding_dropout
        # `progress(message)`, where set (the training loop: its console), hears how a
        # pass longer than `progress_every_s` is going (`PassProgress`).
        self.progress: Callable[[str], None] | None = None
        self.progress_every_s = 60.0
        kind, model = task.kind, task.model
        mc_model = model if mc_embedding_dropout else without_embedding_dropout(model)

        def det(params, model_state, batch, carry):
            out, new_carry, _, _ = _apply(model, kind, params, batch["inputs"], carry, True,
                                          None, model_state=model_state,
                                          seq_lengths=batch.get("lengths"))
            return losses.objective_and_stats(kind, out, batch)[1], new_carry

        def mc(params, model_state, batch, carry, key, window, first, k):
            # Samples first .. first + k - 1, one key each, vmapped: a sample's masks
            # depend on its own key only, so neither chunking nor the OOM retry changes them.
            keys = noise.mc_sample_keys(key, window, first, k, mc_masks)
            b = batch["inputs"].shape[0]

            def sample(sample_key, sample_carry):
                # Noise sampled, but normalized by the population statistics (lstm_bn):
                # no batch statistics shared between samples or with the test batch.
                out, new_carry, _, _ = _apply(mc_model, kind, params, batch["inputs"],
                                              sample_carry, False, sample_key,
                                              model_state=model_state, use_running_average=True,
                                              seq_lengths=batch.get("lengths"))
                return out, new_carry

            # The carry stays [K*B, ...], sample-major, outside (one LM state per sample).
            if carry is not None:
                carry = jax.tree.map(lambda a: a.reshape((k, b) + a.shape[1:]), carry)
            out, new_carry = jax.vmap(sample)(keys, carry)
            new_carry = jax.tree.map(lambda a: a.reshape((k * b,) + a.shape[2:]), new_carry)
            return losses.mc_summary(kind, out, batch), new_carry

        self._det = jax.jit(det)
        self._mc = jax.jit(mc, static_argnums=(7,))
        self._mc_stats = jax.jit(losses.mc_stats, static_argnums=(0, 3))

    def _uses_carry(self, carry_state):
        if carry_state is None:
            return self.task.evaluation_carries_state
        return self.task.kind == "lm" and carry_state

    def _pass_progress(self, label: str, source) -> Callable[..., None]:
        if self.progress is None:
            return lambda done, sync=None: None
        try:
            total = steps_in_epoch(source, 0)
        except (AttributeError, TypeError):  # a plain iterable: no count to give
            total = None
        return PassProgress(self.progress, label, total, self.progress_every_s)

    def evaluate(self, params, source, carry_state: bool | None = None,
                 model_state=None, on_batch=None, label: str = "evaluation"
                 ) -> dict[str, float]:
        """Deterministic (noise expectation) metrics over one pass of `source`;
        `model_state`: the non-parameter variables (`TrainState.model_state`);
        `on_batch`, if given, is called with each batch's own metrics (one host sync a
        batch: for analysis, not training-time evaluation); `label` names the pass in
        progress lines."""
        use_carry = self._uses_carry(carry_state)
        model_state = model_state or {}
        totals, carry = None, None
        tick = self._pass_progress(label, source)
        for index, batch in enumerate(source.iterate(0)):
            g = mesh_lib.global_batch(self.mesh, batch)
            if use_carry and carry is None:
                carry = zero_carry(self.task.model, params, g["inputs"].shape, g["inputs"].dtype,
                                   g["inputs"].sharding, model_state)
            stats, new_carry = self._det(params, model_state, g, carry if use_carry else None)
            carry = new_carry if use_carry else None
            totals = losses.add_stats(totals, stats)
            if on_batch is not None:
                on_batch(losses.summarize(self.task.kind, jax.device_get(stats),
                                          self.task.target_scale))
            throttle(self.mesh, index, totals)
            tick(index + 1, totals)
        return losses.summarize(self.task.kind, jax.device_get(totals), self.task.target_scale)

    @classmethod
    def from_config(cls, task, mesh, config) -> Evaluator:
        """The evaluator a train config asks for (`mc_chunk`, `mc_masks`,
        `mc_embedding_dropout`; `config` completed with the defaults)."""
        return cls(task, mesh, config.mc_chunk, config.mc_masks, config.mc_embedding_dropout)

    def evaluate_mc(self, params, source, num_samples: int, key: jax.Array,
                    carry_state: bool | None = None, model_state=None,
                    label: str = "MC evaluation") -> dict[str, float]:
        """MC dropout: K noise samples per window, probabilities averaged.

        Sample k draws its masks from `noise.mc_sample_keys` (`fold_in(key, k)`
        for the whole pass, or `fold_in(fold_in(key, window), k)` under
        `mc_masks="window"`); the samples run vmapped in chunks of `mc_chunk`,
        halved on out-of-memory, with the same numbers whatever the chunk size.
        Each sample carries its own LM state through the stream.
        """
        chunk = self.mc_chunk if 0 < self.mc_chunk < num_samples else num_samples
        while True:
            try:
                return self._evaluate_mc(params, source, num_samples, key, chunk, carry_state,
                                         model_state or {}, label)
            except Exception as err:  # noqa: BLE001 - only OOM is retried
                if not _is_oom(err) or chunk == 1:
                    raise
                chunk = max(1, chunk // 2)
                logging.warning("MC evaluation ran out of memory; retrying with chunks of %d "
                                "samples.", chunk)

    def _evaluate_mc(self, params, source, k, key, chunk, carry_state, model_state, label):
        use_carry = self._uses_carry(carry_state)
        tick = self._pass_progress(label, source)
        firsts = list(range(0, k, chunk))
        sizes = [min(chunk, k - s) for s in firsts]
        totals, carries = None, None
        for window, batch in enumerate(source.iterate(0)):
            g = mesh_lib.global_batch(self.mesh, batch)
            if use_carry and carries is None:
                b = g["inputs"].shape[0]
                carries = [zero_carry(self.task.model, params, (n * b, *g["inputs"].shape[1:]),
                                      g["inputs"].dtype,
                                      mesh_lib.batch_sharding_for(self.mesh, n * b), model_state)
                           for n in sizes]
            summary = None
            for c, (first, n) in enumerate(zip(firsts, sizes, strict=True)):
                part, new_carry = self._mc(params, model_state, g,
                                           carries[c] if use_carry else None, key,
                                           np.int32(window), np.int32(first), n)
                if use_carry:
                    carries[c] = new_carry
                summary = losses.combine_mc_summaries(self.task.kind, summary, part)
            totals = losses.add_stats(totals, self._mc_stats(self.task.kind, summary, g, k))
            throttle(self.mesh, window, totals)
            tick(window + 1, totals)
        out = losses.summarize(self.task.kind, jax.device_get(totals), self.task.target_scale)
        if self.task.kind == "lm":
            out.pop("error", None)
        return out


def finite(x) -> bool:
    return bool(np.all(np.isfinite(np.asarray(x))))


def is_finite_metrics(metrics_list) -> bool:
    return all(math.isfinite(float(m["objective"])) for m in metrics_list)
