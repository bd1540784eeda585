"""Gal & Ghahramani's MC dropout test protocol (LM_code/main_new_dropout_SOTA_v3.lua,
run_MC_test): one mask set per MC sample for the whole carried-state test stream, and no
word-type (embedding) dropout in the MC passes."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import train_helpers as th
from numerics import assert_close_f32

from experiments.configs import common
from experiments.configs import ptb as ptb_configs
from rnnreg_jax import models, noise, regularizers, train
from rnnreg_jax.train import optim, steps
from rnnreg_jax.train.evaluator import Evaluator, without_embedding_dropout

th.enable_compilation_cache()

VOCAB, HIDDEN, STEPS, WINDOWS = 12, 8, 3, 50
KEY = jax.random.PRNGKey(5)
GAL = regularizers.variational(input=0.3, recurrent=0.3, output=0.3, embedding=0.5,
                               tie="sequence")


def _lm(reg):
    return models.LanguageModel(vocab_size=VOCAB, hidden_sizes=(HIDDEN,), reg=reg,
                                init_scale=0.8)


@pytest.fixture(scope="module")
def stream():
    """The batch-1 carried-state test protocol: one stream, WINDOWS windows of STEPS."""
    source = th.LMSource(vocab=VOCAB, batch=1, steps=STEPS, num_windows=WINDOWS, seed=4)
    task = train.Task(model=_lm(GAL), kind="lm", train=source, carry_state=True)
    config = train.default_train_config()
    mesh = train.make_mesh()
    params = steps.init_state(task, config, mesh, optim.make_optimizer(config),
                              next(iter(source.iterate(0)))).params
    return task, source, params, mesh


def _keys_equal(a, b) -> bool:
    return bool(np.array_equal(jax.random.key_data(a), jax.random.key_data(b)))


def test_sample_keys_are_per_pass_or_per_window_and_independent_of_chunking():
    k = 7
    for sample in range(k):
        in_1 = noise.mc_sample_keys(KEY, 1, 0, k, "pass")[sample]
        in_50 = noise.mc_sample_keys(KEY, 50, 0, k, "pass")[sample]
        assert _keys_equal(in_1, in_50)
        assert not _keys_equal(noise.mc_sample_keys(KEY, 1, 0, k, "window")[sample],
                               noise.mc_sample_keys(KEY, 50, 0, k, "window")[sample])
    for masks in noise.MC_MASKS:
        whole = noise.mc_sample_keys(KEY, 3, 0, k, masks)
        chunk = noise.mc_sample_keys(KEY, 3, 4, 3, masks)        # samples 4, 5, 6
        assert _keys_equal(chunk, whole[4:])
        assert len({tuple(np.asarray(x)) for x in jax.random.key_data(whole)}) == k
    with pytest.raises(ValueError, match="masks must be one of"):
        noise.mc_sample_keys(KEY, 0, 0, 2, "batch")


def _masks(key):
    """Every mask of a 2-layer stack and its output and embedding from one sample key."""
    b, t = 4, VOCAB  # enough elements that two independent draws never agree by chance
    ids = np.tile(np.arange(t, dtype=np.int32), (b, 1))
    layers = [noise.layer_noise(GAL, key, layer, "lstm", b, t, HIDDEN, HIDDEN, False)
              for layer in range(2)]
    return {"input": [n.input for n in layers],
            "recurrent": [n.tied.recurrent for n in layers],
            "output": noise.output_mask(GAL, key, b, t, HIDDEN, False),
            "embedding": noise.embedding_mask(GAL, key, ids, VOCAB, False)}


@pytest.mark.parametrize("masks", noise.MC_MASKS)
def test_sample_k_masks_in_window_1_and_window_50(masks):
    k = 4
    for sample in range(k):
        first = _masks(noise.mc_sample_keys(KEY, 1, 0, k, masks)[sample])
        last = _masks(noise.mc_sample_keys(KEY, 50, 0, k, masks)[sample])
        for site in ("input", "recurrent", "output", "embedding"):
            same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first[site]),
                                                            jax.tree.leaves(last[site]),
                                                            strict=True))
            assert same == (masks == "pass"), (sample, site)


def _long_window_mc_loss(model, params, source, keys):
    """The MC loss of the K samples of `keys` run over the whole stream as ONE window, so
    each sample's (sequence-tied) masks are drawn once for all of it: Gal's token-by-token
    pass, written without windows."""
    ids = np.concatenate([b["inputs"] for b in source.iterate(0)], axis=1)
    targets = np.concatenate([b["targets"] for b in source.iterate(0)], axis=1)
    probs = []
    for key in keys:
        logits, _ = model.apply({"params": params}, ids, None, deterministic=False,
                                rngs={"dropout": key})
        p = jax.nn.softmax(np.asarray(logits, np.float64), -1)
        probs.append(np.take_along_axis(np.asarray(p), targets[..., None], -1)[..., 0])
    return float(np.mean(-np.log(np.mean(probs, axis=0))))


@pytest.mark.parametrize("embedding_dropout", [pytest.param(False, marks=pytest.mark.slow), True])
def test_per_pass_masks_make_the_windowed_mc_pass_gals_single_pass(stream, embedding_dropout):
    """Under "pass" the carried-state MC pass over 50 windows equals every sample run over
    the stream in one window; under "window" it does not. Without MC embedding dropout it is
    the same model with embedding dropout removed (the other masks unchanged)."""
    task, source, params, mesh = stream
    k = 3
    reference = _lm(GAL if embedding_dropout else regularizers.without(
        GAL, regularizers.EmbeddingDropout))
    expected = _long_window_mc_loss(reference, params, source,
                                    noise.mc_sample_keys(KEY, 0, 0, k, "pass"))
    results = {}
    for masks in noise.MC_MASKS:
        ev = Evaluator(task, mesh, mc_chunk=2, mc_masks=masks,
                       mc_embedding_dropout=embedding_dropout)
        results[masks] = ev.evaluate_mc(params, source, k, KEY)["loss"]
    assert_close_f32(results["pass"], expected, err_msg="per-pass masks")
    assert abs(results["window"] - expected) > 1e-3, results


def test_out_of_memory_retry_in_smaller_chunks_keeps_the_numbers(stream):
    task, source, params, mesh = stream
    expected = Evaluator(task, mesh, mc_masks="pass").evaluate_mc(params, source, 6, KEY)
    ev = Evaluator(task, mesh, mc_masks="pass")
    run, sizes = ev._mc, []

    def small_memory(*args):
        sizes.append(args[-1])
        if args[-1] > 3:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        return run(*args)

    ev._mc = small_memory
    retried = ev.evaluate_mc(params, source, 6, KEY)
    assert sizes[0] == 6 and set(sizes[1:]) == {3}, sizes
    assert_close_f32(retried["loss"], expected["loss"])


def test_no_word_type_is_dropped_in_mc_passes_without_mc_embedding_dropout(stream):
    """With word-type dropout the only noise, MC passes without it are the deterministic
    pass (no embedding row dropped or rescaled); with it they are not."""
    task, source, params, mesh = stream
    only_embedding = dataclasses.replace(task, model=_lm(regularizers.embedding_dropout(0.5)))
    deterministic = Evaluator(only_embedding, mesh).evaluate(params, source)["loss"]
    sampled = Evaluator(only_embedding, mesh, mc_embedding_dropout=False)
    sampled.mc_draws_noise = True  # the 4 passes themselves, not the once-only shortcut
    off = sampled.evaluate_mc(params, source, 4, KEY)["loss"]
    on = Evaluator(only_embedding, mesh, mc_embedding_dropout=True).evaluate_mc(
        params, source, 4, KEY)["loss"]
    assert_close_f32(off, deterministic)
    assert abs(on - deterministic) > 1e-3, (on, deterministic)


def test_without_embedding_dropout_changes_only_the_embedding_rate():
    model = _lm(GAL)
    off = without_embedding_dropout(model)
    assert off.reg == regularizers.variational(input=0.3, recurrent=0.3, output=0.3,
                                               tie="sequence")
    # the task's own model is left as it is
    assert model.reg.find(regularizers.EmbeddingDropout).rate == 0.5
    unregularized = _lm(regularizers.NONE)
    assert without_embedding_dropout(unregularized) is unregularized


GAL_MC_PRESETS = ("variational_medium", "variational_medium_untied", "variational_large",
                  "variational_large_untied", "variational_small")


@pytest.mark.parametrize("name", GAL_MC_PRESETS)
def test_gal_presets_follow_gals_mc_protocol(name):
    config = ptb_configs.PRESETS[name]()
    assert config.train.mc_samples > 0
    assert config.train.mc_masks == "pass"
    assert config.train.mc_embedding_dropout is False
    assert config.train.carry_state and config.data.test_batch_size == 1


def test_library_default_and_choices():
    defaults = train.default_train_config()
    assert defaults.mc_masks == "window" and defaults.mc_embedding_dropout is True
    tiny = ptb_configs.PRESETS["tiny"]()
    assert tiny.train.mc_masks == "window" and tiny.train.mc_embedding_dropout is True
    tiny.train.mc_masks = "batch"
    with pytest.raises(ValueError, match="config.train.mc_masks must be one of pass, window"):
        common.check_choices(tiny)
    with pytest.raises(ValueError, match="mc_masks must be one of"):
        Evaluator(None, None, mc_masks="batch")


def test_evaluator_from_config_reads_the_mc_fields():
    source = th.LMSource(vocab=VOCAB, batch=1, steps=STEPS, num_windows=2)
    task = train.Task(model=_lm(GAL), kind="lm", train=source, carry_state=True)
    config = ptb_configs.PRESETS["variational_small"]().train
    config.mc_chunk = 3
    ev = Evaluator.from_config(task, train.make_mesh(), config)
    assert (ev.mc_chunk, ev.mc_masks, ev.mc_embedding_dropout) == (3, "pass", False)
