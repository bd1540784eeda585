"""The Pallas recurrence (`implementation="pallas"`, interpreted on CPU) equals the scan,
lowers for a GPU through Triton, refuses what it does not cover, and "auto" leaves it off."""

import functools
import re

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest
from regularizer_cases import REGS

import rnnreg_jax as rj
from rnnreg_jax import bidirectional as bd
from rnnreg_jax import cells, noise, pallas, rnn
from rnnreg_jax.pallas import plan


def _loss(cell, reg, deterministic, implementation, penalty=False, **options):
    """`(params, x, carry) -> (scalar, (ys, final carry))` through `rnn.unroll` (a layer
    or a stack); `penalty`: plus each layer's norm-stabilizer penalty, so the hiddens of
    a lower layer get a cotangent of their own besides the next layer's."""
    key = jax.random.key(3)

    def loss(params, x, carry):
        ys, carry, hiddens = rnn.unroll(cell, params, x, carry, reg=reg, key=key,
                                        deterministic=deterministic, return_hiddens=True,
                                        implementation=implementation, **options)
        value = jnp.sum(jnp.sin(ys)) + sum(jnp.sum(v**3) for v in jax.tree.leaves(carry))
        if penalty:
            value = value + sum(rj.norm_stabilizer_penalty(h, 1.0) for h in hiddens)
        return value, (ys, carry)

    return loss


def _inputs(cell, reg, hidden=6, batch=3, steps=5, features=4, layers=None, **init):
    """Parameters (of one layer, or a list of `layers`), inputs `[B, T, F]` and a nonzero
    initial carry (its gradient is checked too)."""
    sizes = [features] + [hidden] * (layers or 1)
    stack = [cells.init_params(jax.random.key(1 + i), cell, sizes[i], hidden, init_scale=0.5,
                               **init) for i in range(len(sizes) - 1)]
    params = stack if layers else stack[0]
    x = jax.random.normal(jax.random.key(9), (batch, steps, features))
    carry = jax.tree.map(lambda a: a + 0.1, rnn.initial_carry(cell, params, batch, reg))
    return params, x, carry


def _assert_pallas_matches_scan(cell, reg, deterministic, penalty=False, init=None,
                                options=None, **sizes):
    """Outputs, final carry, and the gradients (params, inputs, initial carry) of a loss
    of both, through the Pallas kernels (interpret mode) equal scan autodiff's: float64
    to 1e-10 (`nm.assert_close_f64`: rounding is ~1e-16 there, so any difference in the
    computation shows), float32 to `nm.assert_trees_close_f32` (1e-5 relative plus 100
    ulps of each array's largest magnitude: the two sum the products in other orders,
    and the order depends on the CPU's vector width)."""
    params, x, carry = _inputs(cell, reg, **sizes, **(init or {}))

    def both(params, x, carry):
        return {impl: jax.jit(jax.value_and_grad(
            _loss(cell, reg, deterministic, impl, penalty, **(options or {})),
            argnums=(0, 1, 2), has_aux=True))(params, x, carry)
            for impl in ("pallas", "autodiff")}

    with nm.x64():
        out = both(nm.as_f64(params), nm.as_f64(x), nm.as_f64(carry))
        nm.assert_trees_close_f64(out["pallas"], out["autodiff"])
    out = both(params, x, carry)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(out["pallas"]))
    nm.assert_trees_close_f32(out["pallas"], out["autodiff"])


def _lstm(cell) -> bool:
    return cells.has_memory(cell)


# With regularizer_cases.REGS' compositions ("all": per-gate recurrent masks tied per
# sequence, every other site per step; "all_shared": a shared recurrent mask per step,
# cell mask and zoneout tied), these put every site of the kernels in each of its
# layouts: tied, per step, and evaluation's scalar.
PALLAS_REGS = {
    # tied per sequence: the shared recurrent mask, rnnDrop's cell mask, the update mask
    # and output zoneout, classic dropout's {0, 1} in training and keep probabilities
    # (scalars) in evaluation; zoneout and stochastic depth per step (scalars in eval)
    "tied_classic": lambda cell: (
        rj.variational(0.3, 0.2, 0.4, cell=0.2 if _lstm(cell) else 0.0, eval_scaling=True)
        + rj.recurrent_dropout(0.3, tie="sequence", output_zoneout=_lstm(cell),
                               eval_scaling=True)
        + rj.zoneout(0.2 if _lstm(cell) else 0.0, 0.1) + rj.stochastic_depth(0.2)),
    # every site per step, per-gate recurrent masks, one zoneout mask shared by cells
    # and hiddens, and weight drop
    "per_step": lambda cell: (
        rj.naive_dropout(input=0.2, recurrent=0.3, cell=0.3 if _lstm(cell) else 0.0,
                         per_gate=True)
        + (rj.zoneout(0.25, 0.25, shared=True) if _lstm(cell) else rj.zoneout(0.0, 0.25))
        + rj.recurrent_dropout(0.3, output_zoneout=_lstm(cell)) + rj.stochastic_depth(0.1)
        + rj.weight_drop(0.3)),
}
ALL_REGS = {**REGS, **PALLAS_REGS}

