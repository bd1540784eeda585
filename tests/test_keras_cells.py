"""Keras 0.x's LSTM and GRU (`cells.keras`: "keras_lstm", "keras_gru").

A NumPy reference written from the formulas, per gate matrices sliced from the stored
layout, matches the unroll in float64 with per-gate input and recurrent masks; the fused
backward pass matches scan autodiff for every noise family the cells take; the
initialization is Keras 0.x's; the modules, the bidirectional stack and NNX take the
cells by name; the Pallas kernels and the PyTorch port refuse them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import optax
import pytest
from flax import nnx
from regularizer_cases import REGS, stack_loss

import rnnreg_jax as rj
from rnnreg_jax import bidirectional as bd
from rnnreg_jax import cells, noise, rnn, torch_port
from rnnreg_jax import nn as linen_nn
from rnnreg_jax import nnx as rnx
from rnnreg_jax.models import SequenceModel

KERAS_CELLS = ("keras_lstm", "keras_gru")
T, B, F, H = 5, 3, 4, 5


def rng(seed: int):
    return np.random.default_rng(seed)


def np_hard_sigmoid(x):
    return np.clip(0.2 * x + 0.5, 0.0, 1.0)


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def blocks(a, num_gates):
    """Per-gate matrices (or bias vectors) sliced from the stored `[.., G*H]` layout."""
    width = a.shape[-1] // num_gates
    return [a[..., k * width:(k + 1) * width] for k in range(num_gates)]


def np_keras_lstm(p, xs, carry, mx, mh):
    """Keras 0.x's LSTM, gate order i, f, g (c), o; `mx: [4, B, F]`, `mh: [T, 4, B, H]`."""
    (W, U, b) = (blocks(p["w_x"], 4), blocks(p["w_h"], 4), blocks(p["b"], 4))
    h, c = carry["h"], carry["c"]
    ys = []
    for t in range(len(xs)):
        pre = [(xs[t] * mx[k]) @ W[k] + b[k] + (h * mh[t, k]) @ U[k] for k in range(4)]
        i, f, o = np_hard_sigmoid(pre[0]), np_hard_sigmoid(pre[1]), np_hard_sigmoid(pre[3])
        c = f * c + i * np.tanh(pre[2])
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys), {"h": h, "c": c}


def np_keras_gru(p, xs, carry, mx, mh):
    """Keras 0.x's GRU, gate order r, z, n: reset before the product, sigmoid candidate."""
    (W, U, b) = (blocks(p["w_x"], 3), blocks(p["w_h"], 3), blocks(p["b"], 3))
    h = carry["h"]
    ys = []
    for t in range(len(xs)):
        x_k = [(xs[t] * mx[k]) @ W[k] + b[k] for k in range(3)]
        r = np_hard_sigmoid(x_k[0] + (h * mh[t, 0]) @ U[0])
        z = np_hard_sigmoid(x_k[1] + (h * mh[t, 1]) @ U[1])
        n = np_sigmoid(x_k[2] + (r * h * mh[t, 2]) @ U[2])
        h = z * h + (1.0 - z) * n
        ys.append(h)
    return np.stack(ys), {"h": h}


REFERENCES = {"keras_lstm": np_keras_lstm, "keras_gru": np_keras_gru}


def random_params(cell, seed=0):
    """Parameters with every entry random (biases too), large enough that some gate
    pre-activations saturate the hard sigmoid and some do not."""
    shapes = {k: v.shape for k, v in cells.init_params(jax.random.key(0), cell, F, H).items()}
    r = rng(seed)
    return {k: r.normal(0.0, 0.8, s) for k, s in shapes.items()}


def random_carry(cell, seed=1):
    r = rng(seed)
    return {k: r.normal(0.0, 0.5, (B, H)) for k in cells.init_carry(cell, B, H)}


def keep(seed, shape, rate=0.3):
    return (rng(seed).random(shape) >= rate) / (1.0 - rate)


