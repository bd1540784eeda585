"""Dropout on the connections of the stack: Zaremba et al. 2014, Gal & Ghahramani 2016
(variational, naive), rnnDrop's cell mask and AWD-LSTM's dropout between layers.

Sites (LSTM notation of docs/REGULARIZERS.md; inverted dropout, `v * m / (1 - p)`):
`input` (x_t of every layer, of the first one only when `hidden` is set), `hidden`
(the inputs of layers 1..L-1, AWD's dropouth), `recurrent` (h_{t-1} into W_h), `cell`
(c~, LSTM only) and `output` (the last layer's h_t). A mask is tied per sequence (one
per window and example, reused every step) or drawn per step; `per_gate` gives each
gate its own mask of x or h (Gal's untied variant). Evaluation is the identity, or
with `eval_scaling` (classic dropout, Keras 0.x's as Gal's sentiment code ran it) the
site is masked by the {0, 1} keep draws in training and multiplied by the keep
probability q in evaluation.
"""

from __future__ import annotations

import dataclasses
from typing import TypeGuard

import jax.numpy as jnp

from rnnreg_jax import cells, noise
from rnnreg_jax.regularizers.base import Family, Regularizer, cell_name, has_memory, need_key
from rnnreg_jax.regularizers.chain import compose
from rnnreg_jax.regularizers.checks import check_flag, check_rate, check_tie

SITES = ("input", "hidden", "recurrent", "cell", "output")


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """One dropout site: drop probability, tying and per-gate masks.

    Attributes:
      rate: drop probability in [0, 1).
      tie: "sequence" (one mask per sequence, Gal) or "step" (fresh each step).
      per_gate: a separate mask for each gate's copy of the input (Gal's
        untied variant); only meaningful on the `input` and `recurrent` sites.
      eval_scaling: classic dropout: the {0, 1} keep mask in training (the same
        draws, not scaled by 1/q) and the site multiplied by q = 1 - rate in
        evaluation; off: inverted dropout (scaled in training, the identity in
        evaluation). Ignored at rate 0 (q = 1).
    """

    rate: float
    tie: str = "sequence"
    per_gate: bool = False
    eval_scaling: bool = False

    def __post_init__(self):
        object.__setattr__(self, "rate", check_rate(self.rate, "Dropout"))
        check_tie(self.tie)
        for flag in ("per_gate", "eval_scaling"):
            object.__setattr__(self, flag, check_flag(getattr(self, flag), flag))

    @property
    def active(self) -> bool:
        return self.rate > 0.0


def check_spec(spec, field: str, make: str) -> None:
    """`spec` (the value of field `field`) must be a `MaskSpec` or None; else a
    one-sentence ValueError naming the field and `make`, the factory that builds it (a
    bare rate failed at the first unroll)."""
    if spec is not None and not isinstance(spec, MaskSpec):
        raise ValueError(f"{field} must be a MaskSpec or None (MaskSpec(rate, tie), or "
                         f"build it with {make}), got {spec!r:.80}.")


def _on(spec: MaskSpec | None) -> TypeGuard[MaskSpec]:
    return spec is not None and spec.active


def _evaluation(spec: MaskSpec | None, dtype):
    """A site's multiplier in evaluation: None (off, or inverted dropout: the identity)
    or, with `eval_scaling`, the keep probability q as a 0-d array in the masks' dtype
    (it broadcasts wherever a mask goes; one value for every gate of a per-gate site)."""
    if not _on(spec) or not spec.eval_scaling:
        return None
    return jnp.asarray(noise.quantize_probability(1.0 - spec.rate), dtype)


