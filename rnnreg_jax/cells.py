"""Pure recurrent cell steps: LSTM, GRU and the tanh RNN.

A cell is split in two so the input projection of every time step runs as one
large matmul outside `lax.scan` (the fast path), and only `h @ W_h` stays in
the loop:

    xw = project_inputs(params, x, input_mask)        # [T, B, G*H], once
    carry, y_t = step(params, carry, xw[t], noise_t)  # per step, in the scan

A step is deterministic given its arguments: it never samples noise. Every
mask or mixing coefficient arrives in `noise_t` (a `StepNoise`), sampled from
explicit keys by `rnnreg_jax.noise`.

Gate order (PyTorch's, so weights port both ways, see `rnnreg_jax.torch_port`):
  * LSTM ``i, f, g, o``: the columns of `w_x`, `w_h`, `b` hold the input,
    forget, candidate and output gate blocks of width H, in that order.
  * GRU ``r, z, n`` with PyTorch's *reset-after* candidate:
    ``n = tanh(x W_in + b_in + r * (h W_hn + b_hn))``, ``h' = (1 - z) n + z h``.
  * RNN: ``h' = tanh(x W_x + b + h W_h)``.
  * ``lstm_ln``: the layer-normalized LSTM of Ba et al. 2016 (same gate
    order; see `lstm_ln_update`). Not one of the papers' cells, so it is in
    `ALL_CELL_TYPES` but not in `CELL_TYPES`, and it has no PyTorch port.
  * ``lstm_bn``: the recurrently batch-normalized LSTM of Cooijmans et al.
    2016 (same gate order), in `rnnreg_jax.batchnorm`; likewise beyond the papers.

Weights are stored input-major (`w_x: [F, G*H]`, `w_h: [H, G*H]`), the
transpose of PyTorch's `weight_ih_l0: [G*H, F]`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Params = dict[str, Array]
Carry = dict[str, Array]

CELL_TYPES = ("lstm", "gru", "rnn")  # the reproduced papers' cells (PyTorch-portable)
# Beyond the papers: layer-normalized LSTM (Ba et al. 2016), recurrent batch
# normalization (Cooijmans et al. 2016, `rnnreg_jax.batchnorm`).
EXTRA_CELL_TYPES = ("lstm_ln", "lstm_bn")
ALL_CELL_TYPES = CELL_TYPES + EXTRA_CELL_TYPES
# cells with a memory cell `c` (every LSTM-only site applies)
LSTM_TYPES = ("lstm", "lstm_ln", "lstm_bn")
# Cells that may carry a second, additive bias `b_h` (`init_params(recurrent_bias=True)`);
# the GRU always has its `b_h`, inside the reset gate's product.
RECURRENT_BIAS_CELLS = ("lstm", "rnn")
NUM_GATES = {"lstm": 4, "gru": 3, "rnn": 1, "lstm_ln": 4, "lstm_bn": 4}
LN_EPSILON = 1e-5  # added to the variance in every layer normalization


class StepNoise(NamedTuple):
    """The noise one step consumes; every field is optional (None = off).

    Dropout masks are already scaled by 1/(1 - rate) (inverted dropout), so
    None is both "off" and the deterministic expectation. Mixing coefficients
    (`zone_*`, `depth`, `output_gate`) are the probability of *keeping the
    previous value*: a {0, 1} sample in training and the rate itself (the
    expectation) in deterministic mode.

    Attributes:
      recurrent: mask on h_{t-1} before `W_h`, `[B, H]`, or `[G, B, H]` with a
        separate mask per gate (Gal's untied variant).
      cell: rnnDrop mask on the new cell `c_t`, `[B, H]` (LSTM only).
      update: Semeniuta recurrent-dropout mask on the candidate `g`, `[B, H]`.
      output_gate: output-zoneout coefficient `d`: `o_t <- d o_{t-1} + (1-d) o_t`.
      zone_c: zoneout coefficient of the cell, `[B, H]` or a scalar.
      zone_h: zoneout coefficient of the hidden state, `[B, H]` or a scalar.
      depth: stochastic-depth coefficient, `[B, 1]` or a scalar: the whole
        layer keeps its previous state.
    """

    recurrent: Any = None
    cell: Any = None
    update: Any = None
    output_gate: Any = None
    zone_c: Any = None
    zone_h: Any = None
    depth: Any = None


def merge_noise(tied: StepNoise, step: StepNoise) -> StepNoise:
    """One step's noise: each field from `tied` (reused every step) or, if None there,
    from `step` (this step's slice of the per-step arrays)."""
    return StepNoise(*(a if a is not None else b for a, b in zip(tied, step, strict=True)))


@dataclasses.dataclass(frozen=True)
class Cell:
    """A cell of your own, as a record of pure functions (the built-in cells are named by
    strings; `register` makes a record's name one too).

    Attributes:
      name: a name for errors and `register`.
      num_gates: G: the input and recurrent projections are `[.., G*H]` wide.
      update: `(params, carry, xw_t, rec_t, noise) -> (carry, h_t)`: one step given the
        projected input `xw_t = x_t W_x + b` and `rec_t = (h_{t-1} * m_h) W_h`, both
        `[B, G*H]`; `noise` is the step's `StepNoise` (apply the sites you support with
        `gates.mix` and friends, or reject them). Pure: jit, grad and the fused backward
        pass (which re-derives it with `jax.vjp`) take it as it is.
      has_memory: whether the carry holds a memory cell `c` beside `h` (LSTM-only
        regularizer sites need it).
      update_params: the parameters `update` reads (besides the carry and projections);
        the fused backward pass differentiates them.
      init_params: `(key, input_size, hidden_size, init_scale, dtype) -> params`; None:
        `w_x: [F, G*H]`, `w_h: [H, G*H]`, `b: [G*H]` uniform in [-scale, scale].
    """

    name: str
    num_gates: int
    update: Callable
    has_memory: bool = False
    update_params: tuple[str, ...] = ()
    init_params: Callable | None = None


REGISTRY: dict[str, Cell] = {}


def register(cell: Cell) -> Cell:
    """Make `cell.name` usable wherever a cell type is named (`cell="mgu"`)."""
    if cell.name in ALL_CELL_TYPES:
        raise ValueError(f"{cell.name!r} is a built-in cell type; choose another name.")
    REGISTRY[cell.name] = cell
    return cell


def record_of(cell: Any) -> Cell | None:
    """The record of a user's cell (given itself or by its registered name), or None for
    a built-in cell type."""
    if isinstance(cell, Cell):
        return cell
    return REGISTRY.get(cell) if isinstance(cell, str) else None


def num_gates(cell: Any) -> int:
    record = record_of(cell)
    return record.num_gates if record is not None else NUM_GATES[cell]


def has_memory(cell: Any) -> bool:
    record = record_of(cell)
    return record.has_memory if record is not None else cell in LSTM_TYPES


def update_params(cell: Any) -> tuple[str, ...]:
    record = record_of(cell)
    return record.update_params if record is not None else UPDATE_PARAMS[cell]


def check_cell_type(cell: Any) -> None:
    if record_of(cell) is None and cell not in ALL_CELL_TYPES:
        raise ValueError(f"Unknown cell type {cell!r}; expected one of "
                         f"{ALL_CELL_TYPES + tuple(REGISTRY)} or a cells.Cell.")


def default_init_scale(hidden_size: int) -> float:
    """PyTorch's default: uniform in [-1/sqrt(H), 1/sqrt(H)]."""
    return 1.0 / float(hidden_size) ** 0.5


def init_params(
    key: Array,
    cell: str,
    input_size: int,
    hidden_size: int,
    init_scale: float | None = None,
    dtype: Any = jnp.float32,
    recurrent_bias: bool = False,
    orthogonal: bool = False,
) -> Params:
    """Parameters of one layer, every entry uniform in [-scale, scale].

    The papers initialise all weights uniformly (Zaremba 0.1/0.05/0.04, the
    zoneout paper 0.05); `init_scale=None` uses PyTorch's 1/sqrt(H).

    Returns:
      `{"w_x": [F, G*H], "w_h": [H, G*H], "b": [G*H]}`, plus `"b_h": [G*H]`
      for the GRU, whose recurrent bias sits inside the reset gate's product.
      `lstm_ln` draws `w_x`, `w_h`, `b` exactly as the LSTM does from the same
      key and adds the normalization gains (ones) and biases (zeros, Ba et
      al.): `ln_x_g, ln_x_b, ln_h_g, ln_h_b: [4H]`, `ln_c_g, ln_c_b: [H]`.
      `lstm_bn` likewise adds `bn_x_g, bn_h_g: [4H]`, `bn_c_g, bn_c_b: [H]`
      (`batchnorm.init_params`: gains 0.1, shift 0).
      With `recurrent_bias` ("lstm" and "rnn" only) a second bias `"b_h": [G*H]`
      joins `b` in the pre-activations, as in Zaremba's Lua LSTM (input and
      recurrent products are both `nn.Linear` with a bias, each drawn uniform)
      and PyTorch's `bias_hh`: the sum starts triangular on [-2s, 2s] and SGD
      moves it twice as fast as one bias. The other entries are the draws
      without it.
      `orthogonal=True` (the zoneout authors' character-level and pMNIST code):
      `w_x` and `w_h` orthogonal (orthonormal rows, `[F, G*H]` and `[H, G*H]`,
      `jax.nn.initializers.orthogonal`), biases zero; `init_scale` is unused.
    """
    check_cell_type(cell)
    record = record_of(cell)
    if record is not None and record.init_params is not None:
        if recurrent_bias or orthogonal:
            raise ValueError(f"recurrent_bias and orthogonal apply to the built-in cells, not "
                             f"{record.name!r} (its init_params draws its parameters).")
        scale = default_init_scale(hidden_size) if init_scale is None else float(init_scale)
        return record.init_params(key, input_size, hidden_size, scale, dtype)
    if recurrent_bias and cell not in RECURRENT_BIAS_CELLS:
        raise ValueError(f"recurrent_bias applies to cells {RECURRENT_BIAS_CELLS}, not "
                         f"{cell!r}.")
    scale = default_init_scale(hidden_size) if init_scale is None else float(init_scale)
    width = num_gates(cell) * hidden_size
    shapes = {"w_x": (input_size, width), "w_h": (hidden_size, width), "b": (width,)}
    if cell == "gru":
        shapes["b_h"] = (width,)
    keys = jax.random.split(key, len(shapes))
    # Drawn flat and reshaped: XLA on CPU compiles multi-dimensional threefry
    # draws many times slower, and the values are the same.
    params = {
        name: jax.random.uniform(k, (math.prod(shape),), dtype, -scale, scale).reshape(shape)
        for k, (name, shape) in zip(keys, sorted(shapes.items()), strict=True)
    }
    if recurrent_bias:
        params["b_h"] = jax.random.uniform(jax.random.fold_in(key, 1), (width,), dtype,
                                           -scale, scale)
    if orthogonal:
        draw = jax.nn.initializers.orthogonal()
        for k, name in zip(keys, ("w_x", "w_h"), strict=False):
            params[name] = draw(k, params[name].shape, dtype)
        for name in ("b", "b_h"):
            if name in params:
                params[name] = jnp.zeros_like(params[name])
    if cell == "lstm_ln":
        for site, size in (("x", width), ("h", width), ("c", hidden_size)):
            params[f"ln_{site}_g"] = jnp.ones((size,), dtype)
            params[f"ln_{site}_b"] = jnp.zeros((size,), dtype)
    if cell == "lstm_bn":
        params.update(_batchnorm.init_params(hidden_size, dtype))
    return params


def init_carry(
    cell: str, batch_size: int, hidden_size: int, dtype: Any = jnp.float32,
    output_gate: bool = False,
) -> Carry:
    """Zero state: `{"h"}` (GRU, RNN) or `{"h", "c"}` (LSTM), each `[B, H]`.

    `output_gate=True` adds `"o"`, the previous output gate, which output
    zoneout needs (an LSTM with o_{-1} = 0 is consistent with h_{-1} = 0).
    """
    check_cell_type(cell)
    zeros = jnp.zeros((batch_size, hidden_size), dtype)
    carry = {"h": zeros}
    if has_memory(cell):
        carry["c"] = zeros
        if output_gate:
            carry["o"] = zeros
    return carry


def project_inputs(
    params: Params, x: Array, input_mask: Array | None = None, per_gate: bool = False
) -> Array:
    """Input projections of every step in one matmul: `(x * mask) W_x + b`.

    Args:
      params: one layer's parameters.
      x: inputs `[T, B, F]` (time-major).
      input_mask: None; a mask shared by all gates, `[B, F]` (tied per
        sequence) or `[T, B, F]` (per step); or with `per_gate=True` one mask
        per gate, `[G, B, F]` or `[G, T, B, F]`, which makes the projection
        one batched matmul over the G gate blocks.
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
        return x + params["b"]
    w_x, b = params["w_x"], params["b"]
    if input_mask is None:
        return x @ w_x + b
    if not per_gate:
        return (x * input_mask) @ w_x + b
    # On CPU one [T*B, F] @ [F, H] dot per gate (XLA:CPU runs these at the speed of the
    # shared-mask matmul, a gate-batched einsum at 0.6x); on accelerators one kernel.
    return per_gate_product(x, input_mask, per_gate_weights(w_x, input_mask.shape[0])) + b


def layer_norm(x: Array, gain: Array, bias: Array, groups: int = 1) -> Array:
    """Layer normalization over the last axis, per group of units.

    The last axis (width `G*H`) is split into `groups` blocks of width H (the
    gates); each block is normalized by its own mean and variance over its H
    units, `(x - mean) / sqrt(var + LN_EPSILON)`, then scaled and shifted
    unit by unit: `* gain + bias` (gain and bias `[G*H]`).
    """
    shape = x.shape
    blocks = x.reshape(*shape[:-1], groups, shape[-1] // groups)
    mean = jnp.mean(blocks, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(blocks - mean), axis=-1, keepdims=True)
    normed = (blocks - mean) * jax.lax.rsqrt(var + LN_EPSILON)
    return normed.reshape(shape) * gain + bias


def project(cell: str, params: Params, x: Array, input_mask: Array | None = None,
            per_gate: bool = False, population: dict | None = None,
            forget_bias: float = 0.0) -> Array:
    """The input projection a cell's step consumes, `[T, B, G*H]`, for all steps at once.

    `project_inputs` for the papers' cells (plus the second bias `b_h` of an
    "lstm" or "rnn" that has one, and an LSTM's constant `forget_bias` on the
    forget block, `with_forget_bias`); for `lstm_ln` the normalized
    projection `LN_gates((x * mask) W_x; ln_x_g, ln_x_b) + b` (the statistics
    of each step and example are taken per gate block, so hoisting it out of
    the scan is exact). For `lstm_bn` a dict `{"x": [T, B, 4H], "stats"}` from
    `batchnorm.project`, normalized by the `population` statistics if given,
    else by each step's batch statistics.
    """
    if forget_bias:
        params = with_forget_bias(cell, params, forget_bias)
    if record_of(cell) is not None:
        return project_inputs(params, x, input_mask, per_gate)
    if cell == "lstm_bn":
        return _batchnorm.project(params, x, input_mask, per_gate, population)
    if cell in RECURRENT_BIAS_CELLS and "b_h" in params:  # the second bias simply adds
        params = dict(params, b=params["b"] + params["b_h"])
    if cell != "lstm_ln":
        return project_inputs(params, x, input_mask, per_gate)
    xw = project_inputs({"w_x": params["w_x"], "b": 0.0}, x, input_mask, per_gate)
    return layer_norm(xw, params["ln_x_g"], params["ln_x_b"], NUM_GATES[cell]) + params["b"]


def with_forget_bias(cell: str, params: Params, forget_bias: float) -> Params:
    """`params` with a constant added to the forget gate's bias block.

    The zoneout authors' Blocks LSTM adds +1 to the forget gate's
    pre-activation (docs/ARCHITECTURE.md). A constant offset on the pre-activation gets
    the same gradients as the bias it shifts, so this is also "initialise b_f
    at b_f + forget_bias" for any optimizer without weight decay on biases.
    """
    if cell not in LSTM_TYPES:
        raise ValueError(f"forget_bias applies to LSTM cells {LSTM_TYPES}, not {cell!r}.")
    hidden = params["w_h"].shape[0]
    return dict(params, b=params["b"].at[hidden:2 * hidden].add(forget_bias))


def gate_blocks(w: Array, num_gates: int) -> tuple[Array, ...]:
    """`[F, G*H]` -> G arrays `[F, H]`: one weight block per gate."""
    width = w.shape[1] // num_gates
    return tuple(w[:, g * width:(g + 1) * width] for g in range(num_gates))


def gate_major(w: Array, num_gates: int) -> Array:
    """`[F, G*H] -> [G, F, H]`: the gate blocks stacked, gate axis leading (a batched
    dot's batch axis must lead for XLA to run it without transposing copies)."""
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


def per_gate_recurrent(tied: StepNoise, per_step: StepNoise) -> int | None:
    """The number of gates if the recurrent mask has a gate axis, else None."""
    if tied.recurrent is not None and jnp.ndim(tied.recurrent) == 3:
        return tied.recurrent.shape[0]
    if per_step.recurrent is not None and jnp.ndim(per_step.recurrent) == 4:
        return per_step.recurrent.shape[1]
    return None


def recurrent_projection(h: Array, w_h: Array | tuple[Array, ...], mask: Array | None) -> Array:
    """`(h * mask) W_h`: `[B, H] -> [B, G*H]`; a `[G, B, H]` mask is per gate.

    With a per-gate mask, `w_h` may come already laid out by `per_gate_weights`
    (G blocks, or gate-major `[G, H, H]`), which is how the scans pass it.
    """
    if mask is None:
        return h @ w_h
    if mask.ndim == h.ndim:
        return (h * mask) @ w_h
    w = w_h if isinstance(w_h, tuple) or w_h.ndim == 3 else per_gate_weights(w_h, mask.shape[0])
    return per_gate_product(h, mask, w)


def per_gate_product(x: Array, mask: Array, w: Array | tuple[Array, ...]) -> Array:
    """`concat_g((x * mask[g]) @ W_g)`: `[..., F] -> [..., G*H]`, one mask per gate.

    `mask[g]` broadcasts against `x` (`[B, F]` against `[T, B, F]`, say); `w` is laid
    out by `per_gate_weights`: G blocks (G dots) or gate-major `[G, F, H]` (one
    gate-batched dot).
    """
    if isinstance(w, tuple):
        return jnp.concatenate([(x * m) @ wg for m, wg in zip(mask, w, strict=True)], axis=-1)
    lead = (1,) * (x.ndim + 1 - mask.ndim)  # the axes of x that mask[g] broadcasts over
    masked = x[None] * mask.reshape(mask.shape[:1] + lead + mask.shape[1:])
    out = jnp.einsum("g...f,gfh->...gh", masked, w)
    return out.reshape(*out.shape[:-2], -1)


def mix(keep_coef: Any, previous: Array, new: Array) -> Array:
    """`d * previous + (1 - d) * new`; `d = None` means no mixing."""
    if keep_coef is None:
        return new
    # Written as a convex combination so d = 1 keeps `previous` bit for bit.
    return keep_coef * previous + (1.0 - keep_coef) * new


def maybe_scale(mask: Any, value: Array) -> Array:
    """`value * mask`, or `value` when the mask is None (the site is off)."""
    return value if mask is None else value * mask


def lstm_step(params: Params, carry: Carry, xw_t: Array, noise: StepNoise = StepNoise()):
    """One LSTM step from the projected input `xw_t = x_t W_x + b: [B, 4H]`.

    Formulas (LSTM notation of docs/REGULARIZERS.md; every noise term optional):
      z = xw_t + (h_{t-1} * m_h) W_h                 (variational / naive)
      i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
      c~ = f c_{t-1} + i (g * m_u)                  (Semeniuta update dropout)
      o  = d_o o_{t-1} + (1 - d_o) o                 (output zoneout)
      c~ = c~ * m_c                                  (rnnDrop cell mask)
      h~ = o tanh(c~)                                (from the un-zoned c~)
      c_t = d_c c_{t-1} + (1 - d_c) c~;  h_t = d_h h_{t-1} + (1 - d_h) h~  (zoneout)
      (c_t, h_t) = d_s (c_{t-1}, h_{t-1}) + (1 - d_s)(c_t, h_t)  (stochastic depth)

    Returns:
      `(carry, h_t)`.
    """
    rec_t = recurrent_projection(carry["h"], params["w_h"], noise.recurrent)
    return lstm_update(params, carry, xw_t, rec_t, noise)


def lstm_update(params: Params, carry: Carry, xw_t: Array, rec_t: Array, noise: StepNoise):
    """The elementwise rest of `lstm_step`, given `rec_t = (h_{t-1} * m_h) W_h`."""
    del params
    return lstm_gates(carry, xw_t + rec_t, noise, jnp.tanh)


def lstm_ln_step(params: Params, carry: Carry, xw_t: Array, noise: StepNoise = StepNoise()):
    """One layer-normalized LSTM step (Ba et al. 2016), from `xw_t = project("lstm_ln", ...)[t]`.

    `xw_t` is the already normalized input projection
    `LN_gates(x_t W_x; ln_x_g, ln_x_b) + b`; then:

      z  = xw_t + LN_gates((h_{t-1} * m_h) W_h; ln_h_g, ln_h_b)
      i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
      c~ = f c_{t-1} + i g;   h~ = o tanh(LN(c~; ln_c_g, ln_c_b))

    `LN_gates` normalizes each gate block of H units separately (its own mean
    and variance, gains and biases per unit). Every LSTM noise site acts as in
    `lstm_step` (the rnnDrop mask on c~ before its normalization; zoneout and
    stochastic depth on the un-normalized `c`).
    """
    rec_t = recurrent_projection(carry["h"], params["w_h"], noise.recurrent)
    return lstm_ln_update(params, carry, xw_t, rec_t, noise)


def lstm_ln_update(params: Params, carry: Carry, xw_t: Array, rec_t: Array, noise: StepNoise):
    """The elementwise rest of `lstm_ln_step`, given `rec_t = (h_{t-1} * m_h) W_h`.

    Reads only `ln_h_g, ln_h_b, ln_c_g, ln_c_b` from `params`
    (`UPDATE_PARAMS["lstm_ln"]`).
    """
    z = xw_t + layer_norm(rec_t, params["ln_h_g"], params["ln_h_b"], NUM_GATES["lstm_ln"])
    squash = lambda c: jnp.tanh(layer_norm(c, params["ln_c_g"], params["ln_c_b"]))  # noqa: E731
    return lstm_gates(carry, z, noise, squash)


def lstm_gates(carry: Carry, z: Array, noise: StepNoise, squash=jnp.tanh):
    """The LSTM's gates and every LSTM noise site from the pre-activation `z: [B, 4H]`
    (gate order i, f, g, o); `h~ = o * squash(c~)`. Public for cells built on the LSTM
    (the batch-normalized one, a peephole LSTM of your own)."""
    h_prev, c_prev = carry["h"], carry["c"]
    zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
    i, f, o = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jax.nn.sigmoid(zo)
    g = maybe_scale(noise.update, jnp.tanh(zg))
    c_new = f * c_prev + i * g
    new_carry = {}
    if "o" in carry:
        o = mix(noise.output_gate, carry["o"], o)
        new_carry["o"] = o
    elif noise.output_gate is not None:
        raise ValueError("Output zoneout needs the previous output gate in the carry; "
                         "build it with init_carry(..., output_gate=True).")
    c_new = maybe_scale(noise.cell, c_new)
    h_new = o * squash(c_new)
    c_t = mix(noise.zone_c, c_prev, c_new)
    h_t = mix(noise.zone_h, h_prev, h_new)
    c_t = mix(noise.depth, c_prev, c_t)
    h_t = mix(noise.depth, h_prev, h_t)
    new_carry.update(h=h_t, c=c_t)
    return new_carry, h_t


def gru_step(params: Params, carry: Carry, xw_t: Array, noise: StepNoise = StepNoise()):
    """One GRU step (PyTorch's reset-after form) from `xw_t = x_t W_x + b_x: [B, 3H]`.

      a = (h_{t-1} * m_h) W_h + b_h                  (variational / naive)
      r = sigmoid(xw_r + a_r);  z = sigmoid(xw_z + a_z)
      n = tanh(xw_n + r a_n) * m_u                  (Semeniuta update dropout)
      h~ = (1 - z) n + z h_{t-1}
      h_t = d_h h_{t-1} + (1 - d_h) h~, then stochastic depth likewise.
    """
    _reject_lstm_only(noise, "gru")
    rec_t = recurrent_projection(carry["h"], params["w_h"], noise.recurrent)
    return gru_update(params, carry, xw_t, rec_t, noise)


def gru_update(params: Params, carry: Carry, xw_t: Array, rec_t: Array, noise: StepNoise):
    """The elementwise rest of `gru_step`, given `rec_t = (h_{t-1} * m_h) W_h`."""
    h_prev = carry["h"]
    a = rec_t + params["b_h"]
    xr, xz, xn = jnp.split(xw_t, 3, axis=-1)
    ar, az, an = jnp.split(a, 3, axis=-1)
    r, z = jax.nn.sigmoid(xr + ar), jax.nn.sigmoid(xz + az)
    n = maybe_scale(noise.update, jnp.tanh(xn + r * an))
    h_new = (1.0 - z) * n + z * h_prev
    h_t = mix(noise.depth, h_prev, mix(noise.zone_h, h_prev, h_new))
    return {"h": h_t}, h_t


def rnn_step(params: Params, carry: Carry, xw_t: Array, noise: StepNoise = StepNoise()):
    """One tanh-RNN step: `h~ = tanh(xw_t + (h_{t-1} * m_h) W_h) * m_u`, then zoneout/depth."""
    _reject_lstm_only(noise, "rnn")
    rec_t = recurrent_projection(carry["h"], params["w_h"], noise.recurrent)
    return rnn_update(params, carry, xw_t, rec_t, noise)


def rnn_update(params: Params, carry: Carry, xw_t: Array, rec_t: Array, noise: StepNoise):
    """The elementwise rest of `rnn_step`, given `rec_t = (h_{t-1} * m_h) W_h`."""
    del params
    h_prev = carry["h"]
    h_new = jnp.tanh(xw_t + rec_t)
    h_new = maybe_scale(noise.update, h_new)
    h_t = mix(noise.depth, h_prev, mix(noise.zone_h, h_prev, h_new))
    return {"h": h_t}, h_t


def _reject_lstm_only(noise: StepNoise, cell: str) -> None:
    for name in ("cell", "output_gate", "zone_c"):
        if getattr(noise, name) is not None:
            raise ValueError(f"Noise site {name!r} needs an LSTM cell state; {cell} has none.")


STEPS = {"lstm": lstm_step, "gru": gru_step, "rnn": rnn_step, "lstm_ln": lstm_ln_step}
UPDATES = {"lstm": lstm_update, "gru": gru_update, "rnn": rnn_update,
           "lstm_ln": lstm_ln_update}
# The parameters an update function reads (besides the carry, xw_t and rec_t);
# the fused backward pass differentiates the update with respect to them.
UPDATE_PARAMS = {"lstm": (), "gru": ("b_h",), "rnn": (),
                 "lstm_ln": ("ln_h_g", "ln_h_b", "ln_c_g", "ln_c_b"),
                 "lstm_bn": ("bn_h_g", "bn_c_g", "bn_c_b")}


def get_step(cell: Any):
    """The step function of a cell type: `(params, carry, xw_t, noise) -> (carry, y)`."""
    check_cell_type(cell)
    record = record_of(cell)
    if record is None:
        return STEPS[cell]

    def step(params, carry, xw_t, noise=StepNoise()):
        rec_t = recurrent_projection(carry["h"], params["w_h"], noise.recurrent)
        return record.update(params, carry, xw_t, rec_t, noise)

    return step


def get_update(cell: Any):
    """The elementwise update of a cell type: `(params, carry, xw_t, rec_t, noise)`."""
    check_cell_type(cell)
    record = record_of(cell)
    return UPDATES[cell] if record is None else record.update


# The BN-LSTM builds on this module (it imports it), so it is registered last.
from rnnreg_jax import batchnorm as _batchnorm  # noqa: E402

STEPS["lstm_bn"] = _batchnorm.lstm_bn_step
UPDATES["lstm_bn"] = _batchnorm.lstm_bn_update
