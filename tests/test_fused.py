"""The fused recurrence (hoisted dW_h backward pass) equals plain scan autodiff."""

import jax
import jax.numpy as jnp
import numerics as nm
import pytest
from regularizer_cases import REGS, stack_loss

import rnnreg_jax as rj
from rnnreg_jax import cells, rnn

# The default suite checks one composition that touches every site for the LSTM (training
# and evaluation) and the GRU; the tanh RNN's and the whole matrix run with -m slow.
DEFAULT_CASES = [("lstm", "all", False), ("lstm", "all", True), ("gru", "all", False),
                 ("lstm", "variational_shared", False)]
SLOW_CASES = [pytest.param(c, r, d, marks=pytest.mark.slow)
              for c in ("lstm", "gru", "rnn") for r in sorted(REGS) for d in (False, True)]


@pytest.mark.parametrize("cell,reg_name,deterministic", DEFAULT_CASES + SLOW_CASES)
def test_fused_gradients_equal_autodiff(cell, reg_name, deterministic):
    reg = REGS[reg_name](cell)
    params = [cells.init_params(jax.random.key(i), cell, 5 if i == 0 else 6, 6) for i in range(2)]
    x = jax.random.normal(jax.random.key(9), (3, 7, 5))
    carry = jax.tree.map(lambda a: a + 0.1, rnn.initial_carry(cell, params, 3, reg))

    # float64 to rounding, float32 each leaf to F32_ULPS of its largest element.
    nm.assert_fused_matches_autodiff(lambda impl: stack_loss(cell, reg, deterministic, impl),
                                     params, x, carry)


@pytest.mark.slow
@pytest.mark.parametrize("reg_name", ["variational_per_gate", "naive_per_gate"])
def test_accelerator_weight_layout_gives_the_same_gradients(monkeypatch, reg_name):
    """Per-gate masks with W_h gate-major (the layout `cells.per_gate_weights` picks on
    GPU/TPU) give CPU's G-block results, on both backward passes."""
    reg = REGS[reg_name]("lstm")
    params = [cells.init_params(jax.random.key(i), "lstm", 5 if i == 0 else 6, 6)
              for i in range(2)]
    x = jax.random.normal(jax.random.key(9), (3, 7, 5))
    carry = jax.tree.map(lambda a: a + 0.1, rnn.initial_carry("lstm", params, 3, reg))

    def run(impl):
        f = jax.value_and_grad(stack_loss("lstm", reg, False, impl), argnums=(0, 1, 2))
        return f(params, x, carry)

    blocks = {impl: run(impl) for impl in ("fused", "autodiff")}
    real = cells.per_gate_weights
    calls = {"scans": 0, "inputs": 0}  # without calls, the CPU layout is compared with itself

    def gate_major(where):
        def laid_out(w, g, backend=None):
            calls[where] += 1
            return real(w, g, backend="gpu")
        return laid_out

    monkeypatch.setattr(cells, "per_gate_weights", gate_major("scans"))  # the scans' W_h
    # the input products'
    monkeypatch.setattr(cells.layout, "per_gate_weights", gate_major("inputs"))
    for impl in ("fused", "autodiff"):
        calls.update(scans=0, inputs=0)
        stacked = run(impl)
        # W_h for the scans and W_x for the per-gate input masks were laid out by it
        assert calls["scans"] and calls["inputs"], (impl, calls)
        nm.assert_trees_close_f32(stacked, blocks[impl])


def test_unknown_implementation_is_rejected():
    params = cells.init_params(jax.random.key(0), "lstm", 2, 3)
    with pytest.raises(ValueError, match="implementation"):
        rnn.unroll("lstm", params, jnp.ones((1, 2, 2)), implementation="magic")


def test_auto_is_fused_for_small_batches_and_autodiff_from_the_threshold():
    assert rnn.resolve_implementation("auto", 20) == "fused"
    assert rnn.resolve_implementation("auto", rnn.AUTO_FUSED_BELOW_BATCH) == "autodiff"
    assert rnn.resolve_implementation("fused", 1000) == "fused"
    # on accelerators auto is always the fused pass, a forced choice still wins
    assert rnn.resolve_implementation("auto", 1000, backend="gpu") == "fused"
    assert rnn.resolve_implementation("auto", 1000, backend="tpu") == "fused"
    assert rnn.resolve_implementation("autodiff", 20, backend="gpu") == "autodiff"
    assert rnn.resolve_implementation("auto", 1000, backend="cpu") == "autodiff"
    params = cells.init_params(jax.random.key(0), "lstm", 2, 3)

    def traced(batch):
        x = jnp.ones((batch, 4, 2))
        return str(jax.make_jaxpr(lambda p: rnn.unroll("lstm", p, x)[0])(params))

    assert "custom_vjp" in traced(2)
    assert "custom_vjp" not in traced(rnn.AUTO_FUSED_BELOW_BATCH)


