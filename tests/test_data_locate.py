"""Tests of data-dir resolution and the atomic, verified download into the cache."""

import dataclasses
import gzip
import hashlib

import numpy as np
import pytest

from rnnreg_jax.data import DataError, load_cornell, load_imdb, load_mnist, load_ptb_word, locate
from rnnreg_jax.data.locate import Download, Source, resolve_data_dir

try:
    from tests import data_fixtures as fx
except ImportError:
    import data_fixtures as fx


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty user cache; no data dir in the environment."""
    monkeypatch.delenv("RNNREG_DATA_DIR", raising=False)
    monkeypatch.delenv("RNNREG_DATA_URL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "rnnreg_jax"


def leftovers(root):
    """Everything in the cache that is not a finished data-set folder."""
    return [p.name for p in root.iterdir() if p.name not in locate.SOURCES] if root.exists() else []


def ptb_archive():
    texts = {"train": fx.PTB_TRAIN, "valid": fx.PTB_VALID, "test": fx.PTB_TEST}
    files, shas = {"./simple-examples/README": b"x"}, {}
    for s, t in texts.items():
        for stem, folder, text in (
            (f"ptb.{s}.txt", "ptb_word", t),
            (f"ptb.char.{s}.txt", "ptb_char", fx.char_text(t)),
        ):
            files[f"./simple-examples/data/{stem}"] = text.encode()
            shas[f"{folder}/{stem}"] = sha(text.encode())
    return files, shas


@pytest.fixture
def ptb_source(tmp_path, monkeypatch):
    """A fake simple-examples.tgz and the PTB source patched with its checksums."""
    files, shas = ptb_archive()
    archive = fx.make_tar(tmp_path / "src" / "simple-examples.tgz", files)
    data = archive.read_bytes()
    src = dataclasses.replace(locate.SOURCES["ptb_word"], file_sha256=shas)
    monkeypatch.setitem(locate.SOURCES, "ptb_word", src)
    monkeypatch.setitem(locate.SOURCES, "ptb_char", src)
    return {"simple-examples.tgz": data}


def test_resolve_order(tmp_path, monkeypatch, cache):
    assert resolve_data_dir(None) == cache
    monkeypatch.setenv("RNNREG_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"


def test_download_ptb_success(cache, ptb_source, monkeypatch):
    with fx.serve(ptb_source) as url:
        monkeypatch.setenv("RNNREG_DATA_URL", url)
        corpus = load_ptb_word()
    assert corpus.decode(corpus.test) == ["a", "dog", "sat", "down", "<eos>"]
    assert sorted(p.name for p in cache.iterdir()) == ["ptb_char", "ptb_word"]
    assert sorted(p.name for p in (cache / "ptb_char").iterdir()) == [
        "ptb.char.test.txt",
        "ptb.char.train.txt",
        "ptb.char.valid.txt",
    ]
    monkeypatch.setenv("RNNREG_DATA_URL", "http://127.0.0.1:9")  # nothing listens: offline
    assert len(load_ptb_word().train) == len(corpus.train)  # downloaded once


def test_archive_checksum_mismatch_leaves_nothing(cache, ptb_source, monkeypatch):
    src = locate.SOURCES["ptb_word"]
    bad = dataclasses.replace(
        src, downloads=(dataclasses.replace(src.downloads[0], sha256="0" * 64),)
    )
    monkeypatch.setitem(locate.SOURCES, "ptb_word", bad)
    with fx.serve(ptb_source) as url:
        with pytest.raises(DataError, match="simple-examples.tgz has sha256 .* instead of 0000"):
            locate.dataset_dir("ptb_word", base_url=url)
    assert leftovers(cache) == [] and not (cache / "ptb_word").exists()


def test_an_archive_that_is_no_archive_is_one_line(cache, ptb_source, monkeypatch):
    """A page served instead of the archive (no published sha256 to refuse it first):
    tarfile's message lists each compression it tried on a line of its own."""
    src = locate.SOURCES["ptb_word"]
    unhashed = dataclasses.replace(
        src, downloads=(dataclasses.replace(src.downloads[0], sha256=None),))
    monkeypatch.setitem(locate.SOURCES, "ptb_word", unhashed)
    with fx.serve({"simple-examples.tgz": b"<html>moved</html>\n" * 20}) as url:
        with pytest.raises(DataError, match="cannot be unpacked") as err:
            locate.dataset_dir("ptb_word", base_url=url)
    assert "\n" not in str(err.value)
    assert leftovers(cache) == []


