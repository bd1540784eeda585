"""Tests of the Cornell scale (Gal's chunking) and IMDB loaders on small files."""

import collections
import re

import numpy as np
import pytest

from rnnreg_jax.data import DataError, load_cornell, load_imdb
from rnnreg_jax.data.imdb import tokenize
from rnnreg_jax.data.sentiment import OOV, PAD, START, chunk

try:
    from tests import data_fixtures as fx
except ImportError:
    import data_fixtures as fx

ONE = {"process_index": 0, "process_count": 1}


def cornell_reviews(vocab):
    """Every review's ids and rating in file order (authors sorted), computed independently."""
    w2i = {w: i + 3 for i, w in enumerate(vocab)}
    reviews = []
    for author in sorted(fx.CORNELL_AUTHORS):
        texts, ratings = fx.cornell_docs()[author]
        reviews += [([w2i.get(w, OOV) for w in text.lower().split()], rating)
                    for text, rating in zip(texts, ratings, strict=True)]
    return reviews


def expected_cornell(vocab, start_token=True):
    """(review index, padded chunk, rating) for every chunk in file order."""
    out = []
    for doc, (ids, rating) in enumerate(cornell_reviews(vocab)):
        ids = [START] * start_token + ids
        for start in range(0, len(ids), 200):
            piece = ids[start : start + 200]
            out.append((doc, tuple([PAD] * (200 - len(piece)) + piece), rating))
    return out


def gal_split(vocab, seed=0):
    """Gal's sentiment_lstm_regression.py, step by step: shuffle X and Y after seeding
    numpy's generator alike, put start_char first, cut each review into 200-id chunks
    (left-padded, as Keras' pad_sequences), the first int(0.8 n) chunks for training."""
    X, Y = map(list, zip(*cornell_reviews(vocab), strict=True))
    np.random.RandomState(seed).shuffle(X)
    np.random.RandomState(seed).shuffle(Y)
    X = [[START] + x for x in X]
    chunks = [(x[i:i + 200], y) for x, y in zip(X, Y, strict=True) for i in range(0, len(x), 200)]
    padded = [([PAD] * (200 - len(c)) + c, y) for c, y in chunks]
    cut = int(len(padded) * (1 - 0.2))
    return padded[:cut], padded[cut:]


def test_chunk():
    assert chunk(list(range(450)), 200) == [
        list(range(200)),
        list(range(200, 400)),
        list(range(400, 450)),
    ]
    assert chunk([], 200) == [[]]


def test_cornell_default_split_is_gals_exactly(tmp_path):
    """The reviews in Gal's shuffled order, START first, chunked, the chunk list cut 80/20:
    only the review at the cut can have chunks on both sides."""
    fx.write_cornell(tmp_path)
    d = load_cornell(tmp_path)
    assert all(w == w.lower() for w in d.vocab) and d.num_ids == len(d.vocab) + 3
    counts = collections.Counter(
        w for a in fx.CORNELL_AUTHORS for t in fx.cornell_docs()[a][0] for w in t.lower().split()
    )
    assert d.vocab[0] == counts.most_common(1)[0][0]
    train, test = gal_split(d.vocab)
    assert len(train) + len(test) == 28  # 16 reviews, 24 chunks without START: 4 reach 201
    for split, expected in (("train", train), ("test", test)):
        assert d.inputs[split].shape == (len(expected), 200) and d.inputs[split].dtype == np.int32
        np.testing.assert_array_equal(d.inputs[split], [x for x, _ in expected])
        np.testing.assert_allclose(d.denormalize(d.targets[split]), [y for _, y in expected],
                                   rtol=1e-6)
    assert (d.inputs["train"] == START).sum() + (d.inputs["test"] == START).sum() == 16
    shared = set(d.doc_ids["train"].tolist()) & set(d.doc_ids["test"].tolist())
    assert len(shared) <= 1
    assert abs(d.targets["train"].mean()) < 1e-5 and abs(d.targets["train"].std() - 1) < 1e-4
    # fixed seed: same split twice, another seed differs
    again = load_cornell(tmp_path)
    np.testing.assert_array_equal(again.inputs["test"], d.inputs["test"])
    other = load_cornell(tmp_path, seed=1)
    assert not np.array_equal(other.doc_ids["test"], d.doc_ids["test"])


