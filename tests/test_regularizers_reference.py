"""Semantics of every regularizer: specs, formulas, tying, jit/grad, errors.

The central check is `test_unroll_matches_reference`: a hand-written,
gate-by-gate implementation of the regularizer table in docs/REGULARIZERS.md, fed
the masks that `noise` draws from the same key, must reproduce `rnn.unroll` in
training mode, and its expectation (dropout = identity, mixing coefficient = its
rate) must reproduce deterministic mode: in float64 to rounding, in float32 to
float32's rounding (`tests/numerics.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest
from regularizer_inputs import KEY, PARAMS, X, run

from rnnreg_jax import cells, noise
from rnnreg_jax.regularizers import (
    Dropout,
    naive_dropout,
    recurrent_dropout,
    stochastic_depth,
    variational,
    weight_noise,
    zaremba,
    zoneout,
)


def _at(value, t, per_step):
    return value[t] if per_step and value is not None else value


def _mix(d, prev, new):
    """The catalog's `d * prev + (1 - d) * new`, written as in the papers."""
    return new if d is None else d * prev + (1 - d) * new


def _array(mask):
    """A per-gate recurrent mask's array (`cells.PerGate`), other masks as they are."""
    return mask.masks if isinstance(mask, cells.PerGate) else mask


def _gate(mask, g, per_gate):
    """The mask one gate's copy of an input sees (None = unmasked)."""
    if mask is None:
        return 1.0
    return mask[g] if per_gate else mask


def reference_unroll(cell, params, x, reg, key, deterministic):
    """docs/REGULARIZERS.md's table written gate by gate in a Python loop over time, in
    the dtype of `x` (float64 under `numerics.x64()`)."""
    batch, steps, _ = x.shape
    x = jnp.swapaxes(x, 0, 1)
    num_gates = cells.NUM_GATES[cell]
    for layer, p in enumerate(params):
        hidden = p["w_h"].shape[0]
        ln = noise.layer_noise(reg, key, layer, cell, batch, steps, x.shape[-1], hidden,
                               deterministic, x.dtype)
        w_h = noise.weight_noise(reg, key, layer, p["w_h"], deterministic)
        blocks = lambda w, n=hidden: [w[..., g * n:(g + 1) * n] for g in range(num_gates)]
        wx, wh, bx = blocks(p["w_x"]), blocks(w_h), blocks(p["b"])
        bh = blocks(p["b_h"]) if cell == "gru" else None
        h = c = o_prev = jnp.zeros((batch, hidden), x.dtype)
        masks = reg.find(Dropout) or Dropout()
        in_per_step = masks.input is not None and masks.input.tie == "step"
        in_per_gate = masks.input is not None and masks.input.per_gate
        rec_per_gate = masks.recurrent is not None and masks.recurrent.per_gate
        ys = []
        for t in range(steps):
            n = {name: _array(getattr(ln.tied, name)) if getattr(ln.tied, name) is not None
                 else _at(_array(getattr(ln.per_step, name)), t, True)
                 for name in cells.StepNoise._fields}
            mx = ln.input
            if mx is not None and in_per_step:
                mx = mx[t]  # every per-step mask is time first
            xs = [(x[t] * _gate(mx, g, in_per_gate)) @ wx[g] + bx[g] for g in range(num_gates)]
            hs = [(h * _gate(n["recurrent"], g, rec_per_gate)) @ wh[g] for g in range(num_gates)]
            m_u = 1.0 if n["update"] is None else n["update"]
            if cell == "lstm":
                i, f, o = (jax.nn.sigmoid(xs[g] + hs[g]) for g in (0, 1, 3))
                gg = jnp.tanh(xs[2] + hs[2]) * m_u
                c_new = f * c + i * gg
                if reg.needs_output_gate:
                    o = _mix(n["output_gate"], o_prev, o)
                    o_prev = o
                if n["cell"] is not None:
                    c_new = c_new * n["cell"]
                h_new = o * jnp.tanh(c_new)
                c_t, h_t = _mix(n["zone_c"], c, c_new), _mix(n["zone_h"], h, h_new)
                c, h = _mix(n["depth"], c, c_t), _mix(n["depth"], h, h_t)
            else:
                if cell == "gru":
                    r = jax.nn.sigmoid(xs[0] + hs[0] + bh[0])
                    z = jax.nn.sigmoid(xs[1] + hs[1] + bh[1])
                    cand = jnp.tanh(xs[2] + r * (hs[2] + bh[2])) * m_u
                    h_new = (1 - z) * cand + z * h
                else:
                    h_new = jnp.tanh(xs[0] + hs[0]) * m_u
                h = _mix(n["depth"], h, _mix(n["zone_h"], h, h_new))
            ys.append(h)
        x = jnp.stack(ys)
    mask = noise.output_mask(reg, key, batch, steps, x.shape[-1], deterministic, x.dtype)
    if mask is not None:
        x = x * mask
    return jnp.swapaxes(x, 0, 1)


