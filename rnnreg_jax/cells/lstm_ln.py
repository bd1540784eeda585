"""The layer-normalized LSTM of Ba et al. 2016 (same gate order as the LSTM)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnreg_jax.cells.base import (
    LN_EPSILON,
    NUM_GATES,
    Carry,
    Cell,
    Params,
    StepNoise,
    check_size,
    check_step,
)
from rnnreg_jax.cells.layout import Array, project_inputs, recurrent_projection
from rnnreg_jax.cells.lstm import lstm_gates


def layer_norm(x: Array, gain: Array, bias: Array, groups: int = 1) -> Array:
    """Layer normalization over the last axis, per group of units.

    The last axis (width `G*H`) is split into `groups` blocks of width H (the
    gates); each block is normalized by its own mean and variance over its H
    units, `(x - mean) / sqrt(var + LN_EPSILON)`, then scaled and shifted
    unit by unit: `* gain + bias` (gain and bias `[G*H]`).
    """
    groups = check_size(groups, "groups")
    shape = x.shape
    if not shape or shape[-1] % groups:  # a block width rounded down failed in reshape
        raise ValueError(f"layer_norm's groups={groups} must divide x's last axis "
                         f"({shape[-1] if shape else 0} wide; x has shape {tuple(shape)}).")
    blocks = x.reshape(*shape[:-1], groups, shape[-1] // groups)
    mean = jnp.mean(blocks, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(blocks - mean), axis=-1, keepdims=True)
    normed = (blocks - mean) * jax.lax.rsqrt(var + LN_EPSILON)
    return normed.reshape(shape) * gain + bias


def lstm_ln_step(params: Params, carry: Carry, xw_t: Array, noise: StepNoise = StepNoise()):
    """One layer-normalized LSTM step (Ba et al. 2016), from `xw_t = project("lstm_ln", ...)[t]`.

    `xw_t` is the already normalized input projection
    `LN_gates(x_t W_x; ln_x_g, ln_x_b) + b`; then:

      z  = xw_t + LN_gates((h_{t-1} * m_h) W_h; ln_h_g, ln_h_b)
      i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
      c~ = f c_{t-1} + i g;   h~ = o tanh(LN(c~; ln_c_g, ln_c_b))

    `LN_gates` normalizes each gate block of H units separately (its own mean
    and variance, gains and biases per unit). Every LSTM noise site acts as in
    `lstm_step` (the rnnDrop mask on c~ before its normalization; zoneout and
    stochastic depth on the un-normalized `c`).
    """
    check_step("lstm_ln_step", params, carry, xw_t, noise, 4, memory=True,
               reads=LSTM_LN.update_params)
    rec_t = recurrent_projection(carry["h"], params["w_h"], noise.recurrent)
    return lstm_ln_update(params, carry, xw_t, rec_t, noise)


def lstm_ln_update(params: Params, carry: Carry, xw_t: Array, rec_t: Array, noise: StepNoise):
    """The elementwise rest of `lstm_ln_step`, given `rec_t = (h_{t-1} * m_h) W_h`.

    Reads only `ln_h_g, ln_h_b, ln_c_g, ln_c_b` from `params`
    (the record's `update_params`).
    """
    z = xw_t + layer_norm(rec_t, params["ln_h_g"], params["ln_h_b"], NUM_GATES["lstm_ln"])
    squash = lambda c: jnp.tanh(layer_norm(c, params["ln_c_g"], params["ln_c_b"]))  # noqa: E731
    return lstm_gates(carry, z, noise, squash)


def lstm_ln_project(params: Params, x: Array, input_mask: Array | None = None,
                    per_gate: bool = False, population=None) -> Array:
    """The normalized input projection of every step, `LN_gates((x * mask) W_x; ln_x_g,
    ln_x_b) + b`: the statistics of each step and example are taken per gate block, so
    hoisting it out of the scan is exact."""
    del population
    # A Python 0.0 for the bias (added after the normalization): weakly typed, it adds
    # nothing and promotes nothing.
    xw = project_inputs({"w_x": params["w_x"], "b": 0.0},  # type: ignore[dict-item]
                        x, input_mask, per_gate)
    return layer_norm(xw, params["ln_x_g"], params["ln_x_b"], NUM_GATES["lstm_ln"]) + params["b"]


def lstm_ln_params(hidden_size: int, dtype) -> Params:
    """The normalizations' gains (ones) and shifts (zeros), Ba et al.'s initialization:
    `ln_x_g, ln_x_b, ln_h_g, ln_h_b: [4H]`, `ln_c_g, ln_c_b: [H]`."""
    width = NUM_GATES["lstm_ln"] * hidden_size
    out = {}
    for site, size in (("x", width), ("h", width), ("c", hidden_size)):
        out[f"ln_{site}_g"] = jnp.ones((size,), dtype)
        out[f"ln_{site}_b"] = jnp.zeros((size,), dtype)
    return out


LSTM_LN = Cell(name="lstm_ln", num_gates=4, update=lstm_ln_update, has_memory=True,
               update_params=("ln_h_g", "ln_h_b", "ln_c_g", "ln_c_b"), project=lstm_ln_project,
               extra_params=lstm_ln_params)