@pytest.mark.parametrize("start_token", [True, False])
def test_cornell_shuffled_chunks_split(tmp_path, start_token):
    """`split="chunks"` shuffles the chunks themselves: the same chunks as Gal's, most test
    chunks beside a sibling of their review in training; `start_token=False` puts no START."""
    fx.write_cornell(tmp_path)
    d = load_cornell(tmp_path, split="chunks", start_token=start_token)
    expected = expected_cornell(d.vocab, start_token)
    assert len(expected) == (28 if start_token else 24)
    assert d.num_examples("train") == int(len(expected) * 0.8)
    got = []
    for split in ("train", "test"):
        ratings = d.denormalize(d.targets[split])
        got += [
            (int(o), tuple(x.tolist()), round(float(r), 4))
            for o, x, r in zip(d.doc_ids[split], d.inputs[split], ratings, strict=True)
        ]
    assert sorted(got) == sorted((o, x, round(r, 4)) for o, x, r in expected)
    assert ((d.inputs["train"] == START).any() or (d.inputs["test"] == START).any()) == start_token
    np.testing.assert_array_equal(
        d.doc_ids["train"], load_cornell(tmp_path, split="chunks",
                                         start_token=start_token).doc_ids["train"])
    with pytest.raises(ValueError, match=r"^start_token must be True or False, got 'False'\."):
        load_cornell(tmp_path, start_token="False")


def test_cornell_vocab_limit_maps_to_oov(tmp_path):
    fx.write_cornell(tmp_path)
    d = load_cornell(tmp_path, vocab_size=5, start_token=False)
    assert len(d.vocab) == 5 and d.num_ids == 8
    x = d.inputs["train"]
    assert x.max() == 7 and (x == OOV).any() and not (x == START).any()


def test_cornell_by_document(tmp_path):
    fx.write_cornell(tmp_path)
    d = load_cornell(tmp_path, split="by_document")
    train, test = set(d.doc_ids["train"].tolist()), set(d.doc_ids["test"].tolist())
    assert not train & test and len(train | test) == 16 and len(train) == int(16 * 0.8)
    assert d.num_examples("train") + d.num_examples("test") == 28  # START: 4 reach 201
    it = d.batches("train", 4, seed=0, **ONE)
    b = it.get_batch(0, 0)
    assert b["inputs"].shape == (4, 200) and b["targets"].dtype == np.float32

    for call in (lambda: d.batches("tset", 4, **ONE), lambda: d.num_examples("tset")):
        with pytest.raises(ValueError, match=r"unknown split 'tset'; expected one of "
                                             r"\('train', 'test'\)"):
            call()  # a typo is named, not a bare KeyError
    with pytest.raises(ValueError, match=r"^split must be one of \('shuffled_reviews', 'chunks', "
                                         r"'by_document'\), got 'documents'\."):
        load_cornell(tmp_path, split="documents")

def test_cornell_errors(tmp_path):
    fx.write_cornell(tmp_path)
    rating = tmp_path / "cornell_scale_v1.0/scaledata/Scott+Renshaw/rating.Scott+Renshaw"
    rating.write_text("0.5\n")
    with pytest.raises(DataError, match="has 1 ratings for 4 reviews"):
        load_cornell(tmp_path)
    rating.unlink()
    with pytest.raises(DataError, match="rating.Scott\\+Renshaw is missing"):
        load_cornell(tmp_path)


def test_cornell_needs_exactly_the_four_critics(tmp_path):
    """A critic's folder gone loaded the other three without a word (the checksums check
    the files present), and a folder added was read in too."""
    import shutil

    fx.write_cornell(tmp_path)
    root = tmp_path / "cornell_scale_v1.0" / "scaledata"
    shutil.rmtree(root / "Steve+Rhodes")
    with pytest.raises(DataError, match=r"Cornell critic folder .*Steve\+Rhodes is missing"):
        load_cornell(tmp_path)
    fx.write_cornell(tmp_path)
    (root / "Zed").mkdir()
    with pytest.raises(DataError, match=r"holds \['Zed'\] besides the data set's critics"):
        load_cornell(tmp_path)


