"""Gal & Ghahramani 2016's embedding dropout: whole word types dropped per sequence."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from rnnreg_jax import noise
from rnnreg_jax.regularizers.base import (
    Family,
    Regularizer,
    check_rate,
    compose,
    need_key,
)


@dataclasses.dataclass(frozen=True)
class EmbeddingDropout(Family):
    """`e(w_t) * m[b, w_t] / (1 - rate)`, `m[b, v] ~ Bernoulli(1 - rate)` per sequence b
    and vocabulary id v, drawn once per window: every occurrence of a word shares its
    mask. Evaluation is the identity."""

    rate: float = 0.0

    def __post_init__(self):
        check_rate(self.rate, "Embedding dropout")

    @property
    def active(self):
        return self.rate > 0

    def sites(self):
        return frozenset({"embedding"}) if self.active else frozenset()

    def embedding_mask(self, key, ids, vocab_size, deterministic, dtype):
        """`[B, T, 1]` multipliers of the embedded tokens `ids: [B, T]`, or None."""
        if deterministic or not self.active:
            return None
        key = need_key(key, "embedding dropout")
        q = noise.quantize_probability(1.0 - self.rate)
        keep = noise.bernoulli_draw(noise.site_key(key, "embedding"), q,
                                    (ids.shape[0], vocab_size))
        per_token = jnp.take_along_axis(keep, ids, axis=1).astype(dtype) / q
        return per_token[..., None]


def embedding_dropout(rate: float) -> Regularizer:
    """Gal & Ghahramani 2016: drop whole word types for the window.

    `e(w_t) * m[b, w_t] / (1 - rate)` with `m[b, v] ~ Bernoulli(1 - rate)` per
    sequence b and vocabulary id v: every occurrence of a word shares its mask.
    """
    return compose(EmbeddingDropout(rate))
