"""Golden tests against PyTorch and the `torch_port` round trip.

The fixtures under `tests/fixtures/` come from `tests/make_golden.py` (which
needs torch; these tests do not): PyTorch `nn.LSTM`, `nn.GRU` and tanh
`nn.RNN` with `batch_first=True`, a nonzero initial state, and the gradients
of a fixed random scalar loss with respect to every weight, the input and
the initial state.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnreg_jax import cells, rnn, torch_port

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
# Max error in float32, relative to max(1, the array's largest magnitude): 1e-5 absolute
# for values of unit scale, as much relative for larger ones (the gradients reach ~8).
# PyTorch's float32 rounding and ours differ by ~1.5e-6 here on SSE4.2, AVX2 and AVX-512
# alike; the fixtures are float32, so there is no float64 check against them.
TOL = 1e-5
CASES = [(cell, layers) for cell in ("lstm", "gru", "rnn") for layers in (1, 2, 3)]


def load(cell: str, num_layers: int) -> dict[str, np.ndarray]:
    path = FIXTURES / f"golden_{cell}_{num_layers}layer.npz"
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def state_dict(fx: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k.removeprefix("sd/"): v for k, v in fx.items() if k.startswith("sd/")}


def initial_state(cell: str, fx: dict[str, np.ndarray]) -> list[cells.Carry]:
    """Per-layer carries from the fixture's `[L, B, H]` h0 (and c0)."""
    num_layers = fx["h0"].shape[0]
    if cell == "lstm":
        return [{"h": jnp.asarray(fx["h0"][k]), "c": jnp.asarray(fx["c0"][k])}
                for k in range(num_layers)]
    return [{"h": jnp.asarray(fx["h0"][k])} for k in range(num_layers)]


def golden_loss(cell: str, fx: dict[str, np.ndarray]):
    """The fixture's loss as a function of (params, x, carry), plus its aux outputs."""

    def loss_fn(layers, x, carry):
        out, final = rnn.unroll(cell, layers, x, carry)
        hn = jnp.stack([c["h"] for c in final])
        loss = jnp.sum(out * fx["r_out"]) + jnp.sum(hn * fx["r_h"])
        aux = {"out": out, "hn": hn}
        if cell == "lstm":
            cn = jnp.stack([c["c"] for c in final])
            loss = loss + jnp.sum(cn * fx["r_c"])
            aux["cn"] = cn
        return loss, aux

    return loss_fn


