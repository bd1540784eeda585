"""The LSTM (PyTorch's gate order i, f, g, o) and its gates, shared by the LSTMs built on
it (layer- and batch-normalized, users' cells)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnreg_jax.cells.base import Carry, Cell, Params, StepNoise, check_step, maybe_scale, mix
from rnnreg_jax.cells.layout import Array, recurrent_projection


def lstm_step(params: Params, carry: Carry, xw_t: Array, noise: StepNoise = StepNoise()):
    """One LSTM step from the projected input `xw_t = x_t W_x + b: [B, 4H]`.

    Formulas (LSTM notation of docs/REGULARIZERS.md; every noise term optional):
      z = xw_t + (h_{t-1} * m_h) W_h                 (variational / naive)
      i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
      c~ = f c_{t-1} + i (g * m_u)                  (Semeniuta update dropout)
      o  = d_o o_{t-1} + (1 - d_o) o                 (output zoneout)
      c~ = c~ * m_c                                  (rnnDrop cell mask)
      h~ = o tanh(c~)                                (from the un-zoned c~)
      c_t = d_c c_{t-1} + (1 - d_c) c~;  h_t = d_h h_{t-1} + (1 - d_h) h~  (zoneout)
      (c_t, h_t) = d_s (c_{t-1}, h_{t-1}) + (1 - d_s)(c_t, h_t)  (stochastic depth)

    Returns:
      `(carry, h_t)`.
    """
    check_step("lstm_step", params, carry, xw_t, noise, 4, memory=True)
    rec_t = recurrent_projection(carry["h"], params["w_h"], noise.recurrent)
    return lstm_update(params, carry, xw_t, rec_t, noise)


def lstm_update(params: Params, carry: Carry, xw_t: Array, rec_t: Array, noise: StepNoise):
    """The elementwise rest of `lstm_step`, given `rec_t = (h_{t-1} * m_h) W_h`."""
    del params
    return lstm_gates(carry, xw_t + rec_t, noise, jnp.tanh)


def lstm_gates(carry: Carry, z: Array, noise: StepNoise, squash=jnp.tanh, *,
               gate=jax.nn.sigmoid):
    """The LSTM's gates and every LSTM noise site from the pre-activation `z: [B, 4H]`
    (gate order i, f, g, o); `i, f, o = gate(z_i, z_f, z_o)`, `h~ = o * squash(c~)`.
    Public for cells built on the LSTM (the batch-normalized one, Keras 0.x's with
    hard-sigmoid gates, a peephole LSTM of your own)."""
    h_prev, c_prev = carry["h"], carry["c"]
    zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
    i, f, o = gate(zi), gate(zf), gate(zo)
    g = maybe_scale(noise.update, jnp.tanh(zg))
    c_new = f * c_prev + i * g
    new_carry = {}
    if "o" in carry:
        o = mix(noise.output_gate, carry["o"], o)
        new_carry["o"] = o
    elif noise.output_gate is not None:
        raise ValueError("Output zoneout needs the previous output gate in the carry; "
                         "build it with init_carry(..., output_gate=True).")
    c_new = maybe_scale(noise.cell, c_new)
    h_new = o * squash(c_new)
    c_t = mix(noise.zone_c, c_prev, c_new)
    h_t = mix(noise.zone_h, h_prev, h_new)
    c_t = mix(noise.depth, c_prev, c_t)
    h_t = mix(noise.depth, h_prev, h_t)
    new_carry.update(h=h_t, c=c_t)
    return new_carry, h_t


LSTM = Cell(name="lstm", num_gates=4, update=lstm_update, has_memory=True, recurrent_bias=True)
