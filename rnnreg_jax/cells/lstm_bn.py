"""Recurrent batch normalization (Cooijmans et al. 2016): the `lstm_bn` cell.

    z   = BN(h_{t-1} W_h; g_h) + BN(x_t W_x; g_x) + b
    i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
    c_t = f c_{t-1} + i g;   h_t = o tanh(BN(c_t; g_c, beta_c))

`BN` normalizes every unit over the batch axis, `(v - mean) / sqrt(var + eps)`
times a gain per unit (0.1 at init, Cooijmans et al.'s value), with a separate
mean and variance for every time step t. The x and h normalizations have no
shift (b covers them); the cell's has `bn_c_b` (0 at init).

Statistics are explicit values, never hidden state, so everything here is pure:

  * `population=None`: each step is normalized by the minibatch's statistics
    at that step (training);
  * `population={name: [T_max, ...], "weight": [T_max]}` (debiased running
    averages, see `init_population`): by the population statistics of that
    step, steps t >= T_max by those of T_max - 1 (evaluation).

Either way the statistics used come back per step (`{name: [T, ...]}`), so a
caller that keeps population statistics (`nn.StackedRNN`, in Flax's
`batch_stats` collection) can fold them into its running averages
(`update_population`). Names: `x_mean, x_var, h_mean, h_var: [.., 4H]`,
`c_mean, c_var: [.., H]`.

How the statistics travel through the scan: the step's input `xw_t` is a
dict `{"x": BN(x_t W_x) + b, "stats": {...}}`. `stats` holds this step's
`x_*` statistics (computed before the scan: the input normalization is hoisted
like `lstm_ln`'s, exact because the statistics of step t only involve step t)
and, in evaluation, the population `h_*` and `c_*` statistics of the step.
The update returns `(h_t, stats_t)` as its per-step output, with the `h_*`
and `c_*` batch statistics it computed (or the given ones). The fused
backward pass differentiates the update with `jax.vjp`, so gradients through
the batch statistics are exact there too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from rnnreg_jax.cells.base import (
    LN_EPSILON,
    NUM_GATES,
    Carry,
    Cell,
    CellStatistics,
    Params,
    StepNoise,
    check_step,
)
from rnnreg_jax.cells.layout import project_inputs, recurrent_projection
from rnnreg_jax.cells.lstm import lstm_gates

Array = jax.Array
Stats = dict[str, Array]

GAMMA_INIT = 0.1  # Cooijmans et al.: small gains keep tanh/sigmoid out of saturation
STAT_NAMES = ("x_mean", "x_var", "h_mean", "h_var", "c_mean", "c_var")
WEIGHT = "weight"  # a population's debiasing weight per row, 1 - momentum^n
PARAM_NAMES = ("bn_x_g", "bn_h_g", "bn_c_g", "bn_c_b")
DEFAULT_MAX_STEPS = 1000  # T_max: pMNIST has 784 steps
DEFAULT_MOMENTUM = 0.9  # running = momentum * running + (1 - momentum) * batch


def check_max_steps(max_steps: Any) -> None:
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"bn_max_steps (T_max) must be a positive number of steps, got "
                         f"{max_steps!r}.")


def check_momentum(momentum: float) -> None:
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"bn_momentum must be in [0, 1), got {momentum!r}.")


def init_params(hidden_size: int, dtype: Any = jnp.float32) -> Params:
    """The normalization parameters: gains `bn_x_g, bn_h_g: [4H]`, `bn_c_g: [H]` (0.1)
    and the cell's shift `bn_c_b: [H]` (0)."""
    width = NUM_GATES["lstm_bn"] * hidden_size
    return {"bn_x_g": jnp.full((width,), GAMMA_INIT, dtype),
            "bn_h_g": jnp.full((width,), GAMMA_INIT, dtype),
            "bn_c_g": jnp.full((hidden_size,), GAMMA_INIT, dtype),
            "bn_c_b": jnp.zeros((hidden_size,), dtype)}


def init_population(hidden_size: int, max_steps: int = DEFAULT_MAX_STEPS,
                    dtype: Any = jnp.float32) -> Stats:
    """Population statistics of one layer before any training.

    Stored as debiased running averages (as Adam debiases its moments): every
    accumulator `[T_max, 4H]` (x, h) or `[T_max, H]` (c) starts at 0 and
    `weight: [T_max]`, the running average of the constant 1, at 0; the
    statistics are accumulator / weight (`statistics`), and a row no update
    has reached reads as mean 0, variance 1. Starting the averages at (0, 1)
    instead left a residue `momentum^n` of the initial variance: 0.004 after
    550 updates at 0.99, more than the variance of most pMNIST steps, so
    evaluation normalized them 20x too weakly.
    """
    check_max_steps(max_steps)
    width = NUM_GATES["lstm_bn"] * hidden_size
    out = {}
    for site, size in (("x", width), ("h", width), ("c", hidden_size)):
        out[f"{site}_mean"] = jnp.zeros((max_steps, size), dtype)
        out[f"{site}_var"] = jnp.zeros((max_steps, size), dtype)
    out[WEIGHT] = jnp.zeros((max_steps,), dtype)
    return out


