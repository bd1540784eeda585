"""Text from a trained language model: greedy decoding or sampling at a temperature.

    ids, carry = generate(model, variables, jax.random.key(0), 50, prompt=prompt_ids,
                          temperature=0.8)

The prompt `[B, P]` goes through the model in one call (one window, as in evaluation),
which gives the state after it and the logits of the next token; then a `lax.scan` draws
one token per step from the last logits and feeds it back as a `[B, 1]` window with the
carried state. The model runs in evaluation mode (`deterministic=True`: dropout and every
other noise at its expectation). Step i draws with `fold_in(key, i)`, so the first M
tokens of N drawn with one key are the M tokens drawn with it alone.

`num_tokens`, `temperature` and `top_k` shape the computation: under `jax.jit` pass them
as static arguments (or close over them). The prompt's ids are checked against the
vocabulary where they are concrete; under jit only its rank and dtype are.

A long text can report its progress: with `on_progress`, the tokens are drawn in chunks of
`progress_every` steps (one jitted scan each, outside jit only), and `on_progress(done,
num_tokens)` is called as each chunk is ready. The steps, their keys and so the text are
those of one scan.
"""

from __future__ import annotations

import functools
import math
import operator
import sys
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen
import jax
import jax.numpy as jnp

from rnnreg_jax import cells
from rnnreg_jax.models import LanguageModel, check_token_ids
from rnnreg_jax.regularizers.checks import check_key

# `apply(variables, ids [B, T], carry or None) -> (logits [B, T, V], carry)`, in evaluation mode.
ApplyFn = Callable[[Any, jax.Array, Any], tuple[jax.Array, Any]]


def generate(model: LanguageModel | ApplyFn, variables, key: jax.Array | None,
             num_tokens: int, *, prompt: jax.typing.ArrayLike | None = None,
             start_id: int | None = None, batch_size: int | None = None,
             temperature: float = 1.0, top_k: int | None = None,
             carry=None, on_progress: Callable[[int, int], None] | None = None,
             progress_every: int = 1000) -> tuple[jax.Array, Any]:
    """`num_tokens` new tokens after a prompt (or a start token), and the state after them.

    Args:
      model: a `LanguageModel` (applied with `deterministic=True`), its NNX twin
        (`rnnreg_jax.nnx.LanguageModel`, read through `to_linen()`, left as it is), or
        an `ApplyFn` `apply(variables, ids, carry) -> (logits, carry)` that runs a
        language model in evaluation mode (a model of your own, or one with another
        calling convention).
      variables: the model's variables (`{"params": ...}`, plus `batch_stats` if any);
        None with an NNX model, which holds its own.
      key: PRNG key of the draws; None only for greedy decoding (`temperature=0`).
      num_tokens: N >= 1, the tokens generated.
      prompt: int ids `[B, P]` (B, P >= 1) the text starts with; None: a `[B, 1]` column
        of `start_id`.
      start_id: the token a prompt-less text starts after (never with a prompt): for PTB
        the line-end symbol (`<eos>` of words, `<eol>` of characters), which the corpus
        puts before every sentence but its first.
      batch_size: rows B without a prompt (default 1); with a prompt its own B.
      temperature: 0 picks the most likely token (greedy); above 0 samples
        `softmax(logits / temperature)`: below 1 sharper, above 1 flatter.
      top_k: sampling only: draw among the k most likely tokens alone, renormalized
        (None at temperature 0, which takes the most likely).
      carry: the state the prompt starts from (e.g. the carry a previous call returned);
        None: zeros.
      on_progress: None, or `on_progress(done, num_tokens)`, called (outside jit) after
        every `progress_every` tokens and after the last, once they are computed.
      progress_every: tokens per chunk when `on_progress` is given (>= 1).

    Returns:
      `(ids, carry)`: int32 ids `[B, N]`, and the carry after the model has read the
      prompt and all N tokens (what running the model over their concatenation in one
      window returns).
    """
    model, variables = _from_nnx(model, variables)
    apply_fn = _apply_fn(model)
    if isinstance(model, LanguageModel):
        _check_variables(variables)
    num_tokens = _count("num_tokens", num_tokens)
    temperature = _temperature(temperature)
    if temperature == 0 and top_k is not None:  # greedy decoding would ignore it
        raise ValueError(f"top_k applies to sampling only, and temperature=0 decodes "
                         f"greedily; pass top_k=None or a temperature above 0, got "
                         f"top_k={top_k!r}.")
    if temperature > 0 and key is None:
        raise ValueError("Sampling at a temperature above 0 needs a PRNG key; pass one, or "
                         "temperature=0 for greedy decoding.")
    if temperature == 0:
        key = None  # greedy decoding draws nothing
    else:
        check_key(key)
    ids = _first_window(prompt, start_id, batch_size)
    logits_shape = _logits_shape(apply_fn, variables, ids, carry)
    if len(logits_shape) != 3 or logits_shape[:2] != ids.shape:
        raise ValueError(f"The model must return logits [B, T, V] = {ids.shape + ('V',)}, "
                         f"got shape {logits_shape}.")
    vocab_size = logits_shape[2]
    check_token_ids(ids, vocab_size, of="the prompt" if prompt is not None else "start_id")
    if top_k is not None:
        top_k = _count("top_k", top_k)
        if top_k > vocab_size:
            raise ValueError(f"top_k must be in [1, vocab_size] = [1, {vocab_size}], got "
                             f"{top_k}.")
    pick = _picker(temperature, top_k)
    if on_progress is not None and not callable(on_progress):
        raise ValueError(f"on_progress must be a function (done, total), got "
                         f"{type(on_progress).__name__}.")
    every = _count("progress_every", progress_every)

    logits, carry = apply_fn(variables, ids, carry)

    def step(variables, state, index):
        last_logits, carry = state
        token = pick(last_logits, None if key is None else jax.random.fold_in(key, index))
        logits, carry = apply_fn(variables, token[:, None], carry)
        return (logits[:, -1], carry), token

    def run(variables, state, indices):
        return jax.lax.scan(functools.partial(step, variables), state, indices)

    state = (logits[:, -1], carry)
    if on_progress is None:
        (_, carry), tokens = run(variables, state, jnp.arange(num_tokens))
        return tokens.T, carry
    return _run_in_chunks(run, variables, state, num_tokens, every, on_progress)


