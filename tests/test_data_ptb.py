"""Tests of the PTB word and char loaders on tiny files written here."""

import numpy as np
import pytest

from rnnreg_jax.data import DataError, load_ptb_char, load_ptb_word

try:
    from tests import data_fixtures as fx
except ImportError:
    import data_fixtures as fx


def test_word_ids_first_appearance(tmp_path):
    fx.write_ptb_word(tmp_path)
    c = load_ptb_word(tmp_path)
    assert c.vocab == ("the", "cat", "sat", "<eos>", "dog", "down", "a", "ran")
    np.testing.assert_array_equal(c.train, [0, 1, 2, 3, 0, 4, 2, 5, 3, 6, 1, 7, 3])
    np.testing.assert_array_equal(c.valid, [0, 4, 7, 3, 6, 1, 2, 3])
    np.testing.assert_array_equal(c.test, [6, 4, 2, 5, 3])
    assert c.train.dtype == np.int32
    assert c.decode(c.test) == ["a", "dog", "sat", "down", "<eos>"]


def test_word_frequency_order_and_gz(tmp_path):
    fx.write_ptb_word(tmp_path, gz=True)
    c = load_ptb_word(tmp_path, vocab_order="frequency")
    assert c.vocab == ("<eos>", "cat", "sat", "the", "a", "dog", "down", "ran")
    assert c.decode(c.train[:4]) == ["the", "cat", "sat", "<eos>"]


def test_unknown_word_maps_to_unk_or_fails(tmp_path):
    fx.write_ptb_word(tmp_path, {"train": " a <unk> b \n", "valid": " a zz \n", "test": " b \n"})
    c = load_ptb_word(tmp_path)
    assert c.decode(c.valid) == ["a", "<unk>", "<eos>"]
    fx.write_ptb_word(tmp_path, {"train": " a b \n", "valid": " a zz \n", "test": " b \n"})
    with pytest.raises(DataError, match="'zz' that is not in the training vocabulary"):
        load_ptb_word(tmp_path)


def test_word_batches_modes(tmp_path):
    fx.write_ptb_word(tmp_path)
    c = load_ptb_word(tmp_path)
    it = c.batches("train", 2, 2, mode="contiguous", process_index=0, process_count=1)
    first = it.get_batch(0, 0)
    np.testing.assert_array_equal(first["inputs"], [[0, 1], [2, 5]])
    np.testing.assert_array_equal(first["targets"], [[1, 2], [5, 3]])
    assert it.num_batches == (13 // 2 - 1) // 2
    ev = c.batches("test", 99, 2, mode="eval")
    assert ev.global_batch_size == 1 and ev.num_batches == 2
    sh = c.batches("train", 2, 3, mode="shuffled", seed=1, process_index=0, process_count=1)
    b = sh.get_batch(0, 0)
    assert b["inputs"].shape == (2, 3)


def test_char_vocab_and_eol(tmp_path):
    fx.write_ptb_char(tmp_path)
    c = load_ptb_char(tmp_path)
    expected = []
    for line in fx.PTB_TRAIN.split("\n")[:-1]:
        expected += list("_".join(line.split())) + ["<eol>"]
    assert c.decode(c.train) == expected
    assert "<eol>" in c.vocab and "_" in c.vocab
    assert c.vocab_size == len(set(expected))
    it = c.batches("train", 2, 4, mode="shuffled", stride=2, process_index=0, process_count=1)
    assert it.stride == 2
    assert it.num_windows == (len(expected) - 1 - 4) // 2 + 1


def test_char_plain_text_accepted(tmp_path):
    fx.write_ptb_char(tmp_path, gz=False)
    assert load_ptb_char(tmp_path).decode(load_ptb_char(tmp_path).test[:3]) == ["a", "_", "d"]


@pytest.mark.parametrize(
    "content, pattern",
    [
        (None, r"ptb\.valid\.txt is missing; pass --data_dir"),
        (b"", r"is empty"),
        (b"  \n \n", r"has no tokens"),
        (b" caf\xe9 \n", r"non-UTF-8 bytes at byte offset 4"),
    ],
)
def test_word_errors(tmp_path, content, pattern):
    fx.write_ptb_word(tmp_path)
    path = tmp_path / "ptb_word" / "ptb.valid.txt"
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=pattern) as e:
        load_ptb_word(tmp_path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_truncated_gzip_is_data_error(tmp_path):
    fx.write_ptb_char(tmp_path)
    path = tmp_path / "ptb_char" / "ptb.char.train.txt.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError, match="truncated or not a valid gzip"):
        load_ptb_char(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="PTB folder .*ptb_word is missing"):
        load_ptb_word(tmp_path)
