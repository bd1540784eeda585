"""Regularizer specs: frozen, hashable descriptions of what noise goes where.

A spec never touches parameters or samples anything; `rnnreg_jax.noise`
turns it into masks from explicit keys and the cells consume the masks. Specs
compose like optax transforms: every constructor below returns a
`Regularization` with only its own fields set, and `compose(a, b, ...)` (or
`a + b`) merges them, refusing two different settings of the same field.

    reg = variational(input=0.35, recurrent=0.2, output=0.35, embedding=0.2)
    reg = zoneout(cells=0.5, hiddens=0.05) + zaremba(0.25)

Catalog (LSTM notation of docs/REGULARIZERS.md; rates are drop probabilities):

| constructor           | paper                | effect in training                              |
|-----------------------|----------------------|-------------------------------------------------|
| `zaremba(p)`          | Zaremba et al. 2014  | inverted dropout on every layer input and the    |
|                       |                      | last output, a fresh mask every step             |
| `variational(...)`    | Gal & Ghahramani 2016| same sites plus h_{t-1} into W_h (and the cell), |
|                       |                      | one mask per sequence reused at every step       |
| `naive_dropout(...)`  | Gal's baseline       | the variational sites with per-step masks        |
| `embedding_dropout(p)`| Gal & Ghahramani 2016| whole word types dropped per sequence            |
| `zoneout(c, h)`       | Krueger et al. 2016  | c_t = d c_{t-1} + (1-d) c~, d ~ Bernoulli(z)    |
| `recurrent_dropout(p)`| Semeniuta et al. 2016| c_t = f c_{t-1} + i drop(g)                      |
| `stochastic_depth(p)` | Krueger's baseline   | the layer keeps (h, c) of t-1 w.p. p             |
| `weight_noise(s)`     | Krueger's baseline   | W_h + s N(0, 1), one draw per minibatch          |
| `norm_stabilizer(b)`  | Krueger & Memisevic  | loss + b mean_t (|h_t| - |h_{t-1}|)^2            |
| weight decay          | Gal & Ghahramani 2016| L2 in the optimizer (`optax.add_decayed_weights`)|
| `weight_drop(p)`      | Merity et al. 2017   | W_h * m/(1-p): DropConnect, one mask per minibatch|
| `dropout("hidden", p)`| Merity et al. 2017   | dropout between layers only (AWD's dropouth);    |
|                       |                      | `input` then masks the first layer's input only  |
| `activation_regularization(a)` | Merity 2017 | loss + a mean(h_t^2), dropped last-layer output  |
| `temporal_activation_regularization(b)` | Merity 2017 | loss + b mean((h_t - h_{t-1})^2)    |

In deterministic mode every noise is replaced by its expectation: dropout is
the identity (inverted scaling), zoneout and depth coefficients become their
rates. `docs/REGULARIZERS.md` has the full table (papers, formulas, train vs
eval behaviour).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from rnnreg_jax.cells import LSTM_TYPES

TIES = ("sequence", "step")
DROPOUT_SITES = ("input", "hidden", "recurrent", "cell", "output", "update")


def check_rate(rate: float, name: str, allow_one: bool = False) -> float:
    """A drop probability in [0, 1) (or [0, 1] for mixing coefficients).

    Dropout rates exclude 1 (inverted scaling divides by `1 - rate`); zoneout
    and stochastic-depth probabilities may be 1 (the state never changes).
    NaN is rejected.
    """
    rate = float(rate)
    ok = 0.0 <= rate <= 1.0 if allow_one else 0.0 <= rate < 1.0
    if not ok:
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{name} rate must be a probability in {interval}, got {rate}.")
    return rate


def check_tie(tie: str, name: str = "tie") -> str:
    """`tie` must be "sequence" (one mask per window) or "step" (fresh each step)."""
    if tie not in TIES:
        raise ValueError(f"{name} must be one of {TIES}, got {tie!r}.")
    return tie


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """One dropout site: drop probability, tying and per-gate masks.

    Attributes:
      rate: drop probability in [0, 1).
      tie: "sequence" (one mask per sequence, Gal) or "step" (fresh each step).
      per_gate: a separate mask for each gate's copy of the input (Gal's
        untied variant); only meaningful on the `input` and `recurrent` sites.
    """

    rate: float
    tie: str = "sequence"
    per_gate: bool = False

    def __post_init__(self):
        check_rate(self.rate, "Dropout")
        check_tie(self.tie)

    @property
    def active(self) -> bool:
        return self.rate > 0.0


@dataclasses.dataclass(frozen=True)
class Regularization:
    """Everything that can be switched on; the default is an unregularized net.

    Attributes:
      input: dropout on every layer's input (embedding output, between layers);
        on the first layer's input only when `hidden` is set.
      hidden: dropout on the inputs of layers 1..L-1 (between layers, AWD's
        `dropouth`); None keeps `input` on every layer.
      recurrent: dropout on h_{t-1} where it enters W_h.
      cell: rnnDrop mask on the new cell state (LSTM only).
      output: dropout on the last layer's output (before the softmax).
      update: Semeniuta recurrent dropout on the cell update g.
      update_eval_scaling: with `update`, the zoneout authors' form of it: the
        update masked by {0, 1} in training (not scaled by 1/keep) and scaled by
        the keep probability in evaluation; off: inverted dropout (scaled in
        training, the identity in evaluation). Same expectation, different noise.
      output_zoneout: with `update`, where the update was dropped the output
        gate keeps its previous value: o_t <- (1 - m) o_{t-1} + m o_t with m
        the update's {0, 1} keep mask; p o_{t-1} + (1 - p) o_t in evaluation.
      embedding: probability of dropping a word type for the whole window.
      zoneout_cells, zoneout_hiddens: zoneout probabilities z_c, z_h.
      zoneout_shared: one mask for cells and hiddens (drawn at rate z_c).
      zoneout_tie: "step" (the paper) or "sequence".
      stochastic_depth: probability that a layer keeps its whole state.
      weight_noise: std of Gaussian noise on W_h, one draw per minibatch.
      norm_stabilizer: beta of the norm-stabilizer penalty.
      weight_drop: DropConnect rate on W_h, one mask per minibatch (AWD).
      activation_reg: alpha of AR, `alpha * mean(h_t^2)` on the last layer's
        dropped output.
      temporal_activation_reg: beta of TAR, `beta * mean((h_t - h_{t-1})^2)`
        on the last layer's undropped output.
    """

    input: MaskSpec | None = None
    hidden: MaskSpec | None = None
    recurrent: MaskSpec | None = None
    cell: MaskSpec | None = None
    output: MaskSpec | None = None
    update: MaskSpec | None = None
    update_eval_scaling: bool = False
    output_zoneout: bool = False
    embedding: float = 0.0
    zoneout_cells: float = 0.0
    zoneout_hiddens: float = 0.0
    zoneout_shared: bool = False
    zoneout_tie: str = "step"
    stochastic_depth: float = 0.0
    weight_noise: float = 0.0
    norm_stabilizer: float = 0.0
    weight_drop: float = 0.0
    activation_reg: float = 0.0
    temporal_activation_reg: float = 0.0

    def __post_init__(self):
        check_rate(self.embedding, "Embedding dropout")
        check_rate(self.zoneout_cells, "Zoneout (cells)", allow_one=True)
        check_rate(self.zoneout_hiddens, "Zoneout (hiddens)", allow_one=True)
        check_rate(self.stochastic_depth, "Stochastic depth", allow_one=True)
        check_rate(self.weight_drop, "Weight drop")
        check_tie(self.zoneout_tie, "zoneout_tie")
        for name in ("weight_noise", "norm_stabilizer", "activation_reg",
                     "temporal_activation_reg"):
            if not getattr(self, name) >= 0:  # also rejects NaN
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}.")
        if self.output_zoneout and self.update is None:
            raise ValueError("output_zoneout needs recurrent (update) dropout to be on.")
        if self.update_eval_scaling and self.update is None:
            raise ValueError("update_eval_scaling needs recurrent (update) dropout to be on.")
        for site in ("cell", "output", "update"):
            spec = getattr(self, site)
            if spec is not None and spec.per_gate:
                raise ValueError(f"per_gate masks apply to the input and recurrent sites, "
                                 f"not {site!r}.")

    def __add__(self, other: Regularization) -> Regularization:
        return compose(self, other)

    @property
    def has_noise(self) -> bool:
        """Whether training draws any random numbers (and so needs a key)."""
        masks = any(s is not None and s.active
                    for s in (self.input, self.hidden, self.recurrent, self.cell, self.output,
                              self.update))
        return masks or any(v > 0 for v in (self.embedding, self.zoneout_cells,
                                            self.zoneout_hiddens, self.stochastic_depth,
                                            self.weight_noise, self.weight_drop))

    @property
    def has_penalty(self) -> bool:
        """Whether training adds a loss term (norm stabilizer, AR, TAR)."""
        return any(v > 0 for v in (self.norm_stabilizer, self.activation_reg,
                                   self.temporal_activation_reg))

    def layer_input(self, layer: int) -> MaskSpec | None:
        """The dropout spec on the input of layer `layer` (0 = the bottom layer).

        `input` on every layer, unless `hidden` is set: then `input` on layer 0
        (AWD's `dropouti`) and `hidden` between layers (AWD's `dropouth`).
        """
        if layer > 0 and self.hidden is not None:
            return self.hidden
        return self.input

    @property
    def has_recurrent_noise(self) -> bool:
        """Whether the recurrent stack itself (all but the embedding) draws noise."""
        return dataclasses.replace(self, embedding=0.0).has_noise

    @property
    def needs_output_gate(self) -> bool:
        return self.output_zoneout and self.update is not None and self.update.active

    def check_cell(self, cell: str) -> None:
        """Raise if a site needs an LSTM cell state and `cell` has none."""
        if cell in LSTM_TYPES:
            return
        lstm_only = {"cell": self.cell is not None and self.cell.active,
                     "output_zoneout": self.output_zoneout,
                     "zoneout_cells": self.zoneout_cells > 0}
        for name, on in lstm_only.items():
            if on:
                raise ValueError(f"{name} needs an LSTM cell state; a {cell} has none.")


NONE = Regularization()


def compose(*regs: Regularization) -> Regularization:
    """Merge specs field by field, like `optax.chain` for regularizers.

    A field left at its default in a spec is "not set"; a field set in two
    specs must have the same value there, else `ValueError`. `a + b` is
    `compose(a, b)`.
    """
    merged: dict[str, Any] = {}
    for reg in regs:
        for field in dataclasses.fields(Regularization):
            value = getattr(reg, field.name)
            if value == field.default:
                continue
            if field.name in merged and merged[field.name] != value:
                raise ValueError(f"Cannot compose: {field.name} set twice "
                                 f"({merged[field.name]} and {value}).")
            merged[field.name] = value
    return Regularization(**merged)


def _mask(rate: float, tie: str, per_gate: bool = False) -> MaskSpec | None:
    return MaskSpec(rate, tie, per_gate) if rate > 0 else None


def dropout(site: str, rate: float, tie: str = "step", per_gate: bool = False) -> Regularization:
    """Inverted dropout on one named site: `v * m / (1 - rate)`, `m ~ Bernoulli(1 - rate)`.

    Sites: `input` (x_t of every layer, of the first one only when `hidden` is
    set), `hidden` (the inputs of layers 1..L-1, AWD's dropouth),
    `recurrent` (h_{t-1} into W_h),
    `cell` (c~, LSTM only), `output` (last layer's h_t), `update` (g, the
    Semeniuta site). `tie="step"` draws a fresh mask every step,
    `tie="sequence"` one per window; evaluation is the identity.
    """
    if site not in DROPOUT_SITES:
        raise ValueError(f"Unknown dropout site {site!r}; expected one of {DROPOUT_SITES}.")
    check_rate(rate, f"Dropout ({site})")
    check_tie(tie)
    return Regularization(**{site: _mask(rate, tie, per_gate)})


def zaremba(rate: float) -> Regularization:
    """Zaremba et al. 2014: dropout on non-recurrent connections, per step.

    Every layer input (embedding output, between layers) and the last output
    get `v * m_t / (1 - rate)` with a fresh `m_t ~ Bernoulli(1 - rate)` at each
    step; h_{t-1} -> W_h is never dropped.
    """
    check_rate(rate, "Zaremba dropout")
    return Regularization(input=_mask(rate, "step"), output=_mask(rate, "step"))


def variational(
    input: float = 0.0, recurrent: float = 0.0, output: float = 0.0, cell: float = 0.0,
    embedding: float = 0.0, per_gate: bool = False, tie: str = "sequence",
) -> Regularization:
    """Gal & Ghahramani 2016: masks tied per sequence on inputs, h_{t-1}, outputs.

    `z_t = (x_t * m_x) W_x + (h_{t-1} * m_h) W_h + b` with `m ~ Bernoulli(1 - p)
    / (1 - p)` drawn once per window and example; `output` masks the last
    layer's h_t, `cell` masks c~ (rnnDrop), `embedding` drops word types.
    `per_gate=True` draws a separate mask for each gate's copy of x and h
    (Gal's code and Keras); otherwise one mask is shared by all gates.
    `tie="step"` gives the naive-dropout baseline (see `naive_dropout`).
    """
    check_tie(tie)
    for name, rate in (("input", input), ("recurrent", recurrent), ("output", output),
                       ("cell", cell)):
        check_rate(rate, f"Variational dropout ({name})")
    return Regularization(
        input=_mask(input, tie, per_gate), recurrent=_mask(recurrent, tie, per_gate),
        output=_mask(output, tie), cell=_mask(cell, tie), embedding=embedding)


def naive_dropout(**kwargs) -> Regularization:
    """The variational sites with a fresh mask every step (Gal's baseline)."""
    return variational(tie="step", **kwargs)


def embedding_dropout(rate: float) -> Regularization:
    """Gal & Ghahramani 2016: drop whole word types for the window.

    `e(w_t) * m[b, w_t] / (1 - rate)` with `m[b, v] ~ Bernoulli(1 - rate)` per
    sequence b and vocabulary id v: every occurrence of a word shares its mask.
    """
    return Regularization(embedding=rate)


def zoneout(cells: float = 0.0, hiddens: float = 0.0, shared: bool = False,
            tie: str = "step") -> Regularization:
    """Krueger et al. 2016: units keep their previous value with probability z.

    `c_t = d_c c_{t-1} + (1 - d_c) c~`, `h_t = d_h h_{t-1} + (1 - d_h) h~`,
    `d ~ Bernoulli(z)` per unit, example and step (`tie="step"`, the paper) or
    per window (`tie="sequence"`); evaluation uses `d = z`. `cells` needs an
    LSTM; `shared=True` uses the cell mask for the hiddens too.
    """
    if shared and cells != hiddens:
        raise ValueError("A shared zoneout mask needs cells == hiddens.")
    return Regularization(zoneout_cells=cells, zoneout_hiddens=hiddens,
                          zoneout_shared=shared, zoneout_tie=tie)


def recurrent_dropout(rate: float, tie: str = "step", output_zoneout: bool = False,
                      eval_scaling: bool = False) -> Regularization:
    """Semeniuta et al. 2016: dropout on the cell update, c = f c + i drop(g).

    `drop(g) = g * m / (1 - rate)`, `m ~ Bernoulli(1 - rate)` (GRU: the
    candidate n, tanh RNN: the new state); evaluation is the identity.
    `eval_scaling=True` is the zoneout authors' code instead: `drop(g) = g * m`
    in training and `g * (1 - rate)` in evaluation.
    `output_zoneout=True` (LSTM only, Krueger et al.) also freezes the output
    gate where the update was dropped: `o_t <- (1 - m) o_{t-1} + m o_t`, at
    evaluation `p o_{t-1} + (1 - p) o_t`.
    """
    check_rate(rate, "Recurrent dropout")
    check_tie(tie)
    return Regularization(update=_mask(rate, tie), output_zoneout=output_zoneout and rate > 0,
                          update_eval_scaling=eval_scaling and rate > 0)


def stochastic_depth(rate: float) -> Regularization:
    """A layer keeps its whole state (h, c) for an example at a step w.p. `rate`.

    `(h_t, c_t) = d (h_{t-1}, c_{t-1}) + (1 - d) (h_t, c_t)`, `d ~ Bernoulli(rate)`
    of shape `[B, 1]` per step; evaluation uses `d = rate`.
    """
    return Regularization(stochastic_depth=rate)


def weight_noise(std: float) -> Regularization:
    """`W_h + std * eps`, `eps ~ N(0, 1)` of W_h's shape, once per minibatch (per
    `unroll` call) and layer; evaluation uses `W_h`."""
    return Regularization(weight_noise=std)


def norm_stabilizer(beta: float) -> Regularization:
    """Krueger & Memisevic 2016: penalty beta mean_t (|h_t| - |h_{t-1}|)^2.

    A loss term, not noise: `StackedRNN` sows `norm_stabilizer_penalty` of each
    layer's hiddens into the `penalties` collection in training only.
    """
    return Regularization(norm_stabilizer=beta)


def norm_stabilizer_penalty(hiddens: jax.Array, beta: float, time_axis: int = 1) -> jax.Array:
    """`beta * mean_{b,t} (||h_t|| - ||h_{t-1}||)^2` over the window.

    Differences are taken inside the window (t = 1 .. T-1, so T-1 terms per
    example), so a state reset to zero at the window start is not penalised.
    The norm's gradient at h_t = 0 (a zero state kept by zoneout or stochastic
    depth) is taken as 0 instead of `jnp.linalg.norm`'s NaN.

    Args:
      hiddens: hidden states `[B, T, H]` (or time-major with `time_axis=0`).
      beta: penalty weight.
      time_axis: the time axis of `hiddens`.

    Returns:
      A scalar.
    """
    squares = jnp.sum(jnp.square(hiddens), axis=-1)
    nonzero = squares > 0
    norms = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, squares, 1.0)), 0.0)
    diffs = jnp.diff(norms, axis=time_axis)
    return beta * jnp.mean(jnp.square(diffs))


