"""A layer's recurrence in one persistent Pallas kernel pair, regularizers' masks fused in.

    ys, carry = pallas.recurrence("lstm", params, xw, carry, tied, per_step)

what `rnn.scan_layer(..., implementation="pallas")` runs: `plan` (the padded layout,
the on-chip budget and the "auto" rule), `gates` (the cells' updates gate by gate),
`kernels` (the forward and backward kernels), `recurrence` (the entry point, its
custom VJP). docs/ARCHITECTURE.md describes the design.
"""

from rnnreg_jax.pallas.plan import (
    AUTO_PALLAS_MAX_HIDDEN,
    AUTO_PALLAS_MIN_STEPS,
    KERNEL_CELLS,
    MAX_PADDED_HIDDEN,
    ON_CHIP_WEIGHT_BYTES,
    Plan,
    auto_prefers_pallas,
    check_cell,
    make_plan,
)
from rnnreg_jax.pallas.recurrence import recurrence

__all__ = ["AUTO_PALLAS_MAX_HIDDEN", "AUTO_PALLAS_MIN_STEPS", "KERNEL_CELLS",
           "MAX_PADDED_HIDDEN", "ON_CHIP_WEIGHT_BYTES", "Plan", "auto_prefers_pallas",
           "check_cell", "make_plan", "recurrence"]