@pytest.mark.parametrize("tie", ["sequence", "step"])
@pytest.mark.parametrize("implementation", ["fused", "autodiff"])
@pytest.mark.parametrize("cell", KERAS_CELLS)
def test_unroll_with_per_gate_masks_equals_the_numpy_reference(cell, implementation, tie):
    G = cells.num_gates(cell)
    p, carry = random_params(cell), random_carry(cell)
    xs = rng(2).normal(size=(T, B, F))
    mx = keep(3, (G, B, F))
    mh = keep(4, (T, G, B, H)) if tie == "step" else np.broadcast_to(keep(4, (G, B, H)),
                                                                      (T, G, B, H))
    expected_ys, expected_carry = REFERENCES[cell](p, xs, carry, mx, mh)
    with nm.x64():  # the masks too, in float64
        recurrent = cells.PerGate(jnp.asarray(mh if tie == "step" else mh[0]))
        step_noise = cells.StepNoise(recurrent=recurrent)
        layer_noise = noise.LayerNoise(
            input=jnp.asarray(mx), input_per_gate=True,
            tied=step_noise if tie == "sequence" else cells.StepNoise(),
            per_step=step_noise if tie == "step" else cells.StepNoise())
        ys, final = jax.jit(lambda p, x, c: rnn.scan_layer(
            cell, p, x, c, layer_noise, implementation=implementation))(
                nm.as_f64(p), nm.as_f64(xs), nm.as_f64(carry))
        np.testing.assert_allclose(np.asarray(ys), expected_ys, rtol=0, atol=1e-12)
        for k in expected_carry:
            np.testing.assert_allclose(np.asarray(final[k]), expected_carry[k], rtol=0,
                                       atol=1e-12)


def test_gru_candidate_mask_shared_or_scalar_is_the_gates_mask():
    """A recurrent mask shared by the gates (an array, or a scalar) masks the candidate's
    product too: the step equals one given that mask per gate."""
    p, carry = random_params("keras_gru"), random_carry("keras_gru")
    xw = jnp.asarray(rng(5).normal(size=(B, 3 * H)))
    step = jax.jit(cells.get_step("keras_gru"))
    with nm.x64():
        p, carry, xw = nm.as_f64((p, carry, xw))
        shared = jnp.asarray(keep(6, (B, H)))
        for mask in (shared, jnp.asarray(0.7)):
            per_gate = cells.PerGate(jnp.broadcast_to(mask, (3, B, H)))
            got = step(p, carry, xw, cells.StepNoise(recurrent=mask))
            want = step(p, carry, xw, cells.StepNoise(recurrent=per_gate))
            nm.assert_trees_close_f64(got, want)


# The default suite: every site at once, and a recurrent mask per step shared by the
# gates; the mask's other forms and each family alone run with -m slow.
DEFAULT = ("all", "naive_shared")
FUSED_CASES = [pytest.param(cell, name, False,
                             marks=() if name in DEFAULT else pytest.mark.slow)
               for cell in KERAS_CELLS for name in sorted(REGS)]
FUSED_CASES += [(cell, "all", True) for cell in KERAS_CELLS]  # evaluation: scalar rates


@pytest.mark.parametrize("cell,reg_name,deterministic", FUSED_CASES)
def test_fused_gradients_equal_autodiff(cell, reg_name, deterministic):
    """Every parameter's, the inputs' and the carry's gradients, float64 to 1e-10 (and
    float32 to the suite's tolerance)."""
    reg = REGS[reg_name](cell)
    params = [cells.init_params(jax.random.key(0), cell, F, 4)]
    x = jax.random.normal(jax.random.key(9), (B, T, F))
    carry = jax.tree.map(lambda a: a + 0.1, rnn.initial_carry(cell, params, B, reg))
    out = nm.assert_fused_matches_autodiff(
        lambda impl: stack_loss(cell, reg, deterministic, impl), params, x, carry)
    grads = out["fused"][1][0]
    assert all(float(jnp.abs(layer["w_h"]).max()) > 0 for layer in grads)


def test_gate_major_weight_layout_gives_the_same_gru(monkeypatch):
    """With per-gate masks the accelerators' gate-major `[3, H, H]` W_h gives the CPU's
    three-block results (the candidate's U_n taken from either layout)."""
    cell, reg = "keras_gru", REGS["variational_per_gate"]("keras_gru")
    params = [cells.init_params(jax.random.key(0), cell, F, 4)]
    x = jax.random.normal(jax.random.key(9), (B, T, F))

    def run(impl):
        loss = stack_loss(cell, reg, False, impl)
        return jax.value_and_grad(loss)(params, x, rnn.initial_carry(cell, params, B))

    expected = {impl: run(impl) for impl in ("fused", "autodiff")}
    real = cells.per_gate_weights
    gate_major = lambda w, g, backend=None: real(w, g, backend="gpu")  # noqa: E731
    monkeypatch.setattr(cells, "per_gate_weights", gate_major)
    monkeypatch.setattr(cells.layout, "per_gate_weights", gate_major)
    for impl in ("fused", "autodiff"):
        nm.assert_trees_close_f32(run(impl), expected[impl])


