"""Flax NNX modules over the pure core: the twins of the linen `nn.StackedRNN`,
`nn.Bidirectional`, `models.LanguageModel` and `models.SequenceModel` (docs/NNX.md).

    from flax import nnx
    from rnnreg_jax import nnx as rnx

    model = rnx.LanguageModel(100, (32, 32), reg=variational(0.35, 0.2, 0.35),
                              rngs=nnx.Rngs(params=0, dropout=1))
    logits, carry = model(ids)                   # training: one dropout draw per call
    loss = xent(logits, targets) + model.penalty()
    model.eval(); logits, carry = model(ids, carry)

Every parameter is an `nnx.Param` at the path of the linen model's `params` tree (and
"lstm_bn"'s running statistics `nnx.BatchStat`s at their `batch_stats` paths), so
`to_linen()` / `from_linen()` move weights between the two; the same dropout key gives
the same masks in both. `mc_samples` / `mc_log_probs` run MC dropout.
"""

from rnnreg_jax.nnx.base import SUPPORTED_OPTIONS, RecurrentModule, linen_key
from rnnreg_jax.nnx.bidirectional import Bidirectional, DirectionPair
from rnnreg_jax.nnx.mc import mc_log_probs, mc_samples
from rnnreg_jax.nnx.models import LanguageModel, SequenceModel
from rnnreg_jax.nnx.stack import LayerParams, StackedRNN

__all__ = ["SUPPORTED_OPTIONS", "Bidirectional", "DirectionPair", "LanguageModel",
           "LayerParams", "RecurrentModule", "SequenceModel", "StackedRNN", "linen_key",
           "mc_log_probs", "mc_samples"]
