"""Mixed precision: what runs in the compute dtype and what stays float32.

    StackedRNN(650, dtype=jnp.bfloat16)     # bfloat16 products and gates, float32 params

With a compute `dtype` (`rnn.unroll(dtype=...)`, the modules' `dtype`):

* parameters are stored in their own dtype (`param_dtype`, float32 by default) and cast
  to `dtype` once per window, after the regularizer's weight transforms (weight drop's
  1/q and weight noise act on the stored weights; the result is rounded once);
* every matrix product runs in its weights' dtype: the masked operand (a float32 state
  or mask times bfloat16 weights) is cast to it (`cells.layout`), so the input and
  recurrent products and the gate nonlinearities after them run in `dtype`;
* the carry keeps its dtype (zeros: `carry_dtype`, at least float32) and every state
  update is computed in it and cast back (`like`): an LSTM's `c_t = f c + i g` and a
  GRU's `h_t = (1 - z) n + z h` add a small update to a state that lives for the whole
  sequence, which bfloat16's 8 significant bits would round away step after step;
* masks and mixing coefficients are drawn in at least float32 (`mask_dtype`):
  inverted dropout's `1/q` (1/0.65, say) is not a bfloat16 number, and a bfloat16
  mask would scale every kept unit by the same wrong factor, biasing the expectation;
  in float32 the product `x * m` is rounded once like any other bfloat16 result;
* loss terms reduce in at least float32 (the penalties, `regularizers.penalties`; the
  training loss upcasts the logits, `train.losses`).

With `dtype=None` (the default) nothing is cast: every helper here returns its input.

Train in bfloat16, not float16: bfloat16 keeps float32's exponent range, while float16's
underflows small gradients to zero, and the library scales no loss to lift them (a
`LanguageModel` of 10,000 words and 64 units at batch 20, T 35: 5.3% of `W_h`'s gradient
entries zero and a 5.8% error against float32, 0.5% and no zeros in bfloat16). float16
serves evaluation and inference, where no gradient is taken.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def check_floating(dtype: Any, name: str) -> Any:
    """`dtype` (a compute dtype or the inputs') as a numpy dtype if it is a floating one,
    else a one-sentence ValueError naming `name` (an integer dtype failed in the first
    sigmoid, a misspelt name inside numpy)."""
    try:
        checked = jnp.dtype(dtype)
    except TypeError:
        checked = None
    if checked is None or not jnp.issubdtype(checked, jnp.floating):
        raise ValueError(f"{name} must be a floating dtype (jnp.float32, jnp.bfloat16, ...), "
                         f"got {dtype!r}.")
    return checked


def check_module_dtypes(param_dtype: Any, dtype: Any) -> None:
    """A module's storage and compute dtypes (`dtype` None: no cast), each floating, or
    `check_floating`'s one sentence naming it (linen and NNX modules alike)."""
    check_floating(param_dtype, "param_dtype")
    if dtype is not None:  # "bf16" failed inside numpy, an int blamed the inputs
        check_floating(dtype, "dtype")


def at_least_float32(dtype: Any) -> Any:
    """`dtype` widened to float32 if narrower (bfloat16, float16 -> float32; float32 and
    float64 stay)."""
    return jnp.promote_types(dtype, jnp.float32)


def mask_dtype(input_dtype: Any) -> Any:
    """The dtype masks are drawn in for inputs of `input_dtype`: at least float32, so
    `1/q` and quantized rates are exact to float32's precision."""
    return at_least_float32(input_dtype)


def carry_dtype(input_dtype: Any, dtype: Any | None) -> Any:
    """The zero carry's dtype: the inputs' without a compute dtype (as before mixed
    precision), else at least float32 (the state accumulates over the sequence)."""
    return input_dtype if dtype is None else at_least_float32(dtype)


def cast(x: Array, dtype: Any | None) -> Array:
    """`x` in `dtype` (None: `x` itself, no conversion traced)."""
    if dtype is None or x.dtype == dtype:
        return x
    return x.astype(dtype)


def cast_floating(tree: Any, dtype: Any | None) -> Any:
    """Every floating array of `tree` in `dtype` (None: `tree` itself)."""
    if dtype is None:
        return tree
    return jax.tree.map(
        lambda a: cast(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def like(new: Any, old: Any) -> Any:
    """`new` with each array in the dtype of its counterpart in `old` (a step's new carry
    as the scan carries it); arrays already in that dtype are returned as they are."""
    return jax.tree.map(lambda n, o: cast(n, o.dtype), new, old)


def accumulator_zeros(x: Array) -> Array:
    """Zeros to accumulate a sum of arrays like `x` in: at least float32."""
    wide = at_least_float32(x.dtype)
    return jnp.zeros_like(x) if wide == x.dtype else jnp.zeros(x.shape, wide)


def operand(x: Array, weights: Any) -> Array:
    """`x` in the dtype of the weights it multiplies (an array, or a tuple of per-gate
    blocks): a product runs in its weights' dtype."""
    w = weights[0] if isinstance(weights, tuple) else weights
    dtype = getattr(w, "dtype", None)
    return x if dtype is None else cast(x, dtype)
