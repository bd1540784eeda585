"""Meshes with explicit axes (`jax.make_mesh(..., axis_types=(AxisType.Explicit,))`):
`unroll` on batch-sharded inputs gives the unsharded results, its outputs and state
stay batch-sharded, and a state sharded otherwise than the inputs is refused clearly
(`rnnreg_jax.explicit_sharding`); so do weights sharded over a "model" axis beside the
batch's "data" axis, and the layouts the products cannot take are refused by name. Two
host devices (four for the 2x2 mesh), in a subprocess (the device count is fixed when
JAX starts); float64, so the comparison is tight on any CPU."""

from __future__ import annotations

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_helpers as th
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import rnnreg_jax as rj
from rnnreg_jax import cells, explicit_sharding

# The scripts' shared part; each then makes its `mesh`, which the helpers use.
HELPERS = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
jax.config.update("jax_enable_x64", True)
import rnnreg_jax as rj
from rnnreg_jax import cells

F, H, B, T = 3, 8, 4, 5
params = [cells.init_params(jax.random.key(i), "lstm", f, H, dtype=jnp.float64)
          for i, f in enumerate((F, H))]
x = jax.random.normal(jax.random.key(7), (B, T, F), jnp.float64)
key = jax.random.key(3)
REG = (rj.variational(input=0.2, recurrent=0.2, output=0.2)
       + rj.zoneout(cells=0.3, hiddens=0.1) + rj.weight_drop(0.3))

def loss(impl, reg):
    def f(p, x):
        ys, carry = rj.unroll("lstm", p, x, reg=reg, key=key, deterministic=False,
                              implementation=impl)
        return jnp.sum(ys ** 2) + sum(jnp.sum(c["h"] * c["c"]) for c in carry), (ys, carry)
    return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)

def close(got, want):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)

def on_mesh(f, weights, *batch, layout=None):
    # (jit(f) on the mesh with the batch arrays sharded over "data" and the weights
    # named in `layout` (array name -> spec) sharded by it, f unsharded)
    want = f(weights, *batch)
    with jax.set_mesh(mesh):
        if layout is not None:
            weights = jax.tree.map_with_path(lambda path, w: jax.device_put(
                w, NamedSharding(mesh, layout.get(path[-1].key, P()))), weights)
        sharded = [jax.device_put(a, NamedSharding(mesh, P("data"))) for a in batch]
        return jax.jit(f)(weights, *sharded), want

def batch_axis(a, axis=0):
    return jax.typeof(a).sharding.spec[axis]

def spec(a, ndim=None):  # a's sharding in its type, or a PartitionSpec, one entry per axis
    s = tuple(a) if isinstance(a, P) else tuple(jax.typeof(a).sharding.spec)
    return s + (None,) * ((ndim or len(s)) - len(s))

def check_unroll(reg, impl, layout=None):
    # outputs, state and input gradient sharded over the batch only, whatever the
    # weights' layout; the weights' gradients sharded like the weights
    got, want = on_mesh(loss(impl, reg), params, x, layout=layout)
    close(got, want)
    (_, (ys, carry)), (d_params, d_x) = got
    assert spec(ys) == spec(d_x) == ("data", None, None), (impl, spec(ys), spec(d_x))
    assert {spec(c) for c in jax.tree.leaves(carry)} == {("data", None)}, impl
    for d in d_params:
        for name, g in d.items():
            assert spec(g) == spec((layout or {}).get(name, P()), g.ndim), (impl, name)
"""

PRELUDE = HELPERS + """
assert jax.device_count() == 2
mesh = jax.make_mesh((2,), ("data",), axis_types=(AxisType.Explicit,))
"""

CORE = PRELUDE + """
for impl in ("fused", "autodiff"):
    check_unroll(REG, impl)

with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    mine = [jax.device_put(c, NamedSharding(mesh, P("data")))
            for c in rj.initial_carry("lstm", params, B, dtype=jnp.float64)]
    got = jax.jit(lambda p, x, c: rj.unroll("lstm", p, x, c)[0])(params, xs, mine)
    close(got, rj.unroll("lstm", params, x)[0])
    try:
        rj.unroll("lstm", params, xs, rj.initial_carry("lstm", params, B, dtype=jnp.float64))
        raise AssertionError("an unsharded carry was accepted")
    except ValueError as err:
        assert "carry['c'] has its batch axis sharded over None" in str(err), err
    try:
        rj.unroll("lstm", params[0], xs, implementation="pallas")
        raise AssertionError("pallas accepted explicit sharding")
    except ValueError as err:
        assert "explicit mesh axis" in str(err), err

