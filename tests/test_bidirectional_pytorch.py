"""Bidirectional stacks against PyTorch: outputs, final states and gradients of its
bidirectional modules (full and packed sequences), and the state-dict port both ways.

The golden fixtures come from `tests/make_golden_bidirectional.py` (PyTorch's
bidirectional `nn.LSTM`, `nn.GRU`, tanh `nn.RNN` in float64 from float32 weights and
inputs); these tests need no torch.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest
from bidirectional_helpers import DIRS

from rnnreg_jax import bidirectional as bd
from rnnreg_jax import torch_port
from rnnreg_jax.nn import Bidirectional

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
SUFFIX = {"forward": "", "backward": "_reverse"}
# float32 against PyTorch's float64: max error relative to max(1, the array's largest
# magnitude), as in test_torch_port (float32 rounding here is ~1e-6 of unit values).
TOL32 = 1e-5


def load(cell: str, num_layers: int) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"golden_bidirectional_{cell}_{num_layers}layer.npz") as data:
        return {k: data[k] for k in data.files}


def state_dict(fx: dict) -> dict:
    return {k.removeprefix("sd/"): v for k, v in fx.items() if k.startswith("sd/")}


def fixture_carry(cell: str, fx: dict) -> list[dict]:
    """Per layer `{"forward", "backward"}` carries from PyTorch's `[2L, B, H]` state."""
    num_layers = fx["h0"].shape[0] // 2
    names = ("h", "c") if cell == "lstm" else ("h",)
    return [{d: {n: jnp.asarray(fx[f"{n}0"][2 * layer + i]) for n in names}
             for i, d in enumerate(DIRS)} for layer in range(num_layers)]


def golden_loss(cell: str, fx: dict, run: str, implementation: str = "auto"):
    """The fixture's loss of `(params, x, carry)` with its outputs as aux."""
    lengths = fx["lengths"] if run == "packed" else None

    def loss_fn(layers, x, carry):
        out, final = bd.unroll_bidirectional(cell, layers, x, carry, seq_lengths=lengths,
                                             implementation=implementation)
        aux = {"out": out}
        loss = jnp.sum(out * fx["r_out"])
        for n in ("h", "c") if cell == "lstm" else ("h",):
            aux[f"{n}n"] = jnp.stack([c[d][n] for c in final for d in DIRS])  # 2 l + d
            loss = loss + jnp.sum(aux[f"{n}n"] * fx[f"r_{n}"])
        return loss, aux

    return loss_fn


def check_against_golden(cell: str, fx: dict, run: str, dtype,
                         implementation: str = "auto") -> None:
    """Outputs, final states, loss and every gradient against the fixture's `run`."""
    def close(actual, name):
        expected = fx[f"{run}/{name}"]
        if dtype == jnp.float64:
            nm.assert_close_f64(actual, expected, err_msg=name)
            return
        actual = np.asarray(actual)
        assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
        err = float(np.max(np.abs(actual - expected)))
        tol = TOL32 * max(1.0, float(np.max(np.abs(expected))))
        assert err <= tol, f"{name}: max abs error {err:.3g} > {tol:.3g}"

    # float64 keeps both PyTorch biases (their float32 sum would round)
    layers = torch_port.from_torch_bidirectional(cell, state_dict(fx),
                                                 recurrent_bias=dtype == jnp.float64)
    args = (layers, jnp.asarray(fx["x"]), fixture_carry(cell, fx))
    args = nm.as_f64(args) if dtype == jnp.float64 else args
    grad_fn = jax.value_and_grad(golden_loss(cell, fx, run, implementation), argnums=(0, 1, 2),
                                 has_aux=True)
    (loss, aux), (g_layers, g_x, g_carry) = jax.jit(grad_fn)(*args)
    for name, value in aux.items():
        close(value, name)
    close(loss, "loss")
    close(g_x, "grad/x")
    for n in ("h", "c") if cell == "lstm" else ("h",):
        close(jnp.stack([c[d][n] for c in g_carry for d in DIRS]), f"grad/{n}0")
    for k, layer in enumerate(g_layers):
        for d in DIRS:
            g, s = layer[d], f"_l{k}{SUFFIX[d]}"
            close(g["w_x"].T, f"grad/weight_ih{s}")
            close(g["w_h"].T, f"grad/weight_hh{s}")
            close(g["b"], f"grad/bias_ih{s}")
            # one summed bias (float32 LSTM/RNN) gets the gradient of both
            close(g["b_h"] if "b_h" in g else g["b"], f"grad/bias_hh{s}")


# One layer by default, two with -m slow (the packed-sequence test runs two layers).
GOLDEN = [pytest.param(cell, layers, marks=pytest.mark.slow if layers == 2 else ())
          for cell in ("lstm", "gru", "rnn") for layers in (1, 2)]


