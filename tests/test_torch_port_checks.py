"""`torch_port`'s input checks: every bad input is a one-sentence ValueError naming what
is wrong, and the layouts that port (Flax params trees, `param_axes`-boxed arrays,
`bias=False` state dicts) port. State dicts are numpy dicts shaped like PyTorch's (no
torch needed)."""

from __future__ import annotations

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnreg_jax import cells, torch_port
from rnnreg_jax.nn import Bidirectional, StackedRNN

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
AXES = {"w_x": ("embed", "gates"), "w_h": ("hidden", "gates"), "b": ("gates",)}


def torch_state_dict(cell: str, features: int = 4, hidden: int = 3, num_layers: int = 2,
                     suffixes: tuple[str, ...] = ("",), seed: int = 0
                     ) -> dict[str, np.ndarray]:
    """Random arrays laid out as an nn.LSTM/GRU/RNN's state_dict() (float32)."""
    rng = np.random.default_rng(seed)
    width = cells.NUM_GATES[cell] * hidden
    wide = len(suffixes)  # a bidirectional layer above the first reads both directions
    sd = {}
    for k in range(num_layers):
        inputs = features if k == 0 else wide * hidden
        shapes = {"weight_ih": (width, inputs), "weight_hh": (width, hidden),
                  "bias_ih": (width,), "bias_hh": (width,)}
        for suffix in suffixes:
            for name, shape in shapes.items():
                sd[f"{name}_l{k}{suffix}"] = rng.uniform(-0.5, 0.5, shape).astype(np.float32)
    return sd


def assert_same(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def x() -> jax.Array:
    return jax.random.normal(jax.random.key(1), (2, 3, 4))


# --- params boxed by param_axes -------------------------------------------------------


def test_boxed_params_export_and_round_trip(x) -> None:
    """Arrays boxed in nn.LogicallyPartitioned export as plain arrays and come back."""
    variables = StackedRNN(5, param_axes=AXES).init(jax.random.key(0), x)
    boxed = variables["params"]["layer_0"]
    assert isinstance(boxed["w_h"], nn.LogicallyPartitioned)
    plain = nn.unbox(boxed)
    sd = torch_port.to_torch("lstm", boxed)
    assert_same(sd, torch_port.to_torch("lstm", plain))
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in sd.values())
    assert_same(torch_port.from_torch("lstm", sd, recurrent_bias=True)[0],
                {**plain, "b_h": jnp.zeros_like(plain["b"])})


def test_boxed_bidirectional_params_export(x) -> None:
    variables = Bidirectional(3, cell="gru", param_axes=AXES).init(jax.random.key(0), x)
    plain = nn.unbox(variables["params"])
    sd = torch_port.to_torch_bidirectional("gru", variables["params"])
    assert_same(sd, torch_port.to_torch_bidirectional("gru", [plain["layer_0"]]))
    assert_same(torch_port.from_torch_bidirectional("gru", sd), [plain["layer_0"]])


# --- layer counts ---------------------------------------------------------------------


@pytest.mark.parametrize("num_layers", [-1, 0, 1.5, True, "2", 3])
def test_num_layers_must_be_a_count_the_state_dict_has(num_layers) -> None:
    sd = torch_state_dict("lstm")
    with pytest.raises(ValueError, match="num_layers"):
        torch_port.from_torch("lstm", sd, num_layers=num_layers)
    bidirectional = torch_state_dict("lstm", suffixes=("", "_reverse"))
    with pytest.raises(ValueError, match="num_layers"):
        torch_port.from_torch_bidirectional("lstm", bidirectional, num_layers=num_layers)


def test_num_layers_takes_the_first_layers_of_a_whole_number() -> None:
    sd = torch_state_dict("gru", num_layers=3)
    assert len(torch_port.from_torch("gru", sd, num_layers=np.int64(2))) == 2
    assert_same(torch_port.from_torch("gru", sd, num_layers=2),
                torch_port.from_torch("gru", sd)[:2])
    with pytest.raises(ValueError, match="num_layers must be a whole number >= 1, got True"):
        torch_port.from_torch("gru", sd, num_layers=True)  # was one layer


