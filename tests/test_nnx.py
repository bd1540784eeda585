"""The NNX modules (`rnnreg_jax.nnx`) compute what the linen modules compute.

For the same weights (moved with `from_linen`) and the same dropout key, outputs, carries,
penalties, running statistics and gradients agree in float64 to 1e-10 relative, in
evaluation and in training (the NNX call's key derives every site's key as linen's
`apply(..., rngs={"dropout": key})` does), also on padded windows (`seq_lengths`).
Beyond that: the `dropout` stream draws one key per training call, `.train()` /
`.eval()` switch the modes, an `nnx.jit` + `nnx.grad` + `nnx.Optimizer` loop trains,
MC dropout follows `rnnreg_jax.train`'s protocol, and bad inputs get one-sentence
errors. The other options (`dtype`, `param_dtype`, `param_axes`, `carry_first`):
tests/test_nnx_options.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import optax
import pytest
from flax import nnx

import rnnreg_jax as rj
from rnnreg_jax import models
from rnnreg_jax import nn as linen_nn
from rnnreg_jax import nnx as rnx
from rnnreg_jax.regularizers import EmbeddingDropout, without
from rnnreg_jax.train.steps import total_penalty

B, T, F, V = 2, 4, 3, 7
KEY = jax.random.key(42)
LENGTHS = np.array([T, 2], np.int32)  # the second example padded after 2 steps

STACK_REG = rj.variational(input=0.2, recurrent=0.3, output=0.2) + rj.norm_stabilizer(2.0)
LM_REG = (rj.variational(input=0.2, recurrent=0.2, output=0.3, embedding=0.2)
          + rj.weight_drop(0.3) + rj.activation_regularization(1.0)
          + rj.temporal_activation_regularization(1.0))


def floats(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def ids(seed=0):
    return np.random.default_rng(seed).integers(0, V, (B, T)).astype(np.int32)


def linen_run(module, variables, args, key, stats=False, **kwargs):
    """`(output, penalties by name, updated batch_stats or None)` of a linen apply in
    training (`key` given) or evaluation (None)."""
    mutable = ["penalties"] + (["batch_stats"] if stats and key is not None else [])
    if key is None:
        return module.apply(variables, *args, **kwargs), {}, None
    out, mutated = module.apply(variables, *args, deterministic=False,
                                rngs={"dropout": key}, mutable=mutable, **kwargs)
    return out, by_name(mutated.get("penalties", {})), mutated.get("batch_stats")


def by_name(sown) -> dict:
    """`{name: value}` of linen's `penalties` collection (`{child: {name: (value,)}}`)."""
    out = {}
    for name, value in sown.items():
        out.update(by_name(value) if isinstance(value, dict) else {name: value[0]})
    return out


def loss_of(out):
    """A scalar of everything a call returns (outputs and carry), to differentiate."""
    return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(out))


def assert_same_as_linen(linen_module, variables, args, nnx_class, stats=False, **kwargs):
    """In float64: evaluation and training (same key) give the same outputs, carry,
    penalties, running statistics and gradients (of outputs + penalties) in both APIs."""
    with nm.x64():
        variables, args = nm.as_f64(variables), nm.as_f64(args)
        for key in (None, KEY):
            call = dict(rngs=key) if key is not None else dict(deterministic=True)

            def linen_loss(params, key=key):
                out, pens, new_stats = linen_run(linen_module, dict(variables, params=params),
                                                 args, key, stats, **kwargs)
                return loss_of(out) + total_penalty(pens), (out, pens, new_stats)

            def nnx_loss(model, call=call):
                out = model(*args, **call, **kwargs)
                return loss_of(out) + model.penalty(), (out, model.penalties())

            (_, expected), linen_grads = jax.value_and_grad(linen_loss, has_aux=True)(
                variables["params"])
            model = nnx_class.from_linen(linen_module, variables)
            (_, (out, pens)), grads = nnx.value_and_grad(nnx_loss, has_aux=True)(model)
            what = "training" if key is not None else "evaluation"
            nm.assert_trees_close_f64(out, expected[0], err_msg=f"{what}: outputs")
            nm.assert_trees_close_f64(pens, expected[1], err_msg=f"{what}: penalties")
            nm.assert_trees_close_f64(nnx.to_pure_dict(grads), linen_grads,
                                      err_msg=f"{what}: gradients")
            if expected[2] is not None:
                nm.assert_trees_close_f64(model.to_linen()[1]["batch_stats"], expected[2],
                                          err_msg="running statistics")


