"""Tests of `rnnreg_jax.cells`: init, carries, projections and steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest

from rnnreg_jax import cells

ALL_CELLS = ("lstm", "gru", "rnn")
T, B, F, H = 5, 3, 7, 6


def rand(seed: int, *shape: int) -> np.ndarray:
    """Standard normal numpy data (references are computed in numpy: fast)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def keep_mask(seed: int, *shape: int, rate: float = 0.4) -> np.ndarray:
    keep = np.random.default_rng(seed).random(shape) >= rate
    return keep.astype(np.float32) / (1 - rate)


# The functions under test run jitted on jax arrays (one compile per shape
# instead of many eager ops); the references are plain numpy.
project_inputs = jax.jit(cells.project_inputs, static_argnames="per_gate")
recurrent_projection = jax.jit(cells.recurrent_projection)
init_params = jax.jit(cells.init_params, static_argnums=(1, 2, 3, 4, 5))
STEPS = {cell: jax.jit(cells.get_step(cell)) for cell in ALL_CELLS}


def np_params(key: int, cell: str, input_size: int = F, hidden: int = H) -> dict:
    return {k: np.asarray(v) for k, v in
            init_params(jax.random.key(key), cell, input_size, hidden).items()}


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_init_params_shapes_and_default_scale(cell: str) -> None:
    """Shapes `[F, G*H]`, `[H, G*H]`, `[G*H]`; uniform in +-1/sqrt(H) by default."""
    hidden = 16
    params = init_params(jax.random.key(0), cell, 24, hidden)
    width = cells.NUM_GATES[cell] * hidden
    expected = {"w_x": (24, width), "w_h": (hidden, width), "b": (width,)}
    if cell == "gru":
        expected["b_h"] = (width,)
    assert {k: v.shape for k, v in params.items()} == expected
    scale = 1.0 / np.sqrt(hidden)
    everything = np.concatenate([np.ravel(v) for v in params.values()])
    assert everything.dtype == np.float32
    assert np.abs(everything).max() <= scale
    assert np.abs(everything).max() > 0.95 * scale  # spans the interval
    assert abs(everything.mean()) < 0.05 * scale
    # Uniform variance scale^2 / 3 within a loose band.
    np.testing.assert_allclose(everything.var(), scale**2 / 3, rtol=0.15)
    # Each entry draws from its own key.
    assert not np.allclose(params["w_x"][:hidden], params["w_h"])