def statistics(population: Stats) -> Stats:
    """Means and variances per row of a population: accumulator / weight, and mean 0,
    variance 1 where the weight is 0. A dict without `weight` already holds statistics."""
    if WEIGHT not in population:
        return {name: population[name] for name in STAT_NAMES}
    weight = population[WEIGHT][:, None]
    seen = weight > 0
    safe = jnp.where(seen, weight, 1.0)
    return {name: jnp.where(seen, population[name] / safe,
                            1.0 if name.endswith("_var") else 0.0)
            for name in STAT_NAMES}


def batch_norm(v: Array, gain: Array, bias: Array | None = None, mean: Array | None = None,
               var: Array | None = None, axis: int = 0) -> tuple[Array, Array, Array]:
    """`(v - mean) / sqrt(var + LN_EPSILON) * gain (+ bias)`, unit by unit over `axis`.

    With `mean`/`var` None they are the batch's (biased variance, as in
    Cooijmans et al.'s code). Under `jit` with the batch axis sharded over a
    data mesh, these means are over the global batch (XLA inserts the
    all-reduce), so data parallelism does not change the statistics.

    Returns:
      `(normalized, mean, var)`, the statistics without the `axis` dimension.
    """
    if (mean is None) != (var is None):
        raise ValueError("Give both the mean and the variance, or neither.")
    if mean is None or var is None:  # both None (checked above)
        mean = jnp.mean(v, axis=axis)
        var = jnp.mean(jnp.square(v - jnp.expand_dims(mean, axis)), axis=axis)
    m, s = jnp.expand_dims(mean, axis), jnp.expand_dims(var, axis)
    out = (v - m) * jax.lax.rsqrt(s + LN_EPSILON) * gain
    return (out if bias is None else out + bias), mean, var


def per_step(population: Stats, steps: int) -> Stats:
    """Population statistics of steps 0..T-1: step t uses row min(t, T_max - 1)."""
    stats = statistics(population)
    max_steps = stats["x_mean"].shape[0]
    index = jnp.minimum(jnp.arange(steps), max_steps - 1)
    return {name: stats[name][index] for name in STAT_NAMES}


def update_population(population: Stats, batch: Stats, momentum: float = DEFAULT_MOMENTUM
                      ) -> Stats:
    """Fold one window's per-step batch statistics into the running averages.

    Row t (t < min(T, T_max)) of every accumulator becomes
    `momentum * row + (1 - momentum) * batch[t]` and its weight
    `momentum * weight + (1 - momentum)`; rows of steps the window did not
    reach are unchanged, and statistics of steps t >= T_max are not kept
    (those steps are normalized with row T_max - 1).
    """
    out = {}
    n = min(population[WEIGHT].shape[0], batch["x_mean"].shape[0])
    for name in STAT_NAMES:
        pop, new = population[name], batch[name]
        row = momentum * pop[:n] + (1.0 - momentum) * new[:n].astype(pop.dtype)
        out[name] = pop.at[:n].set(row)
    weight = population[WEIGHT]
    out[WEIGHT] = weight.at[:n].set(momentum * weight[:n] + (1.0 - momentum))
    return out


def project(params: Params, x: Array, input_mask: Array | None = None,
            per_gate: bool = False, population: Stats | None = None) -> dict:
    """The step inputs of all steps: `{"x": BN(x W_x; bn_x_g) + b, "stats": ...}`.

    Args:
      params: one `lstm_bn` layer's parameters.
      x: `[T, B, F]`, masked by `input_mask` as in `project_inputs`.
      population: the layer's population statistics, or None to normalize by
        each step's batch statistics.

    Returns:
      `{"x": [T, B, 4H], "stats": {x_mean, x_var: [T, 4H]}}`, with the
      population `h_*`, `c_*` statistics of every step in `stats` when
      `population` is given.
    """
    # A Python 0.0 for the bias (added after the normalization): weakly typed, it adds
    # nothing and promotes nothing.
    xw = project_inputs({"w_x": params["w_x"], "b": 0.0},  # type: ignore[dict-item]
                        x, input_mask, per_gate)
    if population is None:
        stats = {}
        normed, stats["x_mean"], stats["x_var"] = batch_norm(xw, params["bn_x_g"], axis=1)
    else:
        stats = per_step(population, x.shape[0])
        normed, _, _ = batch_norm(xw, params["bn_x_g"], mean=stats["x_mean"],
                                  var=stats["x_var"], axis=1)
    return {"x": normed + params["b"], "stats": stats}


