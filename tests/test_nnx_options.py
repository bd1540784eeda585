"""The NNX modules' mixed precision (`dtype`, `param_dtype`), sharding metadata
(`param_axes`) and `carry_first` do what the linen modules' do.

Mixed precision is compared bit for bit: both APIs run the same operations in the same
order and dtypes (the same `rnn.unroll` call, the embedding and dense layers promoting
alike), executed the same way (op by op, the scans as one traced body each), so any
difference, however small, is a difference of program, not of a CPU's rounding.
"""

from __future__ import annotations

import flax.linen as flax_nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rnnreg_jax as rj
from rnnreg_jax import models
from rnnreg_jax import nn as linen_nn
from rnnreg_jax import nnx as rnx

BF16 = jnp.bfloat16
B, T, F, V = 2, 4, 3, 7
LENGTHS = np.array([T, 2], np.int32)
AXES = {"w_x": ("embed", "gates"), "w_h": ("hidden", "gates"), "b": ("gates",)}
LM_REG = (rj.variational(input=0.2, recurrent=0.2, output=0.3, embedding=0.2)
          + rj.weight_drop(0.3) + rj.activation_regularization(1.0)
          + rj.temporal_activation_regularization(1.0))
ALL_NOISE = rj.weight_noise(0.3, "all")


def ids():
    return np.random.default_rng(0).integers(0, V, (B, T)).astype(np.int32)


def floats():
    return np.random.default_rng(0).normal(size=(B, T, F)).astype(np.float32)


def dtypes(tree) -> set[str]:
    return {str(a.dtype) for a in jax.tree.leaves(tree)}


def param_state(model) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def assert_bitwise_equal(actual, expected, what):
    leaves_a, leaves_e = jax.tree.leaves(actual), jax.tree.leaves(expected)
    assert len(leaves_a) == len(leaves_e), what
    for a, e in zip(leaves_a, leaves_e, strict=True):
        assert a.dtype == e.dtype, (what, a.dtype, e.dtype)
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(e, np.float32),
                                      err_msg=what)


# (linen module, inputs, call keywords): every model, bfloat16 and float32 storage, ids
# and floats, a padded window. The default suite runs DEFAULT_CASES, the others are slow.
CASES = {
    "lm_bf16_params": (models.LanguageModel(V, (5,), reg=LM_REG, dtype=BF16,
                                            param_dtype=BF16), ids, {}),
    "lm_tied_f32_params": (models.LanguageModel(V, (5,), reg=LM_REG, tie_embeddings=True,
                                                dtype=BF16), ids, {}),
    "sequence_ids_padded": (models.SequenceModel(3, (4,), vocab_size=V, embed_size=5,
                                                 reg=LM_REG, dtype=BF16), ids,
                            {"seq_lengths": LENGTHS}),
    # weight noise on the embedding and the softmax / head kernel (`model_weights`)
    "lm_weight_noise_all": (models.LanguageModel(V, (5,), reg=LM_REG + ALL_NOISE, dtype=BF16,
                                                 param_dtype=BF16), ids, {}),
    "sequence_weight_noise_all": (models.SequenceModel(3, (4,), vocab_size=V, embed_size=5,
                                                       reg=LM_REG + ALL_NOISE, dtype=BF16),
                                  ids, {}),
    "stack_gru": (linen_nn.StackedRNN((4,), cell="gru", dtype=BF16, param_dtype=BF16,
                                      reg=rj.variational(input=0.2, recurrent=0.3)
                                      + rj.norm_stabilizer(1.0)), floats, {}),
}
DEFAULT_CASES = ("lm_tied_f32_params", "lm_weight_noise_all")
NNX_CLASS = {models.LanguageModel: rnx.LanguageModel, models.SequenceModel: rnx.SequenceModel,
             linen_nn.StackedRNN: rnx.StackedRNN}


@pytest.mark.parametrize("case", [c if c in DEFAULT_CASES else pytest.param(
    c, marks=pytest.mark.slow) for c in CASES])