@pytest.mark.parametrize("cell", ["lstm", pytest.param("gru", marks=pytest.mark.slow),
                                  pytest.param("lstm_bn", marks=pytest.mark.slow)])
def test_stacked_rnn_matches_linen(cell):
    options = dict(cell=cell, reg=STACK_REG)
    if cell == "lstm":
        options.update(recurrent_bias=True, forget_bias=1.0)
    if cell == "lstm_bn":
        options.update(bn_max_steps=3,
                       reg=rj.zoneout(cells=0.3, hiddens=0.2) + rj.norm_stabilizer(2.0))
    linen = linen_nn.StackedRNN((5, 4), **options)
    x = floats((B, T, F))
    variables = linen.init(jax.random.key(0), x)
    carry = jax.tree.map(lambda a: a + 0.3, linen.initial_carry(B))
    assert_same_as_linen(linen, variables, (x, carry), rnx.StackedRNN, stats=cell == "lstm_bn")


def test_stacked_rnn_matches_linen_with_lengths():
    """Padded windows: outputs zero and carries frozen past each example's length, and
    every penalty (norm stabilizer, AR, TAR) over valid steps only, as linen's."""
    reg = (STACK_REG + rj.activation_regularization(1.0)
           + rj.temporal_activation_regularization(1.0))
    linen = linen_nn.StackedRNN((5, 4), reg=reg)
    x = floats((B, T, F))
    variables = linen.init(jax.random.key(0), x)
    assert_same_as_linen(linen, variables, (x,), rnx.StackedRNN, seq_lengths=LENGTHS)


@pytest.mark.parametrize("cell,merge", [pytest.param("lstm", "concat", marks=pytest.mark.slow),
                                        ("gru", "sum")])
def test_bidirectional_matches_linen(cell, merge):
    """Both directions, a given carry, padded windows and every penalty, as linen's."""
    reg = STACK_REG + rj.zoneout(0.2 if cell == "lstm" else 0.0, 0.1) + (
        rj.temporal_activation_regularization(1.0))
    linen = linen_nn.Bidirectional((5, 4), merge=merge, cell=cell, reg=reg)
    x = floats((B, T, F))
    variables = linen.init(jax.random.key(0), x)
    carry = jax.tree.map(lambda a: a + 0.3, linen.initial_carry(B))
    assert_same_as_linen(linen, variables, (x, carry), rnx.Bidirectional,
                         seq_lengths=LENGTHS)


def test_bidirectional_layout_options_and_refusal():
    """The NNX stack's own draw has linen's paths and shapes, `to_linen` gives a linen
    module computing the same, `carry_first` swaps the results, and a cell with running
    statistics is refused in one sentence, as in linen."""
    model = rnx.Bidirectional(F, (5, 4), carry_first=True, rngs=nnx.Rngs(0))
    linen = linen_nn.Bidirectional((5, 4), carry_first=True)
    x = floats((B, T, F))
    shapes = jax.tree.map(jnp.shape, linen.init(jax.random.key(0), x)["params"])
    assert jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(model, nnx.Param))) == shapes
    carry, ys = model(x, deterministic=True)
    assert ys.shape == (B, T, 8) and set(carry[1]) == {"forward", "backward"}
    module, variables = model.to_linen()
    expected_carry, expected = module.apply(variables, x)
    np.testing.assert_array_equal(ys, expected)
    nm.assert_trees_close_f32(carry, expected_carry)
    with pytest.raises(ValueError, match="Bidirectional stacks take cells without running"):
        rnx.Bidirectional(F, 4, cell="lstm_bn", rngs=nnx.Rngs(0))


