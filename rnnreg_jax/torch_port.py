"""Weights to and from PyTorch `nn.LSTM` / `nn.GRU` / `nn.RNN` state dicts.

Works on plain arrays (numpy or anything `np.asarray` takes), so neither
direction imports torch. Gate orders already agree (LSTM `i, f, g, o`, GRU
`r, z, n`), so a port is a transpose plus bias bookkeeping:

* PyTorch stores `weight_ih_l{k}: [G*H, F]`; we store `w_x = weight_ih.T`.
* LSTM and RNN have one effective bias, `b = bias_ih + bias_hh`; exporting
  puts it all in `bias_ih` and zeros in `bias_hh` (same function). With
  `recurrent_bias=True` (or params that have `b_h`) both are kept, `b_h =
  bias_hh`, which also keeps their training dynamics (`cells.init_params`).
* The GRU keeps both: `b = bias_ih`, `b_h = bias_hh` (the latter sits inside
  the reset gate's product, so it cannot be merged).
* A module made with `bias=False` has no bias entries; it imports with zero
  biases (the same function).

Every array's shape is checked against the cell's G gates and the hidden size H
(`weight_ih [G*H, F]`, `weight_hh [G*H, H]`, biases `[G*H]`; `w_x [F, G*H]`, `w_h [H,
G*H]`, `b [G*H]`), and what the port cannot express is a one-sentence ValueError:
`nn.LSTM(proj_size=...)`'s projections (`weight_hr_l{k}`), a bidirectional state dict
given to `from_torch`, a first layer without `w_x` (`project_first_input=False`), the
normalization parameters of "lstm_ln" / "lstm_bn". The export side takes the params
of a Flax stack as they are (`variables["params"]` of `nn.StackedRNN`, `{"layer_0":
..., "layer_1": ...}`, or of `nn.Bidirectional`), arrays boxed by `param_axes`
(`nn.LogicallyPartitioned`) included; arrays a regularizer adds to a layer are left out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax.core import meta

from rnnreg_jax import cells
from rnnreg_jax.regularizers.checks import check_flag

_DIRECTIONS = (("forward", ""), ("backward", "_reverse"))  # and their PyTorch key suffixes
_LAYER_KEY = re.compile(r"^layer_(0|[1-9][0-9]*)$")  # a Flax stack's params tree
_PROJECTION = re.compile(r"^weight_hr_l[0-9]+(_reverse)?$")  # nn.LSTM(proj_size=...)
_REVERSE = re.compile(r"^(weight|bias)_(ih|hh)_l[0-9]+_reverse$")
_NORMALIZATION = ("ln_", "bn_")  # the prefixes of lstm_ln's and lstm_bn's own arrays
_LAYOUT = ("one layer's params {'w_x', 'w_h', 'b'} (plus 'b_h'), a list of them bottom "
           "first, or a stack's params tree {'layer_0': ..., 'layer_1': ...}")
_BIDIRECTIONAL_LAYOUT = ("one layer's {'forward': params, 'backward': params}, a list of "
                         "them bottom first, or a stack's params tree {'layer_0': ..., ...}")


def _check_portable(cell: str) -> None:
    """Only cells with a PyTorch counterpart port (not the layer-normalized LSTM)."""
    if cell not in cells.CELL_TYPES:
        raise ValueError(f"Cell {cell!r} has no PyTorch counterpart; portable cells are "
                         f"{cells.CELL_TYPES}.")


def _array(value: Any, name: str) -> np.ndarray:
    """`value` as a numpy array of real numbers, or a one-sentence error naming it."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, RuntimeError):  # ragged, or a tensor that needs .detach()
        array = np.asarray(None)
    if not (jnp.issubdtype(array.dtype, jnp.floating)
            or jnp.issubdtype(array.dtype, jnp.integer)):
        what = type(value).__name__ if array.dtype == object else f"dtype {array.dtype}"
        raise ValueError(f"{name} must be an array of real numbers (a tensor via "
                         f".detach().cpu().numpy()), got {what}.")
    return array


