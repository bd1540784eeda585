"""Recurrent batch normalization (Cooijmans et al. 2016): the `lstm_bn` cell, defined in
`rnnreg_jax.cells.lstm_bn`; this module keeps its functions under their first name."""

from rnnreg_jax.cells.lstm_bn import (  # noqa: F401 -- re-exported
    DEFAULT_MAX_STEPS,
    DEFAULT_MOMENTUM,
    GAMMA_INIT,
    PARAM_NAMES,
    STAT_NAMES,
    WEIGHT,
    batch_norm,
    check_max_steps,
    check_momentum,
    init_params,
    init_population,
    lstm_bn_step,
    lstm_bn_update,
    per_step,
    project,
    statistics,
    update_population,
)