print("explicit ok")
"""

EXTRAS = PRELUDE + """
from rnnreg_jax import bidirectional
from rnnreg_jax.nn import StackedRNN

for impl in ("fused", "autodiff"):  # per-step masks, one per gate
    check_unroll(rj.variational(input=0.2, recurrent=0.2, per_gate=True, tie="step"), impl)

bi_params = bidirectional.init_params(jax.random.key(5), "lstm", F, H, dtype=jnp.float64)

def bi_loss(p, x):
    ys, _ = rj.unroll_bidirectional("lstm", p, x, reg=REG, key=key,
                                    deterministic=False, implementation="fused")
    return jnp.sum(ys ** 2)

close(*on_mesh(jax.value_and_grad(bi_loss), bi_params, x))

layer = StackedRNN((H, H), reg=REG, dtype=None, param_dtype=jnp.float64)
variables = layer.init(jax.random.key(0), x)

def module_loss(v, x):
    ys, _ = layer.apply(v, x, deterministic=False, rngs={"dropout": key})
    return jnp.sum(ys ** 2)

close(*on_mesh(jax.value_and_grad(module_loss), variables, x))
print("explicit ok")
"""

TENSOR_PARALLEL = HELPERS + """
import flax.linen as nn
from rnnreg_jax.nn import StackedRNN

assert jax.device_count() == 4
mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
# tensor-parallel over the gate axis (column-parallel products), and w_h over its input
GATES = {"w_x": P(None, "model"), "w_h": P(None, "model"), "b": P("model")}
W_H_ROWS = {"w_x": P(None, "model"), "w_h": P("model", None), "b": P("model")}
PER_GATE = (rj.variational(input=0.2, recurrent=0.2, per_gate=True, tie="step")
            + rj.zoneout(cells=0.3, hiddens=0.1))

check_unroll(REG, "fused", GATES)
check_unroll(PER_GATE, "fused", W_H_ROWS)
check_unroll(PER_GATE, "autodiff", GATES)

# the linen StackedRNN, sharded by its param_axes and the rule gates -> model
layer = StackedRNN((H, H), reg=REG, dtype=None, param_dtype=jnp.float64,
                   implementation="fused", param_axes={"w_x": ("embed", "gates"),
                   "w_h": ("hidden", "gates"), "b": ("gates",)})
boxed = layer.init(jax.random.key(0), x)

def module_loss(v, x):
    ys, _ = layer.apply(v, x, deterministic=False, rngs={"dropout": key})
    return jnp.sum(ys ** 2)

rules = (("gates", "model"), ("hidden", None), ("embed", None))
want = jax.value_and_grad(module_loss)(nn.unbox(boxed), x)
with jax.set_mesh(mesh):
    variables = jax.device_put(nn.unbox(boxed), nn.logical_to_mesh_sharding(
        nn.get_partition_spec(boxed), mesh, rules))
    got = jax.jit(jax.value_and_grad(module_loss))(
        variables, jax.device_put(x, NamedSharding(mesh, P("data"))))
close(got, want)
assert spec(got[1]["params"]["layer_1"]["w_h"]) == (None, "model")
print("explicit ok")
"""

MODELS = PRELUDE + """
from rnnreg_jax.models import LanguageModel

# padded windows: each example's own length, both backward passes
lengths = np.array([T, 2, 4, 1], np.int32)

def padded_loss(impl):
    def f(p, x, n):
        ys, carry = rj.unroll("lstm", p, x, reg=REG, key=key, deterministic=False,
                              implementation=impl, seq_lengths=n)
        return jnp.sum(ys ** 2) + sum(jnp.sum(c["h"] * c["c"]) for c in carry)
    return jax.value_and_grad(f, argnums=(0, 1))

for impl in ("fused", "autodiff"):
    close(*on_mesh(padded_loss(impl), params, x, lengths))