def lstm_bn_step(params: Params, carry: Carry, xw_t: dict,
                 noise: StepNoise = StepNoise()):
    """One BN-LSTM step from `xw_t = project(...)` at step t; see `lstm_bn_update`."""
    if not (isinstance(xw_t, Mapping) and "x" in xw_t and isinstance(xw_t.get("stats"), Mapping)):
        raise ValueError(f"xw_t must be the dict {{'x', 'stats'}} cells.project makes for "
                         f"lstm_bn (one step of it), got a {type(xw_t).__name__}.")
    check_step("lstm_bn_step", params, carry, xw_t["x"], noise, NUM_GATES["lstm_bn"],
               memory=True, reads=LSTM_BN.update_params)
    rec_t = recurrent_projection(carry["h"], params["w_h"], noise.recurrent)
    return lstm_bn_update(params, carry, xw_t, rec_t, noise)


def lstm_bn_update(params: Params, carry: Carry, xw_t: dict, rec_t: Array,
                   noise: StepNoise):
    """The elementwise rest of `lstm_bn_step`, given `rec_t = (h_{t-1} * m_h) W_h`.

    Every LSTM noise site acts as in `cells.lstm_step`: the rnnDrop mask on c~
    before its normalization, zoneout and stochastic depth on the
    un-normalized c. Reads `bn_h_g, bn_c_g, bn_c_b` (the record's `update_params`).

    Returns:
      `(carry, (h_t, stats_t))`: `stats_t` holds the statistics this step
      used, `{name: [4H] or [H]}` (the batch's unless given in `xw_t`).
    """
    given = xw_t["stats"]
    rec_n, h_mean, h_var = batch_norm(rec_t, params["bn_h_g"], mean=given.get("h_mean"),
                                      var=given.get("h_var"))
    c_stats = {}

    def squash(c):  # called once per step by lstm_gates; records the cell statistics
        c_n, c_stats["c_mean"], c_stats["c_var"] = batch_norm(
            c, params["bn_c_g"], params["bn_c_b"], given.get("c_mean"), given.get("c_var"))
        return jnp.tanh(c_n)

    new_carry, h_t = lstm_gates(carry, xw_t["x"] + rec_n, noise, squash)
    stats = {"x_mean": given["x_mean"], "x_var": given["x_var"], "h_mean": h_mean,
             "h_var": h_var, **c_stats}
    return new_carry, (h_t, stats)


def check_population(population: Any, hidden_size: int | None,
                     name: str = "population") -> None:
    """A layer's population statistics (`name` for the messages) as `project` reads them:
    a dict of every `STAT_NAMES` array, `[T_max, 4H]` (x, h) or `[T_max, H]` (c), with
    `weight: [T_max]` when they are running averages (`init_population`); else a
    one-sentence error (a missing one was a KeyError, a string a TypeError, another
    width a broadcasting error, fewer rows in one array a silently clamped index).
    `hidden_size` None: widths not checked. Static shapes only: nothing runs."""
    if not isinstance(population, Mapping):
        raise ValueError(f"{name} must be a dict of lstm_bn's running statistics "
                         f"({', '.join(STAT_NAMES)} and optionally {WEIGHT}, as "
                         f"init_population makes them), got a {type(population).__name__}.")
    missing = [stat for stat in STAT_NAMES if stat not in population]
    if missing:
        raise ValueError(f"{name} must also hold {missing}, which lstm_bn normalizes with "
                         f"(given only {sorted(population)}); init_population makes them all.")
    rows = None
    for stat in STAT_NAMES + ((WEIGHT,) if WEIGHT in population else ()):
        shape = getattr(population[stat], "shape", None)
        if stat == WEIGHT:
            want = "[T_max]"
            ok = shape is not None and len(shape) == 1
        else:
            width = None if hidden_size is None else (
                hidden_size * (1 if stat.startswith("c") else NUM_GATES["lstm_bn"]))
            want = f"[T_max, {'W' if width is None else width}]"
            ok = shape is not None and len(shape) == 2 and width in (None, shape[1])
        units = "" if hidden_size is None else f" for {hidden_size} units"
        if not ok:
            got = (f"shape {tuple(shape)}" if shape is not None
                   else f"a {type(population[stat]).__name__}")
            raise ValueError(f"{name}[{stat!r}] must be {want}{units}, got {got}.")
        assert shape is not None  # ok says so
        if rows is None:
            rows = shape[0]
        elif shape[0] != rows:
            raise ValueError(f"{name}[{stat!r}] has {shape[0]} rows (steps), but "
                             f"{name}['x_mean'] has {rows}; every statistic has T_max rows.")


def _check(max_steps: Any, momentum: float) -> None:
    check_max_steps(max_steps)
    check_momentum(momentum)


def _init(hidden_size: int, max_steps: int, dtype: Any = jnp.float32) -> Stats:
    return init_population(hidden_size, max_steps, dtype)


# The population statistics, as every model keeps a cell's running statistics.
STATISTICS = CellStatistics(init=_init, update=update_population, check=_check,
                            validate=check_population)


LSTM_BN = Cell(name="lstm_bn", num_gates=4, update=lstm_bn_update, has_memory=True,
               update_params=("bn_h_g", "bn_c_g", "bn_c_b"), project=project,
               extra_params=init_params, aux_output=True, statistics=STATISTICS)
