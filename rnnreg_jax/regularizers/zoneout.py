"""Krueger et al. 2016's zoneout: units keep their previous value with probability z."""

from __future__ import annotations

import dataclasses

from rnnreg_jax import noise
from rnnreg_jax.regularizers.base import Family, Regularizer, cell_name, has_memory, need_key
from rnnreg_jax.regularizers.chain import compose
from rnnreg_jax.regularizers.checks import check_flag, check_rate, check_tie


@dataclasses.dataclass(frozen=True)
class Zoneout(Family):
    """`c_t = d_c c_{t-1} + (1 - d_c) c~`, `h_t = d_h h_{t-1} + (1 - d_h) h~`.

    Attributes:
      cells, hiddens: zoneout probabilities z_c (LSTM only) and z_h.
      shared: one mask for cells and hiddens (drawn at rate z_c).
      tie: "step" (the paper) or "sequence".
    """

    cells: float = 0.0
    hiddens: float = 0.0
    shared: bool = False
    tie: str = "step"

    QUALIFIERS = ("tie",)

    def __post_init__(self):
        object.__setattr__(self, "cells", check_rate(self.cells, "Zoneout (cells)",
                                                     allow_one=True))
        object.__setattr__(self, "hiddens", check_rate(self.hiddens, "Zoneout (hiddens)",
                                                       allow_one=True))
        check_tie(self.tie, "Zoneout's tie")
        object.__setattr__(self, "shared", check_flag(self.shared, "shared"))
        if self.shared and self.cells != self.hiddens:
            raise ValueError("A shared zoneout mask needs cells == hiddens.")

    @property
    def active(self):
        return self.cells > 0 or self.hiddens > 0

    def sites(self):
        return frozenset(site for site, rate in (("zone_c", self.cells),
                                                 ("zone_h", self.hiddens)) if rate > 0)

    def check_cell(self, cell):
        if self.cells > 0 and not has_memory(cell):
            raise ValueError(f"zoneout_cells needs an LSTM cell state; a {cell_name(cell)} "
                             "has none.")

    def step_noise(self, key, shape, deterministic):
        if deterministic:  # the expectation: the (quantized, as drawn) rates
            return {name: noise.quantize_probability(rate)
                    for name, rate in (("zone_c", self.cells), ("zone_h", self.hiddens))
                    if rate > 0}, {}
        bh = (shape.batch, shape.hidden_size)
        out = {}
        if self.cells > 0 and has_memory(shape.cell):
            out["zone_c"] = noise.bernoulli(self._key(key, "zoneout_cells", shape.layer),
                                            self.cells, bh, self.tie, shape.steps, shape.dtype)
        if self.hiddens > 0:
            if self.shared and self.cells > 0:
                out["zone_h"] = out["zone_c"]
            else:
                out["zone_h"] = noise.bernoulli(self._key(key, "zoneout_hiddens", shape.layer),
                                                self.hiddens, bh, self.tie, shape.steps,
                                                shape.dtype)
        return (out, {}) if self.tie == "sequence" else ({}, out)

    @staticmethod
    def _key(key, site, layer):
        return noise.site_key(need_key(key, "zoneout"), site, layer)


def zoneout(cells: float = 0.0, hiddens: float = 0.0, shared: bool = False,
            tie: str = "step") -> Regularizer:
    """Krueger et al. 2016: units keep their previous value with probability z.

    `c_t = d_c c_{t-1} + (1 - d_c) c~`, `h_t = d_h h_{t-1} + (1 - d_h) h~`,
    `d ~ Bernoulli(z)` per unit, example and step (`tie="step"`, the paper) or
    per window (`tie="sequence"`); evaluation uses `d = z`. `cells` needs an
    LSTM; `shared=True` uses the cell mask for the hiddens too.
    """
    cells = check_rate(cells, "Zoneout (cells)", allow_one=True)
    hiddens = check_rate(hiddens, "Zoneout (hiddens)", allow_one=True)
    return compose(Zoneout(cells, hiddens, shared, tie))
