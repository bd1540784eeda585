"""Sharding metadata on a recurrent layer's parameters: logical axis names per array.

A layer's parameters are one Flax param, `layer_<l>`, holding the dict the pure core
takes (`{"w_x", "w_h", "b", ...}`), so Flax's per-param initializer wrappers
(`nn.with_logical_partitioning`) could only name the whole dict. `param_axes`
(`nn.RecurrentOptions`) names the axes of each array instead:

    layer = StackedRNN(64, param_axes={"w_x": ("embed", "gates"),
                                       "w_h": ("hidden", "gates"), "b": ("gates",)})
    variables = layer.init(key, x)          # those arrays boxed in nn.LogicallyPartitioned
    specs = nn.get_partition_spec(variables)  # PartitionSpec("hidden", "gates") for w_h
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    params = jax.device_put(nn.unbox(variables), shardings)

Boxing changes neither the paths of the parameter tree (`nn.unbox(variables)` is the
tree of the unboxed model, `layer_<l>/w_h`) nor the values: the arrays are drawn as
before and only wrapped. Arrays without names stay plain (replicated).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn


def axes_of(param_axes: Mapping[str, Any] | Any) -> dict[str, tuple]:
    """`param_axes` (a mapping, or `(name, axes)` pairs) as a dict of name -> tuple of axis
    names (each a string, or None for an axis left unsharded)."""
    try:
        pairs = dict(param_axes)
    except (TypeError, ValueError):
        raise ValueError("param_axes must map array names to axis names, like "
                         f"{{'w_h': ('hidden', 'gates')}}; got {param_axes!r}.") from None
    out = {}
    for name, axes in pairs.items():
        axes = (axes,) if isinstance(axes, str) or axes is None else tuple(axes)
        if not all(a is None or isinstance(a, str) for a in axes):
            raise ValueError(f"param_axes[{name!r}] must be axis names (strings or None); "
                             f"got {axes!r}.")
        out[name] = axes
    return out


def boxed_init(init: Callable[[Any], dict], param_axes) -> Callable[[Any], dict]:
    """`init` (key -> a layer's dict of arrays) with the arrays `param_axes` names boxed in
    `nn.LogicallyPartitioned`; names the layer does not have are left to `check_names`
    (the first layer of `embed_to_gates` has no `w_x`, the next ones do)."""
    axes = axes_of(param_axes)

    def boxed(key):
        params = dict(init(key))
        for name, names in axes.items():
            if name not in params:
                continue
            if len(names) != params[name].ndim:
                raise ValueError(f"param_axes[{name!r}] names {len(names)} axes, but "
                                 f"{name} has {params[name].ndim} ({params[name].shape}).")
            params[name] = nn.LogicallyPartitioned(params[name], names)
        return params

    return boxed


def check_names(param_axes, layers: list[dict]) -> None:
    """Raise if `param_axes` names an array that no layer of the stack has."""
    present = set().union(*(layer.keys() for layer in layers))
    unknown = sorted(set(axes_of(param_axes)) - present)
    if unknown:
        raise ValueError(f"param_axes names {unknown[0]!r}, which no layer has; the "
                         f"layers' arrays are {sorted(present)}.")