@dataclasses.dataclass(frozen=True)
class Dropout(Family):
    """Dropout masks on the stack's connections, one `MaskSpec` (or None) per site."""

    input: MaskSpec | None = None
    hidden: MaskSpec | None = None
    recurrent: MaskSpec | None = None
    cell: MaskSpec | None = None
    output: MaskSpec | None = None

    def __post_init__(self):
        for site in SITES:
            check_spec(getattr(self, site), f"Dropout.{site}",
                       f"rnnreg_jax.dropout({site!r}, rate)")
        for site in ("cell", "output"):
            spec = getattr(self, site)
            if spec is not None and spec.per_gate:
                raise ValueError(f"per_gate masks apply to the input and recurrent sites, "
                                 f"not {site!r}.")

    def sites(self):
        return frozenset(s for s in SITES if _on(getattr(self, s)))

    @property
    def active(self):
        return bool(self.sites())

    def check_cell(self, cell):
        if _on(self.cell) and not has_memory(cell):
            raise ValueError(f"cell needs an LSTM cell state; a {cell_name(cell)} has none.")

    def layer_input(self, layer: int) -> MaskSpec | None:
        """The spec on layer `layer`'s input: `input`, or `hidden` between layers when set."""
        if layer > 0 and self.hidden is not None:
            return self.hidden
        return self.input

    def input_mask(self, key, shape, deterministic):
        spec = self.layer_input(shape.layer)
        if deterministic:
            scale = _evaluation(spec, shape.dtype)
            return None if scale is None else (scale, False)
        if not _on(spec):
            return None
        site = "hidden" if shape.layer > 0 and self.hidden is not None else "input"
        mask = noise.dropout_mask(noise.site_key(need_key(key, "dropout"), site, shape.layer),
                                  spec, (shape.batch, shape.input_size), shape.steps,
                                  shape.num_gates, shape.dtype)
        return mask, spec.per_gate

    def step_noise(self, key, shape, deterministic):
        tied, per_step = {}, {}
        if deterministic:
            for site in ("recurrent", "cell"):
                scale = _evaluation(getattr(self, site), shape.dtype)
                if scale is not None:
                    tied[site] = scale
            return tied, per_step
        bh = (shape.batch, shape.hidden_size)
        if _on(self.recurrent):
            spec = self.recurrent
            mask = noise.dropout_mask(self._key(key, "recurrent", shape.layer), spec, bh,
                                      shape.steps, shape.num_gates, shape.dtype)
            if spec.per_gate:
                mask = cells.PerGate(mask)
            (tied if spec.tie == "sequence" else per_step)["recurrent"] = mask
        if _on(self.cell):
            mask = noise.dropout_mask(self._key(key, "cell", shape.layer), self.cell, bh,
                                      shape.steps, dtype=shape.dtype)
            (tied if self.cell.tie == "sequence" else per_step)["cell"] = mask
        return tied, per_step

    def output_mask(self, key, shape, deterministic):
        if deterministic:
            return _evaluation(self.output, shape.dtype)
        if not _on(self.output):
            return None
        return noise.dropout_mask(noise.site_key(need_key(key, "dropout"), "output"),
                                  self.output, (shape.batch, shape.input_size), shape.steps,
                                  dtype=shape.dtype)

    @staticmethod
    def _key(key, site, layer):
        return noise.site_key(need_key(key, "dropout"), site, layer)


def _mask(rate: float, tie: str, per_gate: bool = False,
          eval_scaling: bool = False) -> MaskSpec | None:
    return MaskSpec(rate, tie, per_gate, eval_scaling) if rate > 0 else None


