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
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnreg_jax import cells
from rnnreg_jax.shown import shown

Array = jax.Array

SITE_IDS = {
    "input": 1, "recurrent": 2, "cell": 3, "output": 4, "update": 5,
    "zoneout_cells": 6, "zoneout_hiddens": 7, "depth": 8, "weight_noise": 9,
    "embedding": 10, "weight_drop": 11, "hidden": 12,
}
LAYER_BASE = 1000  # per-layer keys live far from the network-level site ids
NAMED_SITE_BASE = 1 << 20  # sites named by users' regularizers live above both


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
    """The key of one built-in noise site (of one layer, or of the network)."""
    if site not in SITE_IDS:
        raise ValueError(f"Unknown noise site {site!r}; expected one of {tuple(SITE_IDS)}; "
                         "a regularizer of your own names its sites with named_site_key.")
    if layer is not None:
        key = jax.random.fold_in(key, LAYER_BASE + layer)
    return jax.random.fold_in(key, SITE_IDS[site])


def named_site_key(key: Array, name: str, layer: int | None = None) -> Array:
    """The key of a site a user's regularizer names: `site_key`'s derivation with an id
    from the name's CRC-32 (far above the built-in ids), so the same name gives the same
    key in every run and a new site never changes the built-in ones' masks."""
    if name in SITE_IDS:
        raise ValueError(f"{name!r} is a built-in noise site; use site_key, or another name.")
    if layer is not None:
        key = jax.random.fold_in(key, LAYER_BASE + layer)
    return jax.random.fold_in(key, NAMED_SITE_BASE + zlib.crc32(name.encode()) % (1 << 30))


def flat_draw(sample, key: Array, shape: tuple[int, ...]) -> Array:
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


def check_probability(p: Any, name: str = "p") -> float:
    """`p` as a float, or a one-sentence ValueError naming `name` unless it is a real number
    in [0, 1] (a p above 1 was drawn as 1, a negative one overflowed the threshold)."""
    from rnnreg_jax.regularizers.checks import check_number  # checks imports this module

    value = check_number(p, name)
    if not 0.0 <= value <= 1.0:  # also NaN
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}.")
    return value


def check_shape(shape: Any, name: str = "shape") -> tuple[int, ...]:
    """`shape` as a tuple of ints, or a one-sentence ValueError unless it is a sequence of
    whole numbers >= 0 (a negative size failed inside XLA)."""
    dims = tuple(shape) if isinstance(shape, (tuple, list)) else None
    if dims is None or any(isinstance(d, bool) or not isinstance(d, (int, np.integer))
                           or d < 0 for d in dims):
        raise ValueError(f"{name} must be a tuple of whole numbers >= 0, got {shape!r:.80}.")
    return tuple(int(d) for d in dims)


def bernoulli_draw(key: Array, p: float, shape: tuple[int, ...]) -> Array:
    """Booleans of `shape`, each True with probability `quantize_probability(p)` (`p` a
    number in [0, 1])."""
    p, shape = check_probability(p), check_shape(shape)
    return _bernoulli_flat(key, p, math.prod(shape)).reshape(shape)


def bernoulli(key: Array, p: float, shape: tuple[int, ...], tie: str, steps: int,
              dtype: Any = jnp.float32) -> Array:
    """{0, 1} samples `d ~ Bernoulli(p)` (1 with probability p), tied or per step.

    `tie="sequence"`: one draw of `shape` from `key`; `tie="step"`: `steps`
    draws from `jax.random.split(key, steps)`, stacked to `[steps, *shape]`.
    The probability is `quantize_probability(p)` (see `PROBABILITY_BITS`).
    """
    from rnnreg_jax.regularizers.checks import check_tie  # checks imports this module

    p, shape = check_probability(p), check_shape(shape)
    if check_tie(tie) == "step":
        steps = cells.check_size(steps, "steps", least=0)
    if tie == "sequence":
        return bernoulli_draw(key, p, shape).astype(dtype)
    keys = jax.random.split(key, steps)
    return jax.vmap(lambda k: bernoulli_draw(k, p, shape))(keys).astype(dtype)


def dropout_mask(key: Array, spec, shape: tuple[int, ...], steps: int,
                 num_gates: int = 1, dtype: Any = jnp.float32) -> Array:
    """Inverted-dropout mask `m = keep / q`, `keep ~ Bernoulli(q)`, q = 1 - rate
    (`spec.rate`, tied by `spec.tie`, per gate if `spec.per_gate`)
    quantized (`quantize_probability`, within 2^-17).

    Values are exactly 0 or 1/q, so `E[m] = 1` and evaluation (no mask) is the
    expectation. With `spec.eval_scaling` (classic dropout) the mask is `keep` itself,
    the same bits unscaled, and evaluation multiplies by q instead.

    Returns:
      `[*shape]` (tied) or `[T, *shape]` (per step), with a gate axis before the
      mask's own axes when `spec.per_gate`: `[G, *shape]`, `[T, G, *shape]` per step
      (one layout for every per-step mask: time first, as the scan slices it).
    """
    from rnnreg_jax.regularizers.checks import check_rate  # checks imports this module

    if not all(hasattr(spec, field) for field in ("rate", "tie", "per_gate")):
        raise ValueError("spec must be a regularizers.MaskSpec (its rate, tie and "
                         f"per_gate), such as MaskSpec(0.5, 'step'), got {spec!r:.80}.")
    check_rate(spec.rate, "spec's")
    shape = check_shape(shape)
    if spec.per_gate:
        num_gates = cells.check_size(num_gates, "num_gates")
    full = (num_gates, *shape) if spec.per_gate else shape
    keep = bernoulli(key, 1.0 - spec.rate, full, spec.tie, steps, dtype)
    if getattr(spec, "eval_scaling", False):
        return keep
    return keep / quantize_probability(1.0 - spec.rate)


