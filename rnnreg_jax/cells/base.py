"""What every cell shares: the step noise a step consumes, the cell records and their
registry (users' cells), and the mixing helpers the steps' noise sites use."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

Array = jax.Array


Params = dict[str, Array]


Carry = dict[str, Array]


CELL_TYPES = ("lstm", "gru", "rnn")  # the reproduced papers' cells (PyTorch-portable)


# Beyond the papers: layer-normalized LSTM (Ba et al. 2016), recurrent batch
# normalization (Cooijmans et al. 2016, `rnnreg_jax.batchnorm`), Keras 0.x's LSTM and GRU
# (Gal & Ghahramani's sentiment code, `cells.keras`).
EXTRA_CELL_TYPES = ("lstm_ln", "lstm_bn", "keras_lstm", "keras_gru")


ALL_CELL_TYPES = CELL_TYPES + EXTRA_CELL_TYPES


# cells with a memory cell `c` (every LSTM-only site applies)
LSTM_TYPES = ("lstm", "lstm_ln", "lstm_bn", "keras_lstm")


# Cells that may carry a second, additive bias `b_h` (`init_params(recurrent_bias=True)`);
# the GRU always has its `b_h`, inside the reset gate's product.
RECURRENT_BIAS_CELLS = ("lstm", "rnn")


NUM_GATES = {"lstm": 4, "gru": 3, "rnn": 1, "lstm_ln": 4, "lstm_bn": 4, "keras_lstm": 4,
             "keras_gru": 3}


LN_EPSILON = 1e-5  # added to the variance in every layer normalization


class StepNoise(NamedTuple):
    """The noise one step consumes; every field is optional (None = off).

    Dropout masks are already scaled by 1/(1 - rate) (inverted dropout), so
    None is both "off" and the deterministic expectation; with classic dropout
    (`eval_scaling`) they are {0, 1} in training and the keep probability, a scalar, in
    evaluation. Mixing coefficients
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
class CellStatistics:
    """Running statistics a cell keeps outside its parameters and state (the batch-
    normalized LSTM's population statistics), as a model keeps them in Flax's
    `batch_stats` collection.

    Attributes:
      init: `(hidden_size, max_steps, dtype) -> stats`, a pytree, before any training.
      update: `(stats, window_stats, momentum) -> stats`: fold one training window's
        per-step statistics (the cell's per-step auxiliary output) into them.
      check: `(max_steps, momentum) -> None`: raise ValueError on bad options.
      validate: `(stats, hidden_size, name) -> None`: raise a one-sentence ValueError
        (naming the argument as `name`) for one layer's statistics that do not fit its
        `hidden_size` units (None: unknown); None: given statistics are not checked.
    """

    init: Callable
    update: Callable
    check: Callable
    validate: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Cell:
    """A cell as a record of pure functions. Every built-in cell is one (its module's
    record, found by its name: `record_of("gru")`); `register` makes a user's record's
    name usable the same way.

    Attributes:
      name: a name for errors and `register`.
      num_gates: G: the input and recurrent projections are `[.., G*H]` wide.
      update: `(params, carry, xw_t, rec_t, noise) -> (carry, h_t)`: one step given the
        projected input `xw_t = x_t W_x + b`, `[B, G*H]`, and `rec_t = (h_{t-1} * m_h) W_h`,
        `[B, G*H]` (`[B, P*H]` with `projected_gates`); `noise` is the step's `StepNoise`
        (apply the sites you support with `gates.mix` and friends, or reject them). Pure:
        jit, grad and the fused backward pass (which re-derives it with `jax.vjp`) take
        it as it is.
      has_memory: whether the carry holds a memory cell `c` beside `h` (LSTM-only
        regularizer sites need it).
      update_params: the parameters `update` reads (besides the carry and projections);
        the fused backward pass differentiates them.
      init_params: `(key, input_size, hidden_size, init_scale, dtype) -> params`; None:
        `w_x: [F, G*H]`, `w_h: [H, G*H]`, `b: [G*H]` uniform in [-scale, scale] (or
        orthogonal weights, `params.init_params`), plus `extra_params`.
      extra_params: `(hidden_size, dtype) -> params` the default draw adds (the
        normalizations' gains and shifts).
      recurrent_bias: whether the cell may carry a second additive bias `b_h` beside `b`
        (`init_params(recurrent_bias=True)`, Zaremba's two `nn.Linear` biases).
      inner_recurrent_bias: whether the cell always has a bias `b_h` of its own inside
        the recurrent product (the GRU's reset-after candidate).
      aux_output: the update's per-step output is `(h_t, aux_t)`, a pytree of
        per-step values the scan stacks and the unroll returns (statistics, say).
      statistics: running statistics the cell keeps (`CellStatistics`).
      project: `(params, x, input_mask, per_gate, population) -> xw`, the input
        projection of every step at once (`population`: the running statistics, or None
        to use the window's own); None: `layout.project_inputs`.
      projected_gates: P, how many leading gate blocks of `W_h` the scans multiply
        `h_{t-1}` by (None: all G). A cell whose update needs a product its own gates
        decide (Keras's GRU: `(r * h_{t-1}) U_n`) sets P < G: `rec_t` is then the first P
        blocks, and the update finds the other `G - P` blocks as `params["w_h"]`,
        `[H, (G-P)*H]` (list "w_h" in `update_params`), their masks in the trailing
        slices of a per-gate `noise.recurrent`. No step computes a block it discards.
    """

    name: str
    num_gates: int
    update: Callable
    has_memory: bool = False
    update_params: tuple[str, ...] = ()
    init_params: Callable | None = None
    aux_output: bool = False
    statistics: CellStatistics | None = None
    project: Callable | None = None
    extra_params: Callable | None = None
    recurrent_bias: bool = False
    inner_recurrent_bias: bool = False
    projected_gates: int | None = None

    def __post_init__(self):
        check_size(self.num_gates, f"Cell {self.name!r}: num_gates")
        if self.projected_gates is not None and not 1 <= self.projected_gates < self.num_gates:
            raise ValueError(f"Cell {self.name!r}: projected_gates must be in [1, "
                             f"{self.num_gates - 1}] (below num_gates) or None; got "
                             f"{self.projected_gates}.")