def test_gru_refuses_lstm_only_sites():
    p, carry = random_params("keras_gru"), random_carry("keras_gru")
    with pytest.raises(ValueError, match="'cell' needs an LSTM cell state"):
        cells.get_step("keras_gru")(p, carry, jnp.zeros((B, 3 * H)),
                                    cells.StepNoise(cell=jnp.ones((B, H))))
    with pytest.raises(ValueError, match="LSTM cell state"):
        rnn.unroll("keras_gru", p, jnp.ones((B, T, F)), reg=rj.zoneout(cells=0.2))


@pytest.mark.parametrize("cell", KERAS_CELLS)
def test_init_is_keras_0x(cell):
    """Glorot uniform W_k (bound held and nearly reached), orthogonal U_k times 1.1,
    zero biases but the LSTM's forget block (ones); the built-in cells' shapes."""
    G = cells.num_gates(cell)
    base = "lstm" if cell == "keras_lstm" else "gru"
    with nm.x64():
        p = cells.init_params(jax.random.key(0), cell, 7, 8, dtype=jnp.float64)
        reference = cells.init_params(jax.random.key(0), base, 7, 8)
        assert {k: v.shape for k, v in p.items()} == {
            k: v.shape for k, v in reference.items() if k != "b_h"}
        bound = np.sqrt(6.0 / (7 + 8))
        w_x = np.asarray(p["w_x"])
        assert np.abs(w_x).max() <= bound and np.abs(w_x).max() > 0.95 * bound
        for u in blocks(np.asarray(p["w_h"]), G):
            np.testing.assert_allclose(u.T @ u, 1.21 * np.eye(8), rtol=0, atol=1e-5)
        expected_b = np.zeros(G * 8)
        if cell == "keras_lstm":
            expected_b[8:16] = 1.0
        np.testing.assert_array_equal(np.asarray(p["b"]), expected_b)
    for dtype in (jnp.float32, jnp.bfloat16):
        drawn = cells.init_params(jax.random.key(0), cell, 3, 2, dtype=dtype)
        assert {a.dtype for a in drawn.values()} == {jnp.dtype(dtype)}
    with pytest.raises(ValueError, match="its init_params draws its parameters"):
        cells.init_params(jax.random.key(0), cell, 3, 2, orthogonal=True)
    with pytest.raises(ValueError, match="its init_params draws its parameters"):
        cells.init_params(jax.random.key(0), cell, 3, 2, recurrent_bias=True)


def test_hard_sigmoid_values_and_gradient():
    x = jnp.array([-4.0, -2.6, -1.0, 0.0, 1.5, 2.4, 2.6, 9.0])
    np.testing.assert_allclose(cells.hard_sigmoid(x), np_hard_sigmoid(np.asarray(x)),
                               rtol=1e-6)
    grad = jax.vmap(jax.grad(cells.hard_sigmoid))(x)
    slope = np.float32(0.2)  # d(0.2 x)/dx in float32, exactly
    np.testing.assert_array_equal(grad, np.array([0, 0, slope, slope, slope, slope, 0, 0]))


def test_sequence_model_trains_on_ids():
    """A regression SequenceModel with the Keras GRU: one SGD step on ids (variational
    per-gate dropout) has finite gradients and changes the loss."""
    vocab = 11
    model = SequenceModel(num_outputs=1, hidden_sizes=(4,), vocab_size=vocab, embed_size=3,
                          cell="keras_gru", reg=rj.variational(0.2, 0.2, 0.2, per_gate=True))
    ids = rng(0).integers(0, vocab, (B, T)).astype(np.int32)
    targets = jnp.asarray(rng(1).normal(size=(B, 1)), jnp.float32)
    params = model.init(jax.random.key(0), ids)["params"]
    tx = optax.sgd(0.5)

    def loss(params, key):
        out = model.apply({"params": params}, ids, deterministic=False, rngs={"dropout": key})
        return jnp.mean((out - targets) ** 2)

    @jax.jit
    def train_step(params, opt_state, key):
        value, grads = jax.value_and_grad(loss)(params, key)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, value, grads

    key = jax.random.key(5)
    new_params, _, before, grads = train_step(params, tx.init(params), key)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["rnn"]["layer_0"]["w_h"]).max()) > 0
    after = jax.jit(loss)(new_params, key)
    assert np.isfinite(float(after)) and float(after) != float(before)


