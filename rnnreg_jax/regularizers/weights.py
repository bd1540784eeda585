"""Noise on the weights: AWD-LSTM's weight drop (DropConnect on W_h) and Krueger et al.'s
weight-noise baseline (on W_h, or on every weight matrix as the zoneout authors' code
adds it), one draw per weight and window (minibatch)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from rnnreg_jax import lengths, noise
from rnnreg_jax.regularizers.base import Family, Regularizer, need_key
from rnnreg_jax.regularizers.chain import compose
from rnnreg_jax.regularizers.checks import FLOAT32_MAX, check_non_negative, check_rate

Array = jax.Array


def _check_weight(w, caller: str, floating: bool = False) -> None:
    """`w` must be an array (a list failed on `w.shape`), with `floating` of a float dtype
    (`jax.random.normal` draws no integers)."""
    dtype = getattr(w, "dtype", None)
    if not hasattr(w, "shape") or dtype is None:
        raise ValueError(f"{caller}'s w must be an array, got {w!r:.80}.")
    if floating and not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{caller}'s w must be a floating-point array, got dtype {dtype}.")


def drop_connect(key: Array, w: Array, rate: float) -> Array:
    """`w * keep / q`, `keep ~ Bernoulli(q)` of w's shape, q = 1 - rate quantized
    (`noise.quantize_probability`): DropConnect on any weight; `rate` a drop probability
    in [0, 1), as `weight_drop`'s."""
    _check_weight(w, "drop_connect")
    rate = check_rate(rate, "drop_connect")
    q = noise.quantize_probability(1.0 - rate)
    keep = noise.bernoulli_draw(key, q, w.shape)
    return w * (keep.astype(w.dtype) / q)


def gaussian_noise(key: Array, w: Array, std: Array | float) -> Array:
    """`w + std * eps`, `eps ~ N(0, 1)` of w's shape (`std` a scalar or w's shape, finite
    and >= 0: a number, or an array whose values are checked where concrete)."""
    _check_weight(w, "gaussian_noise", floating=True)
    _check_std(std, w.shape)
    eps = noise.flat_draw(lambda k, s: jax.random.normal(k, s, w.dtype), key, w.shape)
    return w + std * eps


def _check_std(std, shape: tuple) -> None:
    """`gaussian_noise`'s std: a number, or an array broadcasting to the weight's `shape`
    (maybe traced: its values checked where concrete), finite and >= 0."""
    if not hasattr(std, "shape"):
        check_non_negative(std, "gaussian_noise std")
        return
    if not (jnp.issubdtype(std.dtype, jnp.floating) or jnp.issubdtype(std.dtype, jnp.integer)):
        raise ValueError(f"gaussian_noise std must be real, got dtype {std.dtype}.")
    try:
        fits = np.broadcast_shapes(tuple(std.shape), tuple(shape)) == tuple(shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"gaussian_noise std must be a scalar or broadcast to w's shape "
                         f"{tuple(shape)}, got shape {tuple(std.shape)}.")
    values = lengths.concrete_values(std)
    if values is None:
        return  # traced: its values are unknown here
    if not np.all((values >= 0) & (values <= FLOAT32_MAX)):  # also NaN
        raise ValueError(f"gaussian_noise std must be finite and non-negative, got values "
                         f"from {np.min(values)} to {np.max(values)}.")


@dataclasses.dataclass(frozen=True)
class WeightDrop(Family):
    """Merity et al. 2017: `W_h * m / (1 - rate)`, one mask of W_h's shape per layer and
    window: the same dropped weights for every example and step. Evaluation: W_h. In a
    composition it runs before the other weight transforms (`WEIGHTS_ORDER`): with
    weight noise, `W_h * m / (1 - rate) + std * eps` whatever the order written."""

    WEIGHTS_ORDER: ClassVar[int] = -1
    rate: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "rate", check_rate(self.rate, "Weight drop"))

    @property
    def active(self):
        return self.rate > 0

    def weights(self, params, key, layer, deterministic):
        if deterministic or not self.active:
            return params
        key = noise.site_key(need_key(key, "weight drop"), "weight_drop", layer)
        return dict(params, w_h=drop_connect(key, params["w_h"], self.rate))


WEIGHT_NOISE_SCOPES = ("recurrent", "all")
# The model arrays `model_weights` is given, in a fixed order that names their keys.
MODEL_ARRAYS = ("embedding", "output")


@dataclasses.dataclass(frozen=True)
class WeightNoise(Family):
    """`W + std * eps`, `eps ~ N(0, 1)` of W's shape, one draw per weight and window, on
    W_h (`scope="recurrent"`) or on every weight matrix (`"all"`: each layer's W_x and
    W_h and, in the task models, the embedding and the softmax or head kernel; biases
    and normalization gains stay); evaluation uses W."""

    QUALIFIERS: ClassVar[tuple[str, ...]] = ("scope",)
    std: float = 0.0
    scope: str = "recurrent"

    def __post_init__(self):
        object.__setattr__(self, "std", check_non_negative(self.std, "weight_noise"))
        if self.scope not in WEIGHT_NOISE_SCOPES:
            raise ValueError(f"weight_noise scope must be one of {WEIGHT_NOISE_SCOPES}, got "
                             f"{self.scope!r}.")

    @property
    def active(self):
        return self.std > 0

    @property
    def model_noise(self):
        return self.active and self.scope == "all"

    def weights(self, params, key, layer, deterministic):
        if deterministic or not self.active:
            return params
        key = noise.site_key(need_key(key, "weight noise"), "weight_noise", layer)
        out = dict(params, w_h=gaussian_noise(key, params["w_h"], self.std))
        if self.scope == "all" and "w_x" in params:  # a stack fed gate inputs has none
            out["w_x"] = gaussian_noise(jax.random.fold_in(key, 1), params["w_x"], self.std)
        return out

    def model_weights(self, arrays, key, deterministic):
        if deterministic or not self.model_noise:
            return arrays
        key = noise.site_key(need_key(key, "weight noise"), "weight_noise")
        return {name: gaussian_noise(jax.random.fold_in(key, MODEL_ARRAYS.index(name)), w,
                                     self.std) for name, w in arrays.items()}


def weight_drop(rate: float) -> Regularizer:
    """Merity et al. 2017 (AWD-LSTM): DropConnect on the recurrent weights.

    `W_h <- W_h * m / (1 - rate)`, `m ~ Bernoulli(1 - rate)` of W_h's shape,
    one mask per layer and `unroll` call (per minibatch): the same dropped
    weights for every example and step of the window. Evaluation uses `W_h`.
    """
    check_rate(rate, "Weight drop")
    return compose(WeightDrop(rate))


def weight_noise(std: float, scope: str = "recurrent") -> Regularizer:
    """`W + std * eps`, `eps ~ N(0, 1)` of W's shape, once per minibatch (per `unroll`
    call) and weight; evaluation uses `W`.

    `scope="recurrent"`: W_h of every layer. `"all"`: every weight matrix, as the
    zoneout authors' code adds Graves' noise to every parameter in Blocks' WEIGHT role:
    each layer's W_x and W_h, and in `LanguageModel` / `SequenceModel` the embedding (or
    input map) and the softmax or head kernel (`model_weights`); biases stay.
    """
    return compose(WeightNoise(std, scope))