def test_bf16_training_matches_linen_bit_for_bit(case):
    """Outputs in bfloat16, carry and penalties in float32, gradients in the storage
    dtype: all equal to linen's bit for bit, with the same weights and dropout key."""
    linen, make_inputs, kwargs = CASES[case]
    x = make_inputs()
    variables = linen.init(jax.random.key(0), x, **kwargs)
    key = jax.random.key(3)

    def linen_loss(params):
        out, sown = linen.apply({"params": params}, x, deterministic=False,
                                rngs={"dropout": key}, mutable=["penalties"], **kwargs)
        return loss_of(out), (out, jax.tree.leaves(sown))

    def nnx_loss(model):
        out = model(x, rngs=key, **kwargs)
        return loss_of(out), (out, jax.tree.leaves(model.penalties()))

    (_, expected), linen_grads = jax.value_and_grad(linen_loss, has_aux=True)(
        variables["params"])
    model = NNX_CLASS[type(linen)].from_linen(linen, variables)
    (_, (out, penalties)), grads = nnx.value_and_grad(nnx_loss, has_aux=True)(model)
    first = out[0] if isinstance(out, tuple) else out
    assert first.dtype == BF16
    if isinstance(out, tuple):
        assert dtypes(out[1]) == {"float32"}  # the carry
    assert penalties and dtypes(penalties) == {"float32"}
    assert dtypes(grads) == {str(jnp.dtype(linen.param_dtype))}
    assert_bitwise_equal(out, expected[0], "outputs")
    assert_bitwise_equal(penalties, expected[1], "penalties")
    assert_bitwise_equal(nnx.to_pure_dict(grads), linen_grads, "gradients")