def weight_drop(rate: float) -> Regularization:
    """Merity et al. 2017 (AWD-LSTM): DropConnect on the recurrent weights.

    `W_h <- W_h * m / (1 - rate)`, `m ~ Bernoulli(1 - rate)` of W_h's shape,
    one mask per layer and `unroll` call (per minibatch): the same dropped
    weights for every example and step of the window. Evaluation uses `W_h`.
    """
    check_rate(rate, "Weight drop")
    return Regularization(weight_drop=rate)


def activation_regularization(alpha: float) -> Regularization:
    """Merity et al. 2017: AR, `alpha * mean(h_t^2)` on the last layer's dropped output.

    A loss term: `StackedRNN` sows `activation_penalty` into `penalties` in
    training only.
    """
    return Regularization(activation_reg=alpha)


def temporal_activation_regularization(beta: float) -> Regularization:
    """Merity et al. 2017: TAR, `beta * mean((h_t - h_{t-1})^2)` on the last
    layer's undropped output, differences within the window.

    A loss term: `StackedRNN` sows `temporal_activation_penalty` into
    `penalties` in training only.
    """
    return Regularization(temporal_activation_reg=beta)


def activation_penalty(outputs: jax.Array, alpha: float) -> jax.Array:
    """AR: `alpha * mean_{b,t,k} h[b,t,k]^2`, a scalar.

    Merity et al. apply it to the *dropped* output of the last layer (the
    tensor the softmax sees in training); the mean runs over every element.
    """
    return alpha * jnp.mean(jnp.square(outputs))