# a language model: embedding dropout, variational sites, its softmax
lm = LanguageModel(11, (H, H), embed_size=H, reg=REG + rj.embedding_dropout(0.2),
                   param_dtype=jnp.float64)
ids = jax.random.randint(jax.random.key(9), (B, T), 0, 11)
lm_vars = lm.init(jax.random.key(0), ids)

def lm_loss(v, ids):
    logits, _ = lm.apply(v, ids, deterministic=False, rngs={"dropout": key})
    return jnp.sum(jax.nn.log_softmax(logits) ** 2)

close(*on_mesh(jax.value_and_grad(lm_loss), lm_vars, ids))
(logits, _), _ = on_mesh(lm.apply, lm_vars, ids)
assert batch_axis(logits) == "data"

# its NNX twin, tied embeddings
from flax import nnx
from rnnreg_jax import nnx as rnx
tied = LanguageModel(11, (H, H), embed_size=H, tie_embeddings=True, reg=REG,
                     param_dtype=jnp.float64)
tied_vars = tied.init(jax.random.key(1), ids)
model = rnx.LanguageModel.from_linen(tied, tied_vars)

def nnx_loss(m, ids):
    logits, _ = m(ids, rngs=key)
    return jnp.sum(jax.nn.log_softmax(logits) ** 2)

want = nnx.value_and_grad(nnx_loss)(model, ids)
with jax.set_mesh(mesh):
    ids_sharded = jax.device_put(ids, NamedSharding(mesh, P("data")))
    got = nnx.jit(nnx.value_and_grad(nnx_loss))(model, ids_sharded)
close(got[0], want[0])
close(nnx.to_pure_dict(got[1]), nnx.to_pure_dict(want[1]))

# bfloat16 products (float32 carry): the sharded run sums dW_h in another order, so
# compare to bfloat16's precision
p32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
x32 = x.astype(jnp.float32)

def bf16_loss(p, x):
    ys, _ = rj.unroll("lstm", p, x, reg=REG, key=key, deterministic=False,
                      implementation="fused", dtype=jnp.bfloat16)
    return jnp.sum(ys.astype(jnp.float32) ** 2)

