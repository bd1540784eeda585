"""Tolerances for tests that compare two computations of the same function.

Two float32 computations of one function (the fused backward pass and scan autodiff,
the library and a reference written out by hand) round differently, and how they round
depends on the CPU: XLA picks its vector width from the instruction set (SSE4.2, AVX2,
AVX-512; `XLA_FLAGS=--xla_cpu_max_isa=...` caps it), which changes the order of every
reduction. A bare absolute tolerance such as 1e-5 then holds for gradients of unit
scale on one machine and fails for gradients of magnitude 700 (or after a batch
normalization that amplifies rounding) on another. So these tests check twice:

* in float64 (`x64()`), tightly (`assert_close_f64`): rounding is ~1e-16 there, so any
  difference in the functions themselves (a dropped term, a wrong mask) shows at once;
* in float32, the dtype everything runs in (`assert_close_f32`), with a tolerance derived
  from float32's epsilon and the values' magnitude:

      |actual - desired| <= rtol * |desired| + ulps * EPS32 * max|desired|

  that is a relative tolerance per element plus `ulps` units in the last place of the
  array's largest magnitude: a sum of n terms of magnitude M rounds to within about
  sqrt(n) (at worst n) * EPS32 * M whatever the summation order, and an element that is
  itself small (the result of cancellation) carries the rounding of those large terms.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2^-23 ~ 1.19e-7
# The float32 default: ~1.2e-5 of the largest magnitude. Sums of a few hundred terms
# (the tests' matmuls and scans over a few steps) stay far inside it on any x86-64 ISA.
F32_ULPS = 100
# Per-step normalizations (LN, BN) divide by small standard deviations (B = 5 rows in
# the BN tests), which amplifies rounding: measured up to ~350 ulps of the largest
# gradient (AVX-512); 2048 ulps is ~2.4e-4 of it.
F32_NORM_ULPS = 2048
# float64: 1e-10 is ~500000 ulps, 1e-10 relative; the comparisons here agree to ~1e-14.
F64_RTOL = 1e-10


def x64():
    """A context in which JAX computes in float64 (`jax.enable_x64`): build the inputs and
    parameters inside it (`as_f64`), and call the functions under test there too."""
    return jax.enable_x64(True)


def as_f64(tree):
    """Every floating array of `tree` as a float64 JAX array (call inside `x64()`)."""
    def cast(a):
        a = jnp.asarray(a)
        return a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a
    return jax.tree.map(cast, tree)


def f32_atol(desired, ulps: float = F32_ULPS, scale: float | None = None) -> float:
    """`ulps * EPS32 * scale`; `scale` defaults to the largest magnitude of `desired`."""
    if scale is None:
        d = np.asarray(desired, np.float64)
        scale = float(np.abs(d).max()) if d.size else 0.0
    return ulps * EPS32 * scale


def assert_close_f32(actual, desired, *, rtol: float = 1e-5, ulps: float = F32_ULPS,
                     scale: float | None = None, err_msg: str = "") -> None:
    """float32 results of two computation orders: `rtol` per element plus
    `f32_atol(desired, ulps, scale)`."""
    atol = f32_atol(desired, ulps, scale)
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), rtol=rtol, atol=atol,
                               err_msg=f"{err_msg} (float32: rtol={rtol:g}, "
                                       f"atol={ulps:g} ulps of the scale = {atol:.3g})")


def assert_close_f64(actual, desired, *, rtol: float = F64_RTOL, err_msg: str = "") -> None:
    """float64 results: `rtol` per element plus `rtol` of the largest magnitude. `actual`
    must be float64 (a float32 result means x64 was not on, or the code cast it down)."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.dtype == np.float64, f"{err_msg}: computed in {actual.dtype}, not float64"
    scale = float(np.abs(desired).max()) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired.astype(np.float64), rtol=rtol,
                               atol=rtol * scale, err_msg=f"{err_msg} (float64)")


def assert_trees_close_f32(actual, desired, **kwargs) -> None:
    """`assert_close_f32` leaf by leaf (each leaf scaled by its own magnitude)."""
    _tree_apply(assert_close_f32, actual, desired, **kwargs)


def assert_trees_close_f64(actual, desired, **kwargs) -> None:
    """`assert_close_f64` leaf by leaf."""
    _tree_apply(assert_close_f64, actual, desired, **kwargs)


def _tree_apply(check, actual, desired, err_msg: str = "", **kwargs) -> None:
    paths = jax.tree_util.tree_flatten_with_path(actual)[0]
    leaves_d, tree_d = jax.tree.flatten(desired)
    assert jax.tree.structure(actual) == tree_d, (jax.tree.structure(actual), tree_d)
    for (path, a), d in zip(paths, leaves_d, strict=True):
        check(a, d, err_msg=f"{err_msg}{jax.tree_util.keystr(path)}", **kwargs)


def assert_fused_matches_autodiff(loss_of, params, x, carry, **f32_kwargs) -> dict:
    """The fused backward pass and scan autodiff compute one function: the value and
    the gradients of `loss_of(impl)(params, x, carry)` (impl "fused" or "autodiff")
    agree in float64 to rounding and in float32 to `assert_trees_close_f32(**f32_kwargs)`,
    and the fused float32 gradients are finite. Returns the float32 `{impl: (value,
    grads)}` for further checks."""
    def both(params, x, carry):
        return {impl: jax.jit(jax.value_and_grad(loss_of(impl), argnums=(0, 1, 2)))(
            params, x, carry) for impl in ("fused", "autodiff")}

    with x64():
        out = both(as_f64(params), as_f64(x), as_f64(carry))
        assert_close_f64(out["fused"][0], out["autodiff"][0])
        assert_trees_close_f64(out["fused"][1], out["autodiff"][1])
    out = both(params, x, carry)
    assert_close_f32(out["fused"][0], out["autodiff"][0])
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(out["fused"][1]))
    assert_trees_close_f32(out["fused"][1], out["autodiff"][1], **f32_kwargs)
    return out