# Interpret mode compiles slowly (a case compiles the kernels and the scan, in float32
# and float64, ~5-10 s of CPU without the persistent cache), so the default suite runs a
# few cases that together put each cell in training and (but the tanh RNN) in evaluation:
# recurrent masks per gate tied ("lstm", "all"), shared tied ("rnn", "tied_classic") and
# per step (the stack test below), the elementwise sites tied, per step and as
# evaluation's scalar. Per-gate masks per step ("gru", "per_step", with a shared zoneout
# mask and weight drop) and the whole matrix (every cell x ALL_REGS x training /
# evaluation) run with -m slow.
DEFAULT_CASES = [("lstm", "all", False), ("lstm", "tied_classic", True),
                 ("gru", "tied_classic", True), ("rnn", "tied_classic", False)]
SLOW_CASES = [pytest.param(c, r, d, marks=pytest.mark.slow)
              for c in plan.KERNEL_CELLS for r in sorted(ALL_REGS) for d in (False, True)
              if (c, r, d) not in DEFAULT_CASES]


@pytest.mark.parametrize("cell,reg_name,deterministic", DEFAULT_CASES + SLOW_CASES)
def test_pallas_equals_scan(cell, reg_name, deterministic):
    _assert_pallas_matches_scan(cell, ALL_REGS[reg_name](cell), deterministic)


@pytest.mark.parametrize("cell", ["lstm", pytest.param("gru", marks=pytest.mark.slow),
                                  pytest.param("rnn", marks=pytest.mark.slow)])
def test_stack_equals_scan(cell):
    """Two layers (the second fed the first's outputs, its input gradient the first's
    output cotangent), shared recurrent masks per step, AWD's between-layer mask, a
    second (recurrent) bias, the LSTM's forget bias, and each layer's norm-stabilizer
    penalty in the loss."""
    reg = (rj.naive_dropout(input=0.2, recurrent=0.3, output=0.1)
           + rj.dropout("hidden", 0.25) + rj.zoneout(0.1 if _lstm(cell) else 0.0, 0.2))
    _assert_pallas_matches_scan(
        cell, reg, False, penalty=True, layers=2,
        init={"recurrent_bias": cell != "gru"},
        options={"forget_bias": 1.0} if _lstm(cell) else None)


@pytest.mark.slow
@pytest.mark.parametrize("cell", plan.KERNEL_CELLS)
def test_bidirectional_equals_scan(cell):
    """Both directions of a bidirectional layer (the backward one reads the window
    reversed, outside the kernels): outputs, final carries and gradients."""
    reg = rj.variational(0.3, 0.2, per_gate=True) + rj.zoneout(0.2 if _lstm(cell) else 0, 0.1)
    params = bd.init_params(jax.random.key(0), cell, 4, 6, init_scale=0.5)
    x = jax.random.normal(jax.random.key(1), (3, 5, 4))
    carry = jax.tree.map(lambda a: a + 0.1, bd.initial_carry(cell, params, 3, reg))

    def loss_of(implementation):
        def loss(params, x, carry):
            ys, carry = bd.unroll_bidirectional(cell, params, x, carry, reg=reg,
                                                key=jax.random.key(2), deterministic=False,
                                                implementation=implementation)
            return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(v**3)
                                              for v in jax.tree.leaves(carry)), (ys, carry)
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))

    with nm.x64():
        args = nm.as_f64((params, x, carry))
        nm.assert_trees_close_f64(loss_of("pallas")(*args), loss_of("autodiff")(*args))
    nm.assert_trees_close_f32(loss_of("pallas")(params, x, carry),
                              loss_of("autodiff")(params, x, carry))


@pytest.mark.parametrize("steps,batch", [(0, 3), (5, 0)])
def test_empty_windows_return_the_carry_as_the_scan_does(steps, batch):
    """No step (or no example) runs no kernel: empty outputs, the carry as it came, and
    its gradient passed through (a grid or block of size 0 failed in Pallas)."""
    cell, reg = "lstm", rj.variational(0.3, 0.2) + rj.zoneout(0.1, 0.1)
    params, x, carry = _inputs(cell, reg, steps=steps, batch=batch)
    out = {impl: jax.jit(jax.value_and_grad(_loss(cell, reg, False, impl), argnums=(0, 1, 2),
                                            has_aux=True))(params, x, carry)
           for impl in ("pallas", "autodiff")}
    nm.assert_trees_close_f32(out["pallas"], out["autodiff"])
    assert out["pallas"][0][1][0].shape == (batch, steps, 6)


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


