"""The cells' elementwise updates with one array per gate, as the Pallas kernels run them.

The kernels hold each gate's pre-activation as its own `[batch block, column block]`
tile (Triton lowers neither a split of an arbitrary gate count nor a concatenation),
so the updates of `rnnreg_jax.cells` are restated here gate by gate, each noise site
in the same place (`cells.lstm_step` and friends have the formulas; tests/test_pallas.py
checks the two agree for every site). The backward kernel differentiates these same
functions with `jax.vjp`, so their derivatives need no code of their own.

`update(pre, carry, noise) -> new carry` (the step's output is the new `h`):
  pre: the gates' pre-activations, `z_g = xw_g + rec_g` for the additive cells (LSTM,
    tanh RNN: G tiles); the GRU's reset-after candidate needs the two apart, so its
    `pre` is the G input tiles `xw_g` then the G recurrent ones `a_g = rec_g + b_h,g`.
  carry: `h` (and `c`, and `o` when output zoneout keeps the previous output gate).
  noise: the elementwise sites present (`cell`, `update`, `output_gate`, `zone_c`,
    `zone_h`, `depth`), each a tile; absent sites are off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnreg_jax.cells import maybe_scale, mix

ELEMENTWISE_SITES = ("cell", "update", "output_gate", "zone_c", "zone_h", "depth")


class GateCell(NamedTuple):
    """A cell as the kernels run it.

    Attributes:
      additive: the update reads the input and recurrent projections only through their
        sum (its `pre` is G tiles; else 2G, inputs first).
      state: the carry's fields besides the optional output gate `o`.
      update: `(pre, carry, noise) -> new carry`.
    """

    additive: bool
    state: tuple[str, ...]
    update: Callable


def lstm_update(pre, carry, noise):
    """`cells.lstm_gates` gate by gate (gate order i, f, g, o)."""
    zi, zf, zg, zo = pre
    h_prev, c_prev = carry["h"], carry["c"]
    i, f, o = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jax.nn.sigmoid(zo)
    g = maybe_scale(noise.get("update"), jnp.tanh(zg))
    c_new = f * c_prev + i * g
    new = {}
    if "o" in carry:
        o = mix(noise.get("output_gate"), carry["o"], o)
        new["o"] = o
    c_new = maybe_scale(noise.get("cell"), c_new)
    h_new = o * jnp.tanh(c_new)
    c_t = mix(noise.get("zone_c"), c_prev, c_new)
    h_t = mix(noise.get("zone_h"), h_prev, h_new)
    new["c"] = mix(noise.get("depth"), c_prev, c_t)
    new["h"] = mix(noise.get("depth"), h_prev, h_t)
    return new


def gru_update(pre, carry, noise):
    """`cells.gru_update` gate by gate (gate order r, z, n; `pre` = xw gates, a gates)."""
    xr, xz, xn, ar, az, an = pre
    h_prev = carry["h"]
    r, z = jax.nn.sigmoid(xr + ar), jax.nn.sigmoid(xz + az)
    n = maybe_scale(noise.get("update"), jnp.tanh(xn + r * an))
    h_new = (1.0 - z) * n + z * h_prev
    return {"h": mix(noise.get("depth"), h_prev, mix(noise.get("zone_h"), h_prev, h_new))}


def rnn_update(pre, carry, noise):
    """`cells.rnn_update`: `h~ = tanh(z) * m_u`, then zoneout and stochastic depth."""
    (z,) = pre
    h_prev = carry["h"]
    h_new = maybe_scale(noise.get("update"), jnp.tanh(z))
    return {"h": mix(noise.get("depth"), h_prev, mix(noise.get("zone_h"), h_prev, h_new))}


GATE_CELLS = {
    "lstm": GateCell(additive=True, state=("h", "c"), update=lstm_update),
    "gru": GateCell(additive=False, state=("h",), update=gru_update),
    "rnn": GateCell(additive=True, state=("h",), update=rnn_update),
}
