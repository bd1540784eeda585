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

The task models (`models.LanguageModel`, `models.SequenceModel`) also take names for
their own arrays, by path (`MODEL_ARRAYS`): `"embed/embedding": ("vocab", "embed")`,
`"softmax/kernel": ("embed", "vocab")` shard a large vocabulary, say; the rest of
`param_axes` goes to the stack.

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


# The task models' own arrays, by their path in the model's `params` tree.
MODEL_ARRAYS = ("embed/embedding", "softmax/kernel", "softmax/bias", "softmax_bias",
                "head/kernel", "head/bias")


def split_model_axes(param_axes) -> tuple[dict[str, tuple], tuple | None]:
    """`param_axes` of a task model split into `(names of the model's own arrays, the
    stack's param_axes as (name, axes) pairs or None)`."""
    if param_axes is None:
        return {}, None
    axes = axes_of(param_axes)
    rest = tuple((name, names) for name, names in axes.items() if name not in MODEL_ARRAYS)
    return {name: names for name, names in axes.items() if name in MODEL_ARRAYS}, rest or None


def check_model_names(own: dict, present: tuple[str, ...]) -> None:
    """Raise if `own` names a model array this model does not have."""
    unknown = sorted(set(own) - set(present))
    if unknown:
        raise ValueError(f"param_axes names {unknown[0]!r}, which this model does not have; "
                         f"its own arrays are {list(present)}.")


def boxed_array_init(init: Callable, names: tuple | None, path: str) -> Callable:
    """A Flax initializer `(key, shape, dtype) -> array` whose array is boxed in
    `nn.LogicallyPartitioned` with `names` (unchanged when `names` is None)."""
    if names is None:
        return init

    def boxed(key, shape, *args, **kwargs):
        if len(names) != len(shape):
            raise ValueError(f"param_axes[{path!r}] names {len(names)} axes, but {path} has "
                             f"{len(shape)} ({tuple(shape)}).")
        return nn.LogicallyPartitioned(init(key, shape, *args, **kwargs), names)

    return boxed


def check_names(param_axes, layers: list[dict]) -> None:
    """Raise if `param_axes` names an array that no layer of the stack has."""
    present = set().union(*(layer.keys() for layer in layers))
    unknown = sorted(set(axes_of(param_axes)) - present)
    if unknown:
        raise ValueError(f"param_axes names {unknown[0]!r}, which no layer has; the "
                         f"layers' arrays are {sorted(present)}.")
