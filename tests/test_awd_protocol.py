"""The `awd` presets against salesforce/awd-lstm-lm (docs/FIDELITY.md, AWD-LSTM): AWD's
minibatch-wide embedding dropout (`embedding_tie="batch"`), and the preset fields that
follow the code (paper row, epochs, best-validation test, two LSTM biases)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnreg_jax as rj
from rnnreg_jax import models, noise
from rnnreg_jax.regularizers import EmbeddingDropout, embedding

KEY = jax.random.key(0)
V = 64


def _ids(batch=4, steps=8, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (batch, steps)), jnp.int32)


def _mask(reg, ids, key=KEY):
    return np.asarray(reg.embedding_mask(key, ids, V, False, jnp.float32))[..., 0]


# ====================================================================== embedding tie

def test_batch_tie_is_one_mask_over_the_vocabulary_for_the_minibatch():
    """AWD's `embedded_dropout`: every occurrence of a word, in any sequence of the
    minibatch, gets the same multiplier, drawn from one [V] row under the site key."""
    rate = 0.5
    ids = _ids()
    got = _mask(rj.embedding_dropout(rate, tie="batch"), ids)
    q = noise.quantize_probability(1 - rate)
    row = np.asarray(noise.bernoulli_draw(noise.site_key(KEY, "embedding"), q, (V,)))
    np.testing.assert_array_equal(got, row[np.asarray(ids)] / np.float32(q))
    # the same word in two different sequences shares its value
    shared = {}
    for b, t in np.ndindex(*ids.shape):
        shared.setdefault(int(ids[b, t]), set()).add(float(got[b, t]))
    assert all(len(values) == 1 for values in shared.values())


def test_sequence_tie_stays_one_mask_per_sequence():
    """The default (Gal's) is unchanged: `[B, V]` draws, read per row; identical rows
    of ids get different masks, which the batch tie would make equal."""
    rate = 0.5
    ids = jnp.tile(jnp.arange(V, dtype=jnp.int32)[None], (4, 1))  # every word, 4 times
    q = noise.quantize_probability(1 - rate)
    draws = np.asarray(noise.bernoulli_draw(noise.site_key(KEY, "embedding"), q, (4, V)))
    for reg in (rj.embedding_dropout(rate), rj.embedding_dropout(rate, tie="sequence"),
                rj.variational(embedding=rate)):
        got = _mask(reg, ids)
        np.testing.assert_array_equal(got, draws / np.float32(q))
        assert not np.array_equal(got[0], got[1])
    batch = _mask(rj.embedding_dropout(rate, tie="batch"), ids)
    assert all(np.array_equal(batch[0], batch[b]) for b in range(1, 4))


def test_batch_tie_keeps_the_rate_and_evaluation():
    rate = 0.3
    ids = jnp.arange(4096, dtype=jnp.int32)[None] % V
    keep = [(_mask(rj.embedding_dropout(rate, tie="batch"), ids[:, :V], jax.random.key(k))
             > 0).mean() for k in range(64)]
    n = 64 * V
    assert abs(np.mean(keep) - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / n)
    reg = rj.embedding_dropout(rate, tie="batch")
    assert reg.embedding_mask(None, ids, V, True, jnp.float32) is None
    classic = rj.embedding_dropout(rate, eval_scaling=True, tie="batch")
    q = noise.quantize_probability(1 - rate)
    assert float(classic.embedding_mask(None, ids, V, True, jnp.float32)) == q
    assert set(np.unique(_mask(classic, ids))) <= {0.0, 1.0}


def test_batch_tie_in_the_language_model():
    """With embedding dropout the only noise, two identical sequences of a training batch
    get identical logits under the batch tie, and different ones under Gal's."""
    ids = jnp.tile(_ids(1, 6), (2, 1))

    def logits(tie):
        model = models.LanguageModel(vocab_size=V, hidden_sizes=(8,), init_scale=0.1,
                                     reg=rj.embedding_dropout(0.5, tie=tie))
        variables = model.init(KEY, ids)
        out, _ = model.apply(variables, ids, deterministic=False,
                             rngs={"dropout": jax.random.key(5)})
        clean, _ = model.apply(variables, ids)
        return np.asarray(out), np.asarray(clean)

    out, clean = logits("batch")
    np.testing.assert_array_equal(out[0], out[1])
    assert not np.allclose(out, clean)
    out, _ = logits("sequence")
    assert not np.allclose(out[0], out[1])


def test_embedding_tie_is_checked_and_composed():
    with pytest.raises(ValueError, match="Embedding dropout's tie must be one of"):
        rj.embedding_dropout(0.1, tie="step")
    with pytest.raises(ValueError, match="Embedding dropout's tie must be one of"):
        rj.variational(embedding=0.1, embedding_tie="minibatch")
    with pytest.raises(ValueError, match="Embedding dropout's tie must be one of"):
        EmbeddingDropout(0.1, tie=None)
    with pytest.raises(ValueError, match="EmbeddingDropout.tie differs"):
        rj.embedding_dropout(0.1) + rj.embedding_dropout(0.1, tie="batch")
    # rate 0 ignores the tie (nothing is drawn), as it does eval_scaling
    assert rj.embedding_dropout(0.0, tie="batch") == rj.embedding_dropout(0.0) == rj.NONE
    assert embedding.EMBEDDING_TIES == ("sequence", "batch")
    assert rj.awd_lstm(embedding_tie="batch").find(EmbeddingDropout) == EmbeddingDropout(
        0.1, tie="batch")
    assert rj.awd_lstm().find(EmbeddingDropout) == EmbeddingDropout(0.1)


# ====================================================================== presets

def test_awd_preset_follows_the_authors_ptb_protocol():
    from experiments.configs import common, ptb

    config = ptb.awd()
    # Table 4's row without fine-tuning (the engine has no finetune.py stage)
    assert (config.paper.valid, config.paper.test) == (60.7, 58.8)
    assert "Table 4" in config.paper.source
    # the README at the code release: the paper's PTB model ran 500 epochs at batch 40
    assert (config.train.num_epochs, config.data.batch_size) == (500, 40)
    # main.py tests the model saved at the best validation loss
    assert config.train.report_best
    # eval batch 10, test batch 1, BPTT 70
    assert (config.data.eval_batch_size, config.data.test_batch_size) == (10, 1)
    assert config.data.seq_len == 70
    # PyTorch's LSTM: bias_ih and bias_hh
    assert config.model.recurrent_bias
    reg = common.regularization(config.reg)
    assert reg == rj.awd_lstm(embedding_tie="batch")
    for small in (ptb.awd_small(),):  # the recipe on a smaller stack: the same protocol
        assert small.train.report_best and small.model.recurrent_bias
        assert common.regularization(small.reg) == reg


def test_awd_preset_draws_variable_length_windows_and_scales_the_lr(tmp_path):
    """main.py lines 128-135: windows of drawn lengths around 70 and each step's lr
    times length / 70; the preset's draw fields reach the training source."""
    from data_fixtures import write_repeated_ptb_word

    from experiments.configs import common, ptb
    from rnnreg_jax import tasks
    from rnnreg_jax.data import VariableLengthStreams

    for config in (ptb.awd(), ptb.awd_small()):
        d = config.data
        assert d.batching == "variable"
        assert (d.window_short_prob, d.window_std, d.window_min_len) == (0.05, 5.0, 5)
        assert d.window_bucket == 1  # exact shapes, one compile per length
        assert config.train.lr_window_reference == d.seq_len == 70
    write_repeated_ptb_word(tmp_path)
    config = ptb.awd_small()
    config.data.batch_size, config.data.seq_len, config.data.eval_batch_size = 2, 12, 2
    config.data.window_std, config.data.window_short_prob = 0.0, 0.0
    task = tasks.build_task(config, common.regularization(config.reg), str(tmp_path))
    assert isinstance(task.train, VariableLengthStreams)
    lengths = [b["inputs"].shape[1] for b in task.train.iterate(0)]
    assert set(lengths[:-1]) == {12} and len(lengths) == task.train.steps_in_epoch(0)
    assert task.evals["valid"].seq_len == 12  # evaluation keeps fixed windows
    config.data.window_bucket = 5
    task = tasks.build_task(config, common.regularization(config.reg), str(tmp_path))
    assert {b["inputs"].shape[1] for b in task.train.iterate(0)} <= {5, 10, 15}
    config.data.augment = True
    with pytest.raises(ValueError, match="set it False with data.batching=variable"):
        tasks.build_task(config, common.regularization(config.reg), str(tmp_path))


# ====================================================================== evaluation tail

def test_awd_preset_evaluates_the_streams_last_shorter_window(tmp_path):
    """main.py's evaluate() (lines 105-116) runs `range(0, size - 1, bptt)`: the last
    window is shorter, and counted. The preset pads it (`data.eval_tail="pad"`); the
    Zaremba and Gal presets drop it, as their loops stop at the last whole window."""
    from data_fixtures import write_repeated_ptb_word

    from experiments.configs import common, ptb
    from rnnreg_jax import tasks

    assert ptb.awd().data.eval_tail == ptb.awd_small().data.eval_tail == "pad"
    assert ptb.zaremba_small().data.eval_tail == ptb.variational_medium().data.eval_tail == "drop"
    write_repeated_ptb_word(tmp_path)
    config = ptb.awd_small()
    config.data.batch_size, config.data.seq_len, config.data.eval_batch_size = 2, 12, 2
    counted = {}
    for tail in tasks.EVAL_TAILS:
        config.data.eval_tail = tail
        task = tasks.build_task(config, common.regularization(config.reg), str(tmp_path))
        valid = task.evals["valid"]
        batches = list(valid.iterate(0))
        counted[tail] = sum(b["weights"].sum() if "weights" in b else b["targets"].size
                            for b in batches)
        assert all(b["inputs"].shape == (2, 12) for b in batches)
    stream_targets = 2 * (valid.stream_length - 1)
    assert counted["pad"] == stream_targets > counted["drop"], (counted, stream_targets)
    config.train.carry_state = config.train.eval_carry_state = False  # shuffled windows
    config.data.eval_tail = "pad"
    with pytest.raises(ValueError, match=r"^data.eval_tail='pad' pads .* set it 'drop'.$"):
        tasks.build_task(config, common.regularization(config.reg), str(tmp_path))
    config.data.eval_tail = "keep"
    with pytest.raises(ValueError, match=r"^data.eval_tail must be one of drop, pad; got "
                                         r"'keep'.$"):
        tasks.build_task(config, common.regularization(config.reg), str(tmp_path))


def test_a_padded_tail_window_evaluates_as_the_whole_stream_in_one_window():
    """Carried-state evaluation over windows of 4 with the last, shorter one padded and
    masked: the loss of every target, as one window over the whole streams gives it."""
    import train_helpers as th

    from rnnreg_jax import train
    from rnnreg_jax.data import batching
    from rnnreg_jax.train import optim, steps
    from rnnreg_jax.train.evaluator import Evaluator

    tokens = th.LMSource(batch=3, steps=1, num_windows=21).data.reshape(-1)  # 22 a stream
    task = train.Task(model=th.tiny_lm(hidden=8), kind="lm", train=th.LMSource(batch=3),
                      carry_state=True)
    mesh = train.make_mesh()
    config = train.default_train_config()
    whole = batching.ContiguousStreams(tokens, 3, 21)
    padded = batching.ContiguousStreams(tokens, 3, 4, pad_last=True)
    dropped = batching.ContiguousStreams(tokens, 3, 4)
    assert (whole.num_batches, padded.num_batches, dropped.num_batches) == (1, 6, 5)
    state = steps.init_state(task, config, mesh, optim.make_optimizer(config),
                             next(iter(whole.iterate(0))))
    evaluator = Evaluator(task, mesh)
    loss = {name: evaluator.evaluate(state.params, source)["loss"]
            for name, source in (("whole", whole), ("padded", padded), ("dropped", dropped))}
    np.testing.assert_allclose(loss["padded"], loss["whole"], rtol=1e-5)
    assert abs(loss["dropped"] - loss["whole"]) > 1e-4, loss


# ====================================================================== initialization

def _init_bounds(tree):
    return {jax.tree_util.keystr(path): float(np.abs(np.asarray(leaf)).max())
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_awd_preset_draws_the_codes_initialization():
    """model.py lines 48-52 with PyTorch's LSTM: the embedding (tied softmax) uniform in
    +-0.1, the softmax bias zero, every LSTM weight and both biases in +-1/sqrt(H); the
    presets' model at width 64 (its draws reach near each bound)."""
    from experiments.configs import ptb
    from experiments.configs.common import regularization
    from rnnreg_jax import tasks

    config = ptb.awd_small()
    config.model.hidden_sizes, config.model.embed_size = (64, 64), 64
    model = tasks.language_model(config.model, regularization(config.reg), vocab_size=300)
    params = model.init(KEY, jnp.zeros((2, 3), jnp.int32))["params"]
    bounds = _init_bounds(params)
    assert 0.09 < bounds["['embed']['embedding']"] <= 0.1
    np.testing.assert_array_equal(params["softmax_bias"], 0.0)
    lstm = {k: v for k, v in bounds.items() if k.startswith("['rnn']")}
    assert {k.split("'")[-2] for k in lstm} == {"w_x", "w_h", "b", "b_h"}
    for name, bound in lstm.items():
        assert 0.9 / 8 < bound <= 1 / 8, name  # 1/sqrt(64)


@pytest.mark.parametrize("tie", [False, True])
def test_embed_init_scale_and_zero_softmax_bias_in_linen_and_nnx(tie):
    """The two options draw the embedding and softmax weights at their own scale and the
    bias at zero, beside recurrent layers at `init_scale`; NNX draws the same
    distributions, and its linen twin carries the options."""
    from flax import nnx

    from rnnreg_jax import nnx as rnx

    kwargs = dict(vocab_size=200, hidden_sizes=(32,), tie_embeddings=tie,
                  embed_init_scale=0.3, softmax_bias_init="zeros", init_scale=0.02)
    linen = models.LanguageModel(**kwargs).init(KEY, jnp.zeros((2, 3), jnp.int32))["params"]
    twin = rnx.LanguageModel(**kwargs, rngs=nnx.Rngs(params=0, dropout=1))
    _, variables = twin.to_linen()
    assert twin.linen_module().embed_init_scale == 0.3
    for params in (linen, variables["params"]):
        bounds = _init_bounds(params)
        weights = ["['embed']['embedding']"] + ([] if tie else ["['softmax']['kernel']"])
        for name in weights:
            assert 0.27 < bounds[name] <= 0.3, name
        bias = params["softmax_bias"] if tie else params["softmax"]["bias"]
        np.testing.assert_array_equal(bias, 0.0)
        assert 0.018 < bounds["['rnn']['layer_0']['w_h']"] <= 0.02


def test_initialization_options_are_checked_in_one_sentence():
    ids = jnp.zeros((2, 3), jnp.int32)
    with pytest.raises(ValueError, match=r"softmax_bias_init must be one of \('uniform', "
                                         r"'zeros'\), got 'ones'"):
        models.LanguageModel(10, 4, softmax_bias_init="ones").init(KEY, ids)
    with pytest.raises(ValueError, match="embed_init_scale must be a finite number >= 0"):
        models.LanguageModel(10, 4, embed_init_scale=-1.0).init(KEY, ids)