def _run_in_chunks(run, variables, state, num_tokens: int, every: int,
                   on_progress: Callable[[int, int], None]) -> tuple[jax.Array, Any]:
    """`run` over steps [0, num_tokens) as chunks of `every` steps, each computed before
    `on_progress` hears of it: the same steps and keys as one scan over them all."""
    if isinstance(state[0], jax.core.Tracer):  # under jit nothing is computed until it returns
        raise ValueError("on_progress reports chunks as they are computed, which under "
                         "jax.jit happens only when the whole call returns; call generate "
                         "outside jit with it.")
    run_chunk = jax.jit(run)  # the variables are arguments, not constants baked into it
    chunks = []
    for start in range(0, num_tokens, every):
        stop = min(start + every, num_tokens)
        state, chunk = jax.block_until_ready(run_chunk(variables, state,
                                                       jnp.arange(start, stop)))
        chunks.append(chunk)
        on_progress(stop, num_tokens)
    return jnp.concatenate(chunks).T, state[1]


def _from_nnx(model, variables) -> tuple[Any, Any]:
    """An NNX `LanguageModel` as its linen twin and variables (the same weights and
    options); anything else as it is. The NNX module is imported only if loaded."""
    nnx_models = sys.modules.get("rnnreg_jax.nnx.models")
    if nnx_models is None or not isinstance(model, nnx_models.LanguageModel):
        return model, variables
    if variables is not None:
        raise ValueError("An NNX LanguageModel holds its own weights; pass variables=None "
                         "with it.")
    return model.to_linen()


def _check_variables(variables) -> None:
    """A LanguageModel's variables: a mapping holding "params" (the params alone were
    Flax's ScopeCollectionNotFound, a non-mapping a TypeError inside Flax)."""
    what = "variables must be the LanguageModel's ({'params': ...}), got"
    if not isinstance(variables, Mapping):
        raise ValueError(f"{what} {type(variables).__name__}.")
    if "params" not in variables:
        raise ValueError(f"{what} a {type(variables).__name__} with keys "
                         f"{sorted(map(str, variables))} and no 'params' (wrap the params "
                         "alone as {'params': params}).")


