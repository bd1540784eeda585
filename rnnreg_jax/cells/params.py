"""Parameters, initial states and input projections of the built-in cells and of users'
cell records."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnreg_jax import precision
from rnnreg_jax.cells.base import (
    ALL_CELL_TYPES,
    LSTM_TYPES,
    RECURRENT_BIAS_CELLS,
    Array,
    Carry,
    Params,
    check_size,
    has_memory,
    the_record,
)
from rnnreg_jax.cells.layout import project_inputs


def default_init_scale(hidden_size: int) -> float:
    """PyTorch's default: uniform in [-1/sqrt(H), 1/sqrt(H)]."""
    hidden_size = check_size(hidden_size, "hidden_size")  # 0 divided by zero, -4 was complex
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
    from rnnreg_jax.regularizers.checks import check_flag, check_key  # they import cells

    record = the_record(cell)
    check_key(key, "key", required=True)  # None, an int or split keys failed in jax.random
    input_size, hidden_size = (check_size(input_size, "input_size", 0),
                               check_size(hidden_size, "hidden_size", 1))
    recurrent_bias = check_flag(recurrent_bias, "recurrent_bias")  # "y" switched it on
    orthogonal = check_flag(orthogonal, "orthogonal")
    scale = default_init_scale(hidden_size) if init_scale is None else check_scale(init_scale)
    dtype = precision.check_floating(dtype, "dtype")
    if draws_own_params(record):
        if recurrent_bias or orthogonal:
            raise ValueError(f"recurrent_bias and orthogonal apply to the default draw, not "
                             f"{record.name!r} (its init_params draws its parameters).")
        assert record.init_params is not None  # draws_own_params said so
        return record.init_params(key, input_size, hidden_size, scale, dtype)
    if recurrent_bias and not takes_recurrent_bias(record):
        raise ValueError(f"recurrent_bias applies to cells {RECURRENT_BIAS_CELLS}, not "
                         f"{cell!r}.")
    width = record.num_gates * hidden_size
    shapes = {"w_x": (input_size, width), "w_h": (hidden_size, width), "b": (width,)}
    if record.inner_recurrent_bias:
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
    if record.extra_params is not None:
        params.update(record.extra_params(hidden_size, dtype))
    return params


def draws_own_params(cell: Any) -> bool:
    """Whether a cell's record draws its parameters itself (Keras 0.x's cells), so that
    `init_params`' `recurrent_bias` and `orthogonal` do not apply to it."""
    return the_record(cell).init_params is not None


def takes_recurrent_bias(cell: Any) -> bool:
    """Whether `init_params(recurrent_bias=True)` applies to a cell: one that takes the
    default draw and may carry a second bias (`RECURRENT_BIAS_CELLS`)."""
    return not draws_own_params(cell) and the_record(cell).recurrent_bias


def check_scale(init_scale: Any, name: str = "init_scale") -> float:
    """An init scale (`name` for the message) as a float >= 0: a negative one drew every
    weight equal to -scale (uniform's bounds reversed), a string was float()'s own
    error."""
    try:
        scale = float(init_scale) if not isinstance(init_scale, (str, bytes)) else None
    except TypeError:
        scale = None
    if scale is None or not 0 <= scale < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0 (or None), got "
                         f"{init_scale!r}.")
    return scale


def check_layer(cell: Any, params: Any, carry: Any, index: int = 0,
                output_gate: bool = False) -> None:
    """One-sentence errors for a layer's parameters or state that do not fit `cell`
    (another cell's parameters, a carry without `c` or with keys the cell does not keep,
    a carry that is not a dict), which were a KeyError, an AttributeError or a scan
    carry-structure error. Params are checked when they are a dict (other layouts are
    the cell's).

    Args:
      cell: the cell type (name or record).
      params: the layer's parameters.
      carry: its initial state.
      index: the layer's index, for the message.
      output_gate: whether the carry must hold `o` (output zoneout).
    """
    record = the_record(cell)
    if isinstance(params, Mapping):
        needed = ("w_h",) + (("b",) if record.project is None else ())  # no w_x: gates fed
        missing = [n for n in needed + tuple(record.update_params) if n not in params]
        if missing:
            raise ValueError(f"Layer {index}'s params lack {missing}, which a {record.name} "
                             f"cell reads (they hold {sorted(params)}).")
        _check_param_shapes(record, params, index)
    if not isinstance(carry, Mapping):
        raise ValueError(f"Layer {index}'s carry must be a dict of arrays (as "
                         f"rnnreg_jax.initial_carry makes), got a {type(carry).__name__}.")
    needed = ("h", "c", "o") if record.has_memory and output_gate else (
        ("h", "c") if record.has_memory else ("h",))
    missing = [n for n in needed if n not in carry]
    if missing:
        raise ValueError(f"Layer {index}'s carry lacks {missing}, which a {record.name} "
                         f"layer keeps (it holds {sorted(carry)}); "
                         "rnnreg_jax.initial_carry makes one.")
    extra = sorted(n for n in carry if n not in needed)
    if extra:  # the step returns the cell's keys only: a scan carry-structure error
        why = " ('o' is kept with output zoneout only)" if "o" in extra else ""
        raise ValueError(f"Layer {index}'s carry holds {extra}, which a {record.name} layer "
                         f"does not keep{why}; rnnreg_jax.initial_carry makes one.")


