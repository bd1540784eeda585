"""Explicit-axis meshes: the recurrent state sharded over the batch like the inputs.

Under a mesh with explicit axes (`jax.make_mesh(..., axis_types=(AxisType.Explicit,))`
and `jax.set_mesh`) every array's type carries its sharding, and `lax.scan` requires
the carry it is given to have the type the step returns. A step fed batch-sharded
inputs returns a batch-sharded state, so the zero state is built sharded the same way
(`shard_like_batch`), and a state the caller passes in must already be
(`check_carry`). Without a mesh, or with Auto axes (`jax.sharding.Mesh`), a type's
spec names no mesh axes: both functions then trace nothing and the program is the one
without them.
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
    if spec is None or len(spec) <= axis:
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


def take_rows(table: Array, ids: Array) -> Array | None:
    """`table[ids]` (an embedding lookup) with the rows sharded over `ids`' batch axis 0
    as `ids` is, or None when that axis is not sharded in `ids`' type: under explicit
    axes a gather from a replicated table cannot infer its output's sharding (the lookup
    of `nn.Embed` / `nnx.Embed` fails), so it is given."""
    axes = axes_of(ids, 0)
    if axes is None:
        return None
    rest = [None] * (ids.ndim + table.ndim - 2)  # ids' other axes, then the row's
    return table.at[ids].get(out_sharding=PartitionSpec(axes, *rest))


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
