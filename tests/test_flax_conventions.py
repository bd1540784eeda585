"""Flax conventions: per-array partitioning metadata (`param_axes`,
`rnnreg_jax.partitioning`) and flax.linen.RNN's return order (`carry_first`)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import numpy as np
import pytest
import train_helpers as th
from jax.sharding import PartitionSpec as P

import rnnreg_jax as rj
from rnnreg_jax.models import LanguageModel, SequenceModel
from rnnreg_jax.nn import RecurrentLayer, StackedRNN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AXES = {"w_x": ("embed", "gates"), "w_h": ("hidden", "gates"), "b": ("gates",)}
RULES = (("gates", "model"), ("hidden", None), ("embed", None))


def inputs():
    return jax.random.normal(jax.random.key(0), (4, 5, 3))


def test_param_axes_give_a_spec_per_array_and_keep_paths_and_values():
    x = inputs()
    plain = StackedRNN((8, 8), recurrent_bias=True).init(jax.random.key(0), x)
    boxed = StackedRNN((8, 8), recurrent_bias=True, param_axes=AXES).init(jax.random.key(0), x)
    specs = nn.get_partition_spec(boxed)["params"]
    for layer in ("layer_0", "layer_1"):
        assert specs[layer]["w_h"] == P("hidden", "gates")
        assert specs[layer]["w_x"] == P("embed", "gates") and specs[layer]["b"] == P("gates")
        assert specs[layer]["b_h"] == P()  # not named: replicated
        assert nn.logical_to_mesh_axes(specs[layer]["w_h"], RULES) == P(None, "model")
    unboxed = nn.unbox(boxed)
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(plain)[0]]
    assert paths == [p for p, _ in jax.tree_util.tree_flatten_with_path(unboxed)[0]]
    jax.tree.map(np.testing.assert_array_equal, plain, unboxed)
    # the boxed variables apply as they are, to the plain model's outputs
    layer = StackedRNN((8, 8), recurrent_bias=True, param_axes=tuple(AXES.items()))
    jax.tree.map(np.testing.assert_array_equal, layer.apply(boxed, x),
                 StackedRNN((8, 8), recurrent_bias=True).apply(plain, x))
    hash(layer)  # pairs keep the module hashable


def test_param_axes_errors_and_layers_without_an_array():
    ids = np.zeros((2, 3), np.int32)
    # embed_to_gates: the first layer has no w_x, the second does; both are boxed as named
    model = LanguageModel(7, (4, 4), embed_to_gates=True, param_axes={"w_x": (None, "gates")})
    specs = nn.get_partition_spec(model.init(jax.random.key(0), ids))["params"]["rnn"]
    assert "w_x" not in specs["layer_0"] and specs["layer_1"]["w_x"] == P(None, "gates")
    with pytest.raises(ValueError, match="which no layer has"):
        StackedRNN(4, param_axes={"w_q": ("a", "b")}).init(jax.random.key(0), inputs())
    with pytest.raises(ValueError, match="names 1 axes, but w_h has 2"):
        StackedRNN(4, param_axes={"w_h": ("a",)}).init(jax.random.key(0), inputs())
    with pytest.raises(ValueError, match="must map array names"):
        StackedRNN(4, param_axes=3).init(jax.random.key(0), inputs())


MODEL_AXES = {"embed/embedding": ("vocab", "embed"), "softmax/kernel": ("embed", "vocab"),
              "softmax/bias": ("vocab",), "w_h": ("hidden", "gates")}


def test_param_axes_name_the_task_models_own_arrays():
    """A model's own arrays (`partitioning.MODEL_ARRAYS`, by path) get their specs, the
    rest of `param_axes` goes to the stack; values and paths are those drawn without
    names; naming an array the model does not have, or the wrong number of axes, is a
    one-sentence error."""
    ids = np.zeros((2, 3), np.int32)
    model = LanguageModel(12, (4, 4), embed_size=4, param_axes=MODEL_AXES)
    variables = model.init(jax.random.key(0), ids)
    specs = nn.get_partition_spec(variables)["params"]
    assert specs["embed"]["embedding"] == P("vocab", "embed")
    assert specs["softmax"]["kernel"] == P("embed", "vocab") and specs["softmax"]["bias"] == P(
        "vocab")
    assert specs["rnn"]["layer_1"]["w_h"] == P("hidden", "gates")
    assert specs["rnn"]["layer_1"]["w_x"] == P()
    plain = LanguageModel(12, (4, 4), embed_size=4).init(jax.random.key(0), ids)
    jax.tree.map(np.testing.assert_array_equal, nn.unbox(variables), plain)
    tied = LanguageModel(12, (4, 4), embed_size=4, tie_embeddings=True,
                         param_axes={"softmax_bias": ("vocab",)})
    assert nn.get_partition_spec(tied.init(jax.random.key(0), ids))["params"][
        "softmax_bias"] == P("vocab")
    sequence = SequenceModel(2, (4,), vocab_size=12, embed_size=3,
                             param_axes={"head/kernel": ("hidden", None),
                                         "embed/embedding": ("vocab", None)})
    seq_specs = nn.get_partition_spec(sequence.init(jax.random.key(0), ids))["params"]
    assert seq_specs["head"]["kernel"] == P("hidden", None) and seq_specs["head"]["bias"] == P()
    assert seq_specs["embed"]["embedding"] == P("vocab", None)
    with pytest.raises(ValueError, match="names 'softmax/kernel', which this model does not"):
        LanguageModel(12, (4,), tie_embeddings=True, embed_size=4,
                      param_axes={"softmax/kernel": ("a", "b")}).init(jax.random.key(0), ids)
    with pytest.raises(ValueError, match="names 'embed/embedding', which this model does not"):
        SequenceModel(2, (4,), param_axes={"embed/embedding": ("a", "b")}).init(
            jax.random.key(0), inputs())
    with pytest.raises(ValueError, match=r"param_axes\['softmax/bias'\] names 2 axes"):
        LanguageModel(12, (4,), param_axes={"softmax/bias": ("a", "b")}).init(
            jax.random.key(0), ids)


SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
    import rnnreg_jax as rj
    from rnnreg_jax.nn import StackedRNN
    from tests.numerics import assert_trees_close_f32  # the repository is on the path
    AXES = {axes!r}
    RULES = {rules!r}
    assert jax.device_count() == 4
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("model",))  # auto axes
    layer = StackedRNN((8, 8), reg=rj.variational(input=0.2, recurrent=0.2), param_axes=AXES)
    x = jax.random.normal(jax.random.key(0), (4, 5, 3))
    variables = layer.init(jax.random.key(0), x)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(variables), mesh, RULES)
    params = nn.unbox(variables)
    sharded = jax.device_put(params, shardings)
    w_h = sharded["params"]["layer_1"]["w_h"]
    assert w_h.sharding.spec == jax.sharding.PartitionSpec(None, "model"), w_h.sharding
    assert {{s.data.shape for s in w_h.addressable_shards}} == {{(8, 8)}}

    def loss(p):
        ys, _ = layer.apply(p, x, deterministic=False, rngs={{"dropout": jax.random.key(1)}})
        return jnp.sum(ys ** 2)

    got = jax.jit(jax.value_and_grad(loss))(sharded)
    want = jax.value_and_grad(loss)(params)
    assert_trees_close_f32(got, want)  # each leaf to its magnitude; the trees must match

    # a language model whose embedding and softmax are sharded over the vocabulary
    from rnnreg_jax.models import LanguageModel
    lm = LanguageModel(12, (8,), embed_size=8, param_axes={model_axes!r},
                       reg=rj.variational(input=0.2, recurrent=0.2, embedding=0.1))
    ids = jax.random.randint(jax.random.key(2), (4, 5), 0, 12)
    lm_vars = lm.init(jax.random.key(0), ids)
    lm_rules = (("vocab", "model"), ("embed", None), ("hidden", None), ("gates", None))
    lm_shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(lm_vars), mesh, lm_rules)
    lm_params = nn.unbox(lm_vars)
    lm_sharded = jax.device_put(lm_params, lm_shardings)
    table = lm_sharded["params"]["embed"]["embedding"]
    assert {{s.data.shape for s in table.addressable_shards}} == {{(3, 8)}}, table.sharding

    def lm_loss(p):
        logits, _ = lm.apply(p, ids, deterministic=False, rngs={{"dropout": jax.random.key(3)}})
        return jnp.sum(jax.nn.log_softmax(logits) ** 2)

    got = jax.jit(jax.value_and_grad(lm_loss))(lm_sharded)
    want = jax.value_and_grad(lm_loss)(lm_params)
    assert_trees_close_f32(got, want)
    print("sharded ok")
""")