def test_glorot_uniform_head_of_the_nnx_sequence_model():
    """`head_init="glorot_uniform"`: the NNX head is drawn as linen's is (within and near
    the Glorot bound), and `from_linen` keeps the option."""
    hidden, outputs = 64, 3
    bound = np.sqrt(6.0 / (hidden + outputs))
    twin = rnx.SequenceModel(outputs, (hidden,), vocab_size=V, embed_size=4,
                             head_init="glorot_uniform", rngs=nnx.Rngs(0))
    kernel = np.asarray(twin.head.kernel[...])
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
    linen = models.SequenceModel(outputs, (hidden,), vocab_size=V, embed_size=4,
                                 head_init="glorot_uniform")
    moved = rnx.SequenceModel.from_linen(linen, linen.init(jax.random.key(0), ids()))
    assert moved.linen_module().head_init == "glorot_uniform"


def test_the_modules_declare_every_option_they_set():
    """`RecurrentModule` declares, for type checkers, the attributes `_set_options` sets
    in a loop: an option added to `SUPPORTED_OPTIONS` without its declaration fails here."""
    declared = set(rnx.RecurrentModule.__annotations__)
    assert set(rnx.SUPPORTED_OPTIONS) | {"deterministic", "use_running_average"} <= declared


def test_an_int_hidden_sizes_is_one_layer_and_inputs_of_another_rank_are_named():
    """`hidden_sizes=4` is `(4,)` for the models as for `StackedRNN`, not a TypeError;
    inputs of another rank are a ValueError in the model's terms."""
    lm = rnx.LanguageModel(V, 4, rngs=nnx.Rngs(0))
    seq = rnx.SequenceModel(2, 4, input_size=F, rngs=nnx.Rngs(0))
    assert lm.hidden_sizes == seq.hidden_sizes == (4,)
    assert lm.linen_module().hidden_sizes == (4,)
    with pytest.raises(ValueError, match=r"LanguageModel takes int ids \[B, T\], got shape "
                                         r"\(2, 4, 1\)"):
        lm(ids()[..., None])
    with pytest.raises(ValueError, match=r"SequenceModel without vocab_size takes float "
                                         r"inputs \[B, T, F\]"):
        seq(floats((B, T)))


