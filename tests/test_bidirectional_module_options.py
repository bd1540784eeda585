"""`nn.Bidirectional`'s options: the dropout stream and `merge`, compute and storage dtypes
(bfloat16), sharding metadata (`param_axes`) and `carry_first`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest
from bidirectional_helpers import BF16, DIRS, B, F, H, T

import rnnreg_jax as rj
from rnnreg_jax import bidirectional as bd
from rnnreg_jax import noise, rnn
from rnnreg_jax.nn import Bidirectional


def test_module_training_needs_dropout_rng_and_merges() -> None:
    module = Bidirectional(H, cell="gru", reg=rj.variational(0.3, 0.3), merge="sum")
    x = jnp.ones((B, T, F))
    variables = module.init(jax.random.key(0), x)
    ys, _ = module.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert ys.shape == (B, T, H)
    assert not np.allclose(ys, module.apply(variables, x)[0])
    with pytest.raises(ValueError, match="dropout PRNG key"):
        module.apply(variables, x, deterministic=False)
    with pytest.raises(ValueError, match="merge must be one of"):
        Bidirectional(H, merge="mean").init(jax.random.key(0), x)


def dtypes(tree) -> set[str]:
    return {str(a.dtype) for a in jax.tree.leaves(tree)}


@pytest.mark.parametrize("implementation", [pytest.param("fused", marks=pytest.mark.slow),
                                            "autodiff"])
def test_bf16_outputs_float32_carry_and_param_dtypes(implementation: str) -> None:
    """`dtype`: outputs in bfloat16, each direction's carry and the penalties in float32,
    gradients in the parameters' storage dtype (`param_dtype`); each direction is
    `rnn.unroll(dtype=...)` of its parameters under its key, to bfloat16's rounding."""
    cell = "lstm"
    reg = rj.variational(0.2, 0.2, 0.2) + rj.zoneout(0.1, 0.05) + rj.norm_stabilizer(0.5)
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    module = Bidirectional((H, H), cell=cell, reg=reg, implementation=implementation,
                           dtype=BF16, param_dtype=BF16)
    variables = module.init(jax.random.key(0), x)
    assert dtypes(variables) == {"bfloat16"}

    @jax.jit
    def loss(params):
        (ys, carry), pen = module.apply({"params": params}, x, deterministic=False,
                                        rngs={"dropout": jax.random.key(2)},
                                        mutable=["penalties"])
        return jnp.sum(jnp.square(ys.astype(jnp.float32))), (ys, carry, pen)

    (value, (ys, carry, pen)), grads = jax.value_and_grad(loss, has_aux=True)(
        variables["params"])
    assert ys.dtype == BF16 and ys.shape == (B, T, 2 * H) and np.isfinite(float(value))
    assert dtypes(carry) == {"float32"} and set(carry[1]["backward"]) == {"h", "c"}
    assert dtypes(pen) == {"float32"} and len(jax.tree.leaves(pen)) == 1
    assert dtypes(grads) == {"bfloat16"}
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))
    # float32 storage (the default) draws the values it always drew, bfloat16 compute on them
    stored32 = module.clone(param_dtype=jnp.float32).init(jax.random.key(0), x)
    assert dtypes(stored32) == {"float32"}
    jax.tree.map(np.testing.assert_array_equal, stored32,
                 Bidirectional((H, H), cell=cell, reg=reg).init(jax.random.key(0), x))
    params = stored32["params"]["layer_0"]
    key = jax.random.key(3)

    @jax.jit
    def both():
        ys = bd.unroll_bidirectional(cell, params, x, reg=reg, key=key, deterministic=False,
                                     dtype=BF16, implementation=implementation)[0]
        run = lambda d, xs: rnn.unroll(cell, params[d], xs, reg=reg, deterministic=False,
                                       key=bd.direction_key(key, d), dtype=BF16,
                                       implementation=implementation, return_hiddens=True)[2]
        f, b = run("forward", x)[0], run("backward", x[:, ::-1])[0][:, ::-1]
        return ys, jnp.concatenate([f, b], -1)  # the hiddens, before the output mask

    ys, expected = both()
    assert ys.dtype == BF16
    mask = noise.output_mask(reg, key, B, T, 2 * H, False)
    np.testing.assert_allclose(np.asarray(ys, np.float32),
                               np.asarray(expected * mask[:, None, :], np.float32),
                               rtol=2 ** -7, atol=2 ** -7)


def test_float32_compute_dtype_is_the_default_computation() -> None:
    """`dtype=jnp.float32` on float32 inputs casts nothing: bit for bit `dtype=None`."""
    module = Bidirectional((H, 2), cell="gru", reg=rj.variational(0.3, 0.3, 0.3))
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    variables = module.init(jax.random.key(0), x)
    kwargs = dict(deterministic=False, rngs={"dropout": jax.random.key(1)})
    jax.tree.map(np.testing.assert_array_equal, module.apply(variables, x, **kwargs),
                 module.clone(dtype=jnp.float32).apply(variables, x, **kwargs))


def test_param_axes_box_each_directions_arrays_and_carry_first() -> None:
    """`param_axes` boxes each direction's named arrays: a partition spec per array, the
    tree's paths and values those of the unboxed module; an unknown name is refused.
    `carry_first` swaps the returned pair."""
    from flax import linen as nn
    from jax.sharding import PartitionSpec

    axes = {"w_x": ("embed", "gates"), "w_h": ("hidden", "gates"), "b": ("gates",)}
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    plain = Bidirectional((H, 2), cell="gru")
    boxed = plain.clone(param_axes=tuple(axes.items()), carry_first=True)
    variables = boxed.init(jax.random.key(0), x)
    specs = nn.get_partition_spec(variables)["params"]
    for layer in ("layer_0", "layer_1"):
        for d in DIRS:
            assert specs[layer][d]["w_h"] == PartitionSpec("hidden", "gates")
            assert specs[layer][d]["w_x"] == PartitionSpec("embed", "gates")
            assert specs[layer][d]["b"] == PartitionSpec("gates")
            assert specs[layer][d]["b_h"] == PartitionSpec()  # unnamed: replicated
    unboxed = nn.unbox(variables)
    jax.tree.map(np.testing.assert_array_equal, unboxed, plain.init(jax.random.key(0), x))
    carry, ys = boxed.apply(variables, x)
    expected_ys, expected_carry = plain.apply(unboxed, x)
    nm.assert_trees_close_f32((ys, carry), (expected_ys, expected_carry))
    with pytest.raises(ValueError, match="param_axes names 'w_q'"):
        plain.clone(param_axes={"w_q": ("a", "b")}).init(jax.random.key(0), x)