def _sizes(cell: str, w_x: np.ndarray, w_h: np.ndarray, biases: Mapping[str, np.ndarray],
           names: tuple[str, str], torch_layout: bool) -> tuple[int, int]:
    """A layer's `(F, H)` after checking its arrays against the cell's G gates: PyTorch's
    `weight_ih [G*H, F]`, `weight_hh [G*H, H]` (`torch_layout`) or our `w_x [F, G*H]`,
    `w_h [H, G*H]`; `biases` (by name) `[G*H]`. `names`: those of `w_x` and `w_h`."""
    gates = cells.NUM_GATES[cell]
    hh = w_h.T if torch_layout else w_h
    if hh.ndim != 2 or hh.shape[0] < 1 or hh.shape[1] != gates * hh.shape[0]:
        need = f"[{gates}*H, H]" if torch_layout else f"[H, {gates}*H]"
        raise ValueError(f"{names[1]} has shape {w_h.shape}, but a {cell} layer's is {need} "
                         f"({gates} gates of the hidden size H).")
    hidden = hh.shape[0]
    width = gates * hidden
    ih = w_x.T if torch_layout else w_x
    if ih.ndim != 2 or ih.shape[0] < 1 or ih.shape[1] != width:
        need = f"({width}, F)" if torch_layout else f"(F, {width})"
        hint = "; it looks transposed" if ih.ndim == 2 and ih.shape[0] == width else ""
        raise ValueError(f"{names[0]} has shape {w_x.shape}, but a {cell} layer of hidden "
                         f"size {hidden} (from {names[1]}) needs {need}{hint}.")
    for name, bias in biases.items():
        if bias.shape != (width,):
            raise ValueError(f"{name} has shape {bias.shape}, but a {cell} layer of hidden "
                             f"size {hidden} needs ({width},).")
    return ih.shape[0], hidden


def _check_input(layer: int, features: int, previous: int | None) -> None:
    """A layer above the first reads what the one below outputs."""
    if previous is not None and features != previous:
        raise ValueError(f"Layer {layer} reads {features} features, but layer {layer - 1} "
                         f"outputs {previous} (its hidden size).")


def _check_directions(layer: int, sizes: Mapping[str, tuple[int, int]],
                      previous: int | None) -> int:
    """Both directions of a bidirectional layer have the same `(F, H)`, and F is what
    the layer below outputs (its directions concatenated or summed); returns H."""
    (features, hidden), backward = sizes["forward"], sizes["backward"]
    if backward != (features, hidden):
        raise ValueError(f"Layer {layer}'s backward direction has input and hidden sizes "
                         f"{backward}, but its forward one {(features, hidden)}; both "
                         "directions of a layer have the same sizes.")
    if previous is not None and features not in (previous, 2 * previous):
        raise ValueError(f"Layer {layer} reads {features} features, but layer {layer - 1}'s "
                         f"directions output {previous} each ({2 * previous} concatenated, "
                         f"as in PyTorch, or {previous} summed).")
    return hidden


def _count_layers(state_dict: Any, suffix: str, bidirectional: bool) -> int:
    """How many layers `state_dict` has (its `weight_ih_l{k}{suffix}` keys, numbered from
    0 without gaps), refusing projections, state dicts of no PyTorch RNN module and, unless
    `bidirectional`, the `_reverse` keys of a bidirectional one."""
    if not isinstance(state_dict, Mapping):
        raise ValueError("state_dict must map names to arrays (a module's state_dict()), "
                         f"got {type(state_dict).__name__}.")
    keys = [key for key in state_dict if isinstance(key, str)]
    projection = next((key for key in keys if _PROJECTION.match(key)), None)
    if projection is not None:
        raise ValueError(f"The state dict has {projection!r}, the projection of an "
                         "nn.LSTM(proj_size=...), which our cells do not have.")
    reverse = next((key for key in keys if _REVERSE.match(key)), None)
    if reverse is not None and not bidirectional:
        raise ValueError(f"The state dict has {reverse!r}, so it is of a bidirectional "
                         "module; port it with from_torch_bidirectional.")
    pattern = re.compile(rf"^weight_ih_l(0|[1-9][0-9]*){suffix}$")
    indices = sorted(int(m.group(1)) for key in keys if (m := pattern.match(key)))
    first = f"weight_ih_l0{suffix}"
    if not indices:
        prefixed = next((key for key in keys if key.endswith(f".{first}")), None)
        if prefixed is not None:
            raise ValueError(f"The state dict has no {first!r} but has {prefixed!r}; pass "
                             "the recurrent module's own state_dict() (without the "
                             f"{prefixed.removesuffix(first)!r} prefix).")
        module = "a bidirectional nn.LSTM/GRU/RNN" if suffix else "nn.LSTM/GRU/RNN"
        raise ValueError(f"The state dict has no {first!r}; is it from {module}?")
    if indices != list(range(len(indices))):
        missing = min(set(range(indices[-1])) - set(indices))
        raise ValueError(f"The state dict has no 'weight_ih_l{missing}{suffix}' but has "
                         f"'weight_ih_l{indices[-1]}{suffix}'; its layers are numbered "
                         "from 0 without gaps.")
    return len(indices)