# The default suite runs one cell per width; the other cases are slow.
@pytest.mark.parametrize("width,cell", [
    (w, c) if (w, c) in {(1, "lstm"), (rnn.IN_LOOP_PROJECTION_MAX_WIDTH, "gru")}
    else pytest.param(w, c, marks=pytest.mark.slow)
    for w in (1, rnn.IN_LOOP_PROJECTION_MAX_WIDTH) for c in ("lstm", "gru", "rnn")])
def test_narrow_inputs_projected_in_the_loop_equal_the_hoisted_projection(
        monkeypatch, cell, width):
    """Autodiff projects a narrow first-layer input inside the scan body (pMNIST's 1-wide
    pixel), the fused pass hoists it: same values and gradients, forget bias and all; an
    input mask or a wider input keeps the hoisted projection."""
    seen = []
    real = cells.project
    monkeypatch.setattr(cells, "project",
                        lambda *a, **k: seen.append(a[2].shape) or real(*a, **k))
    reg = rj.zoneout(0.2 if cell == "lstm" else 0.0, 0.2) + rj.recurrent_dropout(0.3)
    params = [cells.init_params(jax.random.key(i), cell, width if i == 0 else 6, 6)
              for i in range(2)]
    x = jax.random.normal(jax.random.key(9), (3, 7, width))
    carry = jax.tree.map(lambda a: a + 0.1, rnn.initial_carry(cell, params, 3, reg))
    key = jax.random.key(3)
    forget_bias = 1.0 if cell == "lstm" else 0.0

    def loss(impl, reg):
        def f(params, x, carry):
            ys, carry = rnn.unroll(cell, params, x, carry, reg=reg, key=key,
                                   deterministic=False, implementation=impl,
                                   forget_bias=forget_bias)
            return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(v**3) for c in carry for v in c.values())
        return jax.value_and_grad(f, argnums=(0, 1, 2))

    (v_loop, g_loop), shapes_loop = loss("autodiff", reg)(params, x, carry), list(seen)
    seen.clear()
    v_hoist, g_hoist = loss("fused", reg)(params, x, carry)
    assert shapes_loop[0] == (3, width) and shapes_loop[1] == (7, 3, 6)  # layer 0, 1
    assert seen[0] == (7, 3, width)
    nm.assert_close_f32(v_hoist, v_loop)
    nm.assert_trees_close_f32(g_hoist, g_loop)
    seen.clear()
    loss("autodiff", reg + rj.variational(input=0.3))(params, x, carry)
    assert seen[0] == (7, 3, width)  # masked inputs stay hoisted


@pytest.mark.parametrize("cell,reg_name", [  # per-gate masks, and one shared mask
    ("lstm", "all"), ("gru", "variational_shared"), ("rnn", "all")])
def test_an_empty_window_passes_the_carry_and_its_gradient_through(cell, reg_name):
    """T = 0: no step runs, so the fused pass gives autodiff's gradients (dW_h zero, the
    carry's own cotangent); its weight gradient failed to reshape zero rows before."""
    reg = REGS[reg_name](cell)
    params = cells.init_params(jax.random.key(0), cell, 4, 5)
    carry = jax.tree.map(lambda a: a + 0.1, rnn.initial_carry(cell, params, 3, reg))
    x = jnp.zeros((3, 0, 4))

    def grads(impl):
        def loss(params, carry):
            ys, last = rnn.unroll(cell, params, x, carry, reg=reg, key=jax.random.key(1),
                                  implementation=impl)
            return jnp.sum(ys) + sum(jnp.sum(v**2) for v in jax.tree.leaves(last))

        return jax.grad(loss, argnums=(0, 1))(params, carry)

    fused, autodiff = grads("fused"), grads("autodiff")
    nm.assert_trees_close_f32(fused, autodiff)
    assert not jnp.any(fused[0]["w_h"])