@pytest.mark.slow  # a subprocess compiling on 4 host devices: ~20-30 s on 2 cores
def test_a_model_sharded_by_its_param_axes_runs_on_four_devices():
    env = th.host_devices_env(4)
    out = subprocess.run([sys.executable, "-c", SHARDED.format(axes=AXES, rules=RULES,
                                                                model_axes=MODEL_AXES)],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0 and "sharded ok" in out.stdout, out.stderr[-3000:]


def test_carry_first_is_flax_rnn_order():
    """`carry_first=True` returns `(carry, outputs)` as `nn.RNN(return_carry=True)` does;
    the default is `(outputs, carry)`, the pure API's."""
    x = inputs()
    for module in (StackedRNN((6,), reg=rj.zoneout(hiddens=0.1)), RecurrentLayer(6)):
        variables = module.init(jax.random.key(0), x)
        outputs, carry = module.apply(variables, x)
        flipped = module.clone(carry_first=True).apply(variables, x)
        jax.tree.map(np.testing.assert_array_equal, flipped, (carry, outputs))
    flax_rnn = nn.RNN(nn.LSTMCell(6), return_carry=True)
    flax_carry, flax_outputs = flax_rnn.apply(flax_rnn.init(jax.random.key(0), x), x)
    ours_carry, ours_outputs = RecurrentLayer(6, carry_first=True).apply(
        RecurrentLayer(6).init(jax.random.key(0), x), x)
    assert ours_outputs.shape == flax_outputs.shape == (4, 5, 6)
    assert {a.shape for a in jax.tree.leaves(ours_carry)} == {
        a.shape for a in jax.tree.leaves(flax_carry)} == {(4, 6)}