def _apply_fn(model) -> ApplyFn:
    """`model` as an `ApplyFn`; a `LanguageModel` whose cell normalizes with per-step
    statistics is refused: every one-token window would read its first step's."""
    if isinstance(model, LanguageModel):
        if cells.statistics_of(model.cell) is not None:
            raise ValueError("generate feeds one-token windows, in which a cell with per-step "
                             f"statistics ({cells.cell_name(model.cell)}) would normalize "
                             "every step with its first step's.")
        return lambda variables, ids, carry: model.apply(variables, ids, carry,
                                                         deterministic=True)
    if isinstance(model, type):  # a class is callable: it was built from the variables
        raise ValueError(f"model must be a LanguageModel instance (linen or NNX) or an apply "
                         f"function, got the class {model.__name__} itself; construct one, "
                         f"as {model.__name__}(...).")
    # other modules are callable too, but not as `apply(variables, ids, carry)` (NNX's
    # checked only if loaded: it does not import at the flax floor)
    nnx = sys.modules.get("flax.nnx")
    modules = (flax.linen.Module,) + ((nnx.Module,) if nnx is not None else ())
    if not callable(model) or isinstance(model, modules):
        raise ValueError(f"model must be a LanguageModel (linen or NNX) or an apply "
                         f"function, got {type(model).__name__}.")
    return model


def _logits_shape(apply_fn: ApplyFn, variables, ids: jax.Array, carry) -> tuple:
    """The shape of the logits `apply_fn` returns for `ids` (nothing runs), after checking
    that it returns a pair `(logits, carry)` (bare logits were indexed along their batch)."""
    out = jax.eval_shape(lambda v, x: apply_fn(v, x, carry), variables, ids)
    if not (isinstance(out, (tuple, list)) and len(out) == 2
            and hasattr(out[0], "shape")):
        got = (f"an array of shape {tuple(out.shape)}" if hasattr(out, "shape")
               else f"a {type(out).__name__}" + (f" of {len(out)} items"
                                                  if isinstance(out, (tuple, list)) else ""))
        raise ValueError(f"The model (apply function) must return a pair (logits [B, T, V], "
                         f"carry), got {got}.")
    return tuple(out[0].shape)


def _count(name: str, value) -> int:
    """`value` as an int >= 1, or a one-sentence ValueError naming `name`."""
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return number


def _temperature(value) -> float:
    try:
        temperature = float(value)
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        raise ValueError("temperature must be a concrete number (a static argument under "
                         f"jit), got {value!r}.") from None
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be finite and >= 0, got {value!r}.")
    return temperature


def _first_window(prompt, start_id, batch_size) -> jax.Array:
    """The ids of the first window: the prompt, or a column of `start_id`."""
    if prompt is None:
        if start_id is None:
            raise ValueError("Pass a prompt, or a start_id to start from without one.")
        try:
            start = operator.index(start_id)
        except TypeError:
            raise ValueError(f"start_id must be an integer token id, got {start_id!r}.") \
                from None
        rows = 1 if batch_size is None else _count("batch_size", batch_size)
        return jnp.full((rows, 1), start, jnp.int32)
    if start_id is not None:
        raise ValueError("Pass either a prompt or a start_id, not both (make the start "
                         "token the prompt's first).")
    ids = jnp.asarray(prompt)
    if ids.ndim != 2 or min(ids.shape) < 1:
        raise ValueError(f"The prompt must be int ids [B, P] with B, P >= 1, got shape "
                         f"{ids.shape}.")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"The prompt must hold integer token ids, got dtype {ids.dtype}.")
    if batch_size is not None and batch_size != ids.shape[0]:
        raise ValueError(f"batch_size {batch_size!r} differs from the prompt's {ids.shape[0]} "
                         "rows; leave it out with a prompt.")
    return ids


def _picker(temperature: float, top_k: int | None) -> Callable[[jax.Array, Any], jax.Array]:
    """`pick(logits [B, V], key) -> int32 [B]`: argmax at temperature 0, else a draw."""
    if temperature == 0:
        return lambda logits, key: jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def pick(logits, key):
        # float32 at least: bfloat16 logits divided by a temperature lose the small ones.
        scaled = logits.astype(jnp.promote_types(logits.dtype, jnp.float32)) / temperature
        if top_k is None:
            return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
        best, where = jax.lax.top_k(scaled, top_k)
        choice = jax.random.categorical(key, best, axis=-1)
        return jnp.take_along_axis(where, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)

    return pick