@pytest.mark.parametrize("cell", KERAS_CELLS)
def test_modules_bidirectional_and_nnx_take_the_cells_by_name(cell):
    x = jnp.asarray(rng(0).normal(size=(B, T, F)), jnp.float32)
    linen = linen_nn.StackedRNN((H,), cell=cell)
    variables = linen.init(jax.random.key(0), x)
    layer = variables["params"]["layer_0"]
    expected_b = np.asarray(cells.init_params(jax.random.key(0), cell, F, H)["b"])
    np.testing.assert_array_equal(layer["b"], expected_b)  # the record's own draw
    ys, _ = linen.apply(variables, x)
    np.testing.assert_array_equal(ys, rnn.unroll(cell, layer, x)[0])
    model = rnx.StackedRNN.from_linen(linen, variables)
    np.testing.assert_array_equal(model(x)[0], ys)
    assert isinstance(model, nnx.Module)
    params = bd.init_params(jax.random.key(1), cell, F, (H,))
    both, _ = bd.unroll_bidirectional(cell, params, x)
    forward, _ = rnn.unroll(cell, params[0]["forward"], x)
    nm.assert_close_f32(both[..., :H], forward)


@pytest.mark.parametrize("cell", KERAS_CELLS)
def test_pallas_and_the_pytorch_port_refuse_them(cell):
    params = cells.init_params(jax.random.key(0), cell, 2, 3)
    with pytest.raises(ValueError, match="pallas.*covers the lstm, gru, rnn cells, not"):
        rnn.unroll(cell, params, jnp.ones((2, 3, 2)), implementation="pallas")
    with pytest.raises(ValueError, match="has no PyTorch counterpart"):
        torch_port.to_torch(cell, [params])
    with pytest.raises(ValueError, match="has no PyTorch counterpart"):
        torch_port.from_torch(cell, {"weight_ih_l0": np.zeros((12, 2))})
    with pytest.raises(ValueError, match="built-in cell type"):
        cells.register(cells.Cell(name=cell, num_gates=3, update=cells.gru_update))


def _dot_output_widths(jaxpr) -> list[int]:
    """The last dimension of every dot_general's output in a jaxpr and its sub-jaxprs
    (scan bodies, custom_vjp functions)."""
    widths = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            widths.append(eqn.outvars[0].aval.shape[-1])
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's jaxpr
                if hasattr(sub, "eqns"):
                    widths += _dot_output_widths(sub)
    return widths


@pytest.mark.parametrize("per_gate", [False, True])
@pytest.mark.parametrize("implementation", ["fused", "autodiff"])
def test_gru_scans_multiply_by_each_recurrent_block_once(implementation, per_gate):
    """The forward recurrence takes the r and z blocks in one product ([B, 2H], or one
    [B, H] per gate) and the candidate's U_n once ([B, H]): 3H columns of recurrent
    product a step, as "gru"'s one [B, 3H], not a discarded n block on top."""
    cell = "keras_gru"
    params = cells.init_params(jax.random.key(0), cell, F, H)
    reg = rj.variational(0.2, 0.2, 0.2, per_gate=per_gate)
    x = jnp.ones((T, B, F))
    layer_noise = noise.layer_noise(reg, jax.random.key(1), 0, cell, B, T, F, H, False,
                                    jnp.float32)
    carry = cells.init_carry(cell, B, H)
    jaxpr = jax.make_jaxpr(lambda p: rnn.scan_layer(
        cell, p, x, carry, layer_noise, implementation=implementation))(params).jaxpr
    inputs = [H] * 3 if per_gate else [3 * H]  # x W_x: one product, or one per gate
    recurrent = [H] * 3 if per_gate else [2 * H, H]
    assert sorted(_dot_output_widths(jaxpr)) == sorted(inputs + recurrent)


def test_a_users_cell_with_projected_gates_runs_like_the_keras_gru():
    """A user's record with the Keras GRU's update and `projected_gates=2` (the generic
    step, not the module's) gives the built-in cell's outputs, and its fused gradients
    equal autodiff's; `projected_gates` outside [1, G) is one sentence."""
    mine = cells.Cell(name="my_keras_gru", num_gates=3, update=cells.keras_gru_update,
                      update_params=("w_h",), projected_gates=2)
    reg = REGS["variational_per_gate"]("keras_gru")
    params = [cells.init_params(jax.random.key(0), "keras_gru", F, 4)]
    x = jax.random.normal(jax.random.key(9), (B, T, F))
    carry = jax.tree.map(lambda a: a + 0.1, rnn.initial_carry("keras_gru", params, B, reg))
    for impl in ("fused", "autodiff"):
        got = jax.jit(stack_loss(mine, reg, False, impl))(params, x, carry)
        want = jax.jit(stack_loss("keras_gru", reg, False, impl))(params, x, carry)
        assert float(got) == float(want)
    nm.assert_fused_matches_autodiff(lambda impl: stack_loss(mine, reg, False, impl),
                                     params, x, carry)
    for bad in (0, 3, -1):
        with pytest.raises(ValueError, match=r"projected_gates must be in \[1, 2\]"):
            cells.Cell(name="bad", num_gates=3, update=cells.keras_gru_update,
                       projected_gates=bad)
