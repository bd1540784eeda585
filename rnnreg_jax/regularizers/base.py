"""The regularizer protocol: a frozen record of optional pure hooks (`Regularizer`),
the built-in families' record (`Family`), and how a hook's caller calls `penalties`.

A regularizer is a frozen dataclass (hashable, so a model holding one stays a static
`jit` argument) whose hooks the stack calls at fixed places; each hook it does not
override does nothing. Randomness only ever comes from the key a hook is given: a hook
derives its own site key with `noise.site_key` (built-in sites) or `noise.named_site_key`
(any other name), so switching one site on never changes another's masks.

Hooks (when the stack calls them: what they return):

* `init_params(key, layer, params)` (per layer, at init): extra parameters of the
  layer, a learned noise scale say.
* `weights(params, key, layer, deterministic)` (per layer and window): the layer's
  parameters as the window uses them (weight drop, weight noise, DropConnect on any
  weight): the dict it was given, every array in its shape, entries may be added.
* `input_mask(key, shape, deterministic)` (per layer and window): `(mask, per_gate)`
  for the layer's input, or None.
* `step_noise(key, shape, deterministic)` (per layer and window): `(tied, per_step)`,
  dicts of `cells.StepNoise` fields reused every step or scanned (time first); a
  per-gate `recurrent` mask is a `cells.PerGate`.
* `output_mask(key, shape, deterministic)` (per window): a mask of the last layer's
  output (`[B, W]` or time-major `[T, B, W]`), or None.
* `model_weights(arrays, key, deterministic)` (per window, in the task models): the
  model's own weight matrices as the window uses them, `{"embedding": ..., "output":
  ...}` (the embedding or input map, and the softmax's or head's kernel), each that
  the model has (Krueger et al.'s weight noise on every weight).
* `embedding_mask(key, ids, vocab_size, deterministic, dtype)` (per window):
  multipliers `[B, T, 1]` of the embedded tokens (or anything that broadcasts against
  `[B, T, E]`: classic dropout's evaluation returns a scalar), or None.
* `penalties(params, hiddens, outputs, time_axis, seq_lengths=None)` (per window,
  training only): `{name: scalar}` loss terms; with `seq_lengths` (int `[B]`, variable-
  length batches, `rnnreg_jax.lengths`) the hiddens and outputs are zero past each
  example's length and the terms should count its valid steps only. A hook without the
  `seq_lengths` argument serves batches without lengths (`penalties_of` refuses it the
  others).

`shape` is a `LayerShape` (the layer index, cell, B, T, F, H, gates and dtype; the
output mask's has the last layer's width as both F and H). A hook that writes a site
names it in `sites()`: `compose` refuses two writers of one site, since the second
would silently replace the first. `weights` and `model_weights` hooks are transforms,
not writers: they run in `Regularizer.WEIGHTS_ORDER` (weight drop before weight noise,
whatever the order composed), each on the previous one's result. A result that breaks
its hook's contract is refused in one ValueError naming the regularizer
(`regularizers.checks`).

Composition (`compose`, `Chain`, `NONE`, `without`) is `regularizers.chain`.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, ClassVar, NamedTuple, TypeVar

import jax

Array = jax.Array
FamilyT = TypeVar("FamilyT", bound="Regularizer")


def has_memory(cell: Any) -> bool:
    """Whether a cell (its name, or a cell record) keeps a memory cell `c`."""
    from rnnreg_jax import cells

    return cells.has_memory(cell)


def cell_name(cell: Any) -> str:
    return getattr(cell, "name", cell)


class LayerShape(NamedTuple):
    """What a hook needs to know of the layer and window it draws for."""

    layer: int
    cell: Any
    batch: int
    steps: int
    input_size: int
    hidden_size: int
    num_gates: int
    dtype: Any


@dataclasses.dataclass(frozen=True)
class Regularizer:
    """A regularizer: override the hooks you need (see the module docstring)."""

    # Where this part's `weights` runs among a composition's weight transforms: lower
    # first, ties in the order composed. Weight drop's -1 masks W_h before anything adds
    # to it (weight noise), so `a + b` and `b + a` transform the weights alike.
    WEIGHTS_ORDER: ClassVar[int] = 0

    def sites(self) -> frozenset[str]:
        """The sites this regularizer writes (a `StepNoise` field, "input", "output",
        "embedding", a penalty's name): `compose` refuses two writers of one."""
        return frozenset()

    @property
    def active(self) -> bool:
        """False for a setting that does nothing (every rate 0): `compose` leaves it out."""
        return True

    def _overrides(self, *hooks: str) -> bool:
        return any(getattr(type(self), h) is not getattr(Regularizer, h) for h in hooks)

    @property
    def stack_noise(self) -> bool:
        """Whether training draws random numbers inside the recurrent stack (weights,
        masks, step noise), so the stack needs a key: by default, whether the
        regularizer has such a hook (the built-ins say when their rates are 0)."""
        return self._overrides("weights", "input_mask", "step_noise", "output_mask")

    @property
    def embedding_noise(self) -> bool:
        """Whether training draws the embedding mask (the model then needs a key)."""
        return self._overrides("embedding_mask")

    @property
    def model_noise(self) -> bool:
        """Whether training transforms the model's own weights (`model_weights`), so
        the model needs a key."""
        return self._overrides("model_weights")

    @property
    def has_penalty(self) -> bool:
        """Whether training adds loss terms (by default: whether it has `penalties`)."""
        return self._overrides("penalties")

    @property
    def needs_output_gate(self) -> bool:
        """Whether the carry must hold the previous output gate `o` (output zoneout)."""
        return False

    def check_cell(self, cell: Any) -> None:
        """Raise ValueError if this regularizer cannot act on `cell`."""

    def init_params(self, key: Array, layer: int, params: dict) -> dict:
        del key, layer, params
        return {}

    def weights(self, params: dict, key: Array | None, layer: int, deterministic: bool
                ) -> dict:
        del key, layer, deterministic
        return params

    def model_weights(self, arrays: dict, key: Array | None, deterministic: bool) -> dict:
        del key, deterministic
        return arrays

    def input_mask(self, key: Array | None, shape: LayerShape, deterministic: bool):
        del key, shape, deterministic

    def step_noise(self, key: Array | None, shape: LayerShape, deterministic: bool
                   ) -> tuple[dict, dict]:
        del key, shape, deterministic
        return {}, {}

    def output_mask(self, key: Array | None, shape: LayerShape, deterministic: bool):
        del key, shape, deterministic

    def embedding_mask(self, key: Array | None, ids: Array, vocab_size: int,
                       deterministic: bool, dtype: Any):
        del key, ids, vocab_size, deterministic, dtype

    def penalties(self, params: list, hiddens: list, outputs: Array, time_axis: int,
                  seq_lengths: Array | None = None) -> dict[str, Array]:
        del params, hiddens, outputs, time_axis, seq_lengths
        return {}

    def merge(self, other: Regularizer) -> Regularizer | None:
        """This and `other` as one record, when they are settings of one family that
        merge field by field (None: they stay two parts)."""
        del other
        return None

    def __add__(self, other: Regularizer) -> Regularizer:
        from rnnreg_jax.regularizers.chain import compose  # chain imports this module

        return compose(self, other)

    def __radd__(self, other: Any) -> Regularizer:
        """`sum(regs)` starts from 0: `0 + reg` is `reg`."""
        from rnnreg_jax.regularizers.chain import compose  # chain imports this module

        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return compose(self)
        return NotImplemented

    @property
    def parts(self) -> tuple[Regularizer, ...]:
        return (self,)

    @property
    def has_noise(self) -> bool:
        """Whether training draws any random numbers (and so needs a key)."""
        return self.stack_noise or self.embedding_noise

    def find(self, family: type[FamilyT]) -> FamilyT | None:
        """The part of type `family` (of a composed regularizer), or None."""
        return next((p for p in self.parts if isinstance(p, family)), None)


def need_key(key: Array | None, what: str) -> Array:
    if key is None:
        raise ValueError(f"A PRNG key is required for {what} in training mode "
                         "(deterministic=False); pass one, or deterministic=True.")
    return key


def merge_fields(a: Any, b: Any) -> Any:
    """`a` and `b` (one dataclass type) as one: each field from the one that sets it
    (differs from the default); a field both set to different values is an error."""
    merged = {}
    for field in dataclasses.fields(a):
        va, vb = getattr(a, field.name), getattr(b, field.name)
        if va != field.default and vb != field.default and va != vb:
            raise ValueError(f"Cannot compose: {type(a).__name__}.{field.name} set twice "
                             f"({va} and {vb}).")
        merged[field.name] = vb if va == field.default else va
    return type(a)(**merged)


@dataclasses.dataclass(frozen=True)
class Family(Regularizer):
    """A built-in family's record: two settings of it merge field by field, and it draws
    noise or adds a loss (by the hooks it has) only when `active`, so a setting with
    its rates at 0 needs no key.

    `QUALIFIERS` name the fields that say how each of the record's sites acts (zoneout's
    `tie`): two active settings that differ in one are refused, since the merged record
    would apply one setting's value to the other's sites (a field left at its default
    cannot be told from one not given)."""

    QUALIFIERS: ClassVar[tuple[str, ...]] = ()

    def merge(self, other: Regularizer) -> Regularizer:
        if self.active and other.active:
            for name in self.QUALIFIERS:
                mine, theirs = getattr(self, name), getattr(other, name)
                if mine != theirs:
                    raise ValueError(
                        f"Cannot compose: {type(self).__name__}.{name} differs ({mine!r} "
                        f"and {theirs!r}) between two settings, and one record applies it "
                        "to all its sites; give them in one call.")
        return merge_fields(self, other)

    @property
    def stack_noise(self) -> bool:
        return self.active and super().stack_noise

    @property
    def embedding_noise(self) -> bool:
        return self.active and super().embedding_noise

    @property
    def model_noise(self) -> bool:
        return self.active and super().model_noise

    @property
    def has_penalty(self) -> bool:
        return self.active and super().has_penalty


def penalties_of(reg: Regularizer, params: list, hiddens: list, outputs: Array,
                 time_axis: int, seq_lengths: Array | None = None) -> dict[str, Array]:
    """`reg`'s loss terms: its `penalties` hook, given `seq_lengths` only when there are
    lengths, so a hook written without that argument still serves every batch without;
    a result that is no dict of scalars is a one-sentence ValueError naming `reg`."""
    from rnnreg_jax.regularizers.checks import check_penalties

    if seq_lengths is None:
        return check_penalties(reg.penalties(params, hiddens, outputs, time_axis), reg)
    parameters = inspect.signature(reg.penalties).parameters
    if "seq_lengths" not in parameters and not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        raise ValueError(f"{type(reg).__name__}.penalties takes no seq_lengths, so it "
                         "cannot count only each example's valid steps; add a "
                         "seq_lengths=None argument to use it with lengths.")
    return check_penalties(reg.penalties(params, hiddens, outputs, time_axis,
                                         seq_lengths=seq_lengths), reg)


def check_regularizer(reg: Any) -> Regularizer:
    """`reg`, or a one-sentence ValueError if it is not a `Regularizer` (None, a number,
    a constructor not called)."""
    if not isinstance(reg, Regularizer):
        hint = " (call it: its result is the regularizer)" if callable(reg) else ""
        raise ValueError("reg must be a regularizer, such as rnnreg_jax.zaremba(0.5) or "
                         f"rnnreg_jax.NONE for none; got {reg!r}{hint}.")
    return reg