def check_w_h(w_h: Any, index: int) -> tuple[int, ...]:
    """Layer `index`'s `w_h` shape if it is 2-d (`[H, G*H]`), else a one-sentence error."""
    shape = tuple(getattr(w_h, "shape", ()))
    if len(shape) != 2:
        raise ValueError(f"Layer {index}'s w_h must be [H, G*H], got "
                         f"{f'shape {shape}' if hasattr(w_h, 'shape') else type(w_h).__name__}.")
    return shape


def _check_param_shapes(record, params: Mapping, index: int) -> None:
    """`w_h` `[H, G*H]`, and the layout's other arrays for those H units: `w_x`
    `[F, G*H]`, the biases `[G*H]`, the default draw's extra parameters (normalization
    gains) as it draws them; each floating. A wrong one failed in a broadcast or product
    deep in the step. A user's cell with its own projection or draw lays out the rest
    itself."""
    if not hasattr(params["w_h"], "shape"):
        return  # not an array: a layout this check does not know
    shape = check_w_h(params["w_h"], index)
    if shape[1] != record.num_gates * shape[0]:
        raise ValueError(f"Layer {index}'s w_h has shape {shape}, but a {record.name} cell "
                         f"of {shape[0]} units needs {(shape[0], record.num_gates * shape[0])}.")
    width, expected = shape[1], {}
    if record.project is None or record.name in ALL_CELL_TYPES:
        expected = {"b": (width,), "b_h": (width,)}
        w_x = params.get("w_x")
        w_x_shape = tuple(getattr(w_x, "shape", (None, width)))
        if len(w_x_shape) != 2 or w_x_shape[1] != width:
            raise ValueError(f"Layer {index}'s w_x has shape {w_x_shape}, but a "
                             f"{record.name} layer of {shape[0]} units needs [F, {width}].")
    if record.extra_params is not None and record.init_params is None:
        drawn = jax.eval_shape(lambda: record.extra_params(shape[0], jnp.float32))
        expected.update({name: tuple(a.shape) for name, a in drawn.items()})
    for name, want in expected.items():
        got = getattr(params.get(name), "shape", None)
        if got is not None and tuple(got) != want:
            raise ValueError(f"Layer {index}'s {name} has shape {tuple(got)}, but a "
                             f"{record.name} layer of {shape[0]} units needs {want}.")
    for name, value in params.items():
        if hasattr(value, "dtype"):
            precision.check_floating(value.dtype, f"The dtype of layer {index}'s {name}")


def init_carry(
    cell: str, batch_size: int, hidden_size: int, dtype: Any = jnp.float32,
    output_gate: bool = False,
) -> Carry:
    """Zero state: `{"h"}` (GRU, RNN) or `{"h", "c"}` (LSTM), each `[B, H]`.

    `output_gate=True` adds `"o"`, the previous output gate, which output
    zoneout needs (an LSTM with o_{-1} = 0 is consistent with h_{-1} = 0).
    """
    from rnnreg_jax.regularizers.checks import check_flag  # it imports cells

    batch_size = check_size(batch_size, "batch_size", 0)
    hidden_size = check_size(hidden_size, "hidden_size", 1)
    output_gate = check_flag(output_gate, "output_gate")
    if dtype is not None:  # None: jnp.zeros' default
        dtype = precision.check_floating(dtype, "dtype")
    zeros = jnp.zeros((batch_size, hidden_size), dtype)
    carry = {"h": zeros}
    if has_memory(cell):
        carry["c"] = zeros
        if output_gate:
            carry["o"] = zeros
    return carry


def project(cell: str, params: Params, x: Array, input_mask: Array | None = None,
            per_gate: bool = False, population: dict | None = None,
            forget_bias: float = 0.0) -> Array:
    """The input projection a cell's step consumes, `[T, B, G*H]`, for all steps at once.

    The record's `project` where it has one (the layer-normalized LSTM's normalized
    projection, the batch-normalized LSTM's `{"x", "stats"}` normalized by `population`
    or the window's own statistics), else `project_inputs` (with the second bias `b_h` of
    a cell that carries one added to `b`); an LSTM's constant `forget_bias` goes on the
    forget block first (`with_forget_bias`).
    """
    if forget_bias:
        params = with_forget_bias(cell, params, forget_bias)
    record = the_record(cell)
    _check_projection(record, params, x, input_mask, per_gate)
    if record.project is not None:
        return record.project(params, x, input_mask, per_gate, population)
    if record.recurrent_bias and "b_h" in params:  # the second bias simply adds
        params = dict(params, b=params["b"] + params["b_h"])
    return project_inputs(params, x, input_mask, per_gate)


