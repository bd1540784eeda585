"""All randomness of the library: masks drawn from explicit keys.

Tying is key splitting. A site tied per sequence draws one mask `[B, F]` from
its key and the scan reuses it at every step; a per-step site splits its key
into T keys and draws `[T, B, F]`, one mask per step. Each site derives its
key with `fold_in`, so switching one site on never changes another's masks:

    site key = fold_in(fold_in(key, LAYER_BASE + layer), SITE_IDS[site])   # per layer
    site key = fold_in(key, SITE_IDS[site])                                 # network level

Masks always carry the batch axis, so every example gets its own mask, and
running the K samples of MC evaluation as K copies of the batch draws K
independent masks.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnnreg_jax import cells
from rnnreg_jax.regularizers import MaskSpec, Regularization

Array = jax.Array

SITE_IDS = {
    "input": 1, "recurrent": 2, "cell": 3, "output": 4, "update": 5,
    "zoneout_cells": 6, "zoneout_hiddens": 7, "depth": 8, "weight_noise": 9,
    "embedding": 10, "weight_drop": 11, "hidden": 12,
}
LAYER_BASE = 1000  # per-layer keys live far from the network-level site ids


class LayerNoise(NamedTuple):
    """The noise of one layer for one window.

    Attributes:
      input: mask on the layer input, None, `[B, F]`, `[T, B, F]`, or with a
        leading gate axis when `input_per_gate`.
      input_per_gate: whether `input` has a gate axis.
      tied: `StepNoise` reused at every step (masks `[B, H]`, or scalars).
      per_step: `StepNoise` whose arrays have a leading time axis, scanned.
    """

    input: Any = None
    input_per_gate: bool = False
    tied: cells.StepNoise = cells.StepNoise()
    per_step: cells.StepNoise = cells.StepNoise()


def site_key(key: Array, site: str, layer: int | None = None) -> Array:
    """The key of one noise site (of one layer, or of the network)."""
    if site not in SITE_IDS:
        raise ValueError(f"Unknown noise site {site!r}; expected one of {tuple(SITE_IDS)}.")
    if layer is not None:
        key = jax.random.fold_in(key, LAYER_BASE + layer)
    return jax.random.fold_in(key, SITE_IDS[site])


def _flat(sample, key: Array, shape: tuple[int, ...]) -> Array:
    """`sample(key, shape)` drawn flat and reshaped.

    Same values as drawing `shape` directly (partitionable threefry numbers
    elements by their flat index), but XLA on CPU compiles the threefry of a
    multi-dimensional shape 10-40x slower (measured: 9.5 s for a `[4, 16, 12]`
    draw against 0.7 s flat), which dominated the compile time of a train step.
    """
    return sample(key, (math.prod(shape),)).reshape(shape)


# Bernoulli draws take 16 random bits each, two per 32-bit threefry word. Mask
# sampling is threefry-bound on CPU (about 13 ns per word here), so this halves
# its cost: 15.7M draws (pMNIST zoneout, one step) 230 -> 102 ms in
# benchmarks/mask_sampling.py. Probabilities
# are therefore multiples of 2^-16 (`quantize_probability`); inverted dropout
# divides by the quantized keep probability and evaluation uses the quantized
# mixing rates, so every expectation stays exact.
PROBABILITY_BITS = 16
_LEVELS = 1 << PROBABILITY_BITS


def quantize_probability(p: float) -> float:
    """The probability a Bernoulli(p) draw here really has: p rounded to a multiple
    of 2^-16 (within 2^-17 of p; 1 - p quantizes to 1 - its quantization)."""
    return round(float(p) * _LEVELS) / _LEVELS


def _bernoulli_flat(key: Array, p: float, size: int) -> Array:
    """`size` booleans, True with probability `quantize_probability(p)`."""
    threshold = jnp.uint32(round(float(p) * _LEVELS))  # 0 .. 2^16: never .. always
    words = jax.random.bits(key, ((size + 1) // 2,), jnp.uint32)
    halves = jnp.stack([words & (_LEVELS - 1), words >> PROBABILITY_BITS], axis=-1)
    return halves.reshape(-1)[:size] < threshold


def bernoulli_draw(key: Array, p: float, shape: tuple[int, ...]) -> Array:
    """Booleans of `shape`, each True with probability `quantize_probability(p)`."""
    return _bernoulli_flat(key, p, math.prod(shape)).reshape(shape)


def bernoulli(key: Array, p: float, shape: tuple[int, ...], tie: str, steps: int,
              dtype: Any = jnp.float32) -> Array:
    """{0, 1} samples `d ~ Bernoulli(p)` (1 with probability p), tied or per step.

    `tie="sequence"`: one draw of `shape` from `key`; `tie="step"`: `steps`
    draws from `jax.random.split(key, steps)`, stacked to `[steps, *shape]`.
    The probability is `quantize_probability(p)` (see `PROBABILITY_BITS`).
    """
    if tie == "sequence":
        return bernoulli_draw(key, p, shape).astype(dtype)
    keys = jax.random.split(key, steps)
    return jax.vmap(lambda k: bernoulli_draw(k, p, shape))(keys).astype(dtype)


def dropout_mask(key: Array, spec: MaskSpec, shape: tuple[int, ...], steps: int,
                 num_gates: int = 1, dtype: Any = jnp.float32) -> Array:
    """Inverted-dropout mask `m = keep / q`, `keep ~ Bernoulli(q)`, q = 1 - rate
    quantized (`quantize_probability`, within 2^-17).

    Values are exactly 0 or 1/q, so `E[m] = 1` and evaluation (no mask) is the
    expectation.

    Returns:
      `[*shape]` (tied) or `[T, *shape]` (per step), with a leading gate axis
      `[G, ...]` (so `[G, T, ...]` per step) when `spec.per_gate`.
    """
    full = (num_gates, *shape) if spec.per_gate else shape
    keep = bernoulli(key, 1.0 - spec.rate, full, spec.tie, steps, dtype)
    if spec.per_gate and spec.tie == "step":
        keep = jnp.swapaxes(keep, 0, 1)  # [T, G, ...] -> [G, T, ...]
    return keep / quantize_probability(1.0 - spec.rate)


def _active(spec: MaskSpec | None) -> bool:
    return spec is not None and spec.active


def layer_noise(
    reg: Regularization, key: Array | None, layer: int, cell: str, batch: int, steps: int,
    input_size: int, hidden_size: int, deterministic: bool, dtype: Any = jnp.float32,
) -> LayerNoise:
    """Sample (or take the expectation of) every noise site of one layer.

    Args:
      reg: the regularization spec.
      key: the window's key; required unless `deterministic`.
      layer: index of the layer in the stack (for key derivation).
      cell: "lstm", "gru", "rnn" or "lstm_ln".
      batch, steps: B and T of the window.
      input_size, hidden_size: F and H of this layer.
      deterministic: evaluation mode, every noise replaced by its expectation.
    """
    reg.check_cell(cell)
    if deterministic:
        return _expected_layer_noise(reg)
    if not reg.has_recurrent_noise:
        return LayerNoise()
    if key is None:
        raise ValueError("A PRNG key is required in training mode (deterministic=False); "
                         "pass one, or deterministic=True for evaluation.")
    num_gates = cells.NUM_GATES[cell]
    tied: dict[str, Any] = {}
    per_step: dict[str, Any] = {}

    def put(name: str, value: Array, tie: str) -> None:
        (tied if tie == "sequence" else per_step)[name] = value

    def k(site: str) -> Array:
        return site_key(key, site, layer)

    bh = (batch, hidden_size)
    input_mask = None
    input_spec = reg.layer_input(layer)
    if _active(input_spec):
        site = "hidden" if layer > 0 and reg.hidden is not None else "input"
        input_mask = dropout_mask(k(site), input_spec, (batch, input_size), steps,
                                  num_gates, dtype)
    if _active(reg.recurrent):
        mask = dropout_mask(k("recurrent"), reg.recurrent, bh, steps, num_gates, dtype)
        if reg.recurrent.per_gate and reg.recurrent.tie == "step":
            mask = jnp.swapaxes(mask, 0, 1)  # scanned arrays need time first
        put("recurrent", mask, reg.recurrent.tie)
    if _active(reg.cell):
        put("cell", dropout_mask(k("cell"), reg.cell, bh, steps, dtype=dtype), reg.cell.tie)
    if _active(reg.update):
        spec = reg.update
        keep = bernoulli(k("update"), 1.0 - spec.rate, bh, spec.tie, steps, dtype)
        # inverted dropout, or the {0, 1} mask itself (scaled at evaluation instead)
        update = keep if reg.update_eval_scaling else keep / quantize_probability(1 - spec.rate)
        put("update", update, spec.tie)
        if reg.output_zoneout:
            put("output_gate", 1.0 - keep, spec.tie)
    zc, zh = reg.zoneout_cells, reg.zoneout_hiddens
    if zc > 0 and cell in cells.LSTM_TYPES:
        put("zone_c", bernoulli(k("zoneout_cells"), zc, bh, reg.zoneout_tie, steps, dtype),
            reg.zoneout_tie)
    if zh > 0:
        if reg.zoneout_shared and zc > 0:
            mask = (tied | per_step)["zone_c"]
        else:
            mask = bernoulli(k("zoneout_hiddens"), zh, bh, reg.zoneout_tie, steps, dtype)
        put("zone_h", mask, reg.zoneout_tie)
    if reg.stochastic_depth > 0:
        put("depth", bernoulli(k("depth"), reg.stochastic_depth, (batch, 1), "step", steps,
                               dtype), "step")
    return LayerNoise(input=input_mask,
                      input_per_gate=_active(input_spec) and input_spec.per_gate,
                      tied=cells.StepNoise(**tied), per_step=cells.StepNoise(**per_step))


def _expected_layer_noise(reg: Regularization) -> LayerNoise:
    """Deterministic mode: dropout -> identity (the update with `update_eval_scaling`:
    its keep probability), mixing coefficients -> their (quantized, as drawn) rates."""
    tied: dict[str, Any] = {}
    if reg.zoneout_cells > 0:
        tied["zone_c"] = quantize_probability(reg.zoneout_cells)
    if reg.zoneout_hiddens > 0:
        tied["zone_h"] = quantize_probability(reg.zoneout_hiddens)
    if reg.stochastic_depth > 0:
        tied["depth"] = quantize_probability(reg.stochastic_depth)
    if reg.update_eval_scaling and _active(reg.update):  # E[keep] = q(1 - rate)
        tied["update"] = quantize_probability(1.0 - reg.update.rate)
    if reg.needs_output_gate:  # 1 - keep, keep ~ Bernoulli(q(1 - rate))
        tied["output_gate"] = 1.0 - quantize_probability(1.0 - reg.update.rate)
    return LayerNoise(tied=cells.StepNoise(**tied))


def weight_noise(reg: Regularization, key: Array | None, layer: int, w_h: Array,
                 deterministic: bool) -> Array:
    """`W_h + std * N(0, 1)` in training (one draw per call = per minibatch)."""
    if deterministic or reg.weight_noise <= 0:
        return w_h
    if key is None:
        raise ValueError("A PRNG key is required for weight noise in training mode.")
    eps = _flat(lambda k, s: jax.random.normal(k, s, w_h.dtype),
                site_key(key, "weight_noise", layer), w_h.shape)
    return w_h + reg.weight_noise * eps


def weight_drop(reg: Regularization, key: Array | None, layer: int, w_h: Array,
                deterministic: bool) -> Array:
    """DropConnect on W_h (AWD-LSTM): `W_h * keep / (1 - p)`, `keep ~ Bernoulli(1 - p)`.

    One mask of W_h's shape per layer and call (per minibatch): the same
    dropped weights for every example and step. Deterministic: `W_h`.
    """
    if deterministic or reg.weight_drop <= 0:
        return w_h
    if key is None:
        raise ValueError("A PRNG key is required for weight drop in training mode.")
    q = quantize_probability(1.0 - reg.weight_drop)
    keep = bernoulli_draw(site_key(key, "weight_drop", layer), q, w_h.shape)
    return w_h * (keep.astype(w_h.dtype) / q)


def output_mask(reg: Regularization, key: Array | None, batch: int, steps: int,
                features: int, deterministic: bool, dtype: Any = jnp.float32) -> Array | None:
    """Mask for the last layer's output, `[B, F]` or `[T, B, F]` (time-major), or None."""
    if deterministic or not _active(reg.output):
        return None
    if key is None:
        raise ValueError("A PRNG key is required in training mode (deterministic=False).")
    return dropout_mask(site_key(key, "output"), reg.output, (batch, features), steps,
                        dtype=dtype)