def assert_close(actual, expected, name: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    err = float(np.max(np.abs(actual - expected)))
    tol = TOL * max(1.0, float(np.max(np.abs(expected))))
    assert err <= tol, f"{name}: max abs error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("cell,num_layers", CASES)
def test_fixture_is_small_and_complete(cell: str, num_layers: int) -> None:
    """Each fixture is < 100 KB and holds the documented arrays."""
    path = FIXTURES / f"golden_{cell}_{num_layers}layer.npz"
    assert path.stat().st_size < 100_000
    fx = load(cell, num_layers)
    batch, steps, features, hidden, layers = fx["sizes"].tolist()
    assert layers == num_layers and batch > 1 and features != hidden
    assert fx["x"].shape == (batch, steps, features)
    assert np.abs(fx["h0"]).min() > 0  # the carry is really tested
    for k in range(num_layers):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            assert f"sd/{name}_l{k}" in fx and f"grad/{name}_l{k}" in fx


@pytest.mark.parametrize("cell,num_layers", CASES)
def test_forward_and_gradients_match_pytorch(cell: str, num_layers: int) -> None:
    """Outputs, final state, loss and every gradient match PyTorch to `TOL`."""
    fx = load(cell, num_layers)
    layers = torch_port.from_torch(cell, state_dict(fx))
    assert len(layers) == num_layers
    carry = initial_state(cell, fx)
    loss_fn = jax.jit(jax.value_and_grad(golden_loss(cell, fx), argnums=(0, 1, 2), has_aux=True))
    (loss, aux), (g_layers, g_x, g_carry) = loss_fn(layers, jnp.asarray(fx["x"]), carry)

    assert_close(aux["out"], fx["out"], "out")
    assert_close(aux["hn"], fx["hn"], "hn")
    if cell == "lstm":
        assert_close(aux["cn"], fx["cn"], "cn")
    np.testing.assert_allclose(float(loss), float(fx["loss"]), rtol=1e-5, atol=1e-4)

    assert_close(g_x, fx["grad/x"], "grad x")
    assert_close(jnp.stack([c["h"] for c in g_carry]), fx["grad/h0"], "grad h0")
    if cell == "lstm":
        assert_close(jnp.stack([c["c"] for c in g_carry]), fx["grad/c0"], "grad c0")
    for k, g in enumerate(g_layers):
        assert_close(g["w_x"].T, fx[f"grad/weight_ih_l{k}"], f"grad weight_ih_l{k}")
        assert_close(g["w_h"].T, fx[f"grad/weight_hh_l{k}"], f"grad weight_hh_l{k}")
        assert_close(g["b"], fx[f"grad/bias_ih_l{k}"], f"grad bias_ih_l{k}")
        if cell == "gru":
            assert_close(g["b_h"], fx[f"grad/bias_hh_l{k}"], f"grad bias_hh_l{k}")
        else:  # one effective bias: its gradient is that of both torch biases
            assert_close(g["b"], fx[f"grad/bias_hh_l{k}"], f"grad bias_hh_l{k}")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_from_torch_layout(cell: str) -> None:
    """Weights are transposed; LSTM/RNN biases summed, GRU biases kept apart."""
    fx = load(cell, 2)
    sd = state_dict(fx)
    layers = torch_port.from_torch(cell, sd)
    for k, p in enumerate(layers):
        np.testing.assert_array_equal(p["w_x"], sd[f"weight_ih_l{k}"].T)
        np.testing.assert_array_equal(p["w_h"], sd[f"weight_hh_l{k}"].T)
        if cell == "gru":
            assert set(p) == {"w_x", "w_h", "b", "b_h"}
            np.testing.assert_array_equal(p["b"], sd[f"bias_ih_l{k}"])
            np.testing.assert_array_equal(p["b_h"], sd[f"bias_hh_l{k}"])
        else:
            assert set(p) == {"w_x", "w_h", "b"}
            np.testing.assert_allclose(p["b"], sd[f"bias_ih_l{k}"] + sd[f"bias_hh_l{k}"],
                                       rtol=0, atol=1e-7)
    assert len(torch_port.from_torch(cell, sd, num_layers=1)) == 1


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_to_torch_round_trip(cell: str) -> None:
    """from_torch(to_torch(p)) == p; the exported LSTM/RNN bias is all in bias_ih."""
    keys = jax.random.split(jax.random.key(0), 2)
    params = [cells.init_params(keys[0], cell, 5, 6), cells.init_params(keys[1], cell, 6, 4)]
    sd = torch_port.to_torch(cell, params)
    gates = cells.NUM_GATES[cell]
    assert sd["weight_ih_l0"].shape == (gates * 6, 5)
    assert sd["weight_hh_l1"].shape == (gates * 4, 4)
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    if cell == "gru":
        np.testing.assert_array_equal(sd["bias_hh_l0"], params[0]["b_h"])
    else:
        np.testing.assert_array_equal(sd["bias_hh_l0"], np.zeros(gates * 6, np.float32))
        np.testing.assert_array_equal(sd["bias_ih_l1"], params[1]["b"])
    back = torch_port.from_torch(cell, sd)
    assert len(back) == 2
    for p, q in zip(params, back, strict=True):
        assert set(p) == set(q)
        for name in p:
            np.testing.assert_array_equal(p[name], q[name])


def test_to_torch_single_layer_dict_and_golden_round_trip() -> None:
    """A single dict exports as layer 0; a torch state dict survives import/export."""
    params = cells.init_params(jax.random.key(1), "lstm", 3, 2)
    assert set(torch_port.to_torch("lstm", params)) == {
        "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}
    sd = state_dict(load("lstm", 2))
    exported = torch_port.to_torch("lstm", torch_port.from_torch("lstm", sd))
    for k in range(2):
        np.testing.assert_array_equal(exported[f"weight_ih_l{k}"], sd[f"weight_ih_l{k}"])
        np.testing.assert_allclose(exported[f"bias_ih_l{k}"],
                                   sd[f"bias_ih_l{k}"] + sd[f"bias_hh_l{k}"], atol=1e-7)
        np.testing.assert_array_equal(exported[f"bias_hh_l{k}"], 0.0)


def test_errors() -> None:
    """Unknown cells and state dicts without layers are clear errors."""
    with pytest.raises(ValueError, match="no PyTorch counterpart"):
        torch_port.from_torch("transformer", {"weight_ih_l0": np.zeros((1, 1))})
    with pytest.raises(ValueError, match="no PyTorch counterpart"):
        torch_port.from_torch("lstm_ln", {"weight_ih_l0": np.zeros((1, 1))})
    with pytest.raises(ValueError, match="weight_ih_l0"):
        torch_port.from_torch("lstm", {"fc.weight": np.zeros((1, 1))})
    with pytest.raises(ValueError, match="no PyTorch counterpart"):
        torch_port.to_torch("lstmx", {})