@pytest.mark.parametrize("kwargs, message", [
    ({"test_fraction": 1.5}, "test_fraction must be in (0, 1), got 1.5"),  # split 50/50
    ({"test_fraction": 1.0}, "test_fraction must be in (0, 1), got 1.0"),  # NaN mean
    ({"test_fraction": -0.5}, "test_fraction must be in (0, 1)"),  # an empty test set
    ({"vocab_size": 0}, "vocab_size must be a whole number >= 1, got 0"),  # all unknown
    ({"chunk_len": 0}, "chunk_len must be a whole number >= 1, got 0"),  # range() arg 3
    ({"chunk_len": 2.5}, "chunk_len must be a whole number >= 1, got 2.5"),
])
def test_cornell_settings_are_checked_before_reading(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        load_cornell(tmp_path, **kwargs)  # no data here: the settings fail first


def test_tokenize():
    assert tokenize("A great film.<br /><br />Great acting!") == [
        "a",
        "great",
        "film",
        "great",
        "acting",
    ]
    assert tokenize("Bad. Just bad_movie (really).") == ["bad", "just", "bad", "movie", "really"]
    assert tokenize("Caf\u00e9 42") == ["caf\u00e9", "42"]


@pytest.mark.parametrize("archive", [True, False])
def test_imdb(tmp_path, monkeypatch, archive):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = tmp_path / "data"
    fx.write_imdb(data, archive=archive)
    before = sorted(p.name for p in data.rglob("*"))
    d = load_imdb(data, vocab_size=6, max_len=8)
    np.testing.assert_array_equal(d.targets["train"], [0, 0, 1, 1])  # neg 0,1 then pos 0,1
    np.testing.assert_array_equal(d.targets["test"], [0, 0, 1])
    train = sorted(
        (c == "pos", i, t) for (s, c, i, _), t in fx.IMDB_REVIEWS.items() if s == "train"
    )  # the loader's order: ties go to the first seen
    counts = collections.Counter(w for *_, t in train for w in tokenize(t))
    assert d.vocab == tuple(w for w, _ in counts.most_common(6))
    w2i = {w: i + 3 for i, w in enumerate(d.vocab)}
    text = fx.IMDB_REVIEWS[("train", "pos", 0, 9)]
    ids = [START] + [w2i.get(t, OOV) for t in tokenize(text)]
    np.testing.assert_array_equal(d.inputs["train"][2], ids[-8:])  # keeps the last 8
    short = [START] + [w2i.get(t, OOV) for t in tokenize(fx.IMDB_REVIEWS[("test", "pos", 0, 10)])]
    np.testing.assert_array_equal(d.inputs["test"][2], [PAD] * (8 - len(short)) + short)
    assert sorted(p.name for p in data.rglob("*")) == before  # data dir never written
    cached = list((tmp_path / "cache" / "rnnreg_jax" / "imdb").glob("*.npz"))
    assert len(cached) == (1 if archive else 0)
    again = load_imdb(data, vocab_size=6, max_len=8)
    np.testing.assert_array_equal(again.inputs["train"], d.inputs["train"])
    assert again.vocab == d.vocab
    b = d.batches("train", 2, seed=0, **ONE).get_batch(0, 0)
    assert set(b) == {"inputs", "labels"} and b["inputs"].shape == (2, 8)


def test_imdb_archive_and_folder_agree(tmp_path):
    fx.write_imdb(tmp_path / "a", archive=True)
    fx.write_imdb(tmp_path / "b", archive=False)
    a = load_imdb(tmp_path / "a", cache=False)
    b = load_imdb(tmp_path / "b", cache=False)
    for s in ("train", "test"):
        np.testing.assert_array_equal(a.inputs[s], b.inputs[s])


def test_imdb_errors(tmp_path):
    with pytest.raises(DataError, match="IMDB folder .* is missing"):
        load_imdb(tmp_path, cache=False)
    (tmp_path / "imdb").mkdir()
    with pytest.raises(DataError, match="aclImdb_labeled.tar.xz is missing"):
        load_imdb(tmp_path, cache=False)
    archive = fx.write_imdb(tmp_path)
    archive.write_bytes(archive.read_bytes()[:100])
    with pytest.raises(DataError, match="is truncated or corrupt"):
        load_imdb(tmp_path, cache=False)
    for kwargs, message in (({"max_len": 0}, "max_len must be a whole number >= 1, got 0"),
                            ({"max_len": 2.5}, "max_len must be a whole number >= 1"),
                            ({"vocab_size": -1}, "vocab_size must be a whole number >= 1")):
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            load_imdb(tmp_path, cache=False, **kwargs)


def test_a_damaged_imdb_cache_is_rebuilt(tmp_path, monkeypatch):
    """A cache file with a bad CRC was a BadZipFile traceback, though the loader means to
    rebuild a damaged cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fx.write_imdb(tmp_path / "data", archive=True)
    first = load_imdb(tmp_path / "data", vocab_size=6, max_len=8)
    (cached,) = (tmp_path / "cache" / "rnnreg_jax" / "imdb").glob("*.npz")
    blob = bytearray(cached.read_bytes())
    for i in range(40, 60):
        blob[i] ^= 0xFF  # inside the first member's compressed bytes
    cached.write_bytes(bytes(blob))
    again = load_imdb(tmp_path / "data", vocab_size=6, max_len=8)
    np.testing.assert_array_equal(again.inputs["train"], first.inputs["train"])
    cached.write_bytes(bytes(blob[:50]))  # cut short
    np.testing.assert_array_equal(load_imdb(tmp_path / "data", vocab_size=6,
                                            max_len=8).inputs["test"], first.inputs["test"])


def test_tfds_missing_is_clear(tmp_path):
    pytest.importorskip("numpy")
    try:
        import tensorflow_datasets  # noqa: F401

        pytest.skip("tensorflow_datasets is installed")
    except ImportError:
        pass
    with pytest.raises(DataError, match="needs tensorflow_datasets"):
        load_imdb(tmp_path, source="tfds")


@pytest.mark.parametrize("add_start", [True, False])
def test_encode_padded_matches_reference(add_start):
    from rnnreg_jax.data.imdb import encode_padded
    from rnnreg_jax.data.sentiment import encode, pad_left

    rng = np.random.RandomState(0)
    words = [f"w{i}" for i in range(30)]
    docs = [list(rng.choice(words, n)) for n in (0, 1, 5, 9, 10, 11, 40)]
    w2i = {w: i + 3 for i, w in enumerate(words[:20])}
    ref = pad_left([([START] if add_start else []) + encode(d, w2i) for d in docs], 10)
    np.testing.assert_array_equal(encode_padded(docs, w2i, 10, add_start), ref)


def test_right_padding_moves_each_sequence_first():
    from rnnreg_jax.data.sentiment import sequence_lengths, to_right_padding

    left = np.array([[0, 0, 5, 6], [7, 8, 9, 3], [0, 0, 0, 0], [0, 0, 0, 1]], np.int32)
    np.testing.assert_array_equal(sequence_lengths(left), [2, 4, 1, 1])
    right, lengths = to_right_padding(left)
    np.testing.assert_array_equal(right, [[5, 6, 0, 0], [7, 8, 9, 3], [0, 0, 0, 0],
                                          [1, 0, 0, 0]])
    np.testing.assert_array_equal(lengths, [2, 4, 1, 1])
    assert right.dtype == np.int32 and lengths.dtype == np.int32


def _same_ids(left_batch, right_batch):
    """Every row of a "lengths" batch holds its left-padded row's ids, first, then PAD."""
    for left, right, n in zip(left_batch["inputs"], right_batch["inputs"],
                              right_batch["lengths"], strict=True):
        assert 1 <= n <= len(left)
        np.testing.assert_array_equal(right[:n], left[len(left) - n:])
        assert not np.any(right[n:]) and not np.any(left[:len(left) - n])


def test_cornell_batches_with_lengths(tmp_path):
    fx.write_cornell(tmp_path)
    d = load_cornell(tmp_path)
    for split, size in (("train", 4), ("test", 4)):  # test: a filler row, with weights
        left = d.batches(split, size, **ONE)
        right = d.batches(split, size, padding="lengths", **ONE)
        for index in range(left.num_batches):
            a, b = left.get_batch(0, index), right.get_batch(0, index)
            assert set(b) == set(a) | {"lengths"} and b["lengths"].dtype == np.int32
            _same_ids(a, b)
            for key in set(a) - {"inputs"}:
                np.testing.assert_array_equal(a[key], b[key])
    # the short last chunks are shorter than 200: the lengths say so
    lengths = right.get_batch(0, 0)["lengths"]
    assert lengths.min() < 200
    with pytest.raises(ValueError, match="padding must be one of"):
        d.batches("train", 4, padding="right", **ONE)


def test_imdb_batches_with_lengths_keep_the_last_ids(tmp_path):
    fx.write_imdb(tmp_path)
    d = load_imdb(tmp_path, vocab_size=6, max_len=8, cache=False)
    for split in ("train", "test"):
        a = d.batches(split, 2, shuffle=False, **ONE).get_batch(0, 0)
        b = d.batches(split, 2, shuffle=False, padding="lengths", **ONE).get_batch(0, 0)
        _same_ids(a, b)
        assert b["inputs"][0][0] == START or b["lengths"][0] == 8  # START kept unless cut


def test_sentiment_task_feeds_lengths(tmp_path):
    from experiments.configs import sentiment as presets
    from experiments.configs.common import regularization
    from rnnreg_jax.tasks import build_task

    fx.write_cornell(tmp_path)
    config = presets.tiny()
    assert config.data.padding == "left"  # the authors' protocol in every preset
    for name, preset in presets.PRESETS.items():
        assert preset().data.padding == "left", name
    task = build_task(config, regularization(config.reg), str(tmp_path))
    assert "lengths" not in task.train.get_batch(0, 0)
    config.data.padding = "lengths"
    task = build_task(config, regularization(config.reg), str(tmp_path))
    assert "lengths" in task.train.get_batch(0, 0)
    assert all("lengths" in s.get_batch(0, 0) for s in task.evals.values())
    config.data.padding = "middle"
    with pytest.raises(ValueError, match="data.padding"):
        build_task(config, regularization(config.reg), str(tmp_path))
