"""The recurrence with a hand-written backward pass that hoists `dW_h` out of the scan.

Autodiff of `lax.scan` accumulates `dW_h += (h_{t-1} * m_t)^T dz_t` inside
the backward loop: one small rank-B update per step, far below the matmul
ceiling when B is 20. Here the backward scan only propagates the state
cotangents (`dz_t W_h^T`, the one matmul a step cannot avoid) and the
elementwise part of each step is re-derived with `jax.vjp` of the cell's
update function; `dW_h` is then one large `[H, T*B] @ [T*B, G*H]` matmul
after the loop. Every regularizer is supported unchanged, because the
noise only enters the elementwise update and the masked `h_{t-1}`.

With `seq_lengths` (`rnnreg_jax.lengths`) a step past an example's length keeps its
carry and outputs zero; backwards, that example's carry cotangent passes the step
unchanged and its update gets zero cotangents (so no `dW_h`, input or parameter
gradient from padding).

Forward-mode differentiation (jvp) is not defined for this function; use
`implementation="autodiff"` in `rnn.unroll` where it is needed.

Mixed precision (`rnnreg_jax.precision`): each step's new carry is cast back to the
carry's dtype (float32 state, bfloat16 products), and the gradients of the update's
parameters are summed over the steps in at least float32.
"""

from __future__ import annotations

import functools
import typing

import jax
import jax.numpy as jnp

from rnnreg_jax import cells, explicit_sharding, lengths, precision

Array = jax.Array


def _extra_params(cell: str, params: cells.Params, w_rest: Array | None) -> dict:
    """Parameters the elementwise update reads (the GRU's recurrent bias, the
    LN-LSTM's recurrent and cell normalization gains and biases; `w_rest`, the gate
    blocks of `W_h` a cell with `projected_gates` multiplies itself, as its "w_h")."""
    extra = {name: params[name] for name in cells.update_params(cell)}
    return extra if w_rest is None else dict(extra, w_h=w_rest)


def recurrence(cell: str, params: cells.Params, xw: Array, carry: cells.Carry,
               tied: cells.StepNoise, per_step: cells.StepNoise, unroll: int = 1, *,
               seq_lengths: Array | None = None):
    """Scan a layer's steps over projected inputs `xw: [T, B, G*H]`.

    Same results as scanning `cells.get_step(cell)`; gradients computed by
    the hoisted backward pass described in the module docstring. `seq_lengths`: int
    `[B]` in `[1, T]`, as in `rnn.scan_layer` (which refuses it for a cell normalized
    by batch statistics; this function cannot tell).

    Returns:
      `(ys [T, B, H], final carry)`.
    """
    tied = jax.tree.map(jnp.asarray, tied)  # eval-mode scalars become arrays
    valid = None
    if seq_lengths is not None:
        steps = jax.tree.leaves(xw)[0].shape[0]  # every input is scanned, time first
        valid = lengths.valid_steps(lengths.check(seq_lengths, carry["h"].shape[0], steps),
                                    steps)
    w_h, w_rest, leading = params["w_h"], None, cells.projected_gates(cell)
    if leading is not None:  # the scan's product takes the leading blocks
        lead, w_rest = cells.split_recurrent_weights(w_h, leading)
        w_h = typing.cast(Array, lead)  # a [H, G*H] array's are one too
    return _recurrence(cell, unroll, w_h, _extra_params(cell, params, w_rest), xw, carry,
                       tied, per_step, valid)