def embedding_mask(reg: Regularization, key: Array | None, ids: Array, vocab_size: int,
                   deterministic: bool, dtype: Any = jnp.float32) -> Array | None:
    """Gal's embedding dropout: a per-example mask over word *types*.

    Every occurrence of a word in a sequence shares its mask, drawn once per
    window: `keep[b, v] ~ Bernoulli(1 - p) / (1 - p)`, looked up at `ids`.

    Args:
      ids: token ids `[B, T]` (batch-major).

    Returns:
      `[B, T, 1]` multipliers for the embedded vectors, or None.
    """
    if deterministic or reg.embedding <= 0:
        return None
    if key is None:
        raise ValueError("A PRNG key is required in training mode (deterministic=False).")
    q = quantize_probability(1.0 - reg.embedding)
    keep = bernoulli_draw(site_key(key, "embedding"), q, (ids.shape[0], vocab_size))
    per_token = jnp.take_along_axis(keep, ids, axis=1).astype(dtype) / q
    return per_token[..., None]


# When the masks of an MC sample are drawn: once for the whole pass (Gal's PTB code: a
# sample is one network, run over the whole carried-state test stream) or every window.
MC_MASKS = ("pass", "window")


def mc_sample_keys(key: Array, window, first, count: int, masks: str = "pass") -> Array:
    """The keys of MC samples `first .. first + count - 1` in window `window` of a pass.

    Sample k's key is `fold_in(key, k)` under `masks="pass"` (the same in every
    window, so its masks are too) and `fold_in(fold_in(key, window), k)` under
    "window". It depends on k alone, not on how the K samples are chunked.

    Returns:
      `[count, *key.shape]`.
    """
    if masks not in MC_MASKS:
        raise ValueError(f"masks must be one of {MC_MASKS}; got {masks!r}.")
    base = key if masks == "pass" else jax.random.fold_in(key, window)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(first + jnp.arange(count))
