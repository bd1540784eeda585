"""The recurrent layers of Keras 0.x (Theano backend), as Gal & Ghahramani's sentiment
experiments ran them: "keras_lstm" and "keras_gru".

Both keep the library's gate order and storage (LSTM `i, f, g, o`, GRU `r, z, n`;
`w_x: [F, G*H]`, `w_h: [H, G*H]`, `b: [G*H]`), so every mask, per-gate layout and
regularizer works on them as on "lstm" and "gru". What differs from those:

* gates squashed by `hard_sigmoid(x) = clip(0.2 x + 0.5, 0, 1)` (Keras 0.x's
  `inner_activation`, Theano's `T.nnet.hard_sigmoid`) instead of the logistic sigmoid;
* "keras_gru": the reset gate acts *before* the recurrent product and the candidate is
  a logistic sigmoid (Keras 0.x's GRU default `activation='sigmoid'`), no recurrent bias:

      z = hard_sigmoid(xw_z + (h * m_z) U_z);  r = hard_sigmoid(xw_r + (h * m_r) U_r)
      n = sigmoid(xw_n + (r * h * m_n) U_n);   h' = z h + (1 - z) n

* Keras 0.x's initialization (`init_params`): each gate's `W_k: [F, H]` Glorot uniform
  (bound `sqrt(6 / (F + H))`), each `U_k: [H, H]` orthogonal times 1.1, biases zero
  but the LSTM's forget gate's, one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnnreg_jax.cells.base import (
    NUM_GATES,
    Carry,
    Cell,
    Params,
    StepNoise,
    check_step,
    maybe_scale,
    mix,
    reject_lstm_only,
)
from rnnreg_jax.cells.layout import (
    Array,
    is_per_gate,
    leading_projection,
    recurrent_projection,
)
from rnnreg_jax.cells.lstm import lstm_gates

ORTHOGONAL_SCALE = 1.1  # Keras 0.x's `orthogonal(shape, scale=1.1)`, its inner_init
PROJECTED_GATES = 2  # the GRU's r and z: the scans' product skips the candidate's block


def hard_sigmoid(x: Array) -> Array:
    """`clip(0.2 x + 0.5, 0, 1)`: Theano's `T.nnet.hard_sigmoid`, Keras 0.x's default
    gate nonlinearity (slope 0.2 inside (-2.5, 2.5), flat outside)."""
    return jnp.clip(0.2 * x + 0.5, 0.0, 1.0)


def keras_lstm_step(params: Params, carry: Carry, xw_t: Array,
                    noise: StepNoise = StepNoise()):
    """One Keras 0.x LSTM step: `lstm_step` with hard-sigmoid gates i, f, o."""
    check_step("keras_lstm_step", params, carry, xw_t, noise, 4, memory=True)
    rec_t = recurrent_projection(carry["h"], params["w_h"], noise.recurrent)
    return keras_lstm_update(params, carry, xw_t, rec_t, noise)


def keras_lstm_update(params: Params, carry: Carry, xw_t: Array, rec_t: Array,
                      noise: StepNoise):
    """The elementwise rest of `keras_lstm_step`, given `rec_t = (h_{t-1} * m_h) W_h`;
    every LSTM noise site acts as in `lstm_step`."""
    del params
    return lstm_gates(carry, xw_t + rec_t, noise, jnp.tanh, gate=hard_sigmoid)


def keras_gru_step(params: Params, carry: Carry, xw_t: Array, noise: StepNoise = StepNoise()):
    """One Keras 0.x GRU step (reset before the product, sigmoid candidate; module
    docstring), then Semeniuta update dropout on n, zoneout of h and stochastic depth
    as in `gru_step`."""
    check_step("keras_gru_step", params, carry, xw_t, noise, 3)
    reject_lstm_only(noise, "keras_gru")
    rec_t, u_n = leading_projection(carry["h"], params["w_h"], noise.recurrent,
                                    PROJECTED_GATES)
    return keras_gru_update(dict(params, w_h=u_n), carry, xw_t, rec_t, noise)


def keras_gru_update(params: Params, carry: Carry, xw_t: Array, rec_t: Array,
                     noise: StepNoise):
    """The elementwise rest of `keras_gru_step`, given the r and z blocks of the product,
    `rec_t = (h_{t-1} * m_h) W_h[:, :2H]`, and the candidate's `U_n: [H, H]` as
    `params["w_h"]` (`Cell.projected_gates`: r decides the candidate's product, so the
    step cannot take it with the others). Autodiff, and the fused backward pass through
    `update_params`, differentiate `U_n` here.
    """
    reject_lstm_only(noise, "keras_gru")
    h_prev = carry["h"]
    xr, xz, xn = jnp.split(xw_t, 3, axis=-1)
    ar, az = jnp.split(rec_t, 2, axis=-1)
    r, z = hard_sigmoid(xr + ar), hard_sigmoid(xz + az)
    an = recurrent_projection(r * h_prev, params["w_h"], _candidate_mask(noise.recurrent))
    n = maybe_scale(noise.update, jax.nn.sigmoid(xn + an))
    h_new = z * h_prev + (1.0 - z) * n
    h_t = mix(noise.depth, h_prev, mix(noise.zone_h, h_prev, h_new))
    return {"h": h_t}, h_t


def _candidate_mask(mask):
    """The n gate's recurrent mask: a `PerGate`'s third slice, else the mask shared by
    the gates (an array, a scalar or None)."""
    return mask.masks[PROJECTED_GATES] if is_per_gate(mask) else mask


def keras_init(num_gates: int, forget_bias: bool):
    """`(key, input_size, hidden_size, init_scale, dtype) -> params` drawing Keras 0.x's
    initialization (module docstring); `init_scale` is unused."""

    def init(key: Array, input_size: int, hidden_size: int, init_scale, dtype) -> Params:
        del init_scale
        width = num_gates * hidden_size
        k_x, k_h = jax.random.split(key)
        bound = (6.0 / (input_size + hidden_size)) ** 0.5  # per gate block [F, H]
        # one flat draw: every block has the same bound (and XLA:CPU draws flat faster)
        w_x = jax.random.uniform(k_x, (input_size * width,), dtype, -bound, bound)
        orthogonal = jax.nn.initializers.orthogonal(scale=ORTHOGONAL_SCALE)
        wide = jnp.promote_types(dtype, jnp.float32)  # no QR in bfloat16: drawn, then cast
        w_h = jnp.concatenate([orthogonal(k, (hidden_size, hidden_size), wide)
                               for k in jax.random.split(k_h, num_gates)], axis=1)
        w_h = w_h.astype(dtype)
        b = jnp.zeros((width,), dtype)
        if forget_bias:  # the forget block (gate order i, f, g, o)
            b = b.at[hidden_size:2 * hidden_size].set(1.0)
        return {"w_x": w_x.reshape(input_size, width), "w_h": w_h, "b": b}

    return init


KERAS_LSTM = Cell(name="keras_lstm", num_gates=NUM_GATES["keras_lstm"],
                  update=keras_lstm_update, has_memory=True,
                  init_params=keras_init(NUM_GATES["keras_lstm"], forget_bias=True))
KERAS_GRU = Cell(name="keras_gru", num_gates=NUM_GATES["keras_gru"], update=keras_gru_update,
                 update_params=("w_h",), projected_gates=PROJECTED_GATES,
                 init_params=keras_init(NUM_GATES["keras_gru"], forget_bias=False))
