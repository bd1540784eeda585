"""Regularizers: frozen records of pure hooks (`base.Regularizer`), one family per file,
composed by `chain.compose`.

A regularizer never touches parameters or samples anything until the stack calls its
hooks with explicit keys; `compose(a, b, ...)` (or `a + b`) puts them together like
`optax.chain`, refusing two writers of one site. A user's regularizer is a subclass of
`Regularizer` overriding the hooks it needs (docs/CUSTOM_REGULARIZERS.md).

    reg = variational(input=0.35, recurrent=0.2, output=0.35, embedding=0.2)
    reg = zoneout(cells=0.5, hiddens=0.05) + zaremba(0.25)

Catalog (LSTM notation of docs/REGULARIZERS.md; rates are drop probabilities), by file:

* dropout: `zaremba(p)` (Zaremba et al. 2014: every layer input and the last output,
  a fresh mask each step), `variational(...)` (Gal & Ghahramani 2016: the same sites
  plus h_{t-1} into W_h and the cell, one mask per sequence), `naive_dropout(...)`
  (Gal's baseline: those sites per step), `dropout(site, p)` (one site; "hidden" is
  AWD-LSTM's dropout between layers only).
* embedding: `embedding_dropout(p)` (Gal & Ghahramani 2016: word types per sequence;
  `tie="batch"`: per minibatch, AWD-LSTM's).
* zoneout: `zoneout(c, h)` (Krueger et al. 2016: c_t = d c_{t-1} + (1-d) c~).
* recurrent_dropout: `recurrent_dropout(p)` (Semeniuta et al. 2016: c_t = f c_{t-1}
  + i drop(g)), with the zoneout authors' output-gate zoneout and evaluation scaling.
* stochastic_depth: `stochastic_depth(p)` (Krueger's baseline: the layer keeps its
  state (h, c) of t-1 with probability p).
* weights: `weight_noise(s)` (Krueger's baseline: W_h + s N(0, 1) per minibatch),
  `weight_drop(p)` (Merity et al. 2017: DropConnect on W_h per minibatch).
* penalties: `norm_stabilizer(b)` (Krueger & Memisevic 2016), AWD-LSTM's
  `activation_regularization(a)` and `temporal_activation_regularization(b)`.
* Weight decay (Gal & Ghahramani 2016) is L2 in the optimizer
  (`optax.add_decayed_weights`).

In deterministic mode every noise is replaced by its expectation: dropout is the
identity (inverted scaling), or multiplies by the keep probability with `eval_scaling`
(classic dropout, its training masks unscaled), zoneout and depth coefficients become
their rates.
"""

from rnnreg_jax.regularizers.base import LayerShape, Regularizer, check_regularizer
from rnnreg_jax.regularizers.chain import NONE, Chain, compose, without
from rnnreg_jax.regularizers.checks import check_flag, check_rate, check_tie
from rnnreg_jax.regularizers.dropout import (
    Dropout,
    MaskSpec,
    dropout,
    naive_dropout,
    variational,
    zaremba,
)
from rnnreg_jax.regularizers.embedding import EmbeddingDropout, embedding_dropout
from rnnreg_jax.regularizers.penalties import (
    ActivationRegularization,
    NormStabilizer,
    TemporalActivationRegularization,
    activation_penalty,
    activation_regularization,
    norm_stabilizer,
    norm_stabilizer_penalty,
    temporal_activation_penalty,
    temporal_activation_regularization,
)
from rnnreg_jax.regularizers.recurrent_dropout import RecurrentDropout, recurrent_dropout
from rnnreg_jax.regularizers.stochastic_depth import StochasticDepth, stochastic_depth
from rnnreg_jax.regularizers.weights import (
    WeightDrop,
    WeightNoise,
    drop_connect,
    gaussian_noise,
    weight_drop,
    weight_noise,
)
from rnnreg_jax.regularizers.zoneout import Zoneout, zoneout


def awd_lstm(embedding: float = 0.1, input: float = 0.4, hidden: float = 0.3,
             output: float = 0.4, weight_drop_rate: float = 0.5, alpha: float = 2.0,
             beta: float = 1.0, embedding_tie: str = "sequence") -> Regularizer:
    """Merity et al. 2017's regularizers together (AWD-LSTM, PTB values as defaults).

    Word types dropped per sequence (`embedding`; `embedding_tie="batch"`: one mask
    for the minibatch, as AWD's `embedded_dropout` draws it), locked (tied per
    sequence, shared by the gates) dropout on the first layer's input, between layers
    and on the output, DropConnect on every W_h, AR and TAR. Weight decay and NT-ASGD
    live in the optimizer.
    """
    return compose(
        variational(input=input, output=output, embedding=embedding,
                    embedding_tie=embedding_tie),
        dropout("hidden", hidden, tie="sequence"),
        weight_drop(weight_drop_rate),
        activation_regularization(alpha),
        temporal_activation_regularization(beta))


__all__ = [
    "NONE", "ActivationRegularization", "Chain", "Dropout", "EmbeddingDropout", "LayerShape",
    "MaskSpec", "NormStabilizer", "RecurrentDropout", "Regularizer", "StochasticDepth",
    "TemporalActivationRegularization", "WeightDrop", "WeightNoise", "Zoneout",
    "activation_penalty", "activation_regularization", "awd_lstm", "check_flag", "check_rate",
    "check_regularizer", "check_tie", "compose", "drop_connect", "dropout",
    "embedding_dropout", "gaussian_noise",
    "naive_dropout", "norm_stabilizer", "norm_stabilizer_penalty", "recurrent_dropout",
    "stochastic_depth", "temporal_activation_penalty", "temporal_activation_regularization",
    "variational", "weight_drop", "weight_noise", "without", "zaremba", "zoneout",
]