got, want = on_mesh(jax.value_and_grad(bf16_loss), p32, x32)
for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    scale = float(np.max(np.abs(np.asarray(b, np.float32))))
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=2e-2, atol=2e-2 * scale)
print("explicit ok")
"""


def run_on_host_devices(script: str, devices: int = 2) -> None:
    out = subprocess.run([sys.executable, "-c", script], env=th.host_devices_env(devices),
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0 and "explicit ok" in out.stdout, out.stderr[-3000:]


def test_unroll_under_an_explicit_mesh_matches_the_unsharded_run():
    """Both backward passes, a stack of two LSTM layers with variational dropout, zoneout
    and weight drop: value, parameter and input gradients equal the unsharded ones to
    1e-10 in float64; outputs, final state and input gradient are batch-sharded; a carry
    the caller shards like the inputs is used as given, an unsharded one is refused; so
    is the Pallas path."""
    run_on_host_devices(CORE)


@pytest.mark.slow  # a second subprocess, ~15 s on 2 cores
def test_per_gate_masks_bidirectional_stacks_and_stacked_rnn_under_an_explicit_mesh():
    """As above for per-step per-gate masks (both backward passes), a bidirectional
    stack (its zero state sharded too) and the linen `StackedRNN`."""
    run_on_host_devices(EXTRAS)


@pytest.mark.slow  # a third subprocess, ~20 s on 2 cores
def test_lengths_language_model_and_bf16_under_an_explicit_mesh():
    """Padded windows (`seq_lengths` sharded with the batch) through both backward passes,
    a `LanguageModel` with embedding dropout (its logits batch-sharded) and the NNX twin
    of a tied one equal the unsharded run to 1e-10 in float64 (the embedding lookup
    needs `explicit_sharding.rows_sharding`); bfloat16 products agree to bfloat16's
    precision."""
    run_on_host_devices(MODELS)


@pytest.mark.slow  # a fourth subprocess, ~20 s on 2 cores
def test_tensor_parallel_weights_under_an_explicit_2x2_mesh():
    """Weights sharded over a "model" axis, the batch over "data" (4 host devices): the
    gate axis of w_x, w_h and b (fused pass with variational dropout, zoneout and weight
    drop; autodiff with per-step per-gate masks), w_h over its input axis (fused,
    per-gate masks), and a linen `StackedRNN` sharded by its `param_axes`: value and
    gradients equal the unsharded run to 1e-10 in float64, outputs and state are
    sharded over the batch only and each gradient like its weight."""
    run_on_host_devices(TENSOR_PARALLEL, devices=4)


def test_without_an_explicit_mesh_nothing_is_resharded_or_checked():
    """No mesh: the zero carry is returned as it is (no reshard traced) and any carry
    passes the check, whatever its sharding."""
    x = jnp.ones((5, 4, 3))
    carry = cells.init_carry("lstm", 4, 8)
    assert explicit_sharding.axes_of(x, 1) is None
    assert explicit_sharding.shard_like_batch(carry, x) is carry
    explicit_sharding.check_carry(carry, x)
    jaxpr = jax.make_jaxpr(lambda x: explicit_sharding.shard_like_batch(carry, x))(x)
    assert not jaxpr.eqns
    params = cells.init_params(jax.random.key(0), "lstm", 3, 8)
    ys, _ = rj.unroll("lstm", params, x, implementation="fused")
    assert ys.shape == (5, 4, 8) and np.isfinite(np.asarray(ys)).all()


def _one_device_mesh():
    # explicit axes of size 1: the types name the axes, so the checks run in-process
    return jax.make_mesh((1, 1), ("data", "model"), devices=jax.devices()[:1],
                         axis_types=(AxisType.Explicit,) * 2)


@pytest.mark.parametrize("layout, x_spec, carry_spec, implementation, message", [
    ({"b": P("data")}, P("data"), None, "autodiff",
     "params['b'] has its last axis sharded over ['data'], which also shards the inputs' "
     "batch axis"),
    ({"w_x": P("model", None)}, P("data", None, "model"), None, "fused",
     "params['w_x'] has its input axis sharded over ['model'], like the inputs' features; "
     "shard w_x over its gate axis or replicate it"),
    ({"w_h": P("model", None)}, P("data"), P("data", "model"), "fused",
     "params['w_h'] has its input axis sharded over ['model'], like the carry's h"),
    ({"w_h": P(None, "model")}, P(), None, "pallas",
     "params['w_h'] is sharded over an explicit mesh axis, which implementation='pallas' "
     "does not support"),
])
def test_weight_layouts_the_products_cannot_take_are_refused_by_name(
        layout, x_spec, carry_spec, implementation, message):
    mesh = _one_device_mesh()
    params = cells.init_params(jax.random.key(0), "lstm", 4, 8)
    x = jnp.ones((2, 3, 4))
    with jax.set_mesh(mesh):
        params = {name: jax.device_put(w, NamedSharding(mesh, layout.get(name, P())))
                  for name, w in params.items()}
        x = jax.device_put(x, NamedSharding(mesh, x_spec))
        carry = None
        if carry_spec is not None:
            carry = {name: jax.device_put(c, NamedSharding(mesh, carry_spec))
                     for name, c in cells.init_carry("lstm", 2, 8).items()}
        with pytest.raises(ValueError, match=re.escape(message)):
            rj.unroll("lstm", params, x, carry, implementation=implementation)


def test_tensor_parallel_helpers_trace_nothing_without_an_explicit_mesh():
    """No mesh: the step's results, the transpose's sharding and the weight check leave
    the program as it is (the traced steps are those without the feature)."""
    x = jnp.ones((5, 4, 3))
    carry = cells.init_carry("lstm", 4, 8)
    params = cells.init_params(jax.random.key(0), "lstm", 3, 8)
    explicit_sharding.check_weights(params, x, carry)
    assert explicit_sharding.transpose_sharding(jnp.ones((4, 32)), params["w_h"]) is None
    assert explicit_sharding.spec_of(params["w_h"]) is None
    jaxpr = jax.make_jaxpr(lambda c, y: explicit_sharding.step_like(c, y, carry))(
        carry, carry["h"])
    assert not jaxpr.eqns


@pytest.mark.parametrize("axis", [0, 1, 5])
def test_axes_of_is_none_for_unsharded_dimensions(axis):
    assert explicit_sharding.axes_of(np.zeros((2, 3)), axis) is None