def test_init_params_explicit_scale_dtype_and_key() -> None:
    """`init_scale` bounds every entry; same key same params, new key new params."""
    p = init_params(jax.random.key(3), "lstm", 5, 8, 0.05, jnp.bfloat16)
    assert all(v.dtype == jnp.bfloat16 for v in p.values())
    bound = float(jnp.asarray(0.05, jnp.bfloat16))  # the bound rounded to bf16
    assert max(float(jnp.abs(v).max()) for v in p.values()) <= bound
    a = init_params(jax.random.key(3), "gru", 5, 8)
    b = init_params(jax.random.key(3), "gru", 5, 8)
    c = init_params(jax.random.key(4), "gru", 5, 8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.allclose(a["w_x"], c["w_x"])


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_init_carry(cell: str) -> None:
    """Zero `[B, H]` states: `h` (+ `c` for the LSTM, + `o` with `output_gate`)."""
    carry = cells.init_carry(cell, B, H)
    assert set(carry) == ({"h", "c"} if cell == "lstm" else {"h"})
    for v in carry.values():
        assert v.shape == (B, H) and v.dtype == jnp.float32
        assert not np.any(v)
    with_o = cells.init_carry(cell, B, H, output_gate=True)
    assert ("o" in with_o) == (cell == "lstm")


def test_unknown_cell_is_a_clear_error() -> None:
    """`get_step`, `init_params` and `init_carry` name the bad cell and the choices."""
    with pytest.raises(ValueError, match=r"Unknown cell type 'lstn'.*'lstm', 'gru', 'rnn'"):
        cells.get_step("lstn")
    with pytest.raises(ValueError, match="Unknown cell type"):
        cells.init_params(jax.random.key(0), "tanh", 2, 2)
    with pytest.raises(ValueError, match="Unknown cell type"):
        cells.init_carry("GRU", 1, 2)
    assert cells.get_step("lstm") is cells.lstm_step
    assert cells.get_step("gru") is cells.gru_step
    assert cells.get_step("rnn") is cells.rnn_step


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_project_inputs_equals_per_step_matmul(cell: str) -> None:
    """No mask, a tied `[B, F]` mask and a per-step `[T, B, F]` mask, step by step."""
    p = np_params(1, cell)
    x = rand(2, T, B, F)
    tied, per_step = keep_mask(3, B, F), keep_mask(4, T, B, F)
    cases = [(None, lambda t: x[t]), (tied, lambda t: x[t] * tied),
             (per_step, lambda t: x[t] * per_step[t])]
    for mask, masked_x in cases:
        out = project_inputs(p, x, mask)
        assert out.shape == (T, B, cells.NUM_GATES[cell] * H)
        for t in range(T):
            nm.assert_close_f32(out[t], masked_x(t) @ p["w_x"] + p["b"])
    assert not np.allclose(project_inputs(p, x, tied), project_inputs(p, x))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("per_step", [False, True])
@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_project_inputs_per_gate_mask_by_hand(monkeypatch, cell: str, per_step: bool,
                                              backend: str) -> None:
    """A `[(T,) G, B, F]` mask equals masking x separately for each gate block, in
    either backend's weight layout (G dots on CPU, one gate-batched dot elsewhere)."""
    real = cells.per_gate_weights
    layouts = []  # each call's result: without a call the CPU layout would be checked twice

    def laid_out(w, g, **_):
        layouts.append(real(w, g, backend=backend))
        return layouts[-1]

    # where project_inputs finds it
    monkeypatch.setattr(cells.layout, "per_gate_weights", laid_out)
    gates = cells.NUM_GATES[cell]
    p = np_params(5, cell)
    x = rand(6, T, B, F)
    mask = keep_mask(7, T, gates, B, F) if per_step else keep_mask(7, gates, B, F)
    gate_mask = (lambda g: mask[:, g]) if per_step else (lambda g: mask[g])
    # eager: the module's jitted project_inputs would reuse one layout's trace
    out = cells.project_inputs(p, x, mask, per_gate=True)
    blocks = [(x * gate_mask(g)) @ p["w_x"][:, g * H:(g + 1) * H] + p["b"][g * H:(g + 1) * H]
              for g in range(gates)]
    nm.assert_close_f32(out, np.concatenate(blocks, -1))
    # one call: G [F, H] blocks on CPU, one gate-major [G, F, H] array elsewhere
    assert [(isinstance(w, tuple), np.shape(w)) for w in layouts] == [
        (backend == "cpu", (gates, F, H))]
    # The same mask for every gate reduces to the shared mask.
    same = np.broadcast_to(np.expand_dims(gate_mask(0), 1 if per_step else 0), mask.shape)
    nm.assert_close_f32(cells.project_inputs(p, x, same, per_gate=True),
                        project_inputs(p, x, gate_mask(0)))


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_recurrent_projection(cell: str) -> None:
    """`h W_h`, `(h m) W_h`, and a `PerGate` `[G, B, H]` mask applied per gate block."""
    gates = cells.NUM_GATES[cell]
    w_h = np_params(8, cell)["w_h"]
    h = rand(9, B, H)
    nm.assert_close_f32(recurrent_projection(h, w_h, None), h @ w_h)
    m = keep_mask(10, B, H)
    nm.assert_close_f32(recurrent_projection(h, w_h, m), (h * m) @ w_h)
    gm = cells.PerGate(keep_mask(11, gates, B, H))
    blocks = [(h * gm.masks[g]) @ w_h[:, g * H:(g + 1) * H] for g in range(gates)]
    nm.assert_close_f32(recurrent_projection(h, w_h, gm), np.concatenate(blocks, -1))
    # the scans pass W_h already laid out: G blocks on CPU, gate-major on accelerators
    for layout in (cells.gate_blocks(w_h, gates), cells.gate_major(w_h, gates)):
        nm.assert_close_f32(recurrent_projection(h, layout, gm), np.concatenate(blocks, -1))


def test_per_gate_weights_layout_follows_the_backend() -> None:
    w = np.arange(3 * 8, dtype=np.float32).reshape(3, 8)
    blocks = cells.per_gate_weights(w, 4, backend="cpu")
    assert isinstance(blocks, tuple) and len(blocks) == 4
    np.testing.assert_array_equal(blocks[1], w[:, 2:4])
    stacked = cells.per_gate_weights(w, 4, backend="gpu")
    assert stacked.shape == (4, 3, 2)
    np.testing.assert_array_equal(stacked[1], w[:, 2:4])


def test_lstm_step_matches_formulas() -> None:
    """The noise-free LSTM step against the textbook equations, gate order i, f, g, o
    (written in float64; the step in float32 to its rounding, in float64 to 1e-10)."""
    p = np_params(12, "lstm")
    x, h, c = rand(13, B, F), rand(14, B, H), rand(15, B, H)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    x64, h64, c64 = (v.astype(np.float64) for v in (x, h, c))
    z = x64 @ p64["w_x"] + h64 @ p64["w_h"] + p64["b"]
    i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))
    c_ref = sigmoid(f) * c64 + sigmoid(i) * np.tanh(g)
    h_ref = sigmoid(o) * np.tanh(c_ref)
    carry, y = STEPS["lstm"](p, {"h": h, "c": c}, x @ p["w_x"] + p["b"])
    nm.assert_close_f32(carry["c"], c_ref)
    nm.assert_close_f32(carry["h"], h_ref)
    np.testing.assert_array_equal(y, carry["h"])
    with nm.x64():
        carry, _ = STEPS["lstm"](nm.as_f64(p64), nm.as_f64({"h": h64, "c": c64}),
                                 nm.as_f64(x64 @ p64["w_x"] + p64["b"]))
        nm.assert_close_f64(carry["c"], c_ref)
        nm.assert_close_f64(carry["h"], h_ref)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_mixing_coefficients(cell: str) -> None:
    """Zoneout/depth coefficient 1 keeps the previous state; 0 is the plain step."""
    p = np_params(16, cell)
    step = STEPS[cell]
    carry = {k: rand(17 + i, B, H) for i, k in enumerate(cells.init_carry(cell, B, H))}
    xw = project_inputs(p, rand(20, 1, B, F))[0]
    plain, _ = step(p, carry, xw)
    for noise in (cells.StepNoise(zone_h=1.0, zone_c=1.0 if cell == "lstm" else None),
                  cells.StepNoise(depth=np.ones((B, 1), np.float32))):
        kept, y = step(p, carry, xw, noise)
        for k in carry:
            np.testing.assert_allclose(kept[k], carry[k], rtol=1e-6, atol=1e-6)
    zero, _ = step(p, carry, xw, cells.StepNoise(zone_h=0.0, depth=0.0))
    for k in carry:
        nm.assert_close_f32(zero[k], plain[k])
        assert not np.allclose(plain[k], carry[k])


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_lstm_only_noise_rejected(cell: str) -> None:
    p = np_params(21, cell)
    carry = cells.init_carry(cell, B, H)
    xw = jnp.zeros((B, cells.NUM_GATES[cell] * H))
    with pytest.raises(ValueError, match="needs an LSTM cell state"):
        STEPS[cell](p, carry, xw, cells.StepNoise(zone_c=0.5))


def test_output_zoneout_needs_the_gate_in_the_carry() -> None:
    p = np_params(22, "lstm")
    xw = jnp.zeros((B, 4 * H))
    with pytest.raises(ValueError, match="output_gate=True"):
        STEPS["lstm"](p, cells.init_carry("lstm", B, H), xw, cells.StepNoise(output_gate=0.5))
    carry, _ = STEPS["lstm"](p, cells.init_carry("lstm", B, H, output_gate=True), xw,
                               cells.StepNoise(output_gate=1.0))
    assert not np.any(carry["o"])  # d = 1 keeps o_{-1} = 0, so h = 0
    assert not np.any(carry["h"])
