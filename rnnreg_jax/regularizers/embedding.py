"""Gal & Ghahramani 2016's embedding dropout: whole word types dropped per sequence (or,
as AWD-LSTM's `embedded_dropout` does, per minibatch)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from rnnreg_jax import noise
from rnnreg_jax.regularizers.base import Family, Regularizer, need_key
from rnnreg_jax.regularizers.chain import compose, without
from rnnreg_jax.regularizers.checks import check_flag, check_rate

# How many sequences share a word type's mask: "sequence", each its own (Gal's); "batch",
# one mask over the vocabulary for the whole minibatch (AWD-LSTM's `embedded_dropout`).
EMBEDDING_TIES = ("sequence", "batch")


def check_embedding_tie(tie: str) -> str:
    """`tie` must be one of `EMBEDDING_TIES`."""
    if tie not in EMBEDDING_TIES:
        raise ValueError(f"Embedding dropout's tie must be one of {EMBEDDING_TIES}, got "
                         f"{tie!r}.")
    return tie


@dataclasses.dataclass(frozen=True)
class EmbeddingDropout(Family):
    """`e(w_t) * m[b, w_t] / (1 - rate)`, `m[b, v] ~ Bernoulli(1 - rate)` per sequence b
    and vocabulary id v, drawn once per window: every occurrence of a word shares its
    mask. Evaluation is the identity.

    Attributes:
      rate: drop probability in [0, 1).
      eval_scaling: classic dropout: `e(w_t) * m[b, w_t]` in training (the same draws,
        not scaled by 1/q) and `e(w_t) * q` in evaluation, q = 1 - rate. Ignored at
        rate 0.
      tie: "sequence" (above) or "batch": one draw `m[v]` per vocabulary id for the
        whole minibatch, shared by its sequences (AWD-LSTM drops rows of the embedding
        matrix once per forward call).
    """

    rate: float = 0.0
    eval_scaling: bool = False
    tie: str = "sequence"

    QUALIFIERS: ClassVar[tuple[str, ...]] = ("tie",)

    def __post_init__(self):
        object.__setattr__(self, "rate", check_rate(self.rate, "Embedding dropout"))
        object.__setattr__(self, "eval_scaling", check_flag(self.eval_scaling, "eval_scaling"))
        check_embedding_tie(self.tie)

    @property
    def active(self):
        return self.rate > 0

    def sites(self):
        return frozenset({"embedding"}) if self.active else frozenset()

    def embedding_mask(self, key, ids, vocab_size, deterministic, dtype):
        """`[B, T, 1]` multipliers of the embedded tokens `ids: [B, T]`, or None; in
        evaluation with `eval_scaling`, q as a 0-d array."""
        if not self.active:
            return None
        q = noise.quantize_probability(1.0 - self.rate)
        if deterministic:
            return jnp.asarray(q, dtype) if self.eval_scaling else None
        key = need_key(key, "embedding dropout")
        if self.tie == "batch":  # one row over the vocabulary, read at every id
            keep = noise.bernoulli_draw(noise.site_key(key, "embedding"), q, (vocab_size,))
            per_token = keep[ids].astype(dtype)
        else:
            keep = noise.bernoulli_draw(noise.site_key(key, "embedding"), q,
                                        (ids.shape[0], vocab_size))
            per_token = jnp.take_along_axis(keep, ids, axis=1).astype(dtype)
        if not self.eval_scaling:
            per_token = per_token / q
        return per_token[..., None]


def embedding_dropout(rate: float, eval_scaling: bool = False,
                      tie: str = "sequence") -> Regularizer:
    """Gal & Ghahramani 2016: drop whole word types for the window.

    `e(w_t) * m[b, w_t] / (1 - rate)` with `m[b, v] ~ Bernoulli(1 - rate)` per
    sequence b and vocabulary id v: every occurrence of a word shares its mask;
    evaluation is the identity. `eval_scaling=True` is classic dropout (Keras 0.x's
    `DropoutEmbedding`): `e(w_t) * m[b, w_t]` in training, `e(w_t) * (1 - rate)` in
    evaluation; ignored at rate 0. `tie="batch"` draws one mask `m[v]` for the whole
    minibatch instead (AWD-LSTM's `embedded_dropout`); ignored at rate 0.
    """
    rate = check_rate(rate, "Embedding dropout")
    eval_scaling = check_flag(eval_scaling, "eval_scaling")
    tie = check_embedding_tie(tie)
    return compose(EmbeddingDropout(rate, eval_scaling and rate > 0,
                                    tie if rate > 0 else "sequence"))


@dataclasses.dataclass(frozen=True)
class EmbeddingScale(Family):
    """The embedded tokens times a constant in every mode and without a key: classic
    embedding dropout held at its evaluation value q inside a noisy pass
    (`embedding_at_evaluation`)."""

    scale: float = 1.0

    @property
    def active(self):
        return self.scale != 1.0

    @property
    def embedding_noise(self):
        return False

    def sites(self):
        return frozenset({"embedding"}) if self.active else frozenset()

    def embedding_mask(self, key, ids, vocab_size, deterministic, dtype):
        del key, ids, vocab_size, deterministic
        return jnp.asarray(self.scale, dtype) if self.active else None


def embedding_at_evaluation(reg: Regularizer) -> Regularizer:
    """`reg` with its embedding dropout at its evaluation value in every mode, the other
    sites as they are (MC evaluation without word-type dropout, Gal's PTB protocol):
    left out (inverted dropout: the identity), or the constant q = 1 - rate with
    `eval_scaling` (classic dropout)."""
    part = reg.find(EmbeddingDropout)
    rest = without(reg, EmbeddingDropout)
    if part is None or not part.active or not part.eval_scaling:
        return rest
    return compose(rest, EmbeddingScale(noise.quantize_probability(1.0 - part.rate)))
