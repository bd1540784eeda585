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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from rnnreg_jax import cells


def _check_portable(cell: str) -> None:
    """Only cells with a PyTorch counterpart port (not the layer-normalized LSTM)."""
    if cell not in cells.CELL_TYPES:
        raise ValueError(f"Cell {cell!r} has no PyTorch counterpart; portable cells are "
                         f"{cells.CELL_TYPES}.")


def from_torch(cell: str, state_dict: Mapping[str, object], num_layers: int | None = None,
               recurrent_bias: bool = False) -> list[cells.Params]:
    """Our per-layer params from a PyTorch RNN module's `state_dict()` arrays.

    Args:
      cell: "lstm", "gru" or "rnn".
      state_dict: keys `weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`,
        `bias_hh_l{k}` (tensors are accepted via `.detach().numpy()` by the
        caller, or anything `np.asarray` converts).
      num_layers: defaults to the number of `weight_ih_l*` keys.
      recurrent_bias: LSTM / RNN: keep `bias_hh` as our second bias `b_h`
        instead of adding it into `b`.

    Returns:
      A list of parameter dicts, bottom layer first.
    """
    _check_portable(cell)
    if num_layers is None:
        num_layers = sum(1 for k in state_dict if k.startswith("weight_ih_l"))
    if num_layers == 0:
        raise ValueError("The state dict has no 'weight_ih_l0'; is it from nn.LSTM/GRU/RNN?")
    layers = []
    for k in range(num_layers):
        get = lambda name, k=k: np.asarray(state_dict[f"{name}_l{k}"], np.float32)
        w_ih, w_hh = get("weight_ih"), get("weight_hh")
        b_ih, b_hh = get("bias_ih"), get("bias_hh")
        params = {"w_x": jnp.asarray(w_ih.T), "w_h": jnp.asarray(w_hh.T)}
        if cell == "gru" or recurrent_bias:
            params.update(b=jnp.asarray(b_ih), b_h=jnp.asarray(b_hh))
        else:
            params["b"] = jnp.asarray(b_ih + b_hh)
        layers.append(params)
    return layers


def to_torch(cell: str, layers: cells.Params | Sequence[cells.Params]) -> dict[str, np.ndarray]:
    """PyTorch state-dict arrays (numpy) from our params; load with
    `module.load_state_dict({k: torch.from_numpy(v) for k, v in d.items()})`."""
    _check_portable(cell)
    if isinstance(layers, Mapping):
        layers = [layers]
    out: dict[str, np.ndarray] = {}
    for k, params in enumerate(layers):
        out[f"weight_ih_l{k}"] = np.asarray(params["w_x"]).T.copy()
        out[f"weight_hh_l{k}"] = np.asarray(params["w_h"]).T.copy()
        out[f"bias_ih_l{k}"] = np.asarray(params["b"]).copy()
        if "b_h" in params:
            out[f"bias_hh_l{k}"] = np.asarray(params["b_h"]).copy()
        else:
            out[f"bias_hh_l{k}"] = np.zeros_like(out[f"bias_ih_l{k}"])
    return out


def _one_direction(state_dict: Mapping[str, object], layer: int, suffix: str) -> dict:
    """One direction of one layer as a one-layer state dict (`_l0` keys)."""
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    return {f"{name}_l0": state_dict[f"{name}_l{layer}{suffix}"] for name in names}


def from_torch_bidirectional(cell: str, state_dict: Mapping[str, object],
                             num_layers: int | None = None, recurrent_bias: bool = False
                             ) -> list[dict[str, cells.Params]]:
    """Our bidirectional stack's params (`rnnreg_jax.bidirectional`) from a PyTorch
    `nn.LSTM/GRU/RNN(bidirectional=True)` module's `state_dict()` arrays: layer k's
    `{"forward": from the _l{k} entries, "backward": from the _l{k}_reverse ones}`,
    each ported as `from_torch` ports a layer.

    Args:
      cell: "lstm", "gru" or "rnn".
      state_dict: keys `weight_ih_l{k}`, ..., and `weight_ih_l{k}_reverse`, ....
      num_layers: defaults to the number of `weight_ih_l*_reverse` keys.
      recurrent_bias: as in `from_torch`.
    """
    _check_portable(cell)
    if num_layers is None:
        num_layers = sum(1 for k in state_dict
                         if k.startswith("weight_ih_l") and k.endswith("_reverse"))
    if num_layers == 0:
        raise ValueError("The state dict has no 'weight_ih_l0_reverse'; is it from a "
                         "bidirectional nn.LSTM/GRU/RNN?")
    return [{direction: from_torch(cell, _one_direction(state_dict, k, suffix), 1,
                                   recurrent_bias)[0]
             for direction, suffix in (("forward", ""), ("backward", "_reverse"))}
            for k in range(num_layers)]


def to_torch_bidirectional(cell: str, layers: Sequence[Mapping[str, cells.Params]]
                           ) -> dict[str, np.ndarray]:
    """PyTorch state-dict arrays of a bidirectional module from our bidirectional
    stack's params (the inverse of `from_torch_bidirectional`, biases as in `to_torch`)."""
    _check_portable(cell)
    out: dict[str, np.ndarray] = {}
    for k, layer in enumerate(layers):
        for direction, suffix in (("forward", ""), ("backward", "_reverse")):
            for name, value in to_torch(cell, layer[direction]).items():
                out[f"{name.removesuffix('_l0')}_l{k}{suffix}"] = value
    return out
