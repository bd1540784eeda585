"""Penn Treebank presets: one per row of the three papers' PTB tables, and beyond them.

Sources, one file each:
  ptb_zaremba_gal.py: Zaremba, Sutskever, Vinyals 2014, Table 1 and their Lua code
    (main.lua); Gal & Ghahramani 2016, Table 1 (word level, "Variational (tied
    weights)" and "Variational (untied weights)") and their code extending Zaremba's.
  ptb_zoneout.py: Krueger et al. 2016 (zoneout), Table 2 (word level, validation
    perplexity) and Table 3 (character level, bits per character).
  ptb_awd.py: beyond the papers, Merity, Keskar, Socher 2017 (AWD-LSTM), Table 4 (PTB,
    without fine-tuning and the cache pointer) and their code (salesforce/awd-lstm-lm).
  ptb_blocks.py: the data and model blocks they are assembled from.
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import paper_config, pick_preset, reg_config
from experiments.configs.ptb_awd import awd, awd_small, variational_small
from experiments.configs.ptb_zaremba_gal import (
    naive_dropout_large,
    naive_dropout_medium,
    variational_large,
    variational_large_untied,
    variational_medium,
    variational_medium_untied,
    zaremba_config,
    zaremba_large,
    zaremba_medium,
    zaremba_small,
)
from experiments.configs.ptb_zoneout import (
    baseline,
    baseline_char,
    norm_stabilizer,
    norm_stabilizer_char,
    recurrent_dropout,
    recurrent_dropout_char,
    recurrent_dropout_output_zoneout,
    stochastic_depth,
    stochastic_depth_char,
    weight_noise,
    weight_noise_char,
    zoneout,
    zoneout_cells,
    zoneout_cells_states,
    zoneout_char,
    zoneout_char_overlapping,
)


def tiny():
    """Seconds on a laptop: 2x16 LSTM, variational dropout, 2 short epochs."""
    config = zaremba_config(hidden=16, init_scale=0.1, dropout=0.0, epochs=2,
                            decay_after=1, decay=2.0, clip=5.0, seq_len=10,
                            paper=paper_config("smoke test"),
                            reg=reg_config(variational=dict(input=0.2, recurrent=0.2, output=0.2,
                                                           embedding=0.1, tie="sequence")))
    config.train.max_steps = 30
    config.train.mc_samples = 4
    return config


PRESETS = {fn.__name__: fn for fn in (
    zaremba_small, zaremba_medium, zaremba_large,
    variational_medium, variational_medium_untied, variational_large, variational_large_untied,
    naive_dropout_medium, naive_dropout_large,
    zoneout, recurrent_dropout_output_zoneout, zoneout_cells_states, recurrent_dropout,
    stochastic_depth, norm_stabilizer, zoneout_cells, baseline, weight_noise,
    zoneout_char, zoneout_char_overlapping, baseline_char, recurrent_dropout_char,
    stochastic_depth_char, weight_noise_char, norm_stabilizer_char,
    awd, awd_small, variational_small,
    tiny,
)}


def get_config(name: str) -> ml_collections.ConfigDict:
    """The preset `name`, for `--config=experiments/configs/ptb.py:NAME` (the
    `ml_collections` config-file convention of Flax's examples and big_vision)."""
    return pick_preset(PRESETS, name, " in experiments/configs/ptb.py")
