"""rnnreg_jax.generate (greedy decoding and sampling) and the experiments.generate binary."""

from __future__ import annotations

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnreg_jax as rj
from experiments import generate as generate_binary
from experiments.configs import sentiment as sentiment_configs
from rnnreg_jax.data import TextCorpus
from rnnreg_jax.generate import generate
from rnnreg_jax.models import LanguageModel
from tests import data_fixtures as fx
from tests.numerics import F64_RTOL, as_f64, x64
from tests.train_helpers import run_tiny_ptb

V = 7
PROMPT = np.array([[1, 2, 3], [4, 5, 6], [0, 0, 1]], np.int32)  # [B=3, P=3]


def _model(**kw) -> LanguageModel:
    # init_scale 2: logits far from uniform (a tanh RNN's greedy paths then wander over
    # the vocabulary; an LSTM's settle on one token within a few steps at random init).
    # Dropout in the spec: generation must run with it off.
    return LanguageModel(vocab_size=V, hidden_sizes=(8, 8), embed_size=6, init_scale=2.0,
                         reg=rj.variational(input=0.3, recurrent=0.3, output=0.3,
                                            embedding=0.2), **kw)


def _variables(model):
    return model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))


def _apply(model, variables, ids, carry):
    return model.apply(variables, ids, carry, deterministic=True)


def _greedy_step_by_step(model, variables, prompt, num_tokens):
    """Reference: every token, prompt included, fed as its own [B, 1] window (jitted:
    one compilation for every window after the first)."""
    apply = jax.jit(functools.partial(_apply, model))
    logits, carry = apply(variables, prompt[:, :1], None)
    for t in range(1, prompt.shape[1]):
        logits, carry = apply(variables, prompt[:, t:t + 1], carry)
    out = []
    for _ in range(num_tokens):
        token = jnp.argmax(logits[:, -1], axis=-1)
        out.append(token)
        logits, carry = apply(variables, token[:, None], carry)
    return np.stack(out, axis=1), carry


def _assert_trees_close(got, want):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=F64_RTOL, atol=1e-13)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_greedy_equals_an_argmax_loop_over_one_token_windows(cell):
    model = _model(cell=cell)
    with x64():  # float64: no near-tie of the logits can flip an argmax by rounding
        variables = as_f64(_variables(model))
        prompt = jnp.asarray(PROMPT)
        want, want_carry = _greedy_step_by_step(model, variables, prompt, 6)
        got, carry = generate(model, variables, None, 6, prompt=prompt, temperature=0)
        assert got.dtype == jnp.int32 and got.shape == (3, 6)
        np.testing.assert_array_equal(np.asarray(got), want)
        # greedy decoding draws nothing: any key, even a non-key, is ignored (0 failed)
        for key in (jax.random.key(5), 0):
            np.testing.assert_array_equal(
                generate(model, variables, key, 6, prompt=prompt, temperature=0)[0], want)
        _assert_trees_close(carry, want_carry)
        assert len(np.unique(want)) > (4 if cell == "rnn" else 1)  # not a constant token


def test_an_apply_function_jit_and_a_start_token_give_the_same_greedy_text():
    model = _model(cell="rnn")
    with x64():
        variables = as_f64(_variables(model))
        prompt = jnp.asarray(PROMPT)
        want, _ = generate(model, variables, None, 6, prompt=prompt, temperature=0)
        by_fn, _ = generate(functools.partial(_apply, model), variables, None, 6,
                            prompt=prompt, temperature=0)
        np.testing.assert_array_equal(np.asarray(by_fn), np.asarray(want))
        jitted = jax.jit(functools.partial(generate, model, num_tokens=6, temperature=0))
        np.testing.assert_array_equal(np.asarray(jitted(variables, None, prompt=prompt)[0]),
                                      np.asarray(want))
        # Without a prompt: the start token is a one-token prompt.
        alone, _ = generate(model, variables, None, 6, start_id=2, batch_size=3, temperature=0)
        start = jnp.full((3, 1), 2, jnp.int32)
        np.testing.assert_array_equal(np.asarray(alone),
                                      np.asarray(generate(model, variables, None, 6,
                                                          prompt=start, temperature=0)[0]))


