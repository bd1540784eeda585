"""Checks on the real data sets; run with RNNREG_DATA_DIR pointing at them."""

import os

import numpy as np
import pytest

from rnnreg_jax import data
from rnnreg_jax.data import imdb as imdb_loader

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not os.environ.get("RNNREG_DATA_DIR"), reason="RNNREG_DATA_DIR not set"),
]

ONE = {"process_index": 0, "process_count": 1}


def test_ptb_word():
    c = data.load_ptb_word()
    assert c.vocab_size == 10000 and "<eos>" in c.vocab and "<unk>" in c.vocab
    assert (len(c.train), len(c.valid), len(c.test)) == (929589, 73760, 82430)
    assert c.decode(c.train[:3]) == ["aer", "banknote", "berlitz"]  # first appearance
    it = c.batches("train", 20, 35, **ONE)
    assert it.num_batches == (929589 // 20 - 1) // 35 == 1327
    # Zaremba's and Gal's validation: 20 streams of 3688; their loop runs the 105 whole
    # windows and divides by (3688 - 1) / 35 = 105.34 (docs/FIDELITY.md)
    valid = c.batches("valid", 20, 35, **ONE)
    assert (valid.stream_length, valid.num_batches) == (3688, 105)
    assert c.batches("test", 1, 35, mode="eval").num_batches == -(-82429 // 35)


def test_ptb_char():
    c = data.load_ptb_char()
    assert c.vocab_size == 50 and "<eol>" in c.vocab and "_" in c.vocab
    assert (len(c.train), len(c.valid), len(c.test)) == (5017482, 393042, 442423)


def test_mnist():
    m = data.load_mnist(validation_size=0)
    assert m.num_examples("train") == 60000 and m.num_examples("test") == 10000
    assert np.bincount(m.labels["test"]).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
    m = data.load_mnist()
    assert [m.num_examples(s) for s in ("train", "valid", "test")] == [55000, 5000, 10000]
    b = m.batches("train", 100, **ONE).get_batch(0, 0)
    assert b["inputs"].shape == (100, 784, 1) and 0 <= b["inputs"].min() <= b["inputs"].max() <= 1


def test_cornell():
    d = data.load_cornell()
    docs = np.union1d(d.doc_ids["train"], d.doc_ids["test"])
    assert len(docs) == 5006 and len(d.vocab) == 20000 and d.num_ids == 20003
    assert d.inputs["train"].shape[1] == 200
    assert 0 < d.target_mean < 1 and 0 < d.target_std < 1
    # Gal's split: 13,249 chunks (START included) in the shuffled reviews' order, cut
    # 80/20; only the review at the cut has chunks on both sides (3 of them in test)
    assert (d.num_examples("train"), d.num_examples("test")) == (10599, 2650)
    assert np.isin(d.doc_ids["test"], d.doc_ids["train"]).sum() == 3
    # the chunks shuffled instead: 2,356 of 2,646 test chunks beside a training sibling
    leaky = data.load_cornell(split="chunks", start_token=False)
    assert (leaky.num_examples("train"), leaky.num_examples("test")) == (10580, 2646)
    assert np.isin(leaky.doc_ids["test"], leaky.doc_ids["train"]).sum() == 2356


@pytest.mark.slow
def test_imdb(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # measure a real parse, keep no cache
    d = data.load_imdb()
    assert d.num_examples("train") == 25000 and d.num_examples("test") == 25000
    assert int(d.targets["train"].sum()) == 12500 and int(d.targets["test"].sum()) == 12500
    assert d.inputs["train"].shape == (25000, 400) and len(d.vocab) == 20000
    # the second load reads the .npz cache: the reviews are not parsed again
    monkeypatch.setattr(imdb_loader, "_build_imdb", lambda *a, **k: pytest.fail("parsed"))
    again = data.load_imdb()
    np.testing.assert_array_equal(again.inputs["test"], d.inputs["test"])
