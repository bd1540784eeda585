"""The persistent forward and backward kernels of one layer (Pallas, Triton lowering).

Each program owns one batch block (examples are independent: no program waits for
another) and runs every step of the window in a `fori_loop`. Arrays arrive padded
(`plan`): time-major sequences `[T, Bp, W]`, gate-wide ones with gate g's units at
columns `[g*Hp, (g+1)*Hp)`. Inside, every value is a `[batch block, column block]`
tile: the state is a list of C tiles (C = Hp / column block), and the recurrent
product of gate g for column tile n sums the C dots `(h_k * m_g,k) @ W_h[g, k, n]`, so
no tile is ever split or concatenated (Triton lowers neither in general).

Noise arrives as `layout` says: an elementwise site (`gates.ELEMENTWISE_SITES`) is
"tied" (`[Bp, Hp]`, read once before the loop) or "step" (`[T, Bp, Hp]`, read at
step t); the recurrent mask is "tied" / "step", shared (`[Bp, Hp]` / `[T, Bp, Hp]`) or
per gate (`[G, Bp, Hp]` / `[T, G, Bp, Hp]`).

The forward kernel writes `ys` (h_t), the final carry and, for the backward pass, the
gates' pre-activations (`pre`: z, or the GRU's `a = rec + b_h`) and the other state
sequences (`c_seq`, `o_seq`). The backward kernel runs the steps in reverse: the
elementwise part by `jax.vjp` of `gates`' update, then `dh_{t-1} += (dz_t W_h^T) * m`
with `W_h` on chip; it writes `d_rec` (the cotangent of the recurrent product, also of
the input projection for additive cells; the GRU's `d_xw` apart) and the initial
carry's cotangent. `dW_h` is one matmul outside (`pallas.recurrence`).
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from rnnreg_jax.pallas.gates import ELEMENTWISE_SITES, GATE_CELLS
from rnnreg_jax.pallas.plan import Plan


def _total(values):
    """The sum of an iterable of tiles (without `sum`'s leading 0 + ...)."""
    return functools.reduce(operator.add, values)


def _accumulation_dtype(dtype) -> Any:
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


class _Tiles:
    """Static tile arithmetic of one plan: column slices and W_h's tiles."""

    def __init__(self, plan: Plan, precision):
        self.plan, self.precision = plan, precision
        self.width, self.hidden = plan.column_block, plan.padded_hidden

    def cols(self, n):
        return pl.ds(n * self.width, self.width)

    def gate_cols(self, g, n):
        return pl.ds(g * self.hidden + n * self.width, self.width)

    def weights(self, w_ref):
        """W_h's tiles `w[g][k][n]` (`[rows k, columns n of gate g]`)."""
        chunks = range(self.plan.chunks)
        return [[[w_ref[self.cols(k), self.gate_cols(g, n)] for n in chunks] for k in chunks]
                for g in range(self.plan.num_gates)]

    def dot(self, a, w):
        return jnp.dot(a.astype(w.dtype), w, precision=self.precision,
                       preferred_element_type=_accumulation_dtype(a.dtype))

    def dot_transposed(self, a, w):
        """`a @ w^T`."""
        return jax.lax.dot_general(a.astype(w.dtype), w, (((1,), (1,)), ((), ())),
                                   precision=self.precision,
                                   preferred_element_type=_accumulation_dtype(a.dtype))


def _noise_reader(tiles: _Tiles, layout: dict, refs: dict):
    """`(elementwise(t, n) -> {site: tile}, recurrent(t, g, k) -> tile or None)`; tied
    tiles are read here, once, before the loop."""
    chunks, gates = range(tiles.plan.chunks), range(tiles.plan.num_gates)
    tied = {site: [refs[site][:, tiles.cols(n)] for n in chunks]
            for site, kind in layout.items() if site in ELEMENTWISE_SITES and kind == "tied"}
    rec_kind = layout.get("recurrent")
    per_gate = layout.get("recurrent_per_gate", False)
    if rec_kind == "tied":  # per gate [g][k]; a shared mask's tiles under g = 0
        tied_rec = [[refs["recurrent"][g, :, tiles.cols(k)] if per_gate
                     else refs["recurrent"][:, tiles.cols(k)] for k in chunks]
                    for g in (gates if per_gate else range(1))]

    def elementwise(t, n):
        return {site: (tied[site][n] if kind == "tied" else refs[site][t, :, tiles.cols(n)])
                for site, kind in layout.items() if site in ELEMENTWISE_SITES}

    def recurrent(t, g, k):
        if rec_kind is None:
            return None
        g = g if per_gate else 0
        if rec_kind == "tied":
            return tied_rec[g][k]
        ref = refs["recurrent"]
        return ref[t, g, :, tiles.cols(k)] if per_gate else ref[t, :, tiles.cols(k)]

    return elementwise, recurrent


def _masked_state(tiles: _Tiles, layout: dict, recurrent, t, h) -> dict:
    """`{(g, k): h_k * m_g,k}`: the recurrent product's inputs (one tile per column tile
    k, the same for every gate unless the mask is per gate)."""
    masked: dict[tuple[int, int], jax.Array] = {}
    for k in range(tiles.plan.chunks):
        for g in range(tiles.plan.num_gates):
            if g > 0 and not layout.get("recurrent_per_gate", False):
                masked[g, k] = masked[0, k]
            else:
                m = recurrent(t, g, k)
                masked[g, k] = h[k] if m is None else h[k] * m
    return masked


def forward_kernel(plan: Plan, layout: dict, fields: tuple[str, ...], save: bool,
                   precision, inputs: dict, outputs: dict) -> None:
    """One batch block's steps (see the module docstring); `fields`: the carry's."""
    tiles = _Tiles(plan, precision)
    cell = GATE_CELLS[plan.cell]
    chunks, gates = range(plan.chunks), range(plan.num_gates)
    steps = inputs["xw"].shape[0]
    elementwise, recurrent = _noise_reader(tiles, layout, inputs)
    resident = tiles.weights(inputs["w_h"]) if plan.resident else None
    b_h = ([[inputs["b_h"][:, tiles.gate_cols(g, n)] for n in chunks] for g in gates]
           if not cell.additive else None)

    def body(t, state):
        w = resident if resident is not None else tiles.weights(inputs["w_h"])
        masked = _masked_state(tiles, layout, recurrent, t, state["h"])
        new_state = {f: [] for f in fields}
        for n in chunks:
            rec = [_total(tiles.dot(masked[g, k], w[g][k][n]) for k in chunks).astype(
                state["h"][n].dtype) for g in gates]
            xw = [inputs["xw"][t, :, tiles.gate_cols(g, n)] for g in gates]
            if cell.additive:
                saved = [x + r for x, r in zip(xw, rec, strict=True)]
                pre = saved
            else:
                saved = [r + b_h[g][n] for g, r in enumerate(rec)]
                pre = xw + saved
            new = cell.update(tuple(pre), {f: state[f][n] for f in fields}, elementwise(t, n))
            outputs["ys"][t, :, tiles.cols(n)] = new["h"]
            if save:
                for g in gates:
                    outputs["pre"][t, :, tiles.gate_cols(g, n)] = saved[g]
                for f in fields:
                    if f != "h":
                        outputs[f"{f}_seq"][t, :, tiles.cols(n)] = new[f]
            for f in fields:
                new_state[f].append(new[f])
        return new_state

    _loop_over_time(tiles, chunks, fields, steps, body, inputs, "carry_", outputs, "final_")


def backward_kernel(plan: Plan, layout: dict, fields: tuple[str, ...], precision,
                    inputs: dict, outputs: dict) -> None:
    """One batch block's steps in reverse (see the module docstring)."""
    tiles = _Tiles(plan, precision)
    cell = GATE_CELLS[plan.cell]
    chunks, gates = range(plan.chunks), range(plan.num_gates)
    steps = inputs["pre"].shape[0]
    elementwise, recurrent = _noise_reader(tiles, layout, inputs)
    resident = tiles.weights(inputs["w_h"]) if plan.resident else None
    sequences = {f: inputs["ys"] if f == "h" else inputs[f"{f}_seq"] for f in fields}

    def body(i, d_state):
        t = steps - 1 - i
        first, before = t == 0, jnp.maximum(t - 1, 0)
        w = resident if resident is not None else tiles.weights(inputs["w_h"])
        d_rec = {}
        new_d = {f: [] for f in fields}
        for n in chunks:
            def previous(f, n=n):
                return jnp.where(first, inputs[f"carry_{f}"][:, tiles.cols(n)],
                                 sequences[f][before, :, tiles.cols(n)])

            saved = [inputs["pre"][t, :, tiles.gate_cols(g, n)] for g in gates]
            pre = saved if cell.additive else [inputs["xw"][t, :, tiles.gate_cols(g, n)]
                                               for g in gates] + saved
            noise = elementwise(t, n)
            _, vjp = jax.vjp(lambda p, c, noise=noise: cell.update(p, c, noise), tuple(pre),
                             {f: previous(f) for f in fields})
            ct = {f: d_state[f][n] for f in fields}
            ct["h"] = ct["h"] + inputs["ct_ys"][t, :, tiles.cols(n)]
            d_pre, d_carry = vjp(ct)
            for g in gates:
                d_rec[g, n] = d_pre[g] if cell.additive else d_pre[plan.num_gates + g]
                outputs["d_rec"][t, :, tiles.gate_cols(g, n)] = d_rec[g, n]
                if not cell.additive:
                    outputs["d_xw"][t, :, tiles.gate_cols(g, n)] = d_pre[g]
            for f in fields:
                new_d[f].append(d_carry[f])
        per_gate = layout.get("recurrent_per_gate", False)
        for k in chunks:
            total = None
            for g in gates:
                part = _total(tiles.dot_transposed(d_rec[g, n], w[g][k][n]) for n in chunks)
                if per_gate:
                    part = part * recurrent(t, g, k)
                total = part if total is None else total + part
            if not per_gate and layout.get("recurrent") is not None:
                total = total * recurrent(t, 0, k)
            new_d["h"][k] = new_d["h"][k] + total.astype(new_d["h"][k].dtype)
        return new_d

    _loop_over_time(tiles, chunks, fields, steps, body, inputs, "ct_final_", outputs,
                    "d_carry_")


def _loop_over_time(tiles: _Tiles, chunks, fields, steps: int, body, inputs: dict,
                    read: str, outputs: dict, write: str) -> None:
    """`body` over the steps from the state tiles in `inputs[read + field]`, the final
    ones written to `outputs[write + field]` (the state or its cotangent, per column
    tile)."""
    init = {f: [inputs[f"{read}{f}"][:, tiles.cols(n)] for n in chunks] for f in fields}
    final = jax.lax.fori_loop(0, steps, body, init)
    for f in fields:
        for n in chunks:
            outputs[f"{write}{f}"][:, tiles.cols(n)] = final[f][n]


def _block_spec(shape: tuple[int, ...], batch_axis: int | None, batch_block: int):
    block = tuple(batch_block if a == batch_axis else s for a, s in enumerate(shape))

    def index(b):
        return tuple(b if a == batch_axis else 0 for a in range(len(shape)))

    return pl.BlockSpec(block, index)


def call(kernel, plan: Plan, interpret: bool, inputs: dict, batch_axes: dict,
         out_shapes: dict, out_batch_axes: dict) -> dict:
    """Run `kernel(inputs_refs, outputs_refs)` over the batch blocks: `batch_axes` says
    which axis of each array is the (padded) batch, None for an unblocked one."""
    in_specs = {name: _block_spec(a.shape, batch_axes[name], plan.batch_block)
                for name, a in inputs.items()}
    out_specs = {name: _block_spec(s.shape, out_batch_axes[name], plan.batch_block)
                 for name, s in out_shapes.items()}
    return pl.pallas_call(
        kernel, out_shape=out_shapes, grid=(plan.padded_batch // plan.batch_block,),
        in_specs=[in_specs], out_specs=out_specs, interpret=interpret,
        compiler_params=pltriton.CompilerParams(num_warps=plan.num_warps, num_stages=1),
        name=f"rnnreg_{plan.cell}_recurrence")(inputs)


def forward(plan, layout, fields, save, precision):
    return functools.partial(forward_kernel, plan, layout, fields, save, precision)


def backward(plan, layout, fields, precision):
    return functools.partial(backward_kernel, plan, layout, fields, precision)