def test_an_nnx_model_generates_what_its_linen_twin_does():
    from flax import nnx

    from rnnreg_jax import nnx as rnx

    model = _model(cell="rnn")
    with x64():
        variables = as_f64(_variables(model))
        twin = rnx.LanguageModel.from_linen(model, variables, rngs=nnx.Rngs(dropout=1))
        prompt = jnp.asarray(PROMPT)
        key = jax.random.key(3)
        for temperature in (0.0, 1.0):
            want, want_carry = generate(model, variables, key, 6, prompt=prompt,
                                        temperature=temperature)
            got, carry = generate(twin, None, key, 6, prompt=prompt, temperature=temperature)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
            _assert_trees_close(carry, want_carry)
        assert not twin.deterministic  # left in its training mode
        with pytest.raises(ValueError, match="holds its own weights; pass variables=None"):
            generate(twin, variables, None, 2, prompt=prompt, temperature=0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_path_is_what_one_window_over_prompt_and_text_reads(temperature):
    """The model over prompt + generated ids in one window: the carry generate returns,
    and at temperature 0 its argmax at each position is the next generated token."""
    model = _model()
    with x64():
        variables = as_f64(_variables(model))
        prompt = jnp.asarray(PROMPT)
        got, carry = generate(model, variables, jax.random.key(3), 6, prompt=prompt,
                              temperature=temperature)
        logits, whole_carry = _apply(model, variables, jnp.concatenate([prompt, got], 1), None)
        _assert_trees_close(carry, whole_carry)
        if temperature == 0:
            np.testing.assert_array_equal(np.asarray(jnp.argmax(logits[:, 2:-1], -1)),
                                          np.asarray(got))
        # A carry passed in continues a text: prompt a then b reads as the prompt a + b.
        _, after_a = _apply(model, variables, prompt[:, :2], None)
        split, _ = generate(model, variables, jax.random.key(3), 6, prompt=prompt[:, 2:],
                            carry=after_a, temperature=temperature)
        np.testing.assert_array_equal(np.asarray(split), np.asarray(got))


def test_sampling_is_reproducible_and_depends_on_the_key():
    model = _model()
    variables = _variables(model)
    prompt = PROMPT[[0, 0, 1]]  # rows 0 and 1 alike
    draw = functools.partial(generate, model, variables, num_tokens=10, prompt=prompt)
    first = np.asarray(draw(jax.random.key(1))[0])
    np.testing.assert_array_equal(first, np.asarray(draw(jax.random.key(1))[0]))
    assert (first != np.asarray(draw(jax.random.key(2))[0])).any()
    assert (first[0] != first[1]).any()  # rows draw independently
    # Step i draws with fold_in(key, i): a shorter text is a prefix of a longer one.
    short, _ = generate(model, variables, jax.random.key(1), 4, prompt=prompt)
    np.testing.assert_array_equal(np.asarray(short), first[:, :4])


def _frequencies_fit(counts: np.ndarray, probs: np.ndarray, n: int) -> bool:
    """Every token's frequency within 6 standard deviations of its probability (plus one
    count): a correct sampler fails this for some token with probability < 1e-7."""
    bound = 6 * np.sqrt(probs * (1 - probs) / n) + 1 / n
    return bool((np.abs(counts / n - probs) <= bound).all())


@pytest.mark.parametrize("temperature,top_k", [(0.5, None), (1.0, None), (2.0, None),
                                               (1.0, 3)])
def test_one_step_frequencies_follow_the_tempered_softmax(temperature, top_k):
    model = _model()
    variables = _variables(model)
    # A spread-out softmax bias: the temperatures' distributions differ clearly.
    params = dict(variables["params"])
    params["softmax"] = dict(params["softmax"], bias=jnp.linspace(-2.0, 2.0, V))
    variables = {"params": params}
    n = 4096
    prompt = np.tile(PROMPT[:1], (n, 1))  # n independent draws from one distribution
    ids, _ = generate(model, variables, jax.random.key(7), 1, prompt=prompt,
                      temperature=temperature, top_k=top_k)
    counts = np.bincount(np.asarray(ids[:, 0]), minlength=V)
    logits = np.asarray(_apply(model, variables, PROMPT[:1], None)[0][0, -1], np.float64)

    def tempered(temperature, top_k):
        scaled = logits / temperature
        if top_k is not None:  # the k largest keep their odds, the rest never come
            scaled = np.where(scaled >= np.sort(scaled)[-top_k], scaled, -np.inf)
        e = np.exp(scaled - scaled.max())
        return e / e.sum()

    probs = tempered(temperature, top_k)
    assert _frequencies_fit(counts, probs, n), (counts / n, probs)
    if top_k is not None:
        assert counts[np.argsort(logits)[:-top_k]].sum() == 0
    # The bound has power: another temperature (or no top-k cut) would fail it.
    other = tempered(temperature * 1.5, None) if top_k is None else tempered(temperature, None)
    assert not _frequencies_fit(counts, other, n)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_text_drawn_in_chunks_with_progress_is_the_text_of_one_scan(temperature):
    model = _model()
    with x64():
        variables = as_f64(_variables(model))
        prompt = jnp.asarray(PROMPT)
        key = jax.random.key(4)
        want, want_carry = generate(model, variables, key, 7, prompt=prompt,
                                    temperature=temperature)
        heard = []
        got, carry = generate(model, variables, key, 7, prompt=prompt, temperature=temperature,
                              on_progress=lambda done, total: heard.append((done, total)),
                              progress_every=3)
        assert heard == [(3, 7), (6, 7), (7, 7)]
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        _assert_trees_close(carry, want_carry)
        assert len(np.unique(np.asarray(want))) > 1  # chunks of a constant text prove little


def test_progress_under_jit_is_refused_in_one_sentence():
    model = _model()
    variables = _variables(model)
    jitted = jax.jit(functools.partial(generate, model, num_tokens=4, temperature=0,
                                       on_progress=print))
    with pytest.raises(ValueError) as err:
        jitted(variables, None, prompt=PROMPT)
    # (JAX appends a note on its filtered frames below the sentence)
    assert str(err.value).splitlines()[0] == (
        "on_progress reports chunks as they are computed, which under jax.jit happens only "
        "when the whole call returns; call generate outside jit with it.")


def _bad_calls():
    model = _model()
    ok = dict(prompt=PROMPT)
    return [
        (dict(num_tokens=0), "num_tokens must be an integer >= 1, got 0."),
        (dict(num_tokens=2.5), "num_tokens must be an integer >= 1, got 2.5."),
        (dict(num_tokens=True), "num_tokens must be an integer >= 1, got True."),
        (dict(temperature=-0.5), "temperature must be finite and >= 0, got -0.5."),
        (dict(temperature=math.nan), "temperature must be finite and >= 0, got nan."),
        (dict(temperature=math.inf), "temperature must be finite and >= 0, got inf."),
        (dict(temperature="hot"), "temperature must be a concrete number"),
        (dict(prompt=PROMPT[0]), "The prompt must be int ids [B, P] with B, P >= 1, got "
                                 "shape (3,)."),
        (dict(prompt=PROMPT[:, :0]), "The prompt must be int ids [B, P] with B, P >= 1"),
        (dict(prompt=PROMPT[None]), "The prompt must be int ids [B, P]"),
        (dict(prompt=PROMPT.astype(np.float32)), "The prompt must hold integer token ids, "
                                                 "got dtype float32."),
        (dict(prompt=PROMPT + 4), f"Token ids of the prompt must lie in [0, vocab_size) = "
                                  f"[0, {V}), got ids from {PROMPT.min() + 4} to "
                                  f"{PROMPT.max() + 4}."),
        (dict(prompt=PROMPT - 1), "Token ids of the prompt must lie in [0, vocab_size) = "
                                  f"[0, {V}), got ids from -1 to {PROMPT.max() - 1}."),
        (dict(top_k=0), "top_k must be an integer >= 1, got 0."),
        (dict(top_k=V + 1), f"top_k must be in [1, vocab_size] = [1, {V}], got {V + 1}."),
        # greedy decoding ignored top_k without a word before
        (dict(top_k=2, temperature=0), "top_k applies to sampling only, and temperature=0 "
                                       "decodes greedily; pass top_k=None or a temperature "
                                       "above 0, got top_k=2."),
        (dict(prompt=None), "Pass a prompt, or a start_id to start from without one."),
        (dict(start_id=1), "Pass either a prompt or a start_id, not both"),
        (dict(prompt=None, start_id=V), "Token ids of start_id must lie in [0, vocab_size)"),
        (dict(prompt=None, start_id=1.0), "start_id must be an integer token id, got 1.0."),
        (dict(prompt=None, start_id=1, batch_size=0), "batch_size must be an integer >= 1"),
        (dict(batch_size=2), "batch_size 2 differs from the prompt's 3 rows"),
        (dict(key=None), "Sampling at a temperature above 0 needs a PRNG key"),
        (dict(model=_model(cell="lstm_bn")), "generate feeds one-token windows, in which a "
                                           "cell with per-step statistics (lstm_bn)"),
        (dict(model=3), "model must be a LanguageModel (linen or NNX) or an apply "
                        "function, got int."),
        # another module: Flax's CallCompactUnboundModuleError before
        (dict(model=rj.models.SequenceModel(3, 5, vocab_size=V)),
         "model must be a LanguageModel (linen or NNX) or an apply function, got "
         "SequenceModel."),
        (dict(variables=None), "variables must be the LanguageModel's ({'params': ...}), "
                               "got NoneType."),  # a TypeError inside Flax before
        # the params alone: Flax's ScopeCollectionNotFound before
        (dict(variables=_variables(model)["params"]),
         "variables must be the LanguageModel's ({'params': ...}), got a dict with keys "
         "['embed', 'rnn', 'softmax'] and no 'params' (wrap the params alone as "
         "{'params': params})."),
        (dict(key=0), "key must be one PRNG key (jax.random.key(seed), or "
                      "jax.random.PRNGKey(seed)), got 0."),
        (dict(key=jax.random.split(jax.random.key(0))), "key must be one PRNG key"),
        (dict(model=lambda v, ids, c: (jnp.zeros(ids.shape), c)),
         "The model must return logits [B, T, V]"),
        (dict(on_progress=3), "on_progress must be a function (done, total), got int."),
        (dict(on_progress=print, progress_every=0),
         "progress_every must be an integer >= 1, got 0."),
    ], model, ok


@pytest.mark.parametrize("index", range(len(_bad_calls()[0])))
def test_bad_arguments_are_one_sentence_errors(index):
    cases, model, ok = _bad_calls()
    change, message = cases[index]
    args = dict(model=model, variables=_variables(model), key=jax.random.key(0), num_tokens=4,
                **ok)
    args.update(change)
    with pytest.raises(ValueError) as err:
        generate(**args)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert str(err.value).endswith(".")


# --- prompts and texts in the corpus's conventions ---------------------------------------

def _corpus(vocab, name):
    empty = np.zeros(0, np.int32)
    return TextCorpus(vocab=tuple(vocab), train=empty, valid=empty, test=empty, name=name)


def test_word_prompts_read_line_breaks_as_eos_and_unknown_words_as_unk():
    corpus = _corpus(["the", "<eos>", "cat", "<unk>", "sat"], "ptb_word")
    ids, unknown = generate_binary.encode_prompt(corpus, "the  Cat sat\nthe cat\n")
    assert corpus.decode(ids) == ["the", "<unk>", "sat", "<eos>", "the", "cat", "<eos>"]
    assert unknown == ["Cat"]
    assert generate_binary.decode(corpus, ids) == "the <unk> sat\nthe cat\n"
    assert generate_binary.encode_prompt(corpus, "") == ([], [])
    without_unk = _corpus(["the", "<eos>", "cat"], "ptb_word")
    with pytest.raises(ValueError, match=r"^The word 'dog' of the prompt is not in the "
                                         r"ptb_word vocabulary\.$"):
        generate_binary.encode_prompt(without_unk, "the dog")


def test_char_prompts_spell_spaces_as_underscores():
    corpus = _corpus(["t", "h", "e", "_", "c", "a", "<eol>"], "ptb_char")
    ids, unknown = generate_binary.encode_prompt(corpus, "the cat\nache")
    assert "".join(corpus.decode(ids)) == "the_cat<eol>ache" and unknown == []
    assert generate_binary.decode(corpus, ids) == "the cat\nache"
    with pytest.raises(ValueError, match=r"^The character 'T' of the prompt is not in the "
                                         r"ptb_char vocabulary\.$"):
        generate_binary.encode_prompt(corpus, "The")


REAL_DATA = pytest.mark.skipif(not os.environ.get("RNNREG_DATA_DIR"),
                               reason="RNNREG_DATA_DIR not set")


@pytest.mark.realdata
@REAL_DATA
def test_prompts_in_the_real_ptb_vocabularies():
    from rnnreg_jax import data

    words = data.load_ptb_word()
    ids, unknown = generate_binary.encode_prompt(words, "the company said\nmr. Smith")
    assert unknown == ["Smith"] and len(ids) == 6  # PTB is lower case
    assert generate_binary.decode(words, ids) == "the company said\nmr. <unk>"
    assert words.decode(ids[3:4]) == ["<eos>"]
    chars = data.load_ptb_char()
    ids, _ = generate_binary.encode_prompt(chars, "the company said N")
    assert len(ids) == 18 and generate_binary.decode(chars, ids) == "the company said N"


# --- the binary on a trained workdir -----------------------------------------------------

@pytest.fixture(scope="module")
def ptb_run(tmp_path_factory):
    """The ptb binary's `tiny` preset at toy size, trained one step: (workdir, data dir)."""
    root = tmp_path_factory.mktemp("generate")
    data_dir, workdir = root / "data", root / "wd"
    fx.write_repeated_ptb_word(data_dir)
    run_tiny_ptb(workdir, data_dir, hidden_sizes=(8, 8), max_steps=1)
    return str(workdir), str(data_dir)


def _samples(output: str) -> list[list[str]]:
    """The printed samples as tokens, line breaks as <eos>."""
    samples: list[list[str]] = []
    first = False
    for line in output.splitlines()[1:]:
        if line.startswith("== sample "):
            samples.append([])
            first = True
        else:
            samples[-1] += ["<eos>"] * (not first) + line.split()
            first = False
    return samples


def test_the_binary_prints_the_prompt_and_its_continuation(ptb_run, capsys):
    workdir, data_dir = ptb_run
    vocab = {f"w{i}" for i in range(20)} | {"<eos>"}
    args = [f"--workdir={workdir}", f"--data_dir={data_dir}", "--prompt=w3 w4", "--length=9",
            "--num_samples=2", "--seed=5"]
    assert generate_binary.main(args) == 0
    shown = capsys.readouterr().out
    assert shown.splitlines()[0] == (f"{workdir} (latest checkpoint: epoch 0, step 1); "
                                     "temperature 1, seed 5")
    samples = _samples(shown)
    assert len(samples) == 2
    for tokens in samples:
        assert tokens[:2] == ["w3", "w4"] and len(tokens) == 2 + 9
        assert set(tokens) <= vocab
    assert generate_binary.main(args) == 0  # the same seed, the same texts
    assert capsys.readouterr().out == shown
    assert generate_binary.main([*args[:-1], "--seed=6"]) == 0
    assert _samples(capsys.readouterr().out) != samples
    # Greedy: every sample the same text; without a prompt, after <eos> (not printed).
    assert generate_binary.main([f"--workdir={workdir}", f"--data_dir={data_dir}",
                                 "--length=4", "--temperature=0", "--num_samples=2"]) == 0
    greedy = _samples(capsys.readouterr().out)
    assert greedy[0] == greedy[1] and len(greedy[0]) == 4
    # top_k is named in the header; at temperature 0 it changes nothing, and says so.
    assert generate_binary.main([f"--workdir={workdir}", f"--data_dir={data_dir}",
                                 "--length=4", "--temperature=0", "--num_samples=2",
                                 "--top_k=3"]) == 0
    shown = capsys.readouterr()
    assert shown.out.splitlines()[0].endswith("temperature 0, top_k 3, seed 0")
    assert _samples(shown.out) == greedy
    assert shown.err.strip() == ("note: --top_k does nothing at --temperature=0, which takes "
                                 "the most likely token at every step.")


def test_the_binary_reports_the_progress_of_a_long_text(ptb_run, capsys, monkeypatch):
    workdir, data_dir = ptb_run
    args = [f"--workdir={workdir}", f"--data_dir={data_dir}", "--length=9", "--seed=2"]
    assert generate_binary.main(args) == 0
    whole = capsys.readouterr()
    assert "generated" not in whole.err  # a short text says nothing
    monkeypatch.setattr(generate_binary, "PROGRESS_EVERY", 4)
    assert generate_binary.main(args) == 0
    chunked = capsys.readouterr()
    assert chunked.out == whole.out  # the same text, drawn in chunks
    lines = chunked.err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "generated 4/9 tokens", "generated 8/9 tokens", "generated 9/9 tokens"]
    assert all(line.endswith(" tokens/s)") for line in lines)