# Every regularizer, alone for the LSTM and bundled for GRU/RNN, in training mode.
TRAIN_CASES = [
    ("lstm", "zaremba + zoneout", zaremba(0.4) + zoneout(0.5, 0.3)),
    ("lstm", "variational + tied zoneout + tied semeniuta + output zoneout",
     variational(0.4, 0.3, 0.3, cell=0.2) + zoneout(0.5, 0.3, tie="sequence")
     + recurrent_dropout(0.4, tie="sequence", output_zoneout=True)),
    ("lstm", "variational per_gate + depth + weight noise",
     variational(0.4, 0.3, per_gate=True) + stochastic_depth(0.4) + weight_noise(0.3)),
    ("lstm", "naive per_gate + semeniuta + output zoneout + shared zoneout",
     naive_dropout(input=0.4, recurrent=0.3, cell=0.2, per_gate=True)
     + recurrent_dropout(0.4, output_zoneout=True) + zoneout(0.4, 0.4, shared=True)),
    ("gru", "per step bundle", naive_dropout(input=0.4, recurrent=0.3, per_gate=True)
     + zoneout(hiddens=0.3) + recurrent_dropout(0.3) + stochastic_depth(0.2)),
    ("gru", "tied bundle", variational(0.4, 0.3, 0.3) + recurrent_dropout(0.3, tie="sequence")
     + zoneout(hiddens=0.3, tie="sequence") + weight_noise(0.1)),
    ("rnn", "per step bundle", zaremba(0.3) + naive_dropout(recurrent=0.3)
     + zoneout(hiddens=0.3) + recurrent_dropout(0.3) + stochastic_depth(0.2)),
    ("rnn", "tied bundle", variational(0.4, 0.3, 0.3, per_gate=True) + weight_noise(0.1)
     + recurrent_dropout(0.3, tie="sequence") + zoneout(hiddens=0.3, tie="sequence")),
    ("lstm", "semeniuta with eval scaling + output zoneout",
     recurrent_dropout(0.4, output_zoneout=True, eval_scaling=True) + zoneout(0.3, 0.2)),
]
EVAL_CASES = [
    ("lstm", "everything", variational(0.3, 0.3, 0.2, cell=0.1, per_gate=True)
     + zoneout(0.3, 0.2) + recurrent_dropout(0.3, output_zoneout=True)
     + stochastic_depth(0.2) + weight_noise(0.1)),
    ("gru", "everything", zaremba(0.3) + naive_dropout(recurrent=0.3) + zoneout(hiddens=0.3)
     + recurrent_dropout(0.3) + stochastic_depth(0.2) + weight_noise(0.1)),
    ("rnn", "everything", variational(0.3, 0.3, 0.3, per_gate=True) + zoneout(hiddens=0.3)
     + recurrent_dropout(0.3) + stochastic_depth(0.2)),
    ("gru", "semeniuta with eval scaling", recurrent_dropout(0.3, eval_scaling=True)),
]


# These training cases run with -m slow, the others in the default suite.
SLOW_TRAIN_CASES = {("lstm", "zaremba + zoneout"),
                    ("lstm", "naive per_gate + semeniuta + output zoneout + shared zoneout"),
                    ("gru", "per step bundle"), ("rnn", "tied bundle")}


@pytest.mark.parametrize("cell,name,reg,deterministic", [
    pytest.param(*c, False, id=f"{c[0]}-{c[1]}-train",
                 marks=pytest.mark.slow if c[:2] in SLOW_TRAIN_CASES else ())
    for c in TRAIN_CASES] + [pytest.param(*c, True, id=f"{c[0]}-{c[1]}-eval")
                             for c in EVAL_CASES])
def test_unroll_matches_reference(cell, name, reg, deterministic):
    params = PARAMS[cell]
    key = None if deterministic else KEY
    ys, _ = run(cell, params, X, reg=reg, key=key, deterministic=deterministic)
    expected = reference_unroll(cell, params, X, reg, key, deterministic)
    nm.assert_close_f32(ys, expected)
    with nm.x64():  # the same function: to rounding in float64
        params64, x64 = nm.as_f64(params), nm.as_f64(X)
        ys64, _ = run(cell, params64, x64, reg=reg, key=key, deterministic=deterministic)
        nm.assert_close_f64(ys64, reference_unroll(cell, params64, x64, reg, key,
                                                   deterministic))
    plain, _ = run(cell, params, X)
    assert not np.allclose(ys, plain, atol=1e-4), "the regularizer changed nothing"
    if not deterministic:
        # Same key, same output; another key, another output.
        np.testing.assert_array_equal(ys, run(cell, params, X, reg=reg, key=KEY,
                                              deterministic=False)[0])
        other, _ = run(cell, params, X, reg=reg, key=jax.random.key(5), deterministic=False)
        assert not np.allclose(ys, other, atol=1e-4)


@pytest.mark.parametrize("cell", ["lstm"])
def test_masks_are_per_example(cell):
    """Identical examples get different noise in training and equal outputs in evaluation."""
    reg = zaremba(0.3) + zoneout(hiddens=0.3) + stochastic_depth(0.3)
    x = jnp.tile(X[:1], (4, 1, 1))
    ys, _ = run(cell, PARAMS[cell][:1], x, reg=reg, key=KEY, deterministic=False)
    assert len({np.asarray(y).tobytes() for y in ys}) == 4
    ys, _ = run(cell, PARAMS[cell][:1], x, reg=reg, deterministic=True)
    np.testing.assert_array_equal(ys, jnp.tile(ys[:1], (4, 1, 1)))
