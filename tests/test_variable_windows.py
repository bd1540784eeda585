"""AWD-LSTM's variable-length BPTT (docs/DATA.md, docs/FIDELITY.md "AWD-LSTM"): window
lengths drawn per epoch, the streams read in those windows, epochs of varying length in
the training loop, and each step's learning rate scaled by its window's length."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
import train_helpers as th

from rnnreg_jax import data as rdata
from rnnreg_jax import train
from rnnreg_jax.data import DataError, VariableLengthStreams, drawn_windows, window_lengths
from rnnreg_jax.train import optim, steps
from rnnreg_jax.train.task import steps_in_epoch

th.enable_compilation_cache()


# ====================================================================== window lengths

@pytest.mark.parametrize("n_tokens, expected", [
    (12, [4, 4, 3]),   # starts 0, 4, 8; the last one ends at the last target (11)
    (11, [4, 4, 2]),   # start 8 < 11 - 2 still opens a window, of the 2 targets left
    (13, [4, 4, 4]),   # the windows end exactly at the last target
    (14, [4, 4, 4]),   # start 12 is not below 14 - 2: its one target is left over
])
def test_windows_start_and_end_where_the_authors_loop_does(n_tokens, expected):
    """main.py's `while i < train_data.size(0) - 1 - 1` and utils.py's
    `min(seq_len, len(source) - 1 - i)`, with every draw exactly 4 (std 0)."""
    got = window_lengths(n_tokens, 4, seed=0, epoch=0, short_prob=0.0, std=0.0, min_len=1)
    assert got.tolist() == expected
    starts, drawn, lengths = drawn_windows(n_tokens, 4, seed=0, epoch=0, short_prob=0.0,
                                           std=0.0, min_len=1)
    assert lengths.tolist() == expected and drawn.tolist() == [4] * len(expected)
    assert starts.tolist() == [0, 4, 8]


def test_only_the_last_window_is_cut_shorter_than_drawn():
    for epoch in range(20):
        starts, drawn, lengths = drawn_windows(997, 35, seed=3, epoch=epoch)
        np.testing.assert_array_equal(lengths[:-1], drawn[:-1])
        np.testing.assert_array_equal(starts[1:], np.cumsum(lengths)[:-1])
        assert lengths[-1] == min(drawn[-1], 996 - starts[-1])


def test_short_windows_are_half_the_base_length_truncated_and_at_least_min_len():
    half = window_lengths(200, 9, 0, 0, short_prob=1.0, std=0.0, min_len=1)
    assert set(half[:-1]) == {4}  # int(4.5)
    assert set(window_lengths(200, 9, 0, 0, short_prob=1.0, std=0.0, min_len=6)[:-1]) == {6}


def test_lengths_follow_the_authors_distribution():
    """p(bptt / 2) = 0.05, each length N(base, 5) truncated, at least 5; 200 epochs of
    a 2,000-token stream hold about 5,800 windows. The bounds are 5 standard errors
    wide (the draws are numpy's legacy stream, the same on every machine)."""
    lengths = np.concatenate([window_lengths(2000, 70, 3, e)[:-1] for e in range(200)])
    n = len(lengths)
    short = lengths < 53  # the two modes are 7 standard deviations apart
    p = short.mean()
    assert abs(p - 0.05) < 5 * np.sqrt(0.05 * 0.95 / n), p
    full = lengths[~short]
    # int() truncates toward zero: the mean of int(N(70, 5)) is 69.5
    assert abs(full.mean() - 69.5) < 5 * 5 / np.sqrt(len(full)), full.mean()
    assert 4.5 < full.std() < 5.5
    assert abs(lengths[short].mean() - 34.5) < 5 * 5 / np.sqrt(short.sum())
    assert lengths.min() >= 5


def test_lengths_are_a_pure_function_of_seed_and_epoch():
    a = window_lengths(5000, 70, seed=1, epoch=4)
    np.testing.assert_array_equal(a, window_lengths(5000, 70, seed=1, epoch=4))
    assert not np.array_equal(a, window_lengths(5000, 70, seed=1, epoch=5))
    assert not np.array_equal(a, window_lengths(5000, 70, seed=2, epoch=4))
    for epoch in range(20):  # every target but at most one is trained on
        assert window_lengths(5000, 70, 1, epoch).sum() in (4998, 4999)


@pytest.mark.parametrize("kwargs, message", [
    (dict(bptt=0), "bptt must be an integer >= 1, got 0."),
    (dict(bptt=7.5), "bptt must be an integer >= 1, got 7.5."),
    (dict(short_prob=1.5), "short_prob must be a probability in [0, 1], got 1.5."),
    (dict(short_prob="0.05"), "short_prob must be a probability in [0, 1], got '0.05'."),
    (dict(std=-1.0), "std must be a finite number >= 0, got -1.0."),
    (dict(std=float("inf")), "std must be a finite number >= 0, got inf."),
    (dict(min_len=0), "min_len must be an integer >= 1, got 0."),
    (dict(min_len=True), "min_len must be an integer >= 1, got True."),
])
def test_bad_settings_are_one_sentence_errors(kwargs, message):
    args = dict(n_tokens=100, bptt=10, seed=0, epoch=0) | kwargs
    with pytest.raises(ValueError) as err:
        window_lengths(**args)
    assert str(err.value) == message


def test_a_stream_too_short_for_a_window_is_a_data_error():
    with pytest.raises(DataError, match="use a smaller batch size"):
        VariableLengthStreams(np.arange(10), batch_size=4, bptt=5)


# ====================================================================== the batch source

def _tokens(n=4 * 300, seed=0):
    return np.random.default_rng(seed).integers(0, 50, n).astype(np.int32)


def test_windows_tile_the_streams_without_gap_or_overlap():
    tokens = _tokens()
    source = VariableLengthStreams(tokens, 4, 20, seed=0, std=4.0, min_len=3)
    streams = tokens.reshape(4, -1)
    for epoch in range(3):
        batches = list(source.iterate(epoch))
        assert len(batches) == source.steps_in_epoch(epoch)
        inputs = np.concatenate([b["inputs"] for b in batches], axis=1)
        targets = np.concatenate([b["targets"] for b in batches], axis=1)
        n = inputs.shape[1]
        assert n >= streams.shape[1] - 2
        np.testing.assert_array_equal(inputs, streams[:, :n])
        np.testing.assert_array_equal(targets, streams[:, 1:n + 1])
        lengths = [b["inputs"].shape[1] for b in batches]
        np.testing.assert_array_equal(lengths, window_lengths(300, 20, 0, epoch, std=4.0,
                                                              min_len=3))
        assert all(b["inputs"].dtype == np.int32 for b in batches)
        _, drawn, _ = drawn_windows(300, 20, 0, epoch, std=4.0, min_len=3)
        for b, d in zip(batches, drawn, strict=True):
            np.testing.assert_array_equal(b["drawn_length"], np.full(4, d, np.int32))
    counts = {source.steps_in_epoch(e) for e in range(10)}
    assert len(counts) > 1  # epochs differ in length
    assert source.steps_per_epoch == source.num_batches == source.steps_in_epoch(0)
    assert steps_in_epoch(source, 3) == source.steps_in_epoch(3)


def test_hosts_read_their_rows_of_the_same_windows_and_resume_mid_epoch():
    tokens = _tokens()
    whole = VariableLengthStreams(tokens, 4, 20, seed=5)
    hosts = [VariableLengthStreams(tokens, 4, 20, seed=5, process_index=i, process_count=2)
             for i in range(2)]
    for index in (0, 3, whole.steps_in_epoch(2) - 1):
        parts = [h.get_batch(2, index)["inputs"] for h in hosts]
        np.testing.assert_array_equal(np.concatenate(parts), whole.get_batch(2, index)["inputs"])
    tail = list(whole.iterate(1, start_batch=4))
    for got, index in zip(tail, range(4, whole.steps_in_epoch(1)), strict=True):
        np.testing.assert_array_equal(got["targets"], whole.get_batch(1, index)["targets"])
    end = whole.steps_in_epoch(0)
    with pytest.raises(IndexError, match=re.escape(f"batch {end} not in [0, {end}) of epoch 0")):
        whole.get_batch(0, end)


def test_the_corpus_gives_variable_windows_and_rejects_their_settings_elsewhere():
    corpus = rdata.TextCorpus(vocab=tuple("abcdefgh"), train=_tokens(800) % 8,
                              valid=_tokens(100) % 8, test=_tokens(100) % 8)
    source = corpus.batches("train", 4, 10, mode="variable", seed=2,
                            window_options={"std": 0.0, "short_prob": 0.0})
    assert isinstance(source, VariableLengthStreams)
    assert {b["inputs"].shape[1] for b in list(source.iterate(0))[:-1]} == {10}
    with pytest.raises(ValueError, match="window_options applies to mode 'variable'"):
        corpus.batches("train", 4, 10, mode="contiguous", window_options={"std": 1.0})


# ====================================================================== learning rate

def _lm_step(reference, optimizer="sgd", drawn_length=None):
    source = th.LMSource(batch=4, steps=6, num_windows=1)
    task = train.Task(model=th.tiny_lm(hidden=8), kind="lm", train=source, carry_state=True)
    config = train.default_train_config()
    config.optimizer, config.learning_rate, config.clip_norm = optimizer, 0.5, 0.0
    config.lr_window_reference = reference
    mesh = train.make_mesh()
    tx = optim.make_optimizer(config)
    batch = next(iter(source.iterate(0)))
    if drawn_length is not None:  # an epoch's last window: drawn longer than it was cut
        batch = dict(batch, drawn_length=np.full(4, drawn_length, np.int32))
    state = steps.init_state(task, config, mesh, tx, batch)
    before = jax.device_get(state.params)
    step = steps.make_train_step(task, config, tx, mesh, steps.state_shardings(state, mesh))
    new, _ = step(state, train.global_batch(mesh, batch))
    delta = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b),
                         jax.device_get(new.params), before)
    return delta, float(new.learning_rate)