def _recurrent_weights(w_h: Array, tied: cells.StepNoise, per_step: cells.StepNoise
                       ) -> Array | tuple[Array, ...]:
    """`W_h` (its leading blocks, `cells.projected_gates`) as the per-step product wants
    it (`cells.per_gate_weights` for per-gate masks, one block per gate it holds)."""
    if cells.per_gate_recurrent(tied, per_step) is None:
        return w_h
    return cells.per_gate_weights(w_h, w_h.shape[1] // w_h.shape[0])


def _step_mask(cell, noise: cells.StepNoise):
    """A step's recurrent mask on the blocks of the scan's product."""
    return cells.leading_gates(noise.recurrent, cells.projected_gates(cell))


def _scanned(inputs: tuple, valid: Array | None) -> tuple:
    """The scan's inputs, with the `[T, B]` valid steps last when there are lengths."""
    return inputs if valid is None else (*inputs, valid)


def _update(cell):
    """The cell's update, its new carry in the dtypes (and, under explicit mesh axes, the
    shardings) of the carry it was given, its output sharded like the carry's `h`."""
    update = cells.get_update(cell)
    aux_output = cells.has_aux_output(cell)

    def in_carry_dtypes(extra, c, xw_t, rec_t, noise):
        new_c, y_t = update(extra, c, xw_t, rec_t, noise)
        # and shardings (explicit axes: gate-sharded weights shard the step's results)
        return explicit_sharding.step_like(precision.like(new_c, c), y_t, c, aux_output)

    return in_carry_dtypes


def _forward_scan(cell, unroll, w_h, extra, xw, carry, tied, per_step, valid, save):
    update = _update(cell)
    w_h = _recurrent_weights(w_h, tied, per_step)
    aux_output = cells.has_aux_output(cell)

    def body(c, inputs):
        xw_t, noise_t = inputs[:2]
        noise = cells.merge_noise(tied, noise_t)
        rec_t = cells.recurrent_projection(c["h"], w_h, _step_mask(cell, noise))
        new_c, y_t = update(extra, c, xw_t, rec_t, noise)
        if valid is not None:  # examples past their length keep their state
            new_c, y_t = lengths.freeze(inputs[2], c, new_c, y_t, aux_output)
        return new_c, ((y_t, c, rec_t) if save else y_t)

    return jax.lax.scan(body, carry, _scanned((xw, per_step), valid), unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _recurrence(cell, unroll, w_h, extra, xw, carry, tied, per_step, valid):
    final, ys = _forward_scan(cell, unroll, w_h, extra, xw, carry, tied, per_step, valid,
                              save=False)
    return ys, final


def _recurrence_fwd(cell, unroll, w_h, extra, xw, carry, tied, per_step, valid):
    final, (ys, prev_carries, recs) = _forward_scan(cell, unroll, w_h, extra, xw, carry, tied,
                                                    per_step, valid, save=True)
    return (ys, final), (w_h, extra, xw, tied, per_step, valid, prev_carries, recs)


def _recurrence_bwd(cell, unroll, residuals, cotangents):
    w_h, extra, xw, tied, per_step, valid, prev_carries, recs = residuals
    ct_ys, ct_final = cotangents
    update = _update(cell)
    w_rec = _recurrent_weights(w_h, tied, per_step)
    aux_output = cells.has_aux_output(cell)

    def body(acc, inputs):
        ct_carry, ct_extra = acc
        xw_t, noise_t, c_prev, rec_t, ct_y = inputs[:5]
        noise = cells.merge_noise(tied, noise_t)
        _, vjp = jax.vjp(lambda e, c, x, r: update(e, c, x, r, noise), extra, c_prev, xw_t,
                         rec_t)
        if valid is None:
            d_extra, d_c, d_xw, d_rec = vjp((ct_carry, ct_y))
        else:  # a padded step: the carry's cotangent passes it, its update gets none
            ct_step, ct_past = _split_cotangents(inputs[5], ct_carry, ct_y, aux_output)
            d_extra, d_c, d_xw, d_rec = vjp(ct_step)
            d_c = jax.tree.map(jnp.add, d_c, ct_past)
        d_h = d_c["h"] + cells.recurrent_transpose(d_rec, w_rec, _step_mask(cell, noise))
        d_c = dict(d_c, h=precision.cast(d_h, d_c["h"].dtype))  # a float32 mask promotes
        d_c = explicit_sharding.like(d_c, ct_carry)
        ct_extra = jax.tree.map(jnp.add, ct_extra, d_extra)
        return (d_c, ct_extra), (d_xw, d_rec)

    zeros_extra = jax.tree.map(precision.accumulator_zeros, extra)
    (d_carry0, d_extra), (d_xw, d_recs) = jax.lax.scan(
        body, (ct_final, zeros_extra),
        _scanned((xw, per_step, prev_carries, recs, ct_ys), valid),
        reverse=True, unroll=unroll)
    d_extra = precision.like(d_extra, extra)
    leading = cells.projected_gates(cell)
    d_w_h = cells.recurrent_weight_grad(prev_carries["h"], d_recs,
                                        cells.leading_gates(tied.recurrent, leading),
                                        cells.leading_gates(per_step.recurrent, leading,
                                                            gate_axis=1))
    d_w_h = explicit_sharding.like(d_w_h, w_h)  # custom_vjp wants W_h's type (explicit axes)
    zeros = functools.partial(jax.tree.map, jnp.zeros_like)
    return d_w_h, d_extra, d_xw, d_carry0, zeros(tied), zeros(per_step), None


def _split_cotangents(valid_t, ct_carry, ct_y, aux_output):
    """A step's cotangents with lengths: `((carry, y) cotangents of its update, the
    carry cotangent that passes it)`, by example (`valid_t: [B]`): a valid example's go
    to the update, a padded one's carry cotangent passes to the step before."""
    if aux_output:  # only h_t is per example; the auxiliary output keeps its cotangent
        ct_y = (lengths.mask_rows(valid_t, ct_y[0]), ct_y[1])
    else:
        ct_y = lengths.mask_rows(valid_t, ct_y)
    return ((lengths.mask_rows(valid_t, ct_carry), ct_y),
            lengths.mask_rows(valid_t, ct_carry, keep=False))


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)