@pytest.mark.parametrize("cell", ["lstm_ln", "lstm_bn", "keras_lstm", "keras_gru"])
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
    monkeypatch.setattr(plan, "AUTO_PALLAS_MIN_STEPS", 1)  # a measured rule: still not on CPU
    assert jax.default_backend() == "cpu" and "pallas_call" not in traced()
    monkeypatch.setattr(pallas, "auto_prefers_pallas", lambda cell, h, t, backend: t >= 4)
    assert "pallas_call" in traced()


REFUSED = ("seq_lengths", "dtype", "bfloat16 carry", "float32 carry of bfloat16 params")


def _refused_calls():
    """Params, inputs and `{name: (unroll's other arguments, the refusal)}` of the layer
    calls the kernels do not take (`REFUSED`)."""
    params = cells.init_params(jax.random.key(0), "lstm", 2, 3)
    x = jax.random.normal(jax.random.key(1), (2, 4, 2))
    carry = rnn.initial_carry("lstm", params, 2)
    bf16 = functools.partial(jax.tree.map, lambda a: a.astype(jnp.bfloat16))
    return params, x, {
        "seq_lengths": ({"seq_lengths": np.array([4, 2])},
                        re.escape("Variable lengths (seq_lengths) are not supported")),
        "dtype": ({"dtype": jnp.bfloat16},
                  re.escape("Mixed precision (dtype=...) is not supported")),
        # the scan keeps a carry of its own dtype (casting each new state); the kernels
        # failed inside Pallas (a loop carry of two dtypes, a store of another dtype)
        "bfloat16 carry": ({"carry": bf16(carry)},
                           "one dtype, but carry\\['[hc]'\\] is bfloat16 and "
                           "params\\['w_h'\\] float32"),
        "float32 carry of bfloat16 params": (
            {"params": bf16(params), "inputs": bf16(x), "carry": carry},
            "one dtype, but carry\\['[hc]'\\] is float32 and params\\['w_h'\\] bfloat16"),
    }


@pytest.mark.parametrize("name", REFUSED)
def test_calls_the_kernels_do_not_take_are_refused_in_one_sentence(name):
    params, x, calls = _refused_calls()
    options, message = calls[name]
    options = {"params": params, "inputs": x, **options}
    with pytest.raises(ValueError, match=message) as refusal:
        rnn.unroll("lstm", implementation="pallas", **options)
    text = str(refusal.value)
    assert "\n" not in text and text.endswith(".") and "'fused' or 'autodiff'" in text


def test_the_kernels_refuse_a_carry_of_another_dtype_in_one_sentence():
    """`pallas.recurrence` itself (a carry, or W_h, in another dtype than xw)."""
    params, _, carry = _inputs("gru", rj.NONE)
    ln = noise.LayerNoise()
    xw = jnp.zeros((2, 3, 18), jnp.bfloat16)
    with pytest.raises(ValueError, match="one dtype, but params\\['w_h'\\] is float32 and "
                                         "the input projection xw bfloat16"):
        pallas.recurrence("gru", params, xw, carry, ln.tied, ln.per_step)
    with pytest.raises(ValueError, match="carry\\['h'\\] is bfloat16 and the input "
                                         "projection xw float32"):
        pallas.recurrence("gru", params, xw.astype(jnp.float32),
                          {"h": carry["h"].astype(jnp.bfloat16)}, ln.tied, ln.per_step)


@pytest.mark.parametrize("name", REFUSED)
def test_auto_falls_back_to_the_scan_for_calls_the_kernels_refuse(monkeypatch, name):
    """Where the rule would take the kernels but they refuse the call, "auto" runs the
    fused scan (it raised the explicit "pallas"'s refusal)."""
    params, x, calls = _refused_calls()
    options = {"params": params, "inputs": x, **calls[name][0]}
    monkeypatch.setattr(pallas, "auto_prefers_pallas", lambda cell, h, t, backend: True)
    auto = functools.partial(rnn.unroll, "lstm", **options)
    assert "pallas_call" not in str(jax.make_jaxpr(lambda: auto()[0])())
    nm.assert_trees_close_f32(auto(), rnn.unroll("lstm", implementation="fused", **options))