def test_sizes_that_are_not_whole_numbers_are_named():
    """The NNX language model's widths and vocabulary, as linen's (tests/test_models.py)."""
    for hidden_sizes, match in (((), "at least one layer"), ((4, -1), "got -1"),
                                (4.0, "got 4.0"), ((0,), "got 0")):
        with pytest.raises(ValueError, match=match):
            rnx.LanguageModel(20, hidden_sizes, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="vocab_size must be a whole number >= 1, got 0"):
        rnx.LanguageModel(0, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_outputs must be a whole number >= 1, got 0"):
        rnx.SequenceModel(0, 4, input_size=3, rngs=nnx.Rngs(0))  # divided by zero
    for make, name in ((lambda: rnx.LanguageModel(20, 4, embed_size=-1, rngs=nnx.Rngs(0)),
                        "embed_size"),
                       (lambda: rnx.SequenceModel(2, 4, vocab_size=20, embed_size=0,
                                                  rngs=nnx.Rngs(0)), "embed_size"),
                       (lambda: rnx.SequenceModel(2, 4, input_size=0, rngs=nnx.Rngs(0)),
                        "input_size")):
        with pytest.raises(ValueError, match=f"{name} must be a whole number >= 1"):
            make()


def test_token_ids_out_of_the_vocabulary_are_refused_or_poison_the_loss():
    """As linen's (tests/test_models.py): concrete ids outside `[0, V)` are a ValueError;
    under jit a negative id's logits are NaN, not another word's."""
    lm = rnx.LanguageModel(V, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"^Token ids must lie in \[0, vocab_size\)"):
        lm(np.full((B, T), V, np.int32))
    logits = nnx.jit(lambda m, i: m(i)[0])(lm, np.full((B, T), -1, np.int32))
    assert np.isnan(logits).all()


def test_lstm_bn_refuses_lengths_with_batch_statistics_in_one_sentence():
    linen = linen_nn.StackedRNN(4, cell="lstm_bn", bn_max_steps=3)
    x = floats((B, T, F))
    variables = linen.init(jax.random.key(0), x)
    model = rnx.StackedRNN.from_linen(linen, variables)
    with pytest.raises(ValueError, match=r"^seq_lengths cannot be used with [^.]*\.$"):
        model(x, seq_lengths=LENGTHS)  # training: the window's statistics
    model.eval()  # the running statistics: lengths are fine
    nm.assert_trees_close_f32(model(x, seq_lengths=LENGTHS),
                              linen.apply(variables, x, seq_lengths=LENGTHS))


def test_lstm_bn_running_statistics_update_in_training_and_serve_evaluation():
    linen = linen_nn.StackedRNN(4, cell="lstm_bn", bn_max_steps=3)
    x = floats((B, T, F))
    variables = linen.init(jax.random.key(0), x)
    model = rnx.StackedRNN.from_linen(linen, variables)
    before = model.to_linen()[1]["batch_stats"]
    model(x)  # training
    after = model.to_linen()[1]["batch_stats"]
    _, expected = linen.apply(variables, x, deterministic=False, mutable=["batch_stats"])
    nm.assert_trees_close_f32(after, expected["batch_stats"])
    assert not np.allclose(after["layer_0"]["x_mean"], before["layer_0"]["x_mean"])
    model.eval()
    served = model(x)
    nm.assert_trees_close_f32(model.to_linen()[1]["batch_stats"], after)  # unchanged
    nm.assert_trees_close_f32(served, linen.apply(dict(variables, **expected), x))
    nm.assert_trees_close_f32(model(x, deterministic=False, use_running_average=True),
                              served)  # the noise-free reg: training with the averages


def assert_language_model_same_as_linen(kind: str, reg, embed_to_gates_reg) -> None:
    """The NNX language model (`kind`: untied, tied or embed_to_gates, which takes
    `embed_to_gates_reg`: no input mask on gate pre-activations) against linen's."""
    options = dict(tie_embeddings=kind == "tied", embed_to_gates=kind == "embed_to_gates")
    if kind == "embed_to_gates":
        reg = embed_to_gates_reg
    linen = models.LanguageModel(V, (5, 5), reg=reg, **options)
    variables = linen.init(jax.random.key(0), ids())
    carry = jax.tree.map(lambda a: a - 0.2, linen_nn.StackedRNN((5, 5)).initial_carry(B))
    assert_same_as_linen(linen, variables, (ids(), carry), rnx.LanguageModel)


@pytest.mark.parametrize("kind", [pytest.param("untied", marks=pytest.mark.slow), "tied",
                                  pytest.param("embed_to_gates", marks=pytest.mark.slow)])
def test_language_model_matches_linen(kind):
    assert_language_model_same_as_linen(  # embed_to_gates: the zoneout model's regularizer
        kind, LM_REG, rj.zoneout(cells=0.3, hiddens=0.2) + rj.embedding_dropout(0.2)
        + rj.temporal_activation_regularization(1.0))


@pytest.mark.parametrize("lengths", [pytest.param(None, marks=pytest.mark.slow), LENGTHS],
                         ids=["full", "padded"])  # full windows are slow
@pytest.mark.parametrize("inputs", ["floats", "ids"])
def test_sequence_model_matches_linen(inputs, lengths):
    """Padded: the head reads each example's last valid output, as linen's."""
    vocab = V if inputs == "ids" else None  # floats: no word types to drop
    reg = rj.variational(input=0.2, recurrent=0.2, output=0.3,
                         embedding=0.3 if vocab else 0.0)
    linen = models.SequenceModel(3, (4,), vocab_size=vocab, embed_size=5, reg=reg)
    x = ids() if inputs == "ids" else floats((B, T, F))
    variables = linen.init(jax.random.key(0), x)
    assert_same_as_linen(linen, variables, (x,), rnx.SequenceModel, seq_lengths=lengths)


def test_the_dropout_stream_draws_one_key_per_training_call():
    """Call n in training mode uses the masks of linen's `rngs={"dropout": k_n}`, k_n the
    stream's n-th key; an evaluation call draws none."""
    linen = models.LanguageModel(V, (4,), reg=LM_REG)
    variables = linen.init(jax.random.key(0), ids())
    model = rnx.LanguageModel.from_linen(linen, variables, rngs=nnx.Rngs(dropout=3))
    stream = model.rngs
    for n in range(2):
        key = jax.random.fold_in(stream.key[...], n)
        assert int(stream.count[...]) == n
        nm.assert_trees_close_f32(model(ids()), linen_run(linen, variables, (ids(),), key)[0])
        model(ids(), deterministic=True)
    assert int(stream.count[...]) == 2
    # a call's rngs: a key as it is, an Rngs's dropout stream (one draw), a stream
    other = nnx.Rngs(dropout=9)
    expected = linen_run(linen, variables, (ids(),), jax.random.fold_in(other.dropout.key[...],
                                                                         0))[0]
    nm.assert_trees_close_f32(model(ids(), rngs=other), expected)
    assert int(stream.count[...]) == 2


def test_train_and_eval_set_the_modes_of_every_module():
    model = rnx.LanguageModel(V, (4, 4), reg=LM_REG, rngs=nnx.Rngs(params=0, dropout=1))
    assert not model.deterministic and not model.rnn.deterministic
    a, b = model(ids())[0], model(ids())[0]
    assert not np.allclose(a, b)  # a new draw each call
    assert model.penalties().keys() == {"activation_reg", "temporal_activation_reg"}
    model.eval()
    assert model.deterministic and model.rnn.deterministic and model.rnn.use_running_average
    c, d = model(ids())[0], model(ids())[0]
    np.testing.assert_array_equal(c, d)
    assert model.penalties() == {} and float(model.penalty()) == 0.0
    linen, variables = model.to_linen()
    nm.assert_trees_close_f32(c, linen.apply(variables, ids())[0])
    model.train()
    assert not model.deterministic and not model.rnn.deterministic
    assert not np.allclose(model(ids())[0], c)


def test_nnx_jit_grad_optimizer_training_lowers_the_loss():
    """A tiny LM learns a cyclic stream (each token the previous plus one), window by
    window with the state carried across, noise and penalties on."""
    reg = rj.variational(input=0.1, recurrent=0.1, output=0.1) + rj.activation_regularization(1.0)
    model = rnx.LanguageModel(V, (8,), reg=reg, rngs=nnx.Rngs(params=0, dropout=1))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)
    stream = (np.arange(3 * T + 1)[None] + 3 * np.arange(B)[:, None]) % V

    @nnx.jit
    def step(model, optimizer, inputs, targets, carry):
        def loss_fn(model):
            logits, new_carry = model(inputs, carry)
            xent = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
            return xent + model.penalty(), new_carry

        (loss, new_carry), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return loss, new_carry

    def epoch():
        carry, losses = None, []
        for s in range(0, 3 * T, T):
            loss, carry = step(model, optimizer, stream[:, s:s + T], stream[:, s + 1:s + T + 1],
                               carry)
            losses.append(float(loss))
        return np.mean(losses)

    first = epoch()
    for _ in range(19):
        last = epoch()
    assert last < 0.5 * first, (first, last)
    assert int(optimizer.step[...]) == 60


