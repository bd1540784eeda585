"""The recurrence of one layer through the persistent Pallas kernels (`kernels`), with a
hand-written backward pass: `jax.custom_vjp` over the forward and backward kernels,
`dW_h` as one matmul over all steps outside them (as in `rnnreg_jax.fused`).

Noise: every step-level site of the covered cells (`gates`) goes into the kernels as
a precomputed mask, tied ones `[B, H]` read once, per-step ones `[T, B, H]` streamed
step by step (exact: the same masks as the scan; drawing them inside the kernel from
its own counter-based RNG would save their HBM traffic but give other draws than
`rnnreg_jax.noise`, and is not done). Evaluation-mode scalars are broadcast to tiles.
Weight drop and weight noise transform `W_h` before the kernels (`rnn.unroll`), and
input masks the projection `xw` before them, so they need nothing here.

On CPU the kernels run in Pallas' interpret mode (slow; for tests); on a GPU they
lower through Triton. Forward-mode differentiation is not defined.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from rnnreg_jax import cells
from rnnreg_jax.pallas import kernels
from rnnreg_jax.pallas.gates import ELEMENTWISE_SITES, GATE_CELLS
from rnnreg_jax.pallas.plan import Plan, check_cell, dtype_refusal, make_plan

Array = jax.Array

_PRECISIONS = {"highest": jax.lax.Precision.HIGHEST, "float32": jax.lax.Precision.HIGHEST,
               "high": jax.lax.Precision.HIGH, "tensorfloat32": jax.lax.Precision.HIGH,
               "bfloat16_3x": jax.lax.Precision.HIGH}


def recurrence(cell: str, params: cells.Params, xw: Array, carry: cells.Carry,
               tied: cells.StepNoise, per_step: cells.StepNoise, *,
               weight_dtype: Any = None, interpret: bool | None = None):
    """Run a layer's steps over projected inputs `xw: [T, B, G*H]` in the Pallas kernels.

    Same results as scanning `cells.get_step(cell)` (to rounding; with a bfloat16
    `weight_dtype`, to bfloat16 rounding of the recurrent product's inputs).

    Args:
      cell: "lstm", "gru" or "rnn" (`plan.KERNEL_CELLS`).
      params: the layer's parameters (`w_h`, and the GRU's `b_h`).
      xw: the input projections, time-major.
      carry: the initial state, dict of `[B, H]`.
      tied, per_step: the layer's step noise (`noise.LayerNoise`).
      weight_dtype: W_h's on-chip dtype (`plan.make_plan`).
      interpret: Pallas' interpret mode; None: on the CPU backend.

    Returns:
      `(ys [T, B, H], final carry)`.
    """
    check_cell(cell)  # first: a cell with auxiliary outputs projects to more than xw
    steps, batch, _ = xw.shape
    hidden = params["w_h"].shape[0]
    plan = make_plan(cell, hidden, batch, xw.dtype, weight_dtype)
    fields = GATE_CELLS[plan.cell].state + (("o",) if "o" in carry else ())
    if set(carry) != set(fields):
        raise ValueError(f"A {plan.cell} carry for implementation='pallas' holds "
                         f"{sorted(fields)}; got {sorted(carry)}.")
    extra = {name: params[name] for name in cells.update_params(plan.cell)}
    # one dtype: the kernels' loop carries the state in the projection's dtype (the scan
    # would keep another carry dtype by casting every new state, and promote W_h's)
    odd = dtype_refusal("the input projection xw", xw.dtype, {
        **{f"params[{name!r}]": params[name] for name in ("w_h", *extra)},
        **{f"carry[{name!r}]": carry[name] for name in sorted(carry)}})
    if odd is not None:
        raise ValueError(odd)
    tied = jax.tree.map(jnp.asarray, tied)  # eval-mode scalars become arrays
    for site in ("cell", "output_gate", "zone_c"):
        if site in _present(tied, per_step) and "c" not in fields:
            raise ValueError(f"Noise site {site!r} needs an LSTM cell state; {plan.cell} "
                             "has none.")
    if "output_gate" in _present(tied, per_step) and "o" not in fields:
        raise ValueError("Output zoneout needs the previous output gate in the carry; "
                         "build it with init_carry(..., output_gate=True).")
    if steps == 0 or batch == 0:  # nothing to run (a grid or block of size 0 fails)
        return jnp.zeros((steps, batch, hidden), xw.dtype), dict(carry)
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    # An option of jax.config is an attribute set at runtime, unknown to its type (and
    # read() refuses options that have a context manager, as this one has).
    matmul_precision = jax.config.jax_default_matmul_precision  # type: ignore[attr-defined]
    precision = _PRECISIONS.get(str(matmul_precision).lower())
    if jnp.dtype(xw.dtype) == jnp.float64:
        precision = jax.lax.Precision.HIGHEST
    return _recurrence((plan, fields, bool(interpret), precision), params["w_h"], extra, xw,
                       carry, tied, per_step)


def _present(tied: cells.StepNoise, per_step: cells.StepNoise) -> set[str]:
    return {site for site, a, b in zip(cells.StepNoise._fields, tied, per_step, strict=True)
            if a is not None or b is not None}


# --- padding: per gate on the feature axis, to the batch block on the batch axis ---

def _pad_axis(x: Array, axis: int, size: int) -> Array:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def _pad(x: Array, plan: Plan, batch_axis: int | None) -> Array:
    """`[..., H]` -> `[..., Hp]`, and the batch axis to `padded_batch`."""
    x = _pad_axis(x, x.ndim - 1, plan.padded_hidden)
    return x if batch_axis is None else _pad_axis(x, batch_axis, plan.padded_batch)


def _pad_gates(x: Array, plan: Plan, batch_axis: int | None) -> Array:
    """`[..., G*H]` -> `[..., G*Hp]` (each gate's block padded), and the batch axis."""
    split = x.reshape(*x.shape[:-1], plan.num_gates, plan.hidden)
    padded = _pad(split, plan, batch_axis)
    return padded.reshape(*padded.shape[:-2], -1)


def _unpad(x: Array, plan: Plan, batch_axis: int) -> Array:
    x = jax.lax.slice_in_dim(x, 0, plan.batch, axis=batch_axis)
    return x[..., :plan.hidden]


def _unpad_gates(x: Array, plan: Plan, batch_axis: int) -> Array:
    x = jax.lax.slice_in_dim(x, 0, plan.batch, axis=batch_axis)
    split = x.reshape(*x.shape[:-1], plan.num_gates, plan.padded_hidden)
    return split[..., :plan.hidden].reshape(*x.shape[:-1], -1)


def _pack_noise(plan: Plan, steps: int, dtype, tied, per_step) -> tuple[dict, dict, dict]:
    """The padded noise arrays, their batch axes and the kernels' `layout`."""
    arrays, axes = {}, {}
    layout: dict[str, str | bool] = {}  # site -> "tied" / "step", "recurrent_per_gate"
    bh = (plan.batch, plan.hidden)
    for site in ("recurrent",) + ELEMENTWISE_SITES:
        value, kind = getattr(tied, site), "tied"
        if value is None:
            value, kind = getattr(per_step, site), "step"
        if value is None:
            continue
        per_gate = site == "recurrent" and cells.is_per_gate(value)
        if per_gate:
            value = value.masks
        shape = ((steps,) if kind == "step" else ()) + ((plan.num_gates,) if per_gate else ())
        axis = len(shape)
        arrays[site] = _pad(jnp.broadcast_to(value, shape + bh).astype(dtype), plan, axis)
        axes[site], layout[site] = axis, kind
        if per_gate:
            layout["recurrent_per_gate"] = True
    return arrays, axes, layout


def _weights(plan: Plan, w_h: Array) -> Array:
    return _pad_gates(_pad_axis(w_h, 0, plan.padded_hidden), plan, None).astype(
        plan.weight_dtype)


def _common_inputs(static, w_h, extra, carry, tied, per_step, steps, dtype):
    plan, fields, _, _ = static
    noise, noise_axes, layout = _pack_noise(plan, steps, dtype, tied, per_step)
    inputs = {"w_h": _weights(plan, w_h), **noise,
              **{f"carry_{f}": _pad(carry[f], plan, 0) for f in fields}}
    axes = {"w_h": None, **noise_axes, **{f"carry_{f}": 0 for f in fields}}
    if "b_h" in extra:
        inputs["b_h"] = _pad_gates(extra["b_h"][None], plan, None).astype(dtype)
        axes["b_h"] = None
    return inputs, axes, layout


def _run_forward(static, w_h, extra, xw, carry, tied, per_step, save: bool):
    plan, fields, interpret, precision = static
    steps, dtype = xw.shape[0], xw.dtype
    inputs, axes, layout = _common_inputs(static, w_h, extra, carry, tied, per_step, steps,
                                          dtype)
    inputs["xw"], axes["xw"] = _pad_gates(xw, plan, 1), 1
    hp, bp, g = plan.padded_hidden, plan.padded_batch, plan.num_gates
    shapes = {"ys": (steps, bp, hp), **{f"final_{f}": (bp, hp) for f in fields}}
    if save:
        shapes["pre"] = (steps, bp, g * hp)
        shapes.update({f"{f}_seq": (steps, bp, hp) for f in fields if f != "h"})
    out_axes = {name: 0 if name.startswith("final_") else 1 for name in shapes}
    out = kernels.call(kernels.forward(plan, layout, fields, save, precision), plan, interpret,
                       inputs, axes, {k: jax.ShapeDtypeStruct(s, dtype)
                                      for k, s in shapes.items()}, out_axes)
    ys = _unpad(out["ys"], plan, 1)
    final = {f: _unpad(out[f"final_{f}"], plan, 0) for f in fields}
    return ys, final, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(static, w_h, extra, xw, carry, tied, per_step):
    ys, final, _ = _run_forward(static, w_h, extra, xw, carry, tied, per_step, save=False)
    return ys, final


def _recurrence_fwd(static, w_h, extra, xw, carry, tied, per_step):
    ys, final, out = _run_forward(static, w_h, extra, xw, carry, tied, per_step, save=True)
    return (ys, final), (w_h, extra, xw, carry, tied, per_step, ys, out)


def _recurrence_bwd(static, residuals, cotangents):
    plan, fields, interpret, precision = static
    w_h, extra, xw, carry, tied, per_step, ys, out = residuals
    ct_ys, ct_final = cotangents
    steps, dtype = xw.shape[0], xw.dtype
    inputs, axes, layout = _common_inputs(static, w_h, extra, carry, tied, per_step, steps,
                                          dtype)
    inputs.update(pre=out["pre"], ys=out["ys"], ct_ys=_pad(ct_ys, plan, 1),
                  **{f"{f}_seq": out[f"{f}_seq"] for f in fields if f != "h"},
                  **{f"ct_final_{f}": _pad(ct_final[f], plan, 0) for f in fields})
    axes.update({name: 1 for name in ("pre", "ys", "ct_ys")},
                **{f"{f}_seq": 1 for f in fields if f != "h"},
                **{f"ct_final_{f}": 0 for f in fields})
    gate_wide = jax.ShapeDtypeStruct(out["pre"].shape, dtype)
    shapes = {"d_rec": gate_wide,
              **{f"d_carry_{f}": jax.ShapeDtypeStruct(out[f"final_{f}"].shape, dtype)
                 for f in fields}}
    if not GATE_CELLS[plan.cell].additive:
        inputs["xw"], axes["xw"] = _pad_gates(xw, plan, 1), 1
        shapes["d_xw"] = gate_wide
    out_axes = {name: 0 if name.startswith("d_carry_") else 1 for name in shapes}
    grads = kernels.call(kernels.backward(plan, layout, fields, precision), plan, interpret,
                         inputs, axes, shapes, out_axes)
    d_rec = _unpad_gates(grads["d_rec"], plan, 1)
    d_xw = _unpad_gates(grads["d_xw"], plan, 1) if "d_xw" in grads else d_rec
    h_prev = jnp.concatenate([carry["h"][None], ys[:-1]], axis=0)
    d_w_h = cells.recurrent_weight_grad(h_prev, d_rec, tied.recurrent, per_step.recurrent)
    # the GRU's b_h, its one update parameter, enters as a = rec + b_h
    d_extra = {name: d_rec.sum(axis=(0, 1)).astype(extra[name].dtype) for name in extra
               if name == "b_h"}
    d_carry = {f: _unpad(grads[f"d_carry_{f}"], plan, 0) for f in fields}
    zeros = functools.partial(jax.tree.map, jnp.zeros_like)
    return d_w_h.astype(w_h.dtype), d_extra, d_xw, d_carry, zeros(tied), zeros(per_step)


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)