@pytest.mark.parametrize("extra,message", [
    (["--prompt=w1 zebra"], "The word 'zebra' of the prompt is not in the ptb_word "
                            "vocabulary."),
    (["--length=0"], "--length must be at least 1, got 0."),
    (["--temperature=-1"], "--temperature must be a finite number >= 0, got -1.0."),
    (["--num_samples=0"], "--num_samples must be at least 1, got 0."),
    (["--checkpoint=best"], "No checkpoint under"),
    # an OverflowError traceback past int64; seeds 2**32 apart drew the same text
    (["--seed=99999999999999999999"], "--seed must be a whole number in [0, 2**32), got "
                                      "99999999999999999999."),
    (["--seed=4294967296"], "--seed must be a whole number in [0, 2**32), got 4294967296."),
    (["--seed=-1"], "--seed must be a whole number in [0, 2**32), got -1."),
])
def test_the_binary_refuses_bad_requests_in_one_line(ptb_run, capsys, extra, message):
    workdir, data_dir = ptb_run
    assert generate_binary.main([f"--workdir={workdir}", f"--data_dir={data_dir}",
                                 *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err


def test_the_binary_refuses_a_run_that_is_no_language_model(tmp_path, capsys):
    config = json.loads(json.dumps(sentiment_configs.tiny().to_dict(), default=str))
    (tmp_path / "config.json").write_text(json.dumps({"config": config}))
    assert generate_binary.main([f"--workdir={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path} holds a cornell run; text comes from language models "
        "(ptb_word, ptb_char).")
