"""The Pallas recurrence (`implementation="pallas"`, interpreted on CPU) equals the scan,
lowers for a GPU through Triton, refuses what it does not cover, and "auto" leaves it off."""

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest
from regularizer_cases import REGS

import rnnreg_jax as rj
from rnnreg_jax import cells, noise, pallas, rnn
from rnnreg_jax.pallas import plan


def _loss(cell, reg, deterministic, implementation):
    key = jax.random.key(3)

    def loss(params, x, carry):
        ys, carry = rnn.unroll(cell, params, x, carry, reg=reg, key=key,
                               deterministic=deterministic, implementation=implementation)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(v**3) for v in carry.values())

    return loss


def _inputs(cell, reg, hidden=6, batch=3, steps=5, features=4):
    params = cells.init_params(jax.random.key(1), cell, features, hidden, init_scale=0.5)
    x = jax.random.normal(jax.random.key(9), (batch, steps, features))
    carry = jax.tree.map(lambda a: a + 0.1, rnn.initial_carry(cell, params, batch, reg))
    return params, x, carry


def _assert_pallas_matches_scan(cell, reg, deterministic, **sizes):
    """Value and gradients (params, inputs, initial carry) of the Pallas kernels equal
    scan autodiff's: float64 to 1e-10, float32 to `nm.assert_trees_close_f32`."""
    params, x, carry = _inputs(cell, reg, **sizes)

    def both(params, x, carry):
        return {impl: jax.jit(jax.value_and_grad(_loss(cell, reg, deterministic, impl),
                                                 argnums=(0, 1, 2)))(params, x, carry)
                for impl in ("pallas", "autodiff")}

    with nm.x64():
        out = both(nm.as_f64(params), nm.as_f64(x), nm.as_f64(carry))
        nm.assert_close_f64(out["pallas"][0], out["autodiff"][0])
        nm.assert_trees_close_f64(out["pallas"][1], out["autodiff"][1])
    out = both(params, x, carry)
    nm.assert_close_f32(out["pallas"][0], out["autodiff"][0])
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(out["pallas"][1]))
    nm.assert_trees_close_f32(out["pallas"][1], out["autodiff"][1])


# Interpret mode compiles slowly: the default suite checks compositions that touch every
# site (training, and evaluation's scalars), the whole matrix runs with -m slow.
DEFAULT_CASES = [("lstm", "all", False), ("gru", "all", False), ("lstm", "all_shared", True)]
SLOW_CASES = [pytest.param(c, r, d, marks=pytest.mark.slow)
              for c in plan.KERNEL_CELLS for r in sorted(REGS) for d in (False, True)
              if (c, r, d) not in DEFAULT_CASES]


@pytest.mark.parametrize("cell,reg_name,deterministic", DEFAULT_CASES + SLOW_CASES)
def test_pallas_equals_scan(cell, reg_name, deterministic):
    _assert_pallas_matches_scan(cell, REGS[reg_name](cell), deterministic)


@pytest.mark.parametrize("cell,resident", [("lstm", False),
                                           pytest.param("lstm", True, marks=pytest.mark.slow),
                                           pytest.param("gru", False, marks=pytest.mark.slow)])
def test_several_column_tiles_and_streamed_weights_equal_scan(monkeypatch, cell, resident):
    """A hidden size of several column tiles (16-wide tiles here, 128 on a GPU), with
    W_h resident or re-read every step, and a padded batch of two blocks."""
    monkeypatch.setattr(plan, "COLUMN_BLOCK", 16)
    monkeypatch.setattr(plan, "BATCH_BLOCK", 2)
    if not resident:
        monkeypatch.setattr(plan, "ON_CHIP_WEIGHT_BYTES", 0)
    chosen = plan.make_plan(cell, 20, 3, jnp.float32)
    assert (chosen.chunks, chosen.padded_batch, chosen.resident) == (2, 4, resident)
    reg = rj.variational(0.3, 0.2, per_gate=True) + rj.zoneout(0.2 if cell == "lstm" else 0,
                                                               0.2)
    _assert_pallas_matches_scan(cell, reg, False, hidden=20, steps=3)


def test_bfloat16_weights_on_chip_stay_within_bfloat16_rounding():
    params, x, carry = _inputs("lstm", rj.NONE)
    ln = noise.LayerNoise()
    xw = cells.project("lstm", params, jnp.swapaxes(x, 0, 1))
    exact = pallas.recurrence("lstm", params, xw, carry, ln.tied, ln.per_step)
    rounded = pallas.recurrence("lstm", params, xw, carry, ln.tied, ln.per_step,
                                weight_dtype=jnp.bfloat16)
    scale = float(jnp.abs(exact[0]).max())
    error = float(jnp.abs(rounded[0] - exact[0]).max())
    assert 0 < error < 2e-2 * scale  # bf16 has 8 significant bits: ~4e-3 a rounding


