"""Where the masks act: tying seen in input gradients, each composed part's sites drawn
as it draws them alone, and input masks applied in one projection per layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest
from regularizer_inputs import KEY, PARAMS, B, F, H, T, X, make_params

import rnnreg_jax
from rnnreg_jax import cells, noise
from rnnreg_jax.regularizers import (
    Dropout,
    MaskSpec,
    embedding_dropout,
    naive_dropout,
    variational,
    zaremba,
    zoneout,
)

# =========================================================================== tying by gradients


def _input_pattern(reg, key):
    """Zero pattern of d sum_h y_t / d x_t over input features, `[T, B, F]`, public API only."""
    steps, batch, features = 6, 2, 16
    params = make_params("lstm", (features, 8), seed=2)[0]
    x = jnp.asarray(np.random.default_rng(4).normal(size=(batch, steps, features)), jnp.float32)

    def step_sum(x):
        ys, _ = rnnreg_jax.unroll("lstm", params, x, reg=reg, key=key, deterministic=False)
        return ys.sum(-1)  # [B, T]

    jac = jax.jit(jax.jacrev(step_sum))(x)  # [B, T, B, T, F]
    diag = jnp.stack([jnp.stack([jac[b, t, b, t] for b in range(batch)]) for t in range(steps)])
    return np.asarray(diag) == 0


def test_tying_is_visible_in_input_gradients():
    tied = _input_pattern(rnnreg_jax.variational(input=0.5), KEY)
    per_step = _input_pattern(rnnreg_jax.zaremba(0.5), KEY)
    for pattern in (tied, per_step):
        frac = pattern.mean()
        assert 0.2 < frac < 0.8, frac  # about half the features dropped
    # Variational: the same features are dropped at every step of a sequence...
    assert all(np.array_equal(tied[t], tied[0]) for t in range(tied.shape[0]))
    # ... but differ between examples.
    assert not np.array_equal(tied[0, 0], tied[0, 1])
    # Zaremba: a fresh mask every step.
    for b in range(per_step.shape[1]):
        assert len({per_step[t, b].tobytes() for t in range(per_step.shape[0])}) > 1


# =========================================================================== composition


def test_zoneout_plus_zaremba_draws_every_site():
    reg = zoneout(0.5, 0.05) + zaremba(0.3)
    ln = noise.layer_noise(reg, KEY, 0, "lstm", B, T, F, H, False)
    assert ln.input.shape == (T, B, F)
    assert ln.per_step.zone_c.shape == ln.per_step.zone_h.shape == (T, B, H)
    assert ln.tied == cells.StepNoise()
    assert noise.output_mask(reg, KEY, B, T, H, False).shape == (T, B, H)
    # Each part's masks are those it draws alone.
    np.testing.assert_array_equal(
        ln.input, noise.layer_noise(zaremba(0.3), KEY, 0, "lstm", B, T, F, H, False).input)


def test_variational_plus_embedding_draws_every_site():
    reg = variational(0.35, 0.2, 0.35) + embedding_dropout(0.2)
    ln = noise.layer_noise(reg, KEY, 1, "lstm", B, T, H, H, False)
    assert ln.input.shape == (B, H) and ln.tied.recurrent.shape == (B, H)
    assert ln.per_step == cells.StepNoise()
    assert noise.output_mask(reg, KEY, B, T, H, False).shape == (B, H)
    ids = jnp.zeros((B, T), jnp.int32)
    assert noise.embedding_mask(reg, KEY, ids, 10, False).shape == (B, T, 1)


# =========================================================================== fast path


@pytest.mark.parametrize("reg", [zaremba(0.3), variational(0.3, 0.3, per_gate=True),
                                 naive_dropout(input=0.3, per_gate=True)],
                         ids=["zaremba", "variational per_gate", "naive per_gate"])
def test_input_masks_project_once_per_layer_outside_the_scan(monkeypatch, reg):
    calls = []
    original = cells.project_inputs

    def counting(params, x, input_mask=None, per_gate=False):
        calls.append((x.shape, None if input_mask is None else input_mask.shape, per_gate))
        return original(params, x, input_mask, per_gate)

    monkeypatch.setattr(cells.params, "project_inputs", counting)  # where `project` finds it
    rnnreg_jax.unroll("lstm", PARAMS["lstm"], X, reg=reg, key=KEY, deterministic=False)
    # One call per layer, on the whole window [T, B, F], with the mask.
    assert [c[0] for c in calls] == [(T, B, F), (T, B, H)]
    assert all(c[1] is not None and c[2] == reg.find(Dropout).input.per_gate for c in calls)


@pytest.mark.parametrize("tie", ["sequence", "step"])
def test_per_gate_projection_equals_stacked_masked_matmuls(tie):
    p = PARAMS["lstm"][0]
    x = jnp.swapaxes(X, 0, 1)
    mask = noise.dropout_mask(KEY, MaskSpec(0.5, tie, True), (B, F), T, num_gates=4)
    got = cells.project_inputs(p, x, mask, per_gate=True)
    blocks = []
    for g in range(4):
        m = mask[g] if tie == "sequence" else mask[:, g]  # per step: [T, G, B, F]
        blocks.append((x * m) @ p["w_x"][:, g * H:(g + 1) * H] + p["b"][g * H:(g + 1) * H])
    # other products than project_inputs' (float32 rounding of either: tests/numerics.py)
    nm.assert_close_f32(got, jnp.concatenate(blocks, -1))