def test_layers_numbered_without_gaps() -> None:
    sd = torch_state_dict("rnn", num_layers=3)
    del sd["weight_ih_l1"]
    with pytest.raises(ValueError, match="no 'weight_ih_l1' but has 'weight_ih_l2'"):
        torch_port.from_torch("rnn", sd)
    sd = torch_state_dict("rnn", num_layers=2)
    del sd["weight_hh_l1"]
    with pytest.raises(ValueError, match="no 'weight_hh_l1'"):
        torch_port.from_torch("rnn", sd)


# --- what the port cannot express -----------------------------------------------------


def test_projections_are_refused() -> None:
    """nn.LSTM(proj_size=2): weight_hr_l{k} [2, H], weight_hh_l{k} [4H, 2]."""
    sd = torch_state_dict("lstm", num_layers=1)
    sd["weight_hr_l0"] = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"'weight_hr_l0'.*proj_size"):
        torch_port.from_torch("lstm", sd)
    sd = torch_state_dict("lstm", num_layers=1, suffixes=("", "_reverse"))
    sd["weight_hr_l0_reverse"] = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="proj_size"):
        torch_port.from_torch_bidirectional("lstm", sd)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_bidirectional_state_dict_points_to_its_function(num_layers) -> None:
    with np.load(FIXTURES / f"golden_bidirectional_lstm_{num_layers}layer.npz") as data:
        sd = {k.removeprefix("sd/"): data[k] for k in data.files if k.startswith("sd/")}
    with pytest.raises(ValueError, match=r"'weight_ih_l0_reverse'.*from_torch_bidirectional"):
        torch_port.from_torch("lstm", sd)
    assert len(torch_port.from_torch_bidirectional("lstm", sd)) == num_layers


def test_bidirectional_directions_must_agree() -> None:
    sd = torch_state_dict("gru", suffixes=("", "_reverse"))
    del sd["weight_ih_l1"]
    with pytest.raises(ValueError, match="1 forward layer.*2 backward"):
        torch_port.from_torch_bidirectional("gru", sd)
    sd = torch_state_dict("gru", num_layers=1, suffixes=("", "_reverse"))
    sd.update(torch_state_dict("gru", hidden=5, num_layers=1, suffixes=("_reverse",)))
    with pytest.raises(ValueError, match="same sizes"):
        torch_port.from_torch_bidirectional("gru", sd)
    sd = torch_state_dict("gru", suffixes=("", "_reverse"))
    for suffix in ("", "_reverse"):
        sd[f"weight_ih_l1{suffix}"] = np.zeros((9, 5), np.float32)
    with pytest.raises(ValueError, match="Layer 1 reads 5 features.*6 concatenated"):
        torch_port.from_torch_bidirectional("gru", sd)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_bias_false_imports_zero_biases(cell) -> None:
    """nn.LSTM/GRU/RNN(bias=False) has no bias entries: it is the module with zero ones."""
    sd = torch_state_dict(cell)
    zero_biases = {k: (np.zeros_like(v) if k.startswith("bias") else v) for k, v in sd.items()}
    no_biases = {k: v for k, v in sd.items() if not k.startswith("bias")}
    for recurrent_bias in (False, True):
        assert_same(torch_port.from_torch(cell, no_biases, recurrent_bias=recurrent_bias),
                    torch_port.from_torch(cell, zero_biases, recurrent_bias=recurrent_bias))
    bidirectional = torch_state_dict(cell, suffixes=("", "_reverse"))
    no_biases = {k: v for k, v in bidirectional.items() if not k.startswith("bias")}
    layers = torch_port.from_torch_bidirectional(cell, no_biases)
    assert not np.any(layers[1]["backward"]["b"])
    del sd["bias_hh_l1"]
    with pytest.raises(ValueError, match="'bias_ih_l1' but no 'bias_hh_l1'.*bias=False"):
        torch_port.from_torch(cell, sd)