def check_size(value: Any, name: str, least: int = 1) -> int:
    """A whole number of at least `least` (numpy integers too), or a one-line error (a
    negative or float size failed inside XLA, a zero hidden size divided by zero)."""
    try:
        size = None if isinstance(value, bool) else operator.index(value)  # True is 1
    except TypeError:
        size = None
    if size is None or size < least:
        raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}.")
    return size


REGISTRY: dict[str, Cell] = {}  # users' records by name
BUILTINS: dict[str, Cell] = {}  # filled by rnnreg_jax.cells from the cells' modules


def register(cell: Cell) -> Cell:
    """Make `cell.name` usable wherever a cell type is named (`cell="mgu"`)."""
    if cell.name in ALL_CELL_TYPES:
        raise ValueError(f"{cell.name!r} is a built-in cell type; choose another name.")
    REGISTRY[cell.name] = cell
    return cell


def record_of(cell: Any) -> Cell | None:
    """The record of a cell given itself or by its name (built-in or registered), or
    None for an unknown name."""
    if isinstance(cell, Cell):
        return cell
    if not isinstance(cell, str):
        return None
    return BUILTINS.get(cell) or REGISTRY.get(cell)


def cell_name(cell: Any) -> str:
    """A cell's name (a record's `name`) for messages."""
    return cell.name if isinstance(cell, Cell) else str(cell)


def check_cell_type(cell: Any) -> None:
    if record_of(cell) is None:
        raise ValueError(f"Unknown cell type {cell!r}; expected one of "
                         f"{ALL_CELL_TYPES + tuple(REGISTRY)} or a cells.Cell.")


def the_record(cell: Any) -> Cell:
    """The record of a known cell (a one-line error for an unknown one)."""
    check_cell_type(cell)
    record = record_of(cell)
    assert record is not None  # check_cell_type refused a cell without one
    return record


def num_gates(cell: Any) -> int:
    return the_record(cell).num_gates


def has_memory(cell: Any) -> bool:
    return the_record(cell).has_memory


