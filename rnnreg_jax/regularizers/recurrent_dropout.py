"""Semeniuta et al. 2016's recurrent dropout on the cell update, with the zoneout
authors' variants (their evaluation scaling, output-gate zoneout)."""

from __future__ import annotations

import dataclasses

from rnnreg_jax import noise
from rnnreg_jax.regularizers.base import Family, Regularizer, cell_name, has_memory, need_key
from rnnreg_jax.regularizers.chain import compose
from rnnreg_jax.regularizers.checks import check_flag, check_rate, check_tie
from rnnreg_jax.regularizers.dropout import MaskSpec, _mask, check_spec


@dataclasses.dataclass(frozen=True)
class RecurrentDropout(Family):
    """`c = f c + i drop(g)` (GRU: the candidate n, tanh RNN: the new state).

    Attributes:
      update: the mask's rate and tying (per step in the paper).
      eval_scaling: the zoneout authors' form: the update masked by {0, 1} in training
        (not scaled by 1/keep) and scaled by the keep probability in evaluation; off:
        inverted dropout (scaled in training, the identity in evaluation).
      output_zoneout: where the update was dropped the output gate keeps its previous
        value: `o_t <- (1 - m) o_{t-1} + m o_t` with m the {0, 1} keep mask;
        `p o_{t-1} + (1 - p) o_t` in evaluation (LSTM only).
    """

    update: MaskSpec | None = None
    eval_scaling: bool = False
    output_zoneout: bool = False

    def __post_init__(self):
        check_spec(self.update, "RecurrentDropout.update", "rnnreg_jax.recurrent_dropout(rate)")
        for flag in ("eval_scaling", "output_zoneout"):
            object.__setattr__(self, flag, check_flag(getattr(self, flag), flag))
        if self.output_zoneout and self.update is None:
            raise ValueError("output_zoneout needs recurrent (update) dropout to be on.")
        if self.eval_scaling and self.update is None:
            raise ValueError("update_eval_scaling needs recurrent (update) dropout to be on.")
        if self.update is not None and self.update.per_gate:
            raise ValueError("per_gate masks apply to the input and recurrent sites, not "
                             "'update'.")

    @property
    def active(self):
        return self.update is not None and self.update.active

    @property
    def needs_output_gate(self):
        return self.output_zoneout and self.active

    def sites(self):
        if not self.active:
            return frozenset()
        return frozenset({"update", "output_gate"} if self.output_zoneout else {"update"})

    def check_cell(self, cell):
        if self.output_zoneout and not has_memory(cell):
            raise ValueError(f"output_zoneout needs an LSTM cell state; a {cell_name(cell)} "
                             "has none.")

    def step_noise(self, key, shape, deterministic):
        if not self.active:
            return {}, {}
        q = noise.quantize_probability(1.0 - self.update.rate)
        if deterministic:
            tied = {}
            if self.eval_scaling:  # E[keep] = q
                tied["update"] = q
            if self.output_zoneout:  # 1 - keep
                tied["output_gate"] = 1.0 - q
            return tied, {}
        spec = self.update
        keep = noise.bernoulli(noise.site_key(need_key(key, "recurrent dropout"), "update",
                                              shape.layer),
                               1.0 - spec.rate, (shape.batch, shape.hidden_size), spec.tie,
                               shape.steps, shape.dtype)
        # inverted dropout, or the {0, 1} mask itself (scaled at evaluation instead)
        out = {"update": keep if self.eval_scaling else keep / q}
        if self.output_zoneout:
            out["output_gate"] = 1.0 - keep
        return (out, {}) if spec.tie == "sequence" else ({}, out)


def recurrent_dropout(rate: float, tie: str = "step", output_zoneout: bool = False,
                      eval_scaling: bool = False) -> Regularizer:
    """Semeniuta et al. 2016: dropout on the cell update, c = f c + i drop(g).

    `drop(g) = g * m / (1 - rate)`, `m ~ Bernoulli(1 - rate)` (GRU: the
    candidate n, tanh RNN: the new state); evaluation is the identity.
    `eval_scaling=True` is the zoneout authors' code instead: `drop(g) = g * m`
    in training and `g * (1 - rate)` in evaluation.
    `output_zoneout=True` (LSTM only, Krueger et al.) also freezes the output
    gate where the update was dropped: `o_t <- (1 - m) o_{t-1} + m o_t`, at
    evaluation `p o_{t-1} + (1 - p) o_t`.
    """
    rate = check_rate(rate, "Recurrent dropout")
    check_tie(tie)
    output_zoneout = check_flag(output_zoneout, "output_zoneout")
    eval_scaling = check_flag(eval_scaling, "eval_scaling")
    return compose(RecurrentDropout(update=_mask(rate, tie),
                                    output_zoneout=output_zoneout and rate > 0,
                                    eval_scaling=eval_scaling and rate > 0))