# --- shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("name,shape,message", [
    ("weight_ih_l0", "transposed", "weight_ih_l0'.*looks transposed"),
    ("weight_ih_l0", (7,), r"weight_ih_l0'\] has shape \(7,\)"),
    ("weight_hh_l0", "square", r"weight_hh_l0'\] has shape \(3, 3\)"),
    ("weight_hh_l1", "rows+", r"weight_hh_l1'\] has shape"),
    ("bias_ih_l0", "short", r"bias_ih_l0'\] has shape"),
    ("bias_hh_l1", "column", r"bias_hh_l1'\] has shape"),
    ("weight_ih_l1", "wider", "Layer 1 reads 4 features, but layer 0 outputs 3"),
])
def test_from_torch_checks_shapes(cell, name, shape, message) -> None:
    sd = torch_state_dict(cell)
    value = sd[name]
    if shape == "square" and cell == "rnn":  # G = 1: a square weight_hh is right
        shape, message = (3, 4), message.replace("3, 3", "3, 4")
    sd[name] = {"transposed": lambda: value.T, "rows+": lambda: np.zeros((len(value) + 1, 3)),
                "square": lambda: np.zeros((3, 3)), "short": lambda: value[:-1],
                "column": lambda: value[:, None], "wider": lambda: np.zeros((len(value), 4)),
                }.get(shape, lambda: np.zeros(shape))()
    with pytest.raises(ValueError, match=message):
        torch_port.from_torch(cell, sd)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("name,change,message", [
    ("w_x", "transpose", "Layer 0's w_x has shape.*looks transposed"),
    ("w_h", "transpose", "Layer 0's w_h has shape"),
    ("b", "short", r"Layer 0's b has shape"),
    ("b_h", "short", r"Layer 0's b_h has shape"),
])
def test_to_torch_checks_shapes(cell, name, change, message) -> None:
    params = cells.init_params(jax.random.key(0), cell, 4, 3)
    params["b_h"] = params.get("b_h", params["b"])
    if cell == "rnn" and name == "w_h":
        params["w_h"] = params["w_h"][:, :2]  # G = 1: transposing the square w_h is no error
    else:
        params[name] = params[name].T if change == "transpose" else params[name][:-1]
    with pytest.raises(ValueError, match=message):
        torch_port.to_torch(cell, params)
    with pytest.raises(ValueError, match=message.replace("0's", "0's forward")):
        torch_port.to_torch_bidirectional(cell, {"forward": params, "backward": params})


def test_to_torch_checks_the_stack() -> None:
    keys = jax.random.split(jax.random.key(0), 2)
    below = cells.init_params(keys[0], "lstm", 4, 3)
    above = cells.init_params(keys[1], "lstm", 5, 3)
    with pytest.raises(ValueError, match="Layer 1 reads 5 features, but layer 0 outputs 3"):
        torch_port.to_torch("lstm", [below, above])
    narrow = cells.init_params(keys[1], "lstm", 4, 2)
    with pytest.raises(ValueError, match="backward direction has input and hidden sizes"):
        torch_port.to_torch_bidirectional("lstm", [{"forward": below, "backward": narrow}])
    with pytest.raises(ValueError, match="Layer 1 reads 5 features.*6 concatenated"):
        torch_port.to_torch_bidirectional("lstm", [{"forward": below, "backward": below},
                                                   {"forward": above, "backward": above}])


# --- Flax params trees ----------------------------------------------------------------


def test_stacked_rnn_params_tree_exports(x) -> None:
    """variables['params'] of nn.StackedRNN ports without renaming, and back."""
    module = StackedRNN((5, 6), cell="gru")
    variables = module.init(jax.random.key(0), x)
    params = variables["params"]
    sd = torch_port.to_torch("gru", params)
    assert_same(sd, torch_port.to_torch("gru", [params["layer_0"], params["layer_1"]]))
    ported = torch_port.from_torch("gru", sd)
    back = {"params": {f"layer_{k}": p for k, p in enumerate(ported)}}
    assert_same(module.apply(back, x), module.apply(variables, x))


def test_params_tree_layers_in_numeric_order() -> None:
    """layer_10 comes after layer_9, whatever the tree's key order."""
    tree = {f"layer_{k}": cells.init_params(jax.random.key(k), "rnn", 2, 2)
            for k in reversed(range(11))}
    sd = torch_port.to_torch("rnn", tree)
    np.testing.assert_array_equal(sd["weight_hh_l10"], np.asarray(tree["layer_10"]["w_h"]).T)
    np.testing.assert_array_equal(sd["weight_hh_l2"], np.asarray(tree["layer_2"]["w_h"]).T)


def test_bidirectional_params_tree_exports(x) -> None:
    module = Bidirectional((3, 2), cell="lstm")
    variables = module.init(jax.random.key(0), x)
    params = variables["params"]
    sd = torch_port.to_torch_bidirectional("lstm", params)
    assert_same(sd, torch_port.to_torch_bidirectional("lstm",
                                                      [params["layer_0"], params["layer_1"]]))
    ported = torch_port.from_torch_bidirectional("lstm", sd)
    back = {"params": {f"layer_{k}": p for k, p in enumerate(ported)}}
    assert_same(module.apply(back, x), module.apply(variables, x))


