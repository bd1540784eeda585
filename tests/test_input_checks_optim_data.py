"""Bad arguments to the optimizer, the LR rules, the batch sources and the data loaders are
one-sentence ValueErrors naming the argument, not silent defaults or numpy's errors."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from rnnreg_jax import train
from rnnreg_jax.data import (
    ArrayBatches,
    ContiguousStreams,
    ShuffledWindows,
    epoch_permutation,
    eval_stream,
    load_imdb,
    load_mnist,
    load_ptb_word,
)
from rnnreg_jax.train import optim

try:
    from tests import data_fixtures as fx
except ImportError:
    import data_fixtures as fx

ONE = {"process_index": 0, "process_count": 1}


def _raises(call, message: str, error: type[Exception] = ValueError) -> None:
    with pytest.raises(error) as err:
        call()
    assert message in str(err.value)
    assert str(err.value).count("\n") == 0


# --- 1. unknown training settings, a bool for a number --------------------------------------

WHOLE_CONFIG = ml_collections.ConfigDict({"train": {"optimizer": "adam"}})


RULE_CALLS = [optim.lr_rule, lambda c: train.next_learning_rate(c, 1, 1.0, True)]


@pytest.mark.parametrize("call", [optim.make_optimizer, *RULE_CALLS],
                         ids=["make_optimizer", "lr_rule", "next_learning_rate"])
@pytest.mark.parametrize("config, message", [
    ({"learnin_rate": 0.1},
     "Unknown training setting 'learnin_rate'; did you mean 'learning_rate'?"),
    (WHOLE_CONFIG, "Unknown training setting 'train'; pass the training settings "
                   "(config.train), not the whole config."),
], ids=["misspelt", "whole-config"])
def test_unknown_training_settings_are_refused(call, config, message):
    """Both gave SGD at the default rate 1.0 (and the default, constant LR rule)."""
    with pytest.raises(ValueError) as err:
        call(config)
    assert str(err.value) == message


@pytest.mark.parametrize("call, config, field", [
    (optim.make_optimizer, {"learning_rate": True}, "learning_rate"),
    *[(call, {"lr_schedule": "plateau", "plateau_factor": True}, "plateau_factor")
      for call in RULE_CALLS],
], ids=["make_optimizer", "lr_rule", "next_learning_rate"])
def test_a_bool_for_a_number_is_refused(call, config, field):
    """with_defaults put True into the float field as 1.0."""
    with pytest.raises(ValueError) as err:
        call(config)
    assert str(err.value).startswith(f"config.{field} must be a finite number >= ")
    assert str(err.value).endswith(", got True.")


# --- 2. the arguments of the function lr_rule returns -----------------------------------------

@pytest.mark.parametrize("schedule", ["constant", "zaremba", "plateau"])
@pytest.mark.parametrize("args, message", [
    (("a", 1.0, True), "epoch must be a whole number >= 1 (epochs count from 1), got 'a'."),
    ((1.5, 1.0, True), "epoch must be a whole number >= 1 (epochs count from 1), got 1.5."),
    ((1, None, True), "lr must be a finite number >= 0, got None."),
    ((1, "0.1", True), "lr must be a finite number >= 0, got '0.1'."),
    ((1, 1.0, "no"), "improved must be True or False, got 'no'."),
], ids=["epoch-str", "epoch-float", "lr-none", "lr-str", "improved-str"])
def test_the_lr_rule_refuses_bad_arguments(schedule, args, message):
    """Operator TypeErrors before, and "no" counted as an improvement."""
    rule = optim.lr_rule({"lr_schedule": schedule})
    with pytest.raises(ValueError) as err:
        rule(*args)
    assert str(err.value) == message
    # numpy scalars, as a loop may hold them, still pass
    assert rule(np.int64(1), np.float32(1.0), np.bool_(True)) == pytest.approx(1.0)


# --- 3. the language-model batch sources -------------------------------------------------------

TOKENS = np.arange(20)


def _streams(*args, **kwargs):
    return lambda: ContiguousStreams(*args, **ONE, **kwargs)


def _windows(**kwargs):
    return lambda: ShuffledWindows(TOKENS, 2, 3, **ONE, **kwargs)


WHOLE_1 = "must be a whole number >= 1, got"


@pytest.mark.parametrize("make, message", [
    (_streams(TOKENS, 0, 2), f"batch_size {WHOLE_1} 0."),
    (_streams(TOKENS, -1, 2), f"batch_size {WHOLE_1} -1."),
    (_streams(TOKENS, 2, 0), f"seq_len {WHOLE_1} 0."),
    (_streams(TOKENS, 2, -2), f"seq_len {WHOLE_1} -2."),
    (_streams(TOKENS, 2.0, 2), f"batch_size {WHOLE_1} 2.0."),
    (_streams(TOKENS, None, 2), f"batch_size {WHOLE_1} None."),
    (_streams(TOKENS.reshape(2, 10), 2, 2),
     "tokens must be a 1-D array of token ids, got an array of shape (2, 10)."),
    (lambda: eval_stream(TOKENS, 0), f"seq_len {WHOLE_1} 0."),
    (lambda: eval_stream(TOKENS, None), f"seq_len {WHOLE_1} None."),
    (_windows(stride=2.5), f"stride {WHOLE_1} 2.5."),
    (_windows(seed=1.5), "seed must be a whole number, got 1.5."),
    (_windows(shuffle="x"), "shuffle must be True or False, got 'x'."),
    (_windows(random_offset="x"), "random_offset must be True or False, got 'x'."),
], ids=["batch-0", "batch-neg", "seq-0", "seq-neg", "batch-float", "batch-none", "tokens-2d",
        "eval-seq-0", "eval-seq-none", "stride-float", "seed-float", "shuffle-str",
        "offset-str"])
def test_stream_batch_sources_refuse_bad_arguments(make, message):
    """A DataError advising "a smaller batch size or sequence length" for 0, or numpy's
    slicing, comparison, cast and reshape errors; words for switches taken as True."""
    _raises(make, message)


# --- 4. ArrayBatches ----------------------------------------------------------------------------

X = np.arange(10)


@pytest.mark.parametrize("arrays, kwargs, message", [
    ({}, {}, "arrays must hold at least one array, got an empty mapping."),
    ({"x": np.array(3)}, {}, "arrays['x'] must be an array with the example axis first, got a "
                             "0-d array."),
    ([("x", X)], {}, "arrays must be a mapping of names to arrays (a dict), got list."),
    ({"x": list(range(10))}, {}, "arrays['x'] must be an array with the example axis first, "
                                 "got list."),
    ({"x": X}, {"transform": 3}, "transform must be a function of a batch or None, got 3."),
    ({"x": X}, {"shuffle": "x"}, "shuffle must be True or False, got 'x'."),
    ({"x": X}, {"drop_remainder": "x"}, "drop_remainder must be True or False, got 'x'."),
    ({"x": X, "y": X[:3]}, {}, "arrays must all hold the same number of examples (their first "
                               "axis), got {'x': 10, 'y': 3}."),
], ids=["empty", "scalar", "list-of-pairs", "list-values", "transform", "shuffle",
        "drop-remainder", "lengths"])
def test_array_batches_refuse_bad_arguments(arrays, kwargs, message):
    """"different lengths []", "len() of unsized object", a dict-update error, or a
    failure only in get_batch before."""
    _raises(lambda: ArrayBatches(arrays, 2, **ONE, **kwargs), message)


# --- 5. the loaders and epoch_permutation --------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"validation_size": 2.5}, "config.data.validation_size must be a whole number, got 2.5."),
    ({"validation_size": "2"}, "config.data.validation_size must be a whole number, got '2'."),
    ({"validation_size": None}, "config.data.validation_size must be a whole number, got None."),
    ({"validation_size": True}, "config.data.validation_size must be a whole number, got True."),
    ({"permutation_seed": -1}, "permutation_seed must be a whole number in [0, 2**32), got -1."),
    ({"validation": "x"}, "validation must be one of ('last', 'shuffle'), got 'x'."),
    ({"source": "x"}, "source must be one of ('files', 'tfds'), got 'x'."),
    ({"verify": "no"}, "verify must be True or False, got 'no'."),
    ({"data_dir": 123}, "data_dir must be a folder path (a str or os.PathLike) or None, got int."),
], ids=["size-float", "size-str", "size-none", "size-bool", "seed-neg", "validation",
        "source", "verify", "data-dir"])
def test_load_mnist_refuses_bad_arguments(tmp_path, kwargs, message):
    fx.write_mnist(tmp_path, n_train=5, n_test=2)
    _raises(lambda: load_mnist(**{"data_dir": tmp_path, "verify": False, **kwargs}), message)


def test_other_loaders_and_epoch_permutation_refuse_bad_arguments(tmp_path):
    """numpy's IndexError for n=2.5 and an empty order for n=-1; choices not listed."""
    fx.write_ptb_word(tmp_path)
    _raises(lambda: epoch_permutation(2.5, 0, 0), "n must be a whole number >= 0, got 2.5.")
    _raises(lambda: epoch_permutation(-1, 0, 0), "n must be a whole number >= 0, got -1.")
    _raises(lambda: load_ptb_word(tmp_path, "x", verify=False),
            "vocab_order must be one of ('first_appearance', 'frequency'), got 'x'.")
    _raises(lambda: load_ptb_word(tmp_path, verify="no"), "verify must be True or False, "
            "got 'no'.")
    _raises(lambda: load_ptb_word(123, verify=False), "data_dir must be a folder path")
    corpus = load_ptb_word(tmp_path, verify=False)
    _raises(lambda: corpus.batches("train", 2, 2, mode="x"),
            "mode must be one of ('contiguous', 'variable', 'shuffled', 'eval'), got 'x'.")
    _raises(lambda: load_imdb(tmp_path, source="x"),
            "source must be one of ('files', 'tfds'), got 'x'.")
    # valid whole numbers of numpy's types still pass
    assert len(epoch_permutation(np.int64(3), np.int32(0), 0)) == 3
