"""Stochastic depth over time (Krueger et al.'s baseline): a layer keeps its whole state."""

from __future__ import annotations

import dataclasses

from rnnreg_jax import noise
from rnnreg_jax.regularizers.base import Family, Regularizer, need_key
from rnnreg_jax.regularizers.chain import compose
from rnnreg_jax.regularizers.checks import check_rate


@dataclasses.dataclass(frozen=True)
class StochasticDepth(Family):
    """`(h_t, c_t) = d (h_{t-1}, c_{t-1}) + (1 - d) (h_t, c_t)`, `d ~ Bernoulli(rate)` of
    shape `[B, 1]` per step; evaluation uses `d = rate`."""

    rate: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "rate", check_rate(self.rate, "Stochastic depth",
                                                    allow_one=True))

    @property
    def active(self):
        return self.rate > 0

    def sites(self):
        return frozenset({"depth"}) if self.active else frozenset()

    def step_noise(self, key, shape, deterministic):
        if deterministic:
            return {"depth": noise.quantize_probability(self.rate)}, {}
        key = noise.site_key(need_key(key, "stochastic depth"), "depth", shape.layer)
        return {}, {"depth": noise.bernoulli(key, self.rate, (shape.batch, 1), "step",
                                             shape.steps, shape.dtype)}


def stochastic_depth(rate: float) -> Regularizer:
    """A layer keeps its whole state (h, c) for an example at a step w.p. `rate`.

    `(h_t, c_t) = d (h_{t-1}, c_{t-1}) + (1 - d) (h_t, c_t)`, `d ~ Bernoulli(rate)`
    of shape `[B, 1]` per step; evaluation uses `d = rate`.
    """
    return compose(StochasticDepth(rate))