@pytest.mark.parametrize("cell,num_layers", GOLDEN)
def test_matches_pytorch_bidirectional(cell: str, num_layers: int) -> None:
    """Outputs, final states and gradients equal PyTorch's bidirectional module: to 1e-5
    in float32 and to 1e-10 (relative) in float64."""
    fx = load(cell, num_layers)
    assert fx["sizes"].tolist() == [3, 5, 4, 3, num_layers]
    assert fx["full/out"].shape == (3, 5, 6) and np.abs(fx["h0"]).min() > 0
    check_against_golden(cell, fx, "full", jnp.float32)
    with nm.x64():
        check_against_golden(cell, fx, "full", jnp.float64)


# Each cell and each backward pass by default; the other pairs with -m slow.
@pytest.mark.parametrize("cell,implementation", [
    pytest.param("lstm", "fused", marks=pytest.mark.slow), ("lstm", "autodiff"),
    ("gru", "fused"), pytest.param("gru", "autodiff", marks=pytest.mark.slow)])
def test_packed_sequences_match_pytorch(cell: str, implementation: str) -> None:
    """With `seq_lengths` the backward direction starts at each example's last valid step
    and outputs, final states and every gradient equal PyTorch's packed sequences
    (float64, 2 layers), through either backward pass; the module passes the lengths on."""
    fx = load(cell, 2)
    assert sorted(fx["lengths"].tolist()) == [2, 4, 5]
    assert np.all(fx["packed/out"][1, 2:] == 0)  # PyTorch pads with zeros
    with nm.x64():
        check_against_golden(cell, fx, "packed", jnp.float64, implementation)
    ported = torch_port.from_torch_bidirectional(cell, state_dict(fx))
    module = Bidirectional((3, 3), cell=cell, implementation=implementation)
    ys, _ = module.apply({"params": {f"layer_{i}": p for i, p in enumerate(ported)}},
                         jnp.asarray(fx["x"]), fixture_carry(cell, fx),
                         seq_lengths=fx["lengths"])
    assert float(np.abs(np.asarray(ys) - fx["packed/out"]).max()) <= TOL32


def test_torch_port_round_trip_and_errors() -> None:
    """to_torch_bidirectional(from_torch_bidirectional(sd)) gives PyTorch's keys back."""
    sd = state_dict(load("gru", 2))
    layers = torch_port.from_torch_bidirectional("gru", sd)
    assert len(layers) == 2 and set(layers[1]) == set(DIRS)
    assert layers[1]["backward"]["w_x"].shape == (6, 9)  # reads 2H, GRU's 3 gates
    np.testing.assert_array_equal(layers[0]["backward"]["w_h"], sd["weight_hh_l0_reverse"].T)
    back = torch_port.to_torch_bidirectional("gru", layers)
    assert set(back) == set(sd)
    for name, value in sd.items():
        np.testing.assert_array_equal(back[name], value)
    with pytest.raises(ValueError, match="weight_ih_l0_reverse"):
        torch_port.from_torch_bidirectional("lstm", {"weight_ih_l0": np.zeros((1, 1))})
    with pytest.raises(ValueError, match="no PyTorch counterpart"):
        torch_port.to_torch_bidirectional("lstm_ln", layers)


def test_module_params_port_from_pytorch() -> None:
    """`layer_<l>: {forward, backward}` as PyTorch's state dict ports it; apply with
    PyTorch's weights and state reproduces its outputs; initial_carry's layout."""
    fx = load("lstm", 2)
    module = Bidirectional((3, 3), cell="lstm")
    x = jnp.asarray(fx["x"])
    variables = module.init(jax.random.key(0), x)
    ported = torch_port.from_torch_bidirectional("lstm", state_dict(fx))
    params = variables["params"]
    assert set(params) == {"layer_0", "layer_1"}
    assert jax.tree.map(jnp.shape, params["layer_1"]) == jax.tree.map(jnp.shape, ported[1])
    assert params["layer_1"]["forward"]["w_x"].shape == (6, 12)
    assert not np.allclose(params["layer_0"]["forward"]["w_h"],
                           params["layer_0"]["backward"]["w_h"])
    ys, final = module.apply({"params": {"layer_0": ported[0], "layer_1": ported[1]}}, x,
                             fixture_carry("lstm", fx))
    err = float(np.abs(np.asarray(ys) - fx["full/out"]).max())
    assert err <= TOL32, err
    zero = module.initial_carry(2)
    assert jax.tree.map(jnp.shape, zero) == [{d: {"h": (2, 3), "c": (2, 3)} for d in DIRS}] * 2
    assert jax.tree.structure(final) == jax.tree.structure(fixture_carry("lstm", fx))