def _num_layers(num_layers: Any, count: int, suffix: str) -> int:
    """`num_layers` (the first layers of the `count` there are), by default all of them."""
    if num_layers is None:
        return count
    wanted = cells.check_size(num_layers, "num_layers", 1)
    if wanted > count:
        raise ValueError(f"num_layers is {wanted}, but the state dict has {count} layer(s) "
                         f"('weight_ih_l0{suffix}' to 'weight_ih_l{count - 1}{suffix}').")
    return wanted


def _import_layer(cell: str, state_dict: Mapping[str, Any], layer: int, suffix: str,
                  recurrent_bias: bool) -> tuple[cells.Params, int, int]:
    """Our params of one direction of one layer, and its `(F, H)`."""
    key = {name: f"{name}_l{layer}{suffix}"
           for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    label = {name: f"state_dict[{k!r}]" for name, k in key.items()}
    for name in ("weight_ih", "weight_hh"):
        if key[name] not in state_dict:
            raise ValueError(f"The state dict has no {key[name]!r}, which layer {layer} "
                             "needs.")
    has = [key[name] in state_dict for name in ("bias_ih", "bias_hh")]
    if has[0] != has[1]:
        have, lack = (key["bias_ih"], key["bias_hh"])[::1 if has[0] else -1]
        raise ValueError(f"The state dict has {have!r} but no {lack!r}; PyTorch's modules "
                         "have both biases or, with bias=False, neither.")
    arrays = {name: _array(state_dict[key[name]], label[name]).astype(np.float32)
              for name in key if key[name] in state_dict}
    features, hidden = _sizes(
        cell, arrays["weight_ih"], arrays["weight_hh"],
        {label[name]: arrays[name] for name in ("bias_ih", "bias_hh") if name in arrays},
        (label["weight_ih"], label["weight_hh"]), torch_layout=True)
    zeros = np.zeros(cells.NUM_GATES[cell] * hidden, np.float32)  # bias=False
    b_ih, b_hh = arrays.get("bias_ih", zeros), arrays.get("bias_hh", zeros)
    params = {"w_x": jnp.asarray(arrays["weight_ih"].T), "w_h": jnp.asarray(arrays["weight_hh"].T)}
    if cell == "gru" or recurrent_bias:
        params.update(b=jnp.asarray(b_ih), b_h=jnp.asarray(b_hh))
    else:
        params["b"] = jnp.asarray(b_ih + b_hh)
    return params, features, hidden


def from_torch(cell: str, state_dict: Mapping[str, object], num_layers: int | None = None,
               recurrent_bias: bool = False) -> list[cells.Params]:
    """Our per-layer params from a PyTorch RNN module's `state_dict()` arrays.

    Args:
      cell: "lstm", "gru" or "rnn".
      state_dict: keys `weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`,
        `bias_hh_l{k}` (no biases with `bias=False`: they import as zeros; tensors are
        accepted via `.detach().cpu().numpy()` by the caller, or anything `np.asarray`
        converts). Shapes are checked; projections (`proj_size`) and the `_reverse`
        keys of a bidirectional module (`from_torch_bidirectional`) are refused.
      num_layers: port the first `num_layers` layers (at least 1); defaults to all,
        the number of `weight_ih_l{k}` keys.
      recurrent_bias: LSTM / RNN: keep `bias_hh` as our second bias `b_h`
        instead of adding it into `b`.

    Returns:
      A list of parameter dicts, bottom layer first.
    """
    _check_portable(cell)
    check_flag(recurrent_bias, "recurrent_bias")
    count = _count_layers(state_dict, "", bidirectional=False)
    layers, previous = [], None
    for k in range(_num_layers(num_layers, count, "")):
        params, features, hidden = _import_layer(cell, state_dict, k, "", recurrent_bias)
        _check_input(k, features, previous)
        layers.append(params)
        previous = hidden
    return layers


def _layer_list(layers: Any, function: str, layout: str) -> list:
    """The layers of `layers` bottom first, their boxed arrays unboxed: a list of layers,
    a Flax stack's params tree (`{"layer_0": ..., ...}`) or one layer."""
    layers = meta.unbox(layers)
    if isinstance(layers, Mapping):
        numbered = {int(m.group(1)): key for key in layers
                    if isinstance(key, str) and (m := _LAYER_KEY.match(key))}
        if not numbered:
            if "params" in layers:
                raise ValueError(f"{function} takes a stack's params, variables['params'], "
                                 "not its variables.")
            return [layers]
        other = next((key for key in layers if key not in numbered.values()), None)
        if other is not None:
            raise ValueError(f"The params tree has {other!r} besides its 'layer_<l>' "
                             f"entries; {function} takes {layout}.")
        if sorted(numbered) != list(range(len(numbered))):
            missing = min(set(range(max(numbered))) - set(numbered))
            raise ValueError(f"The params tree has no 'layer_{missing}' but has "
                             f"'layer_{max(numbered)}'; its layers are numbered from 0.")
        return [layers[numbered[k]] for k in range(len(numbered))]
    if isinstance(layers, Sequence) and not isinstance(layers, (str, bytes)):
        if not layers:
            raise ValueError(f"{function} needs the params of at least one layer, got none.")
        return list(layers)
    raise ValueError(f"{function} takes {layout}, got {type(layers).__name__}.")


def _export_layer(cell: str, params: Any, where: str) -> tuple[dict[str, np.ndarray], int, int]:
    """PyTorch's four arrays of one layer (`weight_ih`, ... without `_l{k}`) from our
    params, which `where` ("Layer 0's") names, and the layer's `(F, H)`."""
    needed = ("w_x", "w_h", "b", "b_h") if cell == "gru" else ("w_x", "w_h", "b")
    if not isinstance(params, Mapping):
        raise ValueError(f"{where} params must be a dict of arrays {needed}, got "
                         f"{type(params).__name__}.")
    if "forward" in params or "backward" in params:
        raise ValueError(f"{where} params are a bidirectional layer's ('forward', "
                         "'backward'); export them with to_torch_bidirectional.")
    missing = [name for name in needed if name not in params]
    if missing == ["w_x"]:
        raise ValueError(f"{where} params have no 'w_x' (a stack fed its gates' "
                         "pre-activations, project_first_input=False), which PyTorch's "
                         "modules cannot express.")
    if missing:
        raise ValueError(f"{where} params have no {missing[0]!r} (their keys are "
                         f"{sorted(map(str, params))}); a {cell} layer's are {needed}, "
                         f"and the port takes {_LAYOUT}.")
    normalization = sorted(name for name in params
                           if isinstance(name, str) and name.startswith(_NORMALIZATION))
    if normalization:
        raise ValueError(f"{where} params have {normalization[0]!r}, a normalization "
                         "parameter (of lstm_ln or lstm_bn), which PyTorch's modules lack.")
    arrays = {name: _array(params[name], f"{where} {name}")
              for name in ("w_x", "w_h", "b", "b_h") if name in params}
    features, hidden = _sizes(
        cell, arrays["w_x"], arrays["w_h"],
        {f"{where} {name}": arrays[name] for name in ("b", "b_h") if name in arrays},
        (f"{where} w_x", f"{where} w_h"), torch_layout=False)
    out = {"weight_ih": arrays["w_x"].T.copy(), "weight_hh": arrays["w_h"].T.copy(),
           "bias_ih": arrays["b"].copy(),
           "bias_hh": arrays["b_h"].copy() if "b_h" in arrays else np.zeros_like(arrays["b"])}
    return out, features, hidden


def to_torch(cell: str, layers: cells.Params | Sequence[cells.Params] | Mapping[str, Any]
             ) -> dict[str, np.ndarray]:
    """PyTorch state-dict arrays (numpy) from our params; load with
    `module.load_state_dict({k: torch.from_numpy(v) for k, v in d.items()})`.

    `layers`: one layer's params dict (exported as layer 0), a list of them bottom first,
    or a Flax stack's params tree (`variables["params"]` of `nn.StackedRNN`, `{"layer_0":
    ..., "layer_1": ...}`); arrays boxed by `param_axes` are unboxed. Shapes are checked
    (a layer above the first reads the hidden size of the one below)."""
    _check_portable(cell)
    out: dict[str, np.ndarray] = {}
    previous = None
    for k, params in enumerate(_layer_list(layers, "to_torch", _LAYOUT)):
        arrays, features, hidden = _export_layer(cell, params, f"Layer {k}'s")
        _check_input(k, features, previous)
        out.update({f"{name}_l{k}": value for name, value in arrays.items()})
        previous = hidden
    return out


def from_torch_bidirectional(cell: str, state_dict: Mapping[str, object],
                             num_layers: int | None = None, recurrent_bias: bool = False
                             ) -> list[dict[str, cells.Params]]:
    """Our bidirectional stack's params (`rnnreg_jax.bidirectional`) from a PyTorch
    `nn.LSTM/GRU/RNN(bidirectional=True)` module's `state_dict()` arrays: layer k's
    `{"forward": from the _l{k} entries, "backward": from the _l{k}_reverse ones}`,
    each ported (and checked) as `from_torch` ports a layer.

    Args:
      cell: "lstm", "gru" or "rnn".
      state_dict: keys `weight_ih_l{k}`, ..., and `weight_ih_l{k}_reverse`, ....
      num_layers: port the first `num_layers` layers (at least 1); defaults to all, the
        number of `weight_ih_l{k}_reverse` keys (which must match the forward ones).
      recurrent_bias: as in `from_torch`.
    """
    _check_portable(cell)
    check_flag(recurrent_bias, "recurrent_bias")
    count = _count_layers(state_dict, "_reverse", bidirectional=True)
    forward = _count_layers(state_dict, "", bidirectional=True)
    if forward != count:
        raise ValueError(f"The state dict has {forward} forward layer(s) ('weight_ih_l{{k}}') "
                         f"but {count} backward one(s) ('weight_ih_l{{k}}_reverse').")
    layers: list[dict[str, cells.Params]] = []
    previous = None
    for k in range(_num_layers(num_layers, count, "_reverse")):
        layer, sizes = {}, {}
        for direction, suffix in _DIRECTIONS:
            layer[direction], features, hidden = _import_layer(cell, state_dict, k, suffix,
                                                               recurrent_bias)
            sizes[direction] = (features, hidden)
        previous = _check_directions(k, sizes, previous)
        layers.append(layer)
    return layers


def to_torch_bidirectional(cell: str,
                           layers: Sequence[Mapping[str, cells.Params]] | Mapping[str, Any]
                           ) -> dict[str, np.ndarray]:
    """PyTorch state-dict arrays of a bidirectional module from our bidirectional
    stack's params (the inverse of `from_torch_bidirectional`, biases as in `to_torch`).

    `layers`: a list of `{"forward": params, "backward": params}` bottom first, one such
    dict, or the params tree of `nn.Bidirectional` (`{"layer_0": ..., ...}`); arrays
    boxed by `param_axes` are unboxed, and shapes are checked as in `to_torch`."""
    _check_portable(cell)
    out: dict[str, np.ndarray] = {}
    previous = None
    for k, layer in enumerate(_layer_list(layers, "to_torch_bidirectional",
                                          _BIDIRECTIONAL_LAYOUT)):
        if not isinstance(layer, Mapping) or set(layer) != {"forward", "backward"}:
            got = (sorted(map(str, layer)) if isinstance(layer, Mapping)
                   else type(layer).__name__)
            raise ValueError(f"Layer {k} must be {{'forward': params, 'backward': params}}, "
                             f"as from_torch_bidirectional makes them, got {got}.")
        sizes = {}
        for direction, suffix in _DIRECTIONS:
            arrays, features, hidden = _export_layer(cell, layer[direction],
                                                     f"Layer {k}'s {direction}")
            sizes[direction] = (features, hidden)
            out.update({f"{name}_l{k}{suffix}": value for name, value in arrays.items()})
        previous = _check_directions(k, sizes, previous)
    return out