def test_extracted_file_checksum_mismatch(cache, ptb_source, monkeypatch):
    src = locate.SOURCES["ptb_word"]
    shas = dict(src.file_sha256, **{"ptb_word/ptb.valid.txt": "1" * 64})
    monkeypatch.setitem(locate.SOURCES, "ptb_word", dataclasses.replace(src, file_sha256=shas))
    with fx.serve(ptb_source) as url:
        with pytest.raises(DataError, match="ptb_word/ptb.valid.txt has sha256"):
            locate.dataset_dir("ptb_word", base_url=url)
    assert leftovers(cache) == [] and not (cache / "ptb_word").exists()


def test_interrupted_transfer(cache, ptb_source):
    with fx.serve(ptb_source, cut_after=100) as url:
        with pytest.raises(DataError) as e:
            locate.dataset_dir("ptb_word", base_url=url)
    msg = str(e.value)
    assert "simple-examples.tgz" in msg and ("failed" in msg or "stopped after" in msg)
    assert "\n" not in msg
    assert leftovers(cache) == [] and not (cache / "ptb_word").exists()


def test_http_error(cache, ptb_source):
    with fx.serve({}) as url:
        with pytest.raises(DataError, match="failed .*404"):
            locate.dataset_dir("ptb_word", base_url=url)
    assert leftovers(cache) == []


def test_explicit_dir_never_downloads(tmp_path, cache):
    with pytest.raises(DataError, match="is missing; pass --data_dir"):
        load_ptb_word(tmp_path / "nowhere")
    assert not cache.exists()


def test_download_mnist_files(cache, tmp_path, monkeypatch):
    fx.write_mnist(tmp_path / "src", n_train=20, n_test=5)
    files = {p.name: p.read_bytes() for p in (tmp_path / "src" / "mnist").iterdir()}
    src = locate.SOURCES["mnist"]
    downloads = tuple(
        dataclasses.replace(d, sha256=sha(files[d.url.rsplit("/", 1)[-1]])) for d in src.downloads
    )
    monkeypatch.setitem(locate.SOURCES, "mnist", dataclasses.replace(src, downloads=downloads))
    with fx.serve(files) as url:
        monkeypatch.setenv("RNNREG_DATA_URL", url)
        m = load_mnist(validation_size=5)
    assert m.num_examples("train") == 15 and m.num_examples("test") == 5
    assert np.array_equal(
        gzip.decompress(files["t10k-labels-idx1-ubyte.gz"])[8:],
        m.labels["test"].astype(np.uint8).tobytes(),
    )


def test_download_cornell_and_imdb_prefixes(cache, tmp_path, monkeypatch):
    cornell = {}
    for author, (texts, ratings) in fx.cornell_docs().items():
        cornell[f"scaledata/{author}/subj.{author}"] = "".join(t + "\n" for t in texts).encode()
        cornell[f"scaledata/{author}/rating.{author}"] = "".join(f"{r}\n" for r in ratings).encode()
    c_src = Source(
        folders=("cornell_scale_v1.0",),
        downloads=(
            Download(
                url="http://x/scale_data.tar.gz",
                extract=(("scaledata/", "cornell_scale_v1.0/scaledata/"),),
            ),
        ),
        file_sha256={f"cornell_scale_v1.0/{k}": sha(v) for k, v in cornell.items()},
    )
    imdb = fx.imdb_files() | {"aclImdb/train/unsup/0_0.txt": b"unlabelled", "aclImdb/x.feat": b"1"}
    i_src = dataclasses.replace(
        locate.SOURCES["imdb"],
        downloads=(dataclasses.replace(locate.SOURCES["imdb"].downloads[0], sha256=None),),
    )
    monkeypatch.setitem(locate.SOURCES, "cornell_scale_v1.0", c_src)
    monkeypatch.setitem(locate.SOURCES, "imdb", i_src)
    served = {
        "scale_data.tar.gz": fx.make_tar(tmp_path / "c.tgz", cornell).read_bytes(),
        "aclImdb_v1.tar.gz": fx.make_tar(tmp_path / "i.tgz", imdb).read_bytes(),
    }
    with fx.serve(served) as url:
        monkeypatch.setenv("RNNREG_DATA_URL", url)
        d = load_cornell()
        i = load_imdb(cache=False)
    assert d.num_examples("train") + d.num_examples("test") == 28  # 16 reviews, START first
    assert i.num_examples("train") == 4 and i.num_examples("test") == 3
    assert not (cache / "imdb" / "aclImdb" / "train" / "unsup").exists()
    assert leftovers(cache) == []


def test_unwritable_cache_is_data_error(tmp_path, monkeypatch):
    monkeypatch.delenv("RNNREG_DATA_DIR", raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.raises(DataError, match="is not writable"):
        locate.dataset_dir("mnist")