def with_forget_bias(cell: str, params: Params, forget_bias: float) -> Params:
    """`params` with a constant added to the forget gate's bias block.

    The zoneout authors' Blocks LSTM adds +1 to the forget gate's
    pre-activation (docs/ARCHITECTURE.md). A constant offset on the pre-activation gets
    the same gradients as the bias it shifts, so this is also "initialise b_f
    at b_f + forget_bias" for any optimizer without weight decay on biases.
    """
    if not has_memory(cell):
        raise ValueError(f"forget_bias applies to LSTM cells {LSTM_TYPES}, not {cell!r}.")
    check_forget_bias(forget_bias)  # NaN made every output NaN
    hidden = params["w_h"].shape[0]
    return dict(params, b=params["b"].at[hidden:2 * hidden].add(forget_bias))


def check_forget_bias(forget_bias: Any) -> None:
    """One finite number known when the step is built (a Python or numpy scalar, or a
    concrete 0-d array): a string failed inside JAX, NaN made every output NaN, an array
    of gate offsets or a traced one (jit's argument) failed in a truth test."""
    if isinstance(forget_bias, (str, bytes, bool)) or forget_bias is None:
        raise ValueError(f"forget_bias must be a number, got {forget_bias!r}.")
    try:
        shape = np.shape(forget_bias)
    except Exception:  # noqa: BLE001 -- not array-like at all
        shape = None
    if shape != ():
        raise ValueError(f"forget_bias must be one number, got "
                         f"{f'shape {shape}' if shape is not None else repr(forget_bias)}.")
    try:
        value = float(forget_bias)
    except jax.errors.ConcretizationTypeError:
        raise ValueError("forget_bias must be a number known outside jit (a static "
                         "setting), got a traced array.") from None
    except TypeError:
        raise ValueError(f"forget_bias must be a number, got {forget_bias!r}.") from None
    if not math.isfinite(value):
        raise ValueError(f"forget_bias must be finite, got {value!r}.")


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == target
    except ValueError:
        return False


def _check_projection(record, params: Any, x: Any, input_mask: Any, per_gate: bool) -> None:
    """`project`'s one-sentence errors, on static shapes: inputs of another width than
    `w_x` reads (a dot_general error), and for the built-in projections an input mask
    that does not broadcast to the inputs (`[B, F]` tied, `[T, B, F]` per step; a mask
    with more axes silently broadcast the projection up) or, per gate, has not the
    cell's G slices in front (`[G, B, F]`, `[T, G, B, F]`)."""
    shape = tuple(getattr(x, "shape", ()))
    if not shape:
        raise ValueError(f"x must be an array [T, B, F] (jax or numpy), got "
                         f"{'shape ()' if hasattr(x, 'shape') else f'a {type(x).__name__}'}.")
    w_x: Any = params.get("w_x") if isinstance(params, Mapping) else None
    if getattr(w_x, "ndim", 0) == 2 and w_x.shape[0] != shape[-1]:
        raise ValueError(f"x has {shape[-1]} features (shape {shape}), but w_x reads "
                         f"{w_x.shape[0]} (its shape is {tuple(w_x.shape)}, [F, G*H]).")
    mask = getattr(input_mask, "shape", None)
    if mask is None or w_x is None or not (record.project is None
                                           or record.name in ALL_CELL_TYPES):
        return  # none, a scalar, or a layout the cell's own projection reads
    mask = tuple(mask)
    if not per_gate:
        if len(mask) > len(shape) or not _broadcasts_to(mask, shape):
            raise ValueError(f"input_mask has shape {mask}; x of shape {shape} needs one "
                             f"that broadcasts to it ([B, F] tied, [T, B, F] per step).")
        return
    if len(mask) == len(shape) + 1:  # per step, [T, G, B, F]: project_inputs swaps them
        mask = (mask[1], mask[0], *mask[2:])
    if not mask or mask[0] != record.num_gates or not _broadcasts_to(mask[1:], shape):
        raise ValueError(f"input_mask has shape {tuple(input_mask.shape)}; x of shape {shape} "
                         f"needs {record.num_gates} gate slices in front of a mask that "
                         f"broadcasts to it, per gate ([G, B, F] tied, [T, G, B, F] per step).")
