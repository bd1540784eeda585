"""Masked products and their weight layouts: the input projection and the recurrent
product `(h * m) W` with a mask shared by the gates or one per gate, and, side by side,
the transpose and weight gradient the fused backward pass takes of the recurrent one.

A recurrent mask is per gate when it says so, as a `PerGate` (`[G, B, H]`, `[T, G, B, H]`
per step, time first for the scan); a plain array (`[B, H]`, `[T, B, H]` per step) is
shared by the gates. An input mask's `per_gate` travels beside it (`LayerNoise`). Every
per-step mask is time first, `[T, G, ...]` when per gate.

A product runs in its weights' dtype: the (masked) operand is cast to it
(`precision.operand`), so bfloat16 weights multiply a float32 state or mask in bfloat16
(mixed precision, `rnnreg_jax.precision`); with one dtype throughout nothing is cast.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from rnnreg_jax import explicit_sharding, precision
from rnnreg_jax.cells.base import Array, Params, StepNoise, check_size


def project_inputs(
    params: Params, x: Array, input_mask: Array | None = None, per_gate: bool = False
) -> Array:
    """Input projections of every step in one matmul: `(x * mask) W_x + b`.

    Args:
      params: one layer's parameters.
      x: inputs `[T, B, F]` (time-major).
      input_mask: None; a mask shared by all gates, `[B, F]` (tied per
        sequence) or `[T, B, F]` (per step); or with `per_gate=True` one mask
        per gate, `[G, B, F]` or `[T, G, B, F]` (time first, as every per-step
        mask), which makes the projection one batched matmul over the G gate blocks.
      per_gate: whether `input_mask` has a leading gate axis.

    Returns:
      `[T, B, G*H]`.

    A layer without `w_x` takes inputs that are already its gates'
    pre-activations (`[T, B, G*H]`, a language model's `embed_to_gates`):
    `x + b`, and no input mask.
    """
    if "w_x" not in params:
        if input_mask is not None:
            raise ValueError("A layer fed its gates' pre-activations (no w_x, embed_to_gates) "
                             "takes no input dropout mask.")
        return precision.operand(x, params["b"]) + params["b"]
    w_x, b = params["w_x"], params["b"]
    if input_mask is None:
        return precision.operand(x, w_x) @ w_x + b
    if not per_gate:
        return precision.operand(x * input_mask, w_x) @ w_x + b
    if input_mask.ndim == x.ndim + 1:  # per step, [T, G, B, F]: the product wants gates first
        input_mask = jnp.swapaxes(input_mask, 0, 1)
    # On CPU one [T*B, F] @ [F, H] dot per gate (XLA:CPU runs these at the speed of the
    # shared-mask matmul, a gate-batched einsum at 0.6x); on accelerators one kernel.
    return per_gate_product(x, input_mask, per_gate_weights(w_x, input_mask.shape[0])) + b


def check_gate_width(w: Array, num_gates: int) -> int:
    """`num_gates` (a whole number >= 1) if it splits `w: [F, G*H]`'s columns into equal
    gate blocks, else a one-sentence error (a block width rounded down dropped the
    last columns; 0 gates divided by zero). Static shapes only: nothing runs."""
    num_gates = check_size(num_gates, "num_gates")
    shape = tuple(getattr(w, "shape", ()))
    if len(shape) != 2:
        raise ValueError(f"w must be [F, G*H], got shape {shape}.")
    if shape[1] % num_gates:
        raise ValueError(f"w's {shape[1]} columns must split into num_gates={num_gates} "
                         f"equal gate blocks ([F, G*H]), got shape {shape}.")
    return num_gates


def gate_blocks(w: Array, num_gates: int) -> tuple[Array, ...]:
    """`[F, G*H]` -> G arrays `[F, H]`: one weight block per gate."""
    num_gates = check_gate_width(w, num_gates)
    width = w.shape[1] // num_gates
    return tuple(w[:, g * width:(g + 1) * width] for g in range(num_gates))


def gate_major(w: Array, num_gates: int) -> Array:
    """`[F, G*H] -> [G, F, H]`: the gate blocks stacked, gate axis leading (a batched
    dot's batch axis must lead for XLA to run it without transposing copies)."""
    num_gates = check_gate_width(w, num_gates)
    return jnp.transpose(w.reshape(w.shape[0], num_gates, -1), (1, 0, 2))


def per_gate_weights(w: Array, num_gates: int,
                     backend: str | None = None) -> Array | tuple[Array, ...]:
    """`W_h` laid out for the per-gate recurrent product (a separate mask per gate
    makes it one `[B, H] @ [H, H]` dot per gate), as each backend runs it fastest.

    CPU: G plain blocks (`gate_blocks`), G dots a step; XLA:CPU ran them 1.2-1.3x
    faster than one gate-batched dot (BENCHMARKS.md). Accelerators: one gate-major
    `[G, H, H]` array (`gate_major`) and one batched dot a step, one kernel launch
    instead of G (the G dots cost per-gate dropout a third of an H100's speed).
    The scans call this once per window, so no step slices or copies weights.
    `backend` defaults to JAX's default backend.
    """
    if (backend or jax.default_backend()) == "cpu":
        return gate_blocks(w, num_gates)
    return gate_major(w, num_gates)


@jax.tree_util.register_pytree_node_class
class PerGate:
    """A recurrent mask with one slice per gate, `masks: [G, B, H]` (`[T, G, B, H]` per
    step, time first as the scan slices it): per gate because it is a `PerGate`,
    whatever its rank. A regularizer writing the `recurrent` site per gate wraps its
    masks in one; a plain array is one mask shared by the gates."""

    def __init__(self, masks: Array):
        self.masks = masks

    def tree_flatten(self):
        return (self.masks,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        del aux
        return cls(*children)


_BLOCKS_NEED_PER_GATE = "W_h laid out by gate needs a PerGate recurrent mask."


def is_per_gate(mask) -> bool:
    """Whether a recurrent mask has one slice per gate (`PerGate`)."""
    return isinstance(mask, PerGate)


def per_gate_recurrent(tied: StepNoise, per_step: StepNoise) -> int | None:
    """The number of gates if the recurrent mask is per gate, else None."""
    if is_per_gate(tied.recurrent):
        return tied.recurrent.masks.shape[0]
    if is_per_gate(per_step.recurrent):
        return per_step.recurrent.masks.shape[1]
    return None


def split_recurrent_weights(w_h: Array | tuple[Array, ...], leading: int
                            ) -> tuple[Array | tuple[Array, ...], Array]:
    """`W_h` as a cell with `Cell.projected_gates = leading` uses it: `(its first
    `leading` gate blocks, in `w_h`'s layout (`[H, P*H]`, P blocks, or gate-major
    `[P, H, H]`); the other blocks as one `[H, (G-P)*H]` array)`."""
    if isinstance(w_h, tuple):
        return w_h[:leading], jnp.concatenate(w_h[leading:], axis=1)
    if w_h.ndim == 3:  # gate-major [G, H, H] back to [H, (G-P)*H] for the rest
        rest = w_h[leading:]
        return w_h[:leading], jnp.transpose(rest, (1, 0, 2)).reshape(rest.shape[1], -1)
    columns = leading * w_h.shape[0]  # W_h: [H, G*H]
    return w_h[:, :columns], w_h[:, columns:]


def leading_gates(mask: Array | PerGate | None, leading: int | None, gate_axis: int = 0):
    """A recurrent mask for the first `leading` gate blocks of the product (None: all):
    a `PerGate`'s first slices along `gate_axis` (1 for per-step masks `[T, G, B, H]`);
    a mask shared by the gates, or none, as it is."""
    if leading is None or not isinstance(mask, PerGate):
        return mask
    return PerGate(jax.lax.slice_in_dim(mask.masks, 0, leading, axis=gate_axis))


def leading_projection(h: Array, w_h: Array | tuple[Array, ...], mask, leading: int
                       ) -> tuple[Array, Array]:
    """A step of a cell with `Cell.projected_gates = leading`: `(rec_t, the other gate
    blocks of W_h)`, `rec_t` being `(h * mask) W_h` over the first `leading` blocks only
    (`split_recurrent_weights`, `leading_gates`)."""
    w_lead, w_rest = split_recurrent_weights(w_h, leading)
    return recurrent_projection(h, w_lead, leading_gates(mask, leading)), w_rest


def recurrent_projection(h: Array, w_h: Array | tuple[Array, ...],
                         mask: Array | PerGate | None) -> Array:
    """`(h * mask) W_h`: `[B, H] -> [B, G*H]`; a `PerGate` mask `[G, B, H]` per gate.

    With a per-gate mask, `w_h` may come already laid out by `per_gate_weights`
    (G blocks, or gate-major `[G, H, H]`), which is how the scans pass it.
    """
    if not isinstance(mask, PerGate):  # one mask (or none) for all gates: the whole W_h
        assert not isinstance(w_h, tuple), _BLOCKS_NEED_PER_GATE
        if mask is None:
            return precision.operand(h, w_h) @ w_h
        return precision.operand(h * mask, w_h) @ w_h
    masks = mask.masks
    w = w_h if isinstance(w_h, tuple) or w_h.ndim == 3 else per_gate_weights(w_h, len(masks))
    return per_gate_product(h, masks, w)


def per_gate_product(x: Array, mask: Array, w: Array | tuple[Array, ...]) -> Array:
    """`concat_g((x * mask[g]) @ W_g)`: `[..., F] -> [..., G*H]`, one mask per gate.

    `mask[g]` broadcasts against `x` (`[B, F]` against `[T, B, F]`, say); `w` is laid
    out by `per_gate_weights`: G blocks (G dots) or gate-major `[G, F, H]` (one
    gate-batched dot).
    """
    if isinstance(w, tuple):
        return jnp.concatenate([precision.operand(x * m, wg) @ wg
                                for m, wg in zip(mask, w, strict=True)], axis=-1)
    lead = (1,) * (x.ndim + 1 - mask.ndim)  # the axes of x that mask[g] broadcasts over
    masked = precision.operand(x[None] * mask.reshape(mask.shape[:1] + lead + mask.shape[1:]),
                               w)
    out = jnp.einsum("g...f,gfh->...gh", masked, w)
    return out.reshape(*out.shape[:-2], -1)


def recurrent_transpose(d_rec: Array, w_h: Array | tuple[Array, ...],
                        mask: Array | PerGate | None) -> Array:
    """Cotangent of h_{t-1} through `rec = (h * m) W_h`: `(d_rec W_h^T) * m`.

    With a per-gate mask `w_h` is laid out by `per_gate_weights` (G blocks, or
    gate-major `[G, H, H]`) and the cotangent sums the G gates' `(d_rec_g W_g^T) * m_g`.
    """
    out = explicit_sharding.transpose_sharding(d_rec, w_h)  # None without explicit axes
    if not isinstance(mask, PerGate):  # one mask (or none) for all gates: the whole W_h
        assert not isinstance(w_h, tuple), _BLOCKS_NEED_PER_GATE
        if mask is None:
            return jnp.matmul(d_rec, w_h.T, out_sharding=out)
        return jnp.matmul(d_rec, w_h.T, out_sharding=out) * mask
    masks = mask.masks
    num_gates = masks.shape[0]
    if isinstance(w_h, tuple):
        d_blocks = jnp.split(d_rec, num_gates, axis=-1)
        return sum(jnp.matmul(d, w.T, out_sharding=out) * m
                   for d, w, m in zip(d_blocks, w_h, masks, strict=True))
    d = jnp.swapaxes(d_rec.reshape(d_rec.shape[0], num_gates, -1), 0, 1)  # [G, B, H]
    out = None if out is None else explicit_sharding.transpose_sharding(d, w_h)
    return jnp.sum(jnp.einsum("gbk,ghk->gbh", d, w_h, out_sharding=out) * masks, axis=0)


def recurrent_weight_grad(h_prev: Array, d_recs: Array, tied_mask, step_mask) -> Array:
    """`dW_h = sum_t (h_{t-1} * m_t)^T d_rec_t` as one matmul over T*B rows (per gate
    for per-gate masks)."""
    mask = tied_mask if tied_mask is not None else step_mask
    if explicit_sharding.axes_of(h_prev, 1) is not None:
        return _weight_grad_over_batch_shards(h_prev, d_recs, mask, tied_mask is not None)
    steps, batch, hidden = h_prev.shape
    rows = steps * batch
    if not is_per_gate(mask):
        hm = h_prev if mask is None else h_prev * mask
        hm = precision.operand(hm, d_recs)  # the product in the cotangents' (W_h's) dtype
        return hm.reshape(rows, hidden).T @ d_recs.reshape(rows, d_recs.shape[-1])
    gate_masks = (mask.masks if tied_mask is not None
                  else jnp.swapaxes(mask.masks, 0, 1))  # [G, (T,) B, H]
    d_blocks = jnp.split(d_recs.reshape(rows, d_recs.shape[-1]), len(gate_masks), axis=-1)
    return jnp.concatenate([precision.operand(h_prev * m, d).reshape(rows, hidden).T @ d
                            for m, d in zip(gate_masks, d_blocks, strict=True)], axis=-1)


def _weight_grad_over_batch_shards(h_prev: Array, d_recs: Array, mask, tied: bool) -> Array:
    """`recurrent_weight_grad` with the batch sharded over an explicit mesh axis: `[T, B]`
    cannot merge into rows split like the batch, so each product contracts both axes,
    its sum over the shards replicated over them (its gate columns sharded as the
    cotangents' are: tensor-parallel weights)."""
    def product(h, d):
        return jnp.einsum("tbh,tbk->hk", precision.operand(h, d), d,
                          out_sharding=PartitionSpec(None, explicit_sharding.axes_of(d, 2)))

    if not is_per_gate(mask):
        return product(h_prev if mask is None else h_prev * mask, d_recs)
    gate_masks = (mask.masks if tied
                  else jnp.swapaxes(mask.masks, 0, 1))  # [G, (T,) B, H]
    d_blocks = jnp.split(d_recs, len(gate_masks), axis=-1)
    return jnp.concatenate([product(h_prev * m, d)
                            for m, d in zip(gate_masks, d_blocks, strict=True)], axis=-1)
