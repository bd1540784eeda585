"""Explicit-axis meshes: the recurrent state sharded over the batch like the inputs,
whatever the weights' sharding.

Under a mesh with explicit axes (`jax.make_mesh(..., axis_types=(AxisType.Explicit,))`
and `jax.set_mesh`) every array's type carries its sharding, and `lax.scan` requires
the carry it is given to have the type the step returns. A step fed batch-sharded
inputs returns a batch-sharded state, so the zero state is built sharded the same way
(`shard_like_batch`), and a state the caller passes in must already be
(`check_carry`). Weights sharded over a model axis (tensor parallelism: the gate axis
of `w_x`, `w_h`, `b`) make the step's products shard its new state over the hidden axis
as well; `step_like` reshards each step's state and output as the state it was given,
`transpose_sharding` types the fused pass's `dz W_h^T`, and `check_weights` refuses by
name the layouts the products cannot take. Without a mesh, or with Auto axes
(`jax.sharding.Mesh`), a type's spec names no mesh axes: these functions then trace
nothing and the program is the one without them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

Array = jax.Array


def axes_of(x: Any, axis: int) -> Any:
    """The mesh axes `x`'s dimension `axis` is sharded over in its type (explicit axes),
    None when it is not (no mesh, Auto axes, or replicated)."""
    spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
    if spec is None or not 0 <= axis < len(spec):  # a 0-d parameter has no axis -1
        return None
    return spec[axis]


def shard_like_batch(carry: Any, x: Array, batch_axis: int = 1) -> Any:
    """`carry` (a pytree of `[B, ...]` arrays) resharded over the mesh axes of `x`'s
    batch dimension `batch_axis`; `carry` itself when that dimension is not sharded in
    `x`'s type."""
    axes = axes_of(x, batch_axis)
    if axes is None:
        return carry
    return jax.tree.map(
        lambda leaf: jax.sharding.reshard(leaf, PartitionSpec(axes, *[None] * (leaf.ndim - 1))),
        carry)


def spec_of(x: Any) -> Any:
    """`x`'s PartitionSpec in its type, None when it names no mesh axis (no mesh, Auto
    axes, or replicated)."""
    spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
    if spec is None or all(axes is None for axes in spec):
        return None
    return spec


def like(new: Any, old: Any) -> Any:
    """`new` (a pytree) with each array resharded as its counterpart in `old` is (a
    step's new carry as the scan carries it: with weights sharded over their gate axis
    the step's state comes out sharded over the hidden axis too); arrays already sharded
    so, and every array without explicit axes, are returned as they are."""
    def one(n, o):
        want = spec_of(o)
        return n if spec_of(n) == want else jax.sharding.reshard(n, want or PartitionSpec())

    return jax.tree.map(one, new, old)


def step_like(new_carry: Any, y_t: Any, carry: Any, aux_output: bool = False
              ) -> tuple[Any, Any]:
    """A step's `(new_carry, y_t)` sharded as the state it was given: the carry like
    `carry` (`like`) and the output `y_t` (`[B, H]`, or the pair `(y, aux)` of a cell
    with an auxiliary output) like its `h`, so a layer's outputs are sharded over the
    batch as they are without sharded weights (the next layer's product then needs no
    choice). Without explicit axes both are returned as they are."""
    new_carry = like(new_carry, carry)
    if aux_output:
        return new_carry, (like(y_t[0], carry["h"]), y_t[1])
    return new_carry, like(y_t, carry["h"])


def transpose_sharding(rows: Array, weights: Any) -> Any:
    """The sharding to give `rows @ W^T` (`[..., B, G*H] -> [..., B, H]`, the recurrent
    product's transpose) when the weights are sharded over an explicit mesh axis: with
    `W`'s gate axis sharded like `rows`' the contraction is ambiguous to JAX, and the
    result is sharded like `rows`' batch axis (`-2`), the rest replicated, as the state
    it is the cotangent of. None when `W` names no mesh axis (the product as written)."""
    w = weights[0] if isinstance(weights, tuple) else weights
    if spec_of(w) is None:
        return None
    return PartitionSpec(*[None] * (rows.ndim - 2), axes_of(rows, rows.ndim - 2), None)


def rows_sharding(ids: Array, row_ndim: int = 1) -> PartitionSpec | None:
    """The sharding of `table[ids]` (an embedding lookup): its rows over `ids`' batch axis
    0 as `ids` has it, or None when that axis is not sharded in `ids`' type. Under
    explicit axes a gather from a replicated table cannot infer its output's sharding
    (the lookup of `nn.Embed` / `nnx.Embed` fails), so it is given."""
    axes = axes_of(ids, 0)
    if axes is None:
        return None
    return PartitionSpec(axes, *[None] * (ids.ndim - 1 + row_ndim))  # ids' other axes, the row


def check_carry(carry: Any, x: Array, batch_axis: int = 1) -> None:
    """Raise if a leaf of `carry` with a leading batch axis is sharded over it otherwise
    than `x`'s batch dimension `batch_axis` (the scan would refuse it with a less direct
    message); leaves without one (a user cell's scalar state) are not checked."""
    expected = axes_of(x, batch_axis)
    for path, leaf in jax.tree_util.tree_leaves_with_path(carry):
        if not jnp.ndim(leaf) or jnp.shape(leaf)[0] != jnp.shape(x)[batch_axis]:
            continue
        got = axes_of(leaf, 0)
        if got != expected:
            raise ValueError(
                f"The carry{jax.tree_util.keystr(path)} has its batch axis sharded over "
                f"{got!r} but the inputs' is sharded over {expected!r}; reshard it like the "
                f"inputs (jax.sharding.reshard(carry, PartitionSpec({expected!r}, None))).")


def _mesh_axes(entry: Any) -> set[str]:
    """The mesh axis names of one entry of a PartitionSpec (None, a name, or a tuple)."""
    if entry is None:
        return set()
    return {entry} if isinstance(entry, str) else set(entry)


def check_weights(params: dict, x: Array, carry: Any, batch_axis: int = 1) -> None:
    """Raise, naming the array, for the weight layouts the products cannot take under
    explicit axes (JAX would refuse them with a message about a `dot_general`): a
    parameter's last axis (gates or hidden units) sharded over a mesh axis that also
    shards `x`'s batch dimension, `w_x`'s input axis sharded like `x`'s features, or
    `w_h`'s input axis sharded like the carry's `h`. Every other layout of the weights
    (over the gate axis, or the input axis alone) is taken; without explicit axes
    nothing is checked."""
    batch = _mesh_axes(axes_of(x, batch_axis))
    for name, w in params.items():
        shared = batch & _mesh_axes(axes_of(w, jnp.ndim(w) - 1))
        if shared:
            raise ValueError(
                f"params[{name!r}] has its last axis sharded over {sorted(shared)}, which "
                f"also shards the inputs' batch axis; shard it over another mesh axis or "
                f"replicate it.")
    for name, operand, what in (("w_x", x, "the inputs' features"),
                                ("w_h", carry.get("h"), "the carry's h")):
        if name not in params or operand is None:
            continue
        shared = (_mesh_axes(axes_of(params[name], 0))
                  & _mesh_axes(axes_of(operand, jnp.ndim(operand) - 1)))
        if shared:
            raise ValueError(
                f"params[{name!r}] has its input axis sharded over {sorted(shared)}, like "
                f"{what}; shard {name} over its gate axis or replicate it (or replicate "
                f"{what}).")