def temporal_activation_penalty(hiddens: jax.Array, beta: float,
                                time_axis: int = 1) -> jax.Array:
    """TAR: `beta * mean_{b,t,k} (h[b,t,k] - h[b,t-1,k])^2` for t = 1..T-1, a scalar.

    Merity et al. apply it to the *undropped* output of the last layer. As for
    the norm stabilizer, differences are taken within the window (no term
    against the state carried in).

    Args:
      hiddens: `[B, T, H]` (or time-major with `time_axis=0`).
      beta: penalty weight.
      time_axis: the time axis of `hiddens`.
    """
    return beta * jnp.mean(jnp.square(jnp.diff(hiddens, axis=time_axis)))


def awd_lstm(embedding: float = 0.1, input: float = 0.4, hidden: float = 0.3,
             output: float = 0.4, weight_drop_rate: float = 0.5, alpha: float = 2.0,
             beta: float = 1.0) -> Regularization:
    """Merity et al. 2017's regularizers together (AWD-LSTM, PTB values as defaults).

    Word types dropped per sequence (`embedding`; AWD drops them per minibatch),
    locked (tied per sequence, shared by the gates) dropout on the first
    layer's input, between layers and on the output, DropConnect on every
    W_h, AR and TAR. Weight decay and NT-ASGD live in the optimizer.
    """
    return compose(
        variational(input=input, output=output, embedding=embedding),
        dropout("hidden", hidden, tie="sequence"),
        weight_drop(weight_drop_rate),
        activation_regularization(alpha),
        temporal_activation_regularization(beta))
