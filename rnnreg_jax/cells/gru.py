"""The GRU in PyTorch's reset-after form (gate order r, z, n)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnreg_jax.cells.base import (
    Carry,
    Cell,
    Params,
    StepNoise,
    check_step,
    maybe_scale,
    mix,
    reject_lstm_only,
)
from rnnreg_jax.cells.layout import Array, recurrent_projection


def gru_step(params: Params, carry: Carry, xw_t: Array, noise: StepNoise = StepNoise()):
    """One GRU step (PyTorch's reset-after form) from `xw_t = x_t W_x + b_x: [B, 3H]`.

      a = (h_{t-1} * m_h) W_h + b_h                  (variational / naive)
      r = sigmoid(xw_r + a_r);  z = sigmoid(xw_z + a_z)
      n = tanh(xw_n + r a_n) * m_u                  (Semeniuta update dropout)
      h~ = (1 - z) n + z h_{t-1}
      h_t = d_h h_{t-1} + (1 - d_h) h~, then stochastic depth likewise.
    """
    check_step("gru_step", params, carry, xw_t, noise, 3, reads=("b_h",))
    reject_lstm_only(noise, "gru")
    rec_t = recurrent_projection(carry["h"], params["w_h"], noise.recurrent)
    return gru_update(params, carry, xw_t, rec_t, noise)


def gru_update(params: Params, carry: Carry, xw_t: Array, rec_t: Array, noise: StepNoise):
    """The elementwise rest of `gru_step`, given `rec_t = (h_{t-1} * m_h) W_h`."""
    h_prev = carry["h"]
    a = rec_t + params["b_h"]
    xr, xz, xn = jnp.split(xw_t, 3, axis=-1)
    ar, az, an = jnp.split(a, 3, axis=-1)
    r, z = jax.nn.sigmoid(xr + ar), jax.nn.sigmoid(xz + az)
    n = maybe_scale(noise.update, jnp.tanh(xn + r * an))
    h_new = (1.0 - z) * n + z * h_prev
    h_t = mix(noise.depth, h_prev, mix(noise.zone_h, h_prev, h_new))
    return {"h": h_t}, h_t


GRU = Cell(name="gru", num_gates=3, update=gru_update, update_params=("b_h",),
           inner_recurrent_bias=True)
