"""Regularizers together: `compose` (and `a + b`) merges settings of one family into one
record and refuses two writers of one site (the protocol's rule, `regularizers.base`);
`Chain` runs its parts' hooks, each result checked so that a mistake names its part;
`NONE` is the empty composition, and `without` takes a family's parts out of one."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from rnnreg_jax.regularizers.base import Regularizer, check_regularizer, penalties_of


@dataclasses.dataclass(frozen=True)
class Chain(Regularizer):
    """Regularizers applied together (`compose`); every hook runs each part's."""

    members: tuple[Regularizer, ...] = ()

    def __post_init__(self):
        members, what = self.members, "Chain.members must be a tuple of regularizers " \
            "(compose(a, b) builds one)"
        if not isinstance(members, (tuple, list)):
            raise ValueError(f"{what}, got {members!r:.80}.")
        bad = [p for p in members if not isinstance(p, Regularizer)]
        if bad:
            raise ValueError(f"{what}, got {bad[0]!r:.80} among them.")
        object.__setattr__(self, "members", tuple(members))  # a list: hashable as a tuple

    @property
    def parts(self) -> tuple[Regularizer, ...]:
        return self.members

    def sites(self) -> frozenset[str]:
        return frozenset().union(*(p.sites() for p in self.members))

    @property
    def stack_noise(self) -> bool:
        return any(p.stack_noise for p in self.members)

    @property
    def embedding_noise(self) -> bool:
        return any(p.embedding_noise for p in self.members)

    @property
    def model_noise(self) -> bool:
        return any(p.model_noise for p in self.members)

    @property
    def has_penalty(self) -> bool:
        return any(p.has_penalty for p in self.members)

    @property
    def needs_output_gate(self) -> bool:
        return any(p.needs_output_gate for p in self.members)

    def check_cell(self, cell: Any) -> None:
        for p in self.members:
            p.check_cell(cell)

    def init_params(self, key, layer, params):
        extra = {}
        for index, p in enumerate(self.members):
            extra.update(p.init_params(jax.random.fold_in(key, index), layer, params))
        return extra

    def weights(self, params, key, layer, deterministic):
        from rnnreg_jax.regularizers.checks import check_weights

        for p in sorted(self.members, key=lambda p: p.WEIGHTS_ORDER):  # a stable sort
            params = check_weights(p.weights(params, key, layer, deterministic), params, p)
        return params

    def model_weights(self, arrays, key, deterministic):
        from rnnreg_jax.regularizers.checks import check_weights

        for p in sorted(self.members, key=lambda p: p.WEIGHTS_ORDER):
            arrays = check_weights(p.model_weights(arrays, key, deterministic), arrays, p,
                                   "model_weights")
        return arrays

    def _first(self, hook: str, *args, check=None):
        """The first member's non-None result of `hook`; `check(out, member)` sees each
        member's result first, so that a mistake names its regularizer."""
        for p in self.members:
            out = getattr(p, hook)(*args)
            if check is not None:
                out = check(out, p)
            if out is not None:
                return out
        return None

    def input_mask(self, key, shape, deterministic):
        from rnnreg_jax.regularizers.checks import check_input_mask

        return self._first("input_mask", key, shape, deterministic,
                           check=lambda out, p: check_input_mask(out, shape, p))

    def output_mask(self, key, shape, deterministic):
        from rnnreg_jax.regularizers.checks import check_output_mask

        return self._first("output_mask", key, shape, deterministic,
                           check=lambda out, p: check_output_mask(out, shape, p))

    def embedding_mask(self, key, ids, vocab_size, deterministic, dtype):
        from rnnreg_jax.regularizers.checks import check_embedding_mask

        return self._first("embedding_mask", key, ids, vocab_size, deterministic, dtype,
                           check=lambda out, p: check_embedding_mask(out, ids, p))

    def step_noise(self, key, shape, deterministic):
        from rnnreg_jax.regularizers.checks import check_step_noise

        tied, per_step = {}, {}
        for p in self.members:
            t, s = check_step_noise(p.step_noise(key, shape, deterministic), shape, p)
            tied.update(t)
            per_step.update(s)
        return tied, per_step

    def penalties(self, params, hiddens, outputs, time_axis, seq_lengths=None):
        out = {}
        for p in self.members:
            out.update(penalties_of(p, params, hiddens, outputs, time_axis, seq_lengths))
        return out


NONE = Chain()


def compose(*regs: Regularizer) -> Regularizer:
    """Regularizers together, like `optax.chain`; `a + b` is `compose(a, b)`.

    Settings of one family merge into one record (`variational(input=...) +
    dropout("hidden", ...)`, a field set twice to different values is an error); parts
    of different families that write the same site are refused in one line.
    """
    parts: list[Regularizer] = []
    for reg in regs:
        for part in check_regularizer(reg).parts:
            for index, earlier in enumerate(parts):
                merged = earlier.merge(part) if type(earlier) is type(part) else None
                if merged is not None:
                    parts[index] = merged
                    break
            else:
                parts.append(part)
    parts = [p for p in parts if p.active]
    seen: dict[str, Regularizer] = {}
    for part in parts:
        for site in sorted(part.sites()):
            if site in seen:
                raise ValueError(f"Cannot compose: site {site!r} is written by both "
                                 f"{seen[site]!r} and {part!r}.")
            seen[site] = part
    if not parts:
        return NONE
    return parts[0] if len(parts) == 1 else Chain(tuple(parts))


def without(reg: Regularizer, family: type | tuple[type, ...]) -> Regularizer:
    """`reg` without its parts of type `family` (a regularizer class, or a tuple of them:
    MC evaluation without embedding dropout, say)."""
    check_regularizer(reg)
    families = family if isinstance(family, tuple) else (family,)
    if not families or not all(isinstance(f, type) and issubclass(f, Regularizer)
                               for f in families):
        raise ValueError(f"family must be a regularizer class (such as "
                         f"rnnreg_jax.regularizers.EmbeddingDropout) or a tuple of them, "
                         f"got {family!r:.80}.")
    return compose(*(p for p in reg.parts if not isinstance(p, family)))
