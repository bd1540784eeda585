"""The inputs the test_regularizers_* files share: sizes, a key, float32 parameters of
every cell, an input window `[B, T, F]`, and the public `unroll` under jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import rnnreg_jax
from rnnreg_jax import cells

KEY = jax.random.key(0)
B, T, F, H = 3, 5, 6, 4


def make_params(cell, sizes=(F, H, H), seed=0):
    """Uniform(-0.5, 0.5) layers in `cells.init_params`' layout, drawn with numpy.

    (numpy, not `jax.random`: compiling threefry for 2-D shapes costs seconds on CPU.)
    """
    rng = np.random.default_rng(seed)
    width = lambda h: cells.NUM_GATES[cell] * h
    layers = []
    for i, o in zip(sizes, sizes[1:], strict=False):
        shapes = {"w_x": (i, width(o)), "w_h": (o, width(o)), "b": (width(o),)}
        if cell == "gru":
            shapes["b_h"] = (width(o),)
        layers.append({k: jnp.asarray(rng.uniform(-0.5, 0.5, v), jnp.float32)
                       for k, v in shapes.items()})
    return layers


# The public `unroll` under jit (specs are static): one compile per (cell, spec, mode).
run = jax.jit(rnnreg_jax.unroll, static_argnums=0,
              static_argnames=("reg", "deterministic", "time_major", "unroll", "return_hiddens"))


X = jnp.asarray(np.random.default_rng(1).normal(size=(B, T, F)), jnp.float32)
PARAMS = {cell: make_params(cell) for cell in cells.CELL_TYPES}