def layer_noise(
    reg, key: Array | None, layer: int, cell, batch: int, steps: int,
    input_size: int, hidden_size: int, deterministic: bool, dtype: Any = jnp.float32,
) -> LayerNoise:
    """Sample (or take the expectation of) every noise site of one layer: the input
    mask and the step noise the regularizer's hooks draw (`regularizers.base`).

    Args:
      reg: the regularizer.
      key: the window's key; required unless `deterministic`.
      layer: index of the layer in the stack (for key derivation).
      cell: the cell's name or record.
      batch, steps: B and T of the window.
      input_size, hidden_size: F and H of this layer.
      deterministic: evaluation mode, every noise replaced by its expectation.
    """
    from rnnreg_jax.regularizers.base import LayerShape, check_regularizer
    from rnnreg_jax.regularizers.checks import check_flag, check_input_mask, check_step_noise

    check_regularizer(reg).check_cell(cell)
    layer = cells.check_size(layer, "layer", least=0)
    batch, steps, input_size, hidden_size = (
        cells.check_size(value, name, least=0) for value, name in (
            (batch, "batch"), (steps, "steps"), (input_size, "input_size"),
            (hidden_size, "hidden_size")))
    deterministic = check_flag(deterministic, "deterministic")
    if not deterministic and not reg.stack_noise:
        return LayerNoise()
    if not deterministic and key is None:
        raise ValueError("A PRNG key is required in training mode (deterministic=False); "
                         "pass one, or deterministic=True for evaluation.")
    num_gates = cells.num_gates(cell)
    shape = LayerShape(layer, cell, batch, steps, input_size, hidden_size, num_gates, dtype)
    masked = check_input_mask(reg.input_mask(key, shape, deterministic), shape, reg)
    tied, per_step = check_step_noise(reg.step_noise(key, shape, deterministic), shape, reg)
    mask, per_gate = masked if masked is not None else (None, False)
    return LayerNoise(input=mask, input_per_gate=per_gate,
                      tied=cells.StepNoise(**tied), per_step=cells.StepNoise(**per_step))


def _parts_of(reg, family_name: str):
    from rnnreg_jax import regularizers

    family = getattr(regularizers, family_name)
    return regularizers.compose(*(p for p in reg.parts if isinstance(p, family)))


def weight_noise(reg, key: Array | None, layer: int, w_h: Array, deterministic: bool) -> Array:
    """`W_h` after `reg`'s weight noise (`regularizers.WeightNoise`) alone."""
    return _parts_of(reg, "WeightNoise").weights({"w_h": w_h}, key, layer, deterministic)["w_h"]


def weight_drop(reg, key: Array | None, layer: int, w_h: Array, deterministic: bool) -> Array:
    """`W_h` after `reg`'s weight drop (`regularizers.WeightDrop`) alone."""
    return _parts_of(reg, "WeightDrop").weights({"w_h": w_h}, key, layer, deterministic)["w_h"]


def output_mask(reg, key: Array | None, batch: int, steps: int, features: int,
                deterministic: bool, dtype: Any = jnp.float32) -> Array | None:
    """Mask for the last layer's output, `[B, F]` or `[T, B, F]` (time-major), or None."""
    from rnnreg_jax.regularizers.base import LayerShape
    from rnnreg_jax.regularizers.checks import check_output_mask

    shape = LayerShape(-1, None, batch, steps, features, features, 1, dtype)
    return check_output_mask(reg.output_mask(key, shape, deterministic), shape, reg)


def embedding_mask(reg, key: Array | None, ids: Array, vocab_size: int,
                   deterministic: bool, dtype: Any = jnp.float32) -> Array | None:
    """Gal's embedding dropout multipliers `[B, T, 1]` for token ids `[B, T]`, or None."""
    from rnnreg_jax.regularizers.checks import check_embedding_mask

    return check_embedding_mask(reg.embedding_mask(key, ids, vocab_size, deterministic, dtype),
                                ids, reg)


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
    from rnnreg_jax.regularizers.checks import check_key  # checks imports this module

    if masks not in MC_MASKS:
        raise ValueError(f"masks must be one of {MC_MASKS}; got {masks!r}.")
    check_key(key, required=True)
    if masks == "window":  # "pass" reads no window
        check_index(window, "window")
    check_index(first, "first")
    count = cells.check_size(count, "count")
    base = key if masks == "pass" else jax.random.fold_in(key, window)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(first + jnp.arange(count))


INDEX_LIMIT = 2**32  # fold_in's data is a uint32


def check_index(value: Any, name: str) -> None:
    """A sample or window index for `fold_in`: a whole number in [0, 2^32), an int or an
    integer scalar array (maybe traced: its value is checked where concrete); else a
    one-sentence ValueError naming it (fold_in truncated a float, wrapped a negative
    one around, failed on None or a string)."""
    from rnnreg_jax.lengths import concrete_values

    integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    scalar_array = (hasattr(value, "dtype") and np.ndim(value) == 0
                    and jnp.issubdtype(value.dtype, jnp.integer))
    fits = integer or scalar_array
    if fits:
        concrete = concrete_values(value)
        fits = concrete is None or 0 <= int(concrete) < INDEX_LIMIT
    if not fits:
        raise ValueError(f"{name} must be a whole number in [0, 2^32) (an int or an integer "
                         f"scalar array: fold_in's data), got {shown(value)}.")