def test_mc_log_probs_average_the_probabilities_of_linen_samples():
    """Sample k is linen's training-mode apply with key `fold_in(key, k)` and the running
    statistics; `embedding_dropout=False` drops the word-type noise only."""
    linen = models.LanguageModel(V, (4,), reg=LM_REG)
    variables = linen.init(jax.random.key(0), ids())
    model = rnx.LanguageModel.from_linen(linen, variables)
    model.eval()
    for embedding_dropout in (True, False):
        mc_linen = linen if embedding_dropout else linen.clone(
            reg=without(LM_REG, EmbeddingDropout))
        samples = [mc_linen.apply(variables, ids(), deterministic=False,
                                  rngs={"dropout": jax.random.fold_in(KEY, k)})
                   for k in range(3)]
        probs = np.mean([jax.nn.softmax(logits) for logits, _ in samples], axis=0)
        log_probs, carry = rnx.mc_log_probs(model, ids(), KEY, 3,
                                            embedding_dropout=embedding_dropout)
        nm.assert_close_f32(np.exp(log_probs), probs)
        nm.assert_trees_close_f32(carry, jax.tree.map(lambda *c: np.stack(c),
                                                      *[c for _, c in samples]))
    assert model.deterministic and model.penalties() == {}  # the model is as it was