def loss_of(out):
    return sum(jnp.sum(jnp.sin(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(out))


def test_parameters_are_stored_in_param_dtype_as_linen_stores_them():
    """Every parameter in `param_dtype` (bfloat16), shapes and dtypes those of linen's
    `init`; `dtype` alone stores float32, the arrays drawn without it."""
    rngs = lambda: nnx.Rngs(params=0)  # noqa: E731
    built = [
        (rnx.LanguageModel(V, (5, 5), tie_embeddings=True, param_dtype=BF16, rngs=rngs()),
         ids()),
        (rnx.LanguageModel(V, (4,), embed_to_gates=True, param_dtype=BF16, rngs=rngs()),
         ids()),
        (rnx.SequenceModel(3, (4,), vocab_size=V, embed_size=5, param_dtype=BF16,
                           rngs=rngs()), ids()),
        (rnx.SequenceModel(3, (4,), input_size=F, param_dtype=BF16, rngs=rngs()), floats()),
        (rnx.StackedRNN(F, (4, 4), cell="lstm_ln", param_dtype=BF16, rngs=rngs()), floats()),
    ]
    for model, x in built:
        linen, variables = model.to_linen()
        assert dtypes(variables["params"]) == {"bfloat16"}
        layout = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)  # noqa: E731
        assert layout(variables["params"]) == layout(linen.init(jax.random.key(0), x)["params"])
    plain = rnx.LanguageModel(V, (4,), rngs=rngs())
    mixed = rnx.LanguageModel(V, (4,), dtype=BF16, rngs=rngs())
    assert dtypes(param_state(mixed)) == {"float32"}
    jax.tree.map(np.testing.assert_array_equal, param_state(plain), param_state(mixed))
    assert mixed(ids(), deterministic=True)[0].dtype == BF16


def test_param_axes_give_linens_partition_specs():
    """`nnx.get_partition_spec` of the `nnx.Param` state is linen's `nn.get_partition_spec`
    of its variables, for a model built here and one moved from linen's boxed variables;
    `to_linen` boxes them back; the values are those drawn without `param_axes`."""
    axes_pairs = tuple(AXES.items())
    for embed_to_gates in (False, True):  # the first layer without w_x: skipped there
        linen = models.LanguageModel(V, (5, 5), embed_to_gates=embed_to_gates,
                                     param_axes=axes_pairs)
        variables = linen.init(jax.random.key(0), ids())
        expected = flax_nn.get_partition_spec(variables)["params"]
        assert expected["rnn"]["layer_1"]["w_h"] == jax.sharding.PartitionSpec("hidden", "gates")
        moved = rnx.LanguageModel.from_linen(linen, variables)
        built = rnx.LanguageModel(V, (5, 5), embed_to_gates=embed_to_gates, param_axes=AXES,
                                  rngs=nnx.Rngs(params=0))
        for model in (moved, built):
            specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
            assert nnx.to_pure_dict(specs) == expected
            assert flax_nn.get_partition_spec(model.to_linen()[1])["params"] == expected
        jax.tree.map(np.testing.assert_array_equal, param_state(moved),
                     flax_nn.unbox(variables)["params"])
        unboxed = rnx.LanguageModel(V, (5, 5), embed_to_gates=embed_to_gates,
                                    rngs=nnx.Rngs(params=0))
        jax.tree.map(np.testing.assert_array_equal, param_state(built), param_state(unboxed))
    with pytest.raises(ValueError, match="param_axes names 'w_q', which no layer has"):
        rnx.StackedRNN(F, 4, param_axes={"w_q": ("hidden",)}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"param_axes\['b'\] names 2 axes"):
        rnx.StackedRNN(F, 4, param_axes={"b": ("gates", "hidden")}, rngs=nnx.Rngs(0))


def test_param_axes_of_the_models_own_arrays_match_linen():
    """Names of the embedding, softmax (untied and tied) and head arrays: the NNX models'
    specs are linen's, for models built here and moved from linen; values unchanged."""
    untied = dict(AXES, **{"embed/embedding": ("vocab", "embed"),
                           "softmax/kernel": ("embed", "vocab"), "softmax/bias": ("vocab",)})
    cases = [
        (models.LanguageModel(V, (5,), embed_size=5, param_axes=tuple(untied.items())),
         lambda **kw: rnx.LanguageModel(V, (5,), embed_size=5, **kw), untied, ids()),
        (models.LanguageModel(V, (5,), embed_size=5, tie_embeddings=True,
                              param_axes=(("softmax_bias", ("vocab",)),)),
         lambda **kw: rnx.LanguageModel(V, (5,), embed_size=5, tie_embeddings=True, **kw),
         {"softmax_bias": ("vocab",)}, ids()),
        (models.SequenceModel(3, (4,), vocab_size=V, embed_size=5,
                              param_axes=(("head/kernel", ("hidden", None)),)),
         lambda **kw: rnx.SequenceModel(3, (4,), vocab_size=V, embed_size=5, **kw),
         {"head/kernel": ("hidden", None)}, ids()),
    ]
    for linen, build, axes, inputs in cases:
        variables = linen.init(jax.random.key(0), inputs)
        expected = flax_nn.get_partition_spec(variables)["params"]
        moved = type(build(rngs=nnx.Rngs(0))).from_linen(linen, variables)
        built = build(param_axes=axes, rngs=nnx.Rngs(params=0))
        for model in (moved, built):
            specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
            assert nnx.to_pure_dict(specs) == expected
        jax.tree.map(np.testing.assert_array_equal, param_state(built),
                     param_state(build(rngs=nnx.Rngs(params=0))))
    with pytest.raises(ValueError, match="names 'head/kernel', which this model does not"):
        rnx.LanguageModel(V, (5,), param_axes={"head/kernel": ("a", "b")}, rngs=nnx.Rngs(0))


def test_param_axes_shard_an_nnx_jit_call():
    """The specs place the parameters under Flax's logical axis rules (a one-device mesh
    here), and the sharded model runs under `nnx.jit` as the unsharded one does."""
    model = rnx.StackedRNN(F, (4,), param_axes=AXES, rngs=nnx.Rngs(params=0))
    mesh = jax.make_mesh((1, 1), ("data", "model"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
    rules = (("gates", "model"), ("hidden", None), ("embed", None))
    with nnx.logical_axis_rules(rules):
        shardings = nnx.get_named_sharding(nnx.state(model, nnx.Param), mesh)
    spec = nnx.to_pure_dict(shardings)["layer_0"]["w_h"].spec
    assert spec == jax.sharding.PartitionSpec(None, "model")
    expected = model(floats(), deterministic=True)
    nnx.update(model, jax.device_put(nnx.state(model, nnx.Param), shardings))
    run = nnx.jit(lambda m, x: m(x, deterministic=True))
    jax.tree.map(np.testing.assert_array_equal, run(model, floats()), expected)


def test_carry_first_returns_linens_order():
    linen = linen_nn.StackedRNN((4,), reg=rj.zoneout(cells=0.2), carry_first=True)
    variables = linen.init(jax.random.key(0), floats())
    model = rnx.StackedRNN.from_linen(linen, variables)
    assert model.carry_first and model.to_linen()[0].carry_first
    carry, ys = model(floats(), rngs=jax.random.key(1))
    assert ys.shape == (B, T, 4) and isinstance(carry, list)
    expected = linen.apply(variables, floats(), deterministic=False,
                           rngs={"dropout": jax.random.key(1)})
    jax.tree.map(np.testing.assert_array_equal, (carry, ys), expected)
    samples, carries = rnx.mc_samples(model, floats(), jax.random.key(1), 2)  # outputs first
    assert samples.shape == (2, B, T, 4) and carries[0]["h"].shape == (2, B, 4)