def test_params_trees_that_do_not_port(x) -> None:
    gates_in = StackedRNN(2, project_first_input=False).init(jax.random.key(0), jnp.ones((2, 3, 8)))
    with pytest.raises(ValueError, match="no 'w_x'.*project_first_input=False"):
        torch_port.to_torch("lstm", gates_in["params"])
    with pytest.raises(ValueError, match=r"variables\['params'\]"):
        torch_port.to_torch("lstm", gates_in)
    layer = cells.init_params(jax.random.key(0), "lstm", 4, 3)
    with pytest.raises(ValueError, match="'rnn' besides its 'layer_<l>'"):
        torch_port.to_torch("lstm", {"layer_0": layer, "rnn": layer})
    with pytest.raises(ValueError, match="no 'layer_1' but has 'layer_2'"):
        torch_port.to_torch("lstm", {"layer_0": layer, "layer_2": layer})
    with pytest.raises(ValueError, match=r"no 'w_x'.*'layer_0'"):  # a model's params tree
        torch_port.to_torch("lstm", {"embed": {"embedding": np.zeros((5, 4))},
                                     "rnn": {"layer_0": layer}})
    with pytest.raises(ValueError, match="at least one layer"):
        torch_port.to_torch("lstm", [])
    with pytest.raises(ValueError, match="to_torch takes"):
        torch_port.to_torch("lstm", "params")


def test_directions_and_layouts_are_told_apart() -> None:
    layer = cells.init_params(jax.random.key(0), "rnn", 4, 3)
    with pytest.raises(ValueError, match="bidirectional layer.*to_torch_bidirectional"):
        torch_port.to_torch("rnn", {"layer_0": {"forward": layer, "backward": layer}})
    with pytest.raises(ValueError, match=r"Layer 0 must be \{'forward'"):
        torch_port.to_torch_bidirectional("rnn", {"layer_0": layer})
    with pytest.raises(ValueError, match=r"Layer 0 must be \{'forward'"):
        torch_port.to_torch_bidirectional("rnn", [layer])
    with pytest.raises(ValueError, match="Layer 1's params must be a dict"):
        torch_port.to_torch("rnn", [layer, [layer]])


def test_normalization_params_are_refused() -> None:
    params = cells.init_params(jax.random.key(0), "lstm_ln", 4, 3)
    with pytest.raises(ValueError, match="'ln_.*normalization"):
        torch_port.to_torch("lstm", params)


# --- values and keys ------------------------------------------------------------------


def test_values_and_keys_that_are_not_a_state_dict() -> None:
    sd = torch_state_dict("lstm", num_layers=1)
    with pytest.raises(ValueError, match=r"state_dict\['weight_hh_l0'\] must be an array of "
                                         "real numbers"):
        torch_port.from_torch("lstm", {**sd, "weight_hh_l0": "weights"})
    with pytest.raises(ValueError, match="real numbers.*LogicallyPartitioned"):
        torch_port.from_torch("lstm", {**sd, "bias_ih_l0": nn.LogicallyPartitioned(
            sd["bias_ih_l0"], ("gates",))})
    with pytest.raises(ValueError, match="state_dict must map names to arrays"):
        torch_port.from_torch("lstm", list(sd.values()))
    with pytest.raises(ValueError, match=r"'rnn\.weight_ih_l0'.*'rnn\.' prefix"):
        torch_port.from_torch("lstm", {f"rnn.{k}": v for k, v in sd.items()})
    with pytest.raises(ValueError, match="recurrent_bias must be True or False"):
        torch_port.from_torch("lstm", sd, recurrent_bias="False")
    params = cells.init_params(jax.random.key(0), "lstm", 4, 3)
    with pytest.raises(ValueError, match="Layer 0's b must be an array of real numbers"):
        torch_port.to_torch("lstm", {**params, "b": None})
    with pytest.raises(ValueError, match="no 'b'.*'w_x', 'w_h', 'b'"):
        torch_port.to_torch("lstm", {"w_x": params["w_x"], "w_h": params["w_h"]})