@pytest.mark.parametrize("optimizer", ["sgd", "ntasgd"])
def test_the_step_scales_its_learning_rate_by_its_window_length(optimizer):
    """AWD-LSTM's `lr * seq_len / bptt` (main.py lines 134-135): a 6-step window against
    a reference of 12 takes half the step; against 6, the unscaled one. The state keeps
    the unscaled rate (restored after the step, line 159)."""
    plain, lr = _lm_step(0, optimizer)
    half, lr_half = _lm_step(12, optimizer)
    same, _ = _lm_step(6, optimizer)
    assert lr == lr_half == 0.5
    for p, h, s in zip(jax.tree.leaves(plain), jax.tree.leaves(half), jax.tree.leaves(same),
                       strict=True):
        assert np.abs(p).max() > 0
        np.testing.assert_allclose(h, 0.5 * p, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(s, p)


def test_a_cut_window_takes_the_step_of_its_drawn_length():
    """main.py line 135 scales by `seq_len` as drawn; utils.py line 22 then cuts the last
    window at the stream's end: a 6-step window drawn 12 long takes, against a reference
    of 12, the unscaled step, not half of it."""
    plain, _ = _lm_step(0)
    cut, _ = _lm_step(12, drawn_length=12)
    for p, c in zip(jax.tree.leaves(plain), jax.tree.leaves(cut), strict=True):
        np.testing.assert_array_equal(c, p)


def test_a_bad_window_reference_is_a_one_sentence_error():
    with pytest.raises(ValueError, match=r"^config.lr_window_reference must be a finite "
                                         r"number >= 0, got -70.$"):
        steps.window_lr_scale(-70)


# ====================================================================== the loop

def _variable_task():
    tokens = th.LMSource(batch=4, steps=1, num_windows=119).data.reshape(-1)
    source = VariableLengthStreams(tokens, 4, 8, seed=1, std=3.0, min_len=2)
    valid = th.LMSource(batch=4, steps=8, num_windows=2, seed=1)
    return train.Task(model=th.tiny_lm(hidden=8), kind="lm", train=source,
                      evals={"valid": valid}, carry_state=True), source


def _config(**kw):
    config = train.default_train_config()
    config.num_epochs, config.learning_rate, config.lr_window_reference = 3, 0.5, 8
    config.log_every_steps, config.tensorboard = 0, False
    for k, v in kw.items():
        config[k] = v
    return config


@pytest.mark.slow
def test_epochs_of_different_lengths_train_and_resume_to_the_same_state(tmp_path):
    """Each epoch runs its own number of windows; a run stopped mid-epoch and resumed
    ends where an uninterrupted one does."""
    task, source = _variable_task()
    counts = [source.steps_in_epoch(e) for e in range(3)]
    assert len(set(counts)) > 1, counts
    whole = train.train_and_evaluate(task, _config(), str(tmp_path / "whole"))
    assert whole["step"] == sum(counts) and whole["epoch"] == 3
    stop_at = counts[0] + 3  # inside epoch 2
    train.train_and_evaluate(task, _config(max_steps=stop_at), str(tmp_path / "split"))
    resumed = train.train_and_evaluate(task, _config(), str(tmp_path / "split"))
    assert resumed["step"] == sum(counts)
    assert resumed["valid/loss"] == whole["valid/loss"]  # the same computation: bitwise


# ====================================================================== bucketed windows

def test_buckets_pad_each_window_and_mark_its_real_steps():
    tokens = _tokens()
    exact = VariableLengthStreams(tokens, 4, 20, seed=0, std=4.0, min_len=3)
    padded = VariableLengthStreams(tokens, 4, 20, seed=0, std=4.0, min_len=3, bucket=8)
    shapes = set()
    for epoch in range(5):
        for a, b in zip(exact.iterate(epoch), padded.iterate(epoch), strict=True):
            t, t_pad = a["inputs"].shape[1], b["inputs"].shape[1]
            shapes.add(t_pad)
            assert t_pad % 8 == 0 and t <= t_pad < t + 8
            for key in ("inputs", "targets"):
                np.testing.assert_array_equal(b[key][:, :t], a[key])
                assert not b[key][:, t:].any()
            real = np.zeros((4, t_pad), np.float32)
            real[:, :t] = 1.0
            np.testing.assert_array_equal(b["weights"], real)
            assert b["weights"].dtype == np.float32
            np.testing.assert_array_equal(b["lengths"], np.full(4, t, np.int32))
    assert shapes <= {8, 16, 24, 32}
    with pytest.raises(ValueError, match=r"^bucket must be an integer >= 1, got 0.$"):
        VariableLengthStreams(tokens, 4, 20, bucket=0)


def _awd_step_runs(bucket):
    """Two steps of a tiny LM under AWD-LSTM's regularizers (every mask tied to the
    window, so padding draws the same ones) with the state carried: the params, carry
    and metrics after each."""
    import rnnreg_jax as rj

    tokens = th.LMSource(batch=4, steps=1, num_windows=60).data.reshape(-1)
    source = VariableLengthStreams(tokens, 4, 11, seed=0, std=0.0, short_prob=0.0,
                                   min_len=2, bucket=bucket)
    reg = rj.awd_lstm(embedding_tie="batch")
    task = train.Task(model=th.tiny_lm(hidden=8, reg=reg, layers=2), kind="lm",
                      train=source, carry_state=True)
    config = train.default_train_config()
    config.learning_rate, config.lr_window_reference = 0.5, 7
    mesh = train.make_mesh()
    tx = optim.make_optimizer(config)
    batches = list(source.iterate(0))[:2]
    state = steps.init_state(task, config, mesh, tx, batches[0])
    step = steps.make_train_step(task, config, tx, mesh, steps.state_shardings(state, mesh))
    out = []
    for batch in batches:
        state, metrics = step(state, train.global_batch(mesh, batch))
        out.append(jax.device_get((state.params, state.carry, metrics)))
    return out, [b["inputs"].shape[1] for b in batches]


def test_a_bucketed_window_trains_as_the_exact_one():
    """Padding 11-step windows to 16: the loss and AR/TAR over the real steps, the carry
    after the last real one, the learning-rate factor from `lengths` (11 / 7): the same
    step up to float rounding."""
    exact, exact_lengths = _awd_step_runs(1)
    padded, padded_lengths = _awd_step_runs(8)
    assert exact_lengths == [11, 11] and padded_lengths == [16, 16]
    for (p1, c1, m1), (p2, c2, m2) in zip(exact, padded, strict=True):
        for a, b in zip(jax.tree.leaves((p1, c1)), jax.tree.leaves((p2, c2)), strict=True):
            np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6)
        assert float(m2["count"]) == float(m1["count"]) == 44
        for key in ("loss_sum", "penalty", "objective", "grad_norm"):
            np.testing.assert_allclose(float(m2[key]), float(m1[key]), rtol=2e-5, err_msg=key)
