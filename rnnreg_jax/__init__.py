"""rnnreg_jax: regularized recurrent networks in JAX.

Pure core: `cells` (steps), `noise` (masks from explicit keys),
`regularizers` (specs), `rnn` (scan unrolling). Flax: `nn`, `models`.
"""

from rnnreg_jax import cells, noise, regularizers, rnn
from rnnreg_jax.bidirectional import reverse_padded, unroll_bidirectional
from rnnreg_jax.regularizers import (
    NONE,
    MaskSpec,
    Regularizer,
    activation_penalty,
    activation_regularization,
    awd_lstm,
    compose,
    dropout,
    embedding_dropout,
    naive_dropout,
    norm_stabilizer,
    norm_stabilizer_penalty,
    recurrent_dropout,
    stochastic_depth,
    temporal_activation_penalty,
    temporal_activation_regularization,
    variational,
    weight_drop,
    weight_noise,
    zaremba,
    zoneout,
)
from rnnreg_jax.rnn import initial_carry, scan_layer, unroll

__version__ = "0.1.0"

__all__ = [
    "NONE", "MaskSpec", "Regularizer", "cells", "compose", "dropout", "embedding_dropout",
    "initial_carry", "naive_dropout", "noise", "norm_stabilizer", "norm_stabilizer_penalty",
    "recurrent_dropout", "regularizers", "rnn", "scan_layer", "stochastic_depth", "unroll",
    "variational", "weight_noise", "zaremba", "zoneout",
    # Beyond the papers: AWD-LSTM's regularizers (Merity et al. 2017).
    "activation_penalty", "activation_regularization", "awd_lstm",
    "temporal_activation_penalty", "temporal_activation_regularization", "weight_drop",
    # Bidirectional stacks (PyTorch's bidirectional=True).
    "reverse_padded", "unroll_bidirectional",
]