@pytest.mark.parametrize("cell,hidden", [("lstm", 100),
                                         pytest.param("gru", 100, marks=pytest.mark.slow),
                                         pytest.param("lstm", 200, marks=pytest.mark.slow)])
def test_kernels_lower_for_gpu_through_triton(cell, hidden):
    """The kernels (forward, and the backward of a gradient) pass Pallas' Triton lowering
    for a CUDA device without one: every primitive lowers, every tile is a power of two.
    (Triton's own compilation, and its on-chip limits, need a GPU:
    scripts/gpu_pallas_check.sh.)"""
    reg = (rj.variational(0.3, 0.2, per_gate=True) + rj.zoneout(0.2 if cell == "lstm" else 0,
                                                                 0.1)
           + rj.recurrent_dropout(0.2, output_zoneout=cell == "lstm") + rj.stochastic_depth(0.1))
    batch, steps = 20, 3
    params = cells.init_params(jax.random.key(1), cell, 4, hidden)
    carry = rnn.initial_carry(cell, params, batch, reg)
    ln = noise.layer_noise(reg, jax.random.key(3), 0, cell, batch, steps, 4, hidden, False)
    xw = cells.project(cell, params, jnp.ones((steps, batch, 4)), ln.input, ln.input_per_gate)

    def loss(p, xw, c):
        ys, c = pallas.recurrence(cell, p, xw, c, ln.tied, ln.per_step, interpret=False)
        return jnp.sum(ys) + sum(jnp.sum(v) for v in c.values())

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(params, xw, carry).lower(
        lowering_platforms=("cuda",))
    assert lowered.as_text().count("__gpu$xla.gpu.triton") == 2


@pytest.mark.parametrize("cell", ["lstm_ln", "lstm_bn"])
def test_cells_the_kernels_lack_are_refused(cell):
    params = cells.init_params(jax.random.key(0), cell, 2, 3)
    with pytest.raises(ValueError, match="pallas.*covers"):
        rnn.unroll(cell, params, jnp.ones((2, 3, 2)), implementation="pallas")


def test_registered_cells_and_large_hidden_sizes_are_refused():
    mine = cells.Cell(name="my_rnn", num_gates=1, update=cells.rnn_update)
    params = cells.init_params(jax.random.key(0), "rnn", 2, 3)
    with pytest.raises(ValueError, match="covers"):
        rnn.unroll(mine, params, jnp.ones((2, 3, 2)), implementation="pallas")
    big = plan.MAX_PADDED_HIDDEN + 1
    with pytest.raises(ValueError, match="hidden sizes up to"):
        plan.make_plan("lstm", big, 4, jnp.float32)


def test_auto_rule_is_off_until_measured_and_its_logic():
    assert plan.AUTO_PALLAS_MIN_STEPS is None  # unmeasured: never
    assert not plan.auto_prefers_pallas("lstm", 100, 784, "gpu")
    rule = lambda *a: plan.auto_prefers_pallas(*a, min_steps=100)  # noqa: E731
    assert rule("lstm", 100, 784, "gpu") and rule("gru", 512, 100, "gpu")
    assert not rule("lstm", 100, 784, "cpu") and not rule("lstm", 100, 784, "tpu")
    assert not rule("lstm", 100, 99, "gpu")  # too few steps
    assert not rule("lstm_ln", 100, 784, "gpu") and not rule("lstm", 513, 784, "gpu")
    assert plan.AUTO_PALLAS_MAX_HIDDEN is None
    bounded = lambda *a: plan.auto_prefers_pallas(*a, min_steps=100, max_hidden=256)  # noqa: E731
    assert bounded("lstm", 256, 784, "gpu") and not bounded("lstm", 257, 784, "gpu")
    assert rnn.resolve_implementation("pallas", 1000) == "pallas"


def test_auto_takes_the_kernels_only_where_the_rule_says(monkeypatch):
    params = cells.init_params(jax.random.key(0), "lstm", 2, 3)
    x = jnp.ones((2, 4, 2))

    def traced():
        return str(jax.make_jaxpr(lambda p: rnn.unroll("lstm", p, x)[0])(params))

    assert "pallas_call" not in traced()
    monkeypatch.setattr(pallas, "auto_prefers_pallas", lambda cell, h, t, backend: t >= 4)
    assert "pallas_call" in traced()