def projected_gates(cell: Any) -> int | None:
    """The leading gate blocks of `W_h` a cell's `rec_t` holds (`Cell.projected_gates`);
    None: all of them."""
    return the_record(cell).projected_gates


def update_params(cell: Any) -> tuple[str, ...]:
    """The parameters a cell's update reads (besides the carry, xw_t and rec_t); the
    fused backward pass differentiates the update with respect to them."""
    return the_record(cell).update_params


def mix(keep_coef: Any, previous: Array, new: Array) -> Array:
    """`d * previous + (1 - d) * new`; `d = None` means no mixing."""
    if keep_coef is None:
        return new
    # Written as a convex combination so d = 1 keeps `previous` bit for bit.
    return keep_coef * previous + (1.0 - keep_coef) * new


def maybe_scale(mask: Any, value: Array) -> Array:
    """`value * mask`, or `value` when the mask is None (the site is off)."""
    return value if mask is None else value * mask


def check_step(step: str, params: Any, carry: Any, xw_t: Any, noise: Any, gates: int,
               memory: bool = False, reads: tuple[str, ...] = ()) -> None:
    """A built-in step's one-sentence errors (`step` names it), in Python on static shapes
    and types at trace time, so the compiled step is the same with them: `noise` that is
    not a `StepNoise` (an AttributeError), params without `w_h` or what the update
    `reads` (a KeyError), a carry that is not a dict with `h` (and `c` when `memory`),
    and a projection `xw_t` that is not `[..., gates * H]` over the carry's `[..., H]`
    (a batch of 1 on either side broadcast silently; another width failed in an add or
    a split)."""
    if not isinstance(noise, StepNoise):
        raise ValueError(f"noise must be a cells.StepNoise, got a {type(noise).__name__}.")
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be one layer's dict of arrays, got a "
                         f"{type(params).__name__}.")
    missing = [name for name in ("w_h", *reads) if name not in params]
    if missing:
        raise ValueError(f"params lack {missing}, which {step} reads (they hold "
                         f"{sorted(params)}).")
    if not isinstance(carry, Mapping):
        raise ValueError(f"carry must be a dict of arrays (as cells.init_carry makes), got a "
                         f"{type(carry).__name__}.")
    missing = [name for name in (("h", "c") if memory else ("h",)) if name not in carry]
    if missing:
        raise ValueError(f"carry lacks {missing}, which {step} reads (it holds "
                         f"{sorted(carry)}); cells.init_carry makes one.")
    h = carry["h"]
    h_shape = tuple(getattr(h, "shape", ()))
    if not h_shape:
        got = "shape ()" if hasattr(h, "shape") else f"a {type(h).__name__}"
        raise ValueError(f"carry['h'] must be an array [B, H], got {got}.")
    for name in ("c", "o") if memory else ():
        shape = tuple(getattr(carry.get(name), "shape", h_shape))  # "o": output zoneout's
        if shape != h_shape:
            raise ValueError(f"carry[{name!r}] has shape {shape}, but carry['h'] has "
                             f"{h_shape}.")
    hidden = h_shape[-1]
    w_h = params["w_h"]
    if getattr(w_h, "ndim", 0) == 2 and w_h.shape[0] != hidden:
        raise ValueError(f"params['w_h'] has shape {tuple(w_h.shape)}, but the carry's h has "
                         f"{hidden} units ({step} takes w_h [H, G*H]).")
    want = (*h_shape[:-1], gates * hidden)
    xw_shape = getattr(xw_t, "shape", None)
    if xw_shape is None or tuple(xw_shape) != want:
        what = (f"shape {tuple(xw_shape)}" if xw_shape is not None
                else f"a {type(xw_t).__name__}")
        raise ValueError(f"xw_t has {what}, but the carry's h has shape {h_shape}: {step} "
                         f"takes {want} ({gates} gate blocks of {hidden} units).")


def reject_lstm_only(noise: StepNoise, cell: str) -> None:
    """Raise if a step of a cell without a memory cell is given an LSTM-only site."""
    for name in ("cell", "output_gate", "zone_c"):
        if getattr(noise, name) is not None:
            raise ValueError(f"Noise site {name!r} needs an LSTM cell state; {cell} has none.")
