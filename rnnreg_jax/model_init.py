"""How the task models (`rnnreg_jax.models`, `rnnreg_jax.nnx.models`) draw the arrays that
are their own, not the recurrent stack's: the embedding, the softmax and a sequence
model's head.

By default the weights are uniform in [-init_scale, init_scale], as in Zaremba's and the
zoneout authors' code; `orthogonal` draws them orthogonal with zero biases (the zoneout
authors' character-level and pMNIST code); a sequence model's head follows `head_init`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnnreg_jax import cells


def weight_init(scale: float | None, orthogonal: bool = False):
    """Flax initializer of a weight matrix: orthogonal, or `uniform_init(scale)`."""
    return nn.initializers.orthogonal() if orthogonal else uniform_init(scale)


def bias_init(scale: float | None, orthogonal: bool = False):
    """Biases: zero beside orthogonal weights (the zoneout authors), else uniform."""
    return nn.initializers.zeros if orthogonal else uniform_init(scale)


SOFTMAX_BIAS_INITS = ("uniform", "zeros")


def output_initializers(init_scale: float | None, embed_init_scale: float | None,
                        softmax_bias_init: str, orthogonal: bool) -> tuple:
    """A language model's `(embedding and softmax weights, softmax bias)` initializers:
    `weight_init` at `embed_init_scale` (None: `init_scale`), and the bias drawn as the
    weights' (`bias_init`) or zero (`softmax_bias_init="zeros"`)."""
    if softmax_bias_init not in SOFTMAX_BIAS_INITS:
        raise ValueError(f"softmax_bias_init must be one of {SOFTMAX_BIAS_INITS}, got "
                         f"{softmax_bias_init!r}.")
    scale = (init_scale if embed_init_scale is None
             else cells.check_scale(embed_init_scale, "embed_init_scale"))
    bias = (nn.initializers.zeros if softmax_bias_init == "zeros"
            else bias_init(scale, orthogonal))
    return weight_init(scale, orthogonal), bias


HEAD_INITS = ("lecun_normal", "glorot_uniform")


def head_initializers(head_init: str, orthogonal: bool) -> dict:
    """`nn.Dense` initializers of a sequence model's head: `"lecun_normal"`, `nn.Dense`'s own
    defaults (LeCun normal kernel, zero bias), or orthogonal with zero bias under
    `orthogonal_init` (the zoneout authors); `"glorot_uniform"`: Glorot uniform with zero
    bias, Keras 0.x's `Dense` default, which Gal's sentiment code used."""
    if head_init not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {HEAD_INITS}, got {head_init!r}.")
    if head_init_clashes(head_init, orthogonal):
        raise ValueError("orthogonal_init already makes the head orthogonal; leave head_init "
                         "at its default with it.")
    if orthogonal:
        return dict(kernel_init=nn.initializers.orthogonal(), bias_init=nn.initializers.zeros)
    if head_init == "glorot_uniform":
        return dict(kernel_init=nn.initializers.glorot_uniform(),
                    bias_init=nn.initializers.zeros)
    return dict(kernel_init=nn.initializers.lecun_normal(), bias_init=nn.initializers.zeros)


def head_init_clashes(head_init: str, orthogonal: bool) -> bool:
    """Whether `head_init` asks for a draw that `orthogonal_init` would override (any
    but the default)."""
    return bool(orthogonal) and head_init != "lecun_normal"


def uniform_init(scale: float | None):
    """Flax initializer: uniform in [-scale, scale] (None: lecun normal)."""
    if scale is None:
        return nn.initializers.lecun_normal()

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


def sequence_embedding_scale(init_scale: float | None) -> float:
    """A sequence model's embedding scale: `init_scale` (0 too), None: 0.05 (Keras')."""
    return 0.05 if init_scale is None else init_scale