def test_to_linen_round_trip_and_option_defaults():
    model = rnx.LanguageModel(V, (4, 4), rngs=nnx.Rngs(params=0))
    assert model.init_scale == 0.1  # the language model's default, as in linen
    linen, variables = model.to_linen()
    assert linen.init_scale == 0.1 and linen.reg == rj.NONE
    assert max(float(np.abs(a).max()) for a in jax.tree.leaves(variables)) <= 0.1
    shapes = jax.tree.map(np.shape, linen.init(jax.random.key(0), ids())["params"])
    assert jax.tree.map(np.shape, variables["params"]) == shapes
    back = rnx.LanguageModel.from_linen(linen, variables)
    nm.assert_trees_close_f32(back(ids()), model(ids()))  # no noise: no stream needed


def test_one_sentence_errors():
    no_stream = rnx.StackedRNN(F, 4, reg=STACK_REG, rngs=nnx.Rngs(params=0))
    with pytest.raises(ValueError, match="needs a dropout PRNG key"):
        no_stream(floats((B, T, F)))
    no_stream(floats((B, T, F)), deterministic=True)  # evaluation needs none
    with pytest.raises(ValueError, match="rngs must be an nnx.Rngs, an nnx.RngStream"):
        no_stream(floats((B, T, F)), rngs=3)
    with pytest.raises(ValueError, match="Unknown option 'dropout'"):
        rnx.StackedRNN(F, 4, dropout=0.5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exactly one of the two"):
        rnx.SequenceModel(2, (4,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="tie_embeddings needs"):
        rnx.LanguageModel(V, (4, 5), tie_embeddings=True, rngs=nnx.Rngs(0))
    linen = linen_nn.StackedRNN(4)
    variables = linen.init(jax.random.key(0), floats((B, T, F)))
    with pytest.raises(ValueError, match="takes a linen rnnreg_jax.models.LanguageModel"):
        rnx.LanguageModel.from_linen(linen, variables)
    model = rnx.StackedRNN(F, 5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"The linen params\['layer_0'\]\['b'\] has shape"):
        model.load_linen(variables)
    with pytest.raises(ValueError, match="lack"):
        model.load_linen({"params": {}})
    sequence = rnx.SequenceModel(2, (4,), input_size=F, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="carries no state"):
        rnx.mc_samples(sequence, floats((B, T, F)), KEY, 2, carry=[])


def test_the_docs_page_runs():
    page = Path(__file__).resolve().parents[1] / "docs" / "NNX.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(page), "exec"), {})  # noqa: S102 -- our own docs


def test_switches_param_dtype_and_modes_are_one_sentence():
    """As the linen twins: a word where a switch belongs, an integer param_dtype, and
    `deterministic` / `use_running_average` given as strings (taken as True), and a bool
    sample count for mc_samples (an iota error)."""
    for make, field in ((lambda: rnx.StackedRNN(4, 5, time_major="no", rngs=nnx.Rngs(0)),
                         "time_major"),
                        (lambda: rnx.LanguageModel(7, 5, embed_to_gates="False",
                                                   rngs=nnx.Rngs(0)), "embed_to_gates"),
                        (lambda: rnx.LanguageModel(7, 5, tie_embeddings="False",
                                                   rngs=nnx.Rngs(0)), "tie_embeddings"),
                        (lambda: rnx.LanguageModel(7, 5, orthogonal_init="False",
                                                   rngs=nnx.Rngs(0)), "orthogonal_init")):
        with pytest.raises(ValueError, match=f"^{field} must be True or False"):
            make()
    with pytest.raises(ValueError, match="^param_dtype must be a floating dtype"):
        rnx.StackedRNN(4, 5, param_dtype=jnp.int32, rngs=nnx.Rngs(0))
    for dtype in (jnp.int32, "bf16"):
        with pytest.raises(ValueError, match="^dtype must be a floating dtype"):
            rnx.LanguageModel(7, 5, dtype=dtype, rngs=nnx.Rngs(0))
    stack = rnx.StackedRNN(4, 5, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 3, 4))
    for kwargs, field in (({"deterministic": "False"}, "deterministic"),
                          ({"use_running_average": "False"}, "use_running_average")):
        with pytest.raises(ValueError, match=f"^{field} must be True or False"):
            stack(x, **kwargs)
    lm = rnx.LanguageModel(7, 5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_samples must be a whole number >= 1, got True"):
        rnx.mc_samples(lm, jnp.zeros((1, 3), jnp.int32), jax.random.key(0), True)