def dropout(site: str, rate: float, tie: str = "step", per_gate: bool = False,
            eval_scaling: bool = False) -> Regularizer:
    """Inverted dropout on one named site: `v * m / (1 - rate)`, `m ~ Bernoulli(1 - rate)`.

    Sites: `input` (x_t of every layer, of the first one only when `hidden` is
    set), `hidden` (the inputs of layers 1..L-1, AWD's dropouth),
    `recurrent` (h_{t-1} into W_h), `cell` (c~, LSTM only), `output` (last layer's
    h_t), `update` (g, the Semeniuta site: `recurrent_dropout`). `tie="step"` draws a
    fresh mask every step, `tie="sequence"` one per window; evaluation is the identity.
    `eval_scaling=True` is classic dropout instead: `v * m` in training (the same
    draws) and `v * (1 - rate)` in evaluation; ignored at rate 0.
    """
    from rnnreg_jax.regularizers.recurrent_dropout import RecurrentDropout

    if site not in SITES + ("update",):
        raise ValueError(f"Unknown dropout site {site!r}; expected one of "
                         f"{SITES + ('update',)}.")
    rate = check_rate(rate, f"Dropout ({site})")
    check_tie(tie)
    per_gate, eval_scaling = check_flag(per_gate, "per_gate"), check_flag(eval_scaling,
                                                                          "eval_scaling")
    if site == "update":
        if per_gate:
            raise ValueError("per_gate masks apply to the input and recurrent sites, not "
                             "'update'.")
        return compose(RecurrentDropout(update=_mask(rate, tie),
                                        eval_scaling=eval_scaling and rate > 0))
    return compose(Dropout(**{site: _mask(rate, tie, per_gate, eval_scaling)}))


def zaremba(rate: float) -> Regularizer:
    """Zaremba et al. 2014: dropout on non-recurrent connections, per step.

    Every layer input (embedding output, between layers) and the last output
    get `v * m_t / (1 - rate)` with a fresh `m_t ~ Bernoulli(1 - rate)` at each
    step; h_{t-1} -> W_h is never dropped.
    """
    rate = check_rate(rate, "Zaremba dropout")
    return compose(Dropout(input=_mask(rate, "step"), output=_mask(rate, "step")))


def variational(
    input: float = 0.0, recurrent: float = 0.0, output: float = 0.0, cell: float = 0.0,
    embedding: float = 0.0, per_gate: bool = False, tie: str = "sequence",
    eval_scaling: bool = False, embedding_tie: str = "sequence",
) -> Regularizer:
    """Gal & Ghahramani 2016: masks tied per sequence on inputs, h_{t-1}, outputs.

    `z_t = (x_t * m_x) W_x + (h_{t-1} * m_h) W_h + b` with `m ~ Bernoulli(1 - p)
    / (1 - p)` drawn once per window and example; `output` masks the last
    layer's h_t, `cell` masks c~ (rnnDrop), `embedding` drops word types
    (`embedding_dropout`). `per_gate=True` draws a separate mask for each gate's copy
    of x and h (Gal's code and Keras); otherwise one mask is shared by all gates.
    `tie="step"` gives the naive-dropout baseline (see `naive_dropout`).
    `eval_scaling=True` makes every site (embedding included) classic dropout, as in
    Keras 0.x, which Gal's sentiment code ran on: `v * m` in training (the same
    draws, unscaled) and `v * (1 - p)` in evaluation. Under Adam or weight decay that
    is not a reparametrization of the inverted form. `embedding_tie="batch"` drops word
    types with one mask for the whole minibatch (AWD-LSTM's), not one per sequence
    (`embedding_dropout`'s `tie`).
    """
    from rnnreg_jax.regularizers.embedding import embedding_dropout

    check_tie(tie)
    per_gate, eval_scaling = check_flag(per_gate, "per_gate"), check_flag(eval_scaling,
                                                                          "eval_scaling")
    input, recurrent, output, cell = (
        check_rate(rate, f"Variational dropout ({name})")
        for name, rate in (("input", input), ("recurrent", recurrent), ("output", output),
                           ("cell", cell)))
    masks = Dropout(input=_mask(input, tie, per_gate, eval_scaling),
                    recurrent=_mask(recurrent, tie, per_gate, eval_scaling),
                    output=_mask(output, tie, eval_scaling=eval_scaling),
                    cell=_mask(cell, tie, eval_scaling=eval_scaling))
    return compose(masks, embedding_dropout(embedding, eval_scaling, embedding_tie))


def naive_dropout(**kwargs) -> Regularizer:
    """The variational sites with a fresh mask every step (Gal's baseline); takes
    `variational`'s arguments but `tie` (`eval_scaling` included)."""
    return variational(tie="step", **kwargs)
