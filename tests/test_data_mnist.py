"""Tests of the MNIST idx loader and (permuted) sequence batches on small files."""

import numpy as np
import pytest

from rnnreg_jax.data import PERMUTATION_SEED, DataError, load_mnist
from rnnreg_jax.data.mnist import parse_idx, permutation, to_sequences

try:
    from tests import data_fixtures as fx
except ImportError:
    import data_fixtures as fx

ONE = {"process_index": 0, "process_count": 1}


@pytest.mark.parametrize("gz", [True, False])
def test_load_shapes_and_split(tmp_path, gz):
    arrays = fx.write_mnist(tmp_path, gz=gz)
    m = load_mnist(tmp_path, validation_size=10)
    flat = arrays["train_images"].reshape(40, 784)
    np.testing.assert_array_equal(m.images["train"], flat[:30])
    np.testing.assert_array_equal(m.images["valid"], flat[30:])  # last 10 of train
    np.testing.assert_array_equal(m.labels["test"], arrays["test_labels"])
    assert m.labels["train"].dtype == np.int32
    assert [m.num_examples(s) for s in ("train", "valid", "test")] == [30, 10, 12]


def test_permutation_fixed_and_documented(tmp_path):
    arrays = fx.write_mnist(tmp_path)
    m = load_mnist(tmp_path, validation_size=0)
    assert PERMUTATION_SEED == 0
    np.testing.assert_array_equal(m.permutation, np.random.RandomState(0).permutation(784))
    seq = m.sequences("test")
    assert seq.shape == (12, 784, 1) and seq.dtype == np.float32
    assert 0.0 <= seq.min() and seq.max() <= 1.0
    img = arrays["test_images"][3].reshape(784)
    np.testing.assert_allclose(seq[3, :, 0], img[m.permutation] / 255.0, rtol=1e-6)
    # every split uses the same permutation
    np.testing.assert_array_equal(
        m.sequences("train")[0, :, 0] * 255, arrays["train_images"][0].reshape(784)[m.permutation]
    )


def test_unpermuted(tmp_path):
    arrays = fx.write_mnist(tmp_path)
    m = load_mnist(tmp_path, permuted=False, validation_size=0)
    assert m.permutation is None
    np.testing.assert_allclose(
        m.sequences("test")[0, :, 0] * 255, arrays["test_images"][0].reshape(784)
    )


def test_shuffled_validation_is_seeded(tmp_path):
    fx.write_mnist(tmp_path)
    a = load_mnist(tmp_path, validation_size=8, validation="shuffle", validation_seed=3)
    b = load_mnist(tmp_path, validation_size=8, validation="shuffle", validation_seed=3)
    np.testing.assert_array_equal(a.images["valid"], b.images["valid"])
    both = np.concatenate([a.images["train"], a.images["valid"]])
    assert len({r.tobytes() for r in both}) == 40


def test_batches(tmp_path):
    fx.write_mnist(tmp_path)
    m = load_mnist(tmp_path, validation_size=10)
    it = m.batches("train", 8, seed=1, **ONE)
    assert it.num_batches == 3
    batch = it.get_batch(0, 0)
    assert batch["inputs"].shape == (8, 784, 1) and batch["inputs"].dtype == np.float32
    assert batch["labels"].shape == (8,) and batch["labels"].dtype == np.int32
    idx = it.order(0)[:8]
    np.testing.assert_array_equal(
        batch["inputs"], to_sequences(m.images["train"][idx], permutation())
    )
    halves = [
        m.batches("train", 8, seed=1, process_index=i, process_count=2).get_batch(0, 0)
        for i in range(2)
    ]
    np.testing.assert_array_equal(np.concatenate([h["labels"] for h in halves]), batch["labels"])
    ev = m.batches("test", 5, **ONE)
    assert ev.num_batches == 3 and "weights" in ev.get_batch(0, 2)



def test_an_unknown_split_is_one_sentence(tmp_path):
    """A typo'd split names the splits there are (it was a bare KeyError)."""
    fx.write_mnist(tmp_path)
    m = load_mnist(tmp_path, validation_size=10)
    for call in (lambda: m.batches("tran", 8, **ONE), lambda: m.num_examples("tran"),
                 lambda: m.sequences("tran")):
        with pytest.raises(ValueError, match=r"unknown split 'tran'; expected one of "
                                             r"\('train', 'valid', 'test'\)"):
            call()

def test_idx_errors():
    good = fx.idx_bytes(np.zeros((2, 28, 28), np.uint8), 2051)
    assert parse_idx(good, "x", 2051).shape == (2, 28, 28)
    with pytest.raises(DataError, match="magic number 2049 instead of 2051"):
        parse_idx(fx.idx_bytes(np.zeros(2, np.uint8), 2049), "x", 2051)
    with pytest.raises(DataError, match="shorter than its header says"):
        parse_idx(good[:-5], "x", 2051)
    with pytest.raises(DataError, match="longer than its header says"):
        parse_idx(good + b"\0", "x", 2051)
    with pytest.raises(DataError, match="truncated"):
        parse_idx(good[:10], "x", 2051)


def test_file_errors(tmp_path):
    fx.write_mnist(tmp_path)
    path = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is truncated"):
        load_mnist(tmp_path)
    path.unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is missing"):
        load_mnist(tmp_path)


def test_count_mismatch(tmp_path):
    fx.write_mnist(tmp_path)
    fx.write(
        tmp_path / "mnist" / "t10k-labels-idx1-ubyte",
        fx.idx_bytes(np.zeros(3, np.uint8), 2049),
        gz=True,
    )
    with pytest.raises(DataError, match="12 images but 3 labels"):
        load_mnist(tmp_path)


def test_images_of_another_size_are_named(tmp_path):
    """A consistent idx header of 28 x 27 images (read with checks off, as the suite and
    --skip_checks do) was numpy's 'cannot reshape array' traceback."""
    fx.write_mnist(tmp_path)
    fx.write(
        tmp_path / "mnist" / "t10k-images-idx3-ubyte",
        fx.idx_bytes(np.zeros((12, 28, 27), np.uint8), 2051),
        gz=True,
    )
    with pytest.raises(DataError, match="holds images of 756 pixels, not 784"):
        load_mnist(tmp_path)
