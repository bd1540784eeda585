"""Deterministic and Monte Carlo (MC dropout) evaluation over a data source: the
`Evaluator` the training loop and `experiments.evaluate` run."""

from __future__ import annotations

import logging
from collections.abc import Callable

import jax
import numpy as np

from rnnreg_jax import noise
from rnnreg_jax.train import losses
from rnnreg_jax.train import mesh as mesh_lib
from rnnreg_jax.train.logging import PassProgress
from rnnreg_jax.train.steps import apply_model, throttle, zero_carry
from rnnreg_jax.train.task import steps_in_epoch


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
    word-type dropout off in MC passes (Gal's PTB protocol). `mc_draws_noise` (from
    the model, `mc_draws_noise()`) False makes `evaluate_mc` run the deterministic pass
    once; set it True to sample anyway.
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
        # `should_stop()`, where set (the training loop, during its evaluations: SIGTERM),
        # is asked before each batch but the first; True ends the pass (`PassStopped`).
        # A pass whose last batch is done returns. Every process asks it equally often,
        # so a multi-host check may be a collective (`mesh.agreed_every`).
        self.should_stop: Callable[[], bool] | None = None
        kind, model = task.kind, task.model
        mc_model = model if mc_embedding_dropout else without_embedding_dropout(model)
        self.mc_draws_noise = mc_draws_noise(mc_model)

        def det(params, model_state, batch, carry):
            out, new_carry, _, _ = apply_model(
                model, kind, params, batch["inputs"], carry, True, None,
                model_state=model_state, seq_lengths=batch.get("lengths"))
            return losses.objective_and_stats(kind, out, batch)[1], new_carry

        def mc(params, model_state, batch, carry, key, window, first, k):
            # Samples first .. first + k - 1, one key each, vmapped: a sample's masks
            # depend on its own key only, so neither chunking nor the OOM retry changes them.
            keys = noise.mc_sample_keys(key, window, first, k, mc_masks)
            b = batch["inputs"].shape[0]

            def sample(sample_key, sample_carry):
                # Noise sampled, but normalized by the population statistics (lstm_bn):
                # no batch statistics shared between samples or with the test batch.
                out, new_carry, _, _ = apply_model(
                    mc_model, kind, params, batch["inputs"], sample_carry, False, sample_key,
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

    def _check_stop(self, label: str) -> None:
        if self.should_stop is not None and self.should_stop():
            raise PassStopped(f"{label}: stopped part-way")

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
            if index:
                self._check_stop(label)
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
        Each sample carries its own LM state through the stream. A model that draws
        no noise in its MC passes (`mc_draws_noise`) would give K copies of the
        deterministic pass: that pass runs once instead, and its metrics come back.
        """
        if not self.mc_draws_noise:
            logging.info("%s: the model draws no noise, so each of the %d samples would "
                         "repeat the deterministic pass; running it once.", label, num_samples)
            out = self.evaluate(params, source, carry_state, model_state, label=label)
            return _mc_fields(self.task.kind, out)
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
            if window:
                self._check_stop(label)
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
        return _mc_fields(self.task.kind, losses.summarize(
            self.task.kind, jax.device_get(totals), self.task.target_scale))


class PassStopped(Exception):
    """An evaluation pass left part-way because `Evaluator.should_stop()` said so."""


def mc_draws_noise(model) -> bool:
    """Whether MC passes of `model` draw noise: False only for the library's own models
    (`rnnreg_jax`'s modules) whose regularizer has no noise site; any other module may
    draw noise the library cannot see (its own `make_rng("dropout")`)."""
    reg = getattr(model, "reg", None)
    if reg is None or not type(model).__module__.startswith("rnnreg_jax."):
        return True
    return reg.has_noise


def _mc_fields(kind: str, metrics: dict[str, float]) -> dict[str, float]:
    """The fields MC evaluation reports: an LM's errors are not counted under MC (they
    would need the whole averaged distribution: `losses.mc_stats`)."""
    return {k: v for k, v in metrics.items() if not (kind == "lm" and k == "error")}


def _is_oom(err: Exception) -> bool:
    msg = str(err)
    return "RESOURCE_EXHAUSTED" in msg or "Out of memory" in msg or "out of memory" in msg
