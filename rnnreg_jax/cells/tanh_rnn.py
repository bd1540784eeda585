"""The tanh RNN: `h' = tanh(x W_x + b + h W_h)`."""

from __future__ import annotations

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


def rnn_step(params: Params, carry: Carry, xw_t: Array, noise: StepNoise = StepNoise()):
    """One tanh-RNN step: `h~ = tanh(xw_t + (h_{t-1} * m_h) W_h) * m_u`, then zoneout/depth."""
    check_step("rnn_step", params, carry, xw_t, noise, 1)
    reject_lstm_only(noise, "rnn")
    rec_t = recurrent_projection(carry["h"], params["w_h"], noise.recurrent)
    return rnn_update(params, carry, xw_t, rec_t, noise)


def rnn_update(params: Params, carry: Carry, xw_t: Array, rec_t: Array, noise: StepNoise):
    """The elementwise rest of `rnn_step`, given `rec_t = (h_{t-1} * m_h) W_h`."""
    del params
    h_prev = carry["h"]
    h_new = jnp.tanh(xw_t + rec_t)
    h_new = maybe_scale(noise.update, h_new)
    h_t = mix(noise.depth, h_prev, mix(noise.zone_h, h_prev, h_new))
    return {"h": h_t}, h_t


RNN = Cell(name="rnn", num_gates=1, update=rnn_update, recurrent_bias=True)
