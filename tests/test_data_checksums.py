"""Data verified where it is read: published sha256s checked on first use of a folder.

The library tests give the small fixture corpus "published" hashes (its own), so
they run without the real data; the real-data tests check the table of hashes
itself and a truncated and a same-length-edited copy of the real ptb.train.txt
through the binary.
"""

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnnreg_jax.data import DataError, checksums, load_ptb_word
from tests import data_fixtures as fx

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = os.environ.get("RNNREG_DATA_DIR")
needs_real_data = pytest.mark.skipif(
    not REAL_DATA or not Path(REAL_DATA, "ptb_word").is_dir(),
    reason="needs RNNREG_DATA_DIR with the real data")


@pytest.fixture
def checked(tmp_path, monkeypatch):
    """A fixture ptb_word folder whose hashes stand in for the published ones, checks on."""
    folder = fx.write_ptb_word(tmp_path / "data")
    published = {p.name: checksums.content_sha256(p) for p in folder.iterdir()}
    monkeypatch.setitem(checksums.PUBLISHED, "ptb_word", published)
    monkeypatch.delenv(checksums.SKIP_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return folder


def _refusal(folder: Path) -> str:
    with pytest.raises(DataError) as err:
        load_ptb_word(folder.parent)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_published_files_load(checked):
    corpus = load_ptb_word(checked.parent)
    assert corpus.vocab_size > 0


def test_a_truncated_file_is_refused_naming_it_and_both_hashes(checked):
    train = checked / "ptb.train.txt"
    expected = checksums.PUBLISHED["ptb_word"]["ptb.train.txt"]
    data = train.read_bytes()
    train.write_bytes(data[: len(data) // 2])  # mid-word
    message = _refusal(checked)
    assert str(train) in message
    assert expected in message and checksums.content_sha256(train) in message
    assert "verify_checksums=False" in message


def test_a_same_length_edit_is_refused(checked):
    train = checked / "ptb.train.txt"
    data = train.read_bytes()
    edited = data.replace(b"cat", b"bat", 1)
    assert len(edited) == len(data) and edited != data
    train.write_bytes(edited)
    assert "ptb.train.txt has sha256" in _refusal(checked)


def test_a_gzipped_copy_is_checked_by_its_content(checked):
    valid = checked / "ptb.valid.txt"
    text = valid.read_bytes()
    valid.unlink()
    gz = checked / "ptb.valid.txt.gz"
    gz.write_bytes(gzip.compress(text, mtime=0))
    load_ptb_word(checked.parent)  # same content, compressed: accepted
    gz.write_bytes(gzip.compress(text.replace(b"dog", b"dig"), mtime=0))
    assert "ptb.valid.txt.gz has sha256" in _refusal(checked)
    gz.write_bytes(gzip.compress(text)[:-9])  # cut inside the gzip trailer
    message = _refusal(checked)
    assert "ptb.valid.txt.gz cannot be read" in message


def test_the_verdict_is_cached_outside_the_data_dir_so_hashing_costs_once(
        checked, tmp_path, monkeypatch):
    calls = []
    real = checksums.content_sha256
    monkeypatch.setattr(checksums, "content_sha256", lambda p: calls.append(p) or real(p))
    before = sorted(os.listdir(checked))
    load_ptb_word(checked.parent)
    assert len(calls) == 3
    load_ptb_word(checked.parent)
    assert len(calls) == 3  # size and mtime unchanged: the cached verdict
    assert sorted(os.listdir(checked)) == before
    assert (tmp_path / "cache" / "rnnreg_jax" / checksums.CACHE_NAME).is_file()


def test_an_edit_after_a_cached_check_is_caught(checked):
    load_ptb_word(checked.parent)  # verdict cached
    train = checked / "ptb.train.txt"
    st = train.stat()
    train.write_bytes(train.read_bytes().replace(b"sat", b"sit", 1))
    # Same size; file times may be coarser than this test is quick, so date the edit
    # a second later as any real edit would be.
    os.utime(train, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert "ptb.train.txt has sha256" in _refusal(checked)


def test_a_user_may_train_on_a_modified_copy_knowingly(checked, monkeypatch):
    train = checked / "ptb.train.txt"
    train.write_bytes(train.read_bytes() + b" a dog sat \n")
    _refusal(checked)
    assert load_ptb_word(checked.parent, verify=False).vocab_size > 0
    monkeypatch.setenv(checksums.SKIP_ENV, "1")
    assert load_ptb_word(checked.parent).vocab_size > 0


@pytest.mark.parametrize("cache_state", ["torn", "unwritable"])
def test_a_broken_cache_only_costs_time(checked, tmp_path, monkeypatch, cache_state):
    if cache_state == "torn":
        cache = tmp_path / "cache" / "rnnreg_jax" / checksums.CACHE_NAME
        cache.parent.mkdir(parents=True)
        cache.write_text('{"/x": [1, 2')
    else:  # the cache's parent is a file: nothing can be written under it
        (tmp_path / "blocker").write_text("")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "blocker"))
    load_ptb_word(checked.parent)
    (checked / "ptb.test.txt").write_text(" a cat \n")
    assert "ptb.test.txt has sha256" in _refusal(checked)


def test_the_data_cli_checks_and_can_skip(checked, tmp_path):
    (checked / "ptb.train.txt").write_text(fx.PTB_TRAIN + " a dog ran \n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "rnnreg_jax.data", "ptb_word", "--data_dir",
           str(checked.parent)]
    # The subprocess knows only the real published hashes: the fixture file differs.
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "has sha256" in out.stderr
    out = subprocess.run(cmd + ["--skip_checks"], capture_output=True, text=True, env=env,
                         check=False)
    assert out.returncode == 0, out.stderr


def _binary(data_dir: Path, workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != checksums.SKIP_ENV}
    return subprocess.run(
        [sys.executable, "-m", "experiments.ptb", "--config=tiny", f"--workdir={workdir}",
         f"--data_dir={data_dir}", "--config.data.batch_size=2",
         "--config.data.eval_batch_size=2", "--config.train.max_steps=2",
         "--config.train.mc_samples=0", "--config.train.tensorboard=False", *extra],
        capture_output=True, text=True, env=env, cwd=ROOT, check=False)


def _assert_refused(out: subprocess.CompletedProcess, workdir: Path, path: Path) -> None:
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr[-2000:]
    assert out.stderr.startswith(f"error: Data file {path} has sha256 ")
    assert "Traceback" not in out.stderr
    assert not workdir.exists()  # refused before the workdir was made or locked


@pytest.mark.slow
def test_the_binary_refuses_data_that_differs_and_runs_it_when_told(tmp_path):
    data = tmp_path / "data"
    fx.write_repeated_ptb_word(data)  # not the published corpus
    workdir = tmp_path / "wd"
    _assert_refused(_binary(data, workdir), workdir, data / "ptb_word" / "ptb.train.txt")
    out = _binary(data, workdir, "--config.data.verify_checksums=False")
    assert out.returncode == 0, out.stderr[-2000:]


@needs_real_data
def test_every_published_hash_matches_the_real_data(tmp_path, monkeypatch):
    monkeypatch.delenv(checksums.SKIP_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    hashed = []
    real = checksums.content_sha256
    monkeypatch.setattr(checksums, "content_sha256", lambda p: hashed.append(p) or real(p))
    for name in checksums.PUBLISHED:
        checksums.verify_folder(Path(REAL_DATA) / name, name)
    present = [n for name, files in checksums.PUBLISHED.items() for n in files
               if checksums._stored_as(Path(REAL_DATA) / name, n)]
    assert len(hashed) == len(present) >= 6  # at least the six PTB files


@needs_real_data
@pytest.mark.parametrize("damage", ["truncated", "same_length_edit"])
def test_the_binary_refuses_a_damaged_real_ptb_train(tmp_path, damage):
    data = tmp_path / "data" / "ptb_word"
    data.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (data / f"ptb.{split}.txt").write_bytes(
            Path(REAL_DATA, "ptb_word", f"ptb.{split}.txt").read_bytes())
    train = data / "ptb.train.txt"
    text = train.read_bytes()
    if damage == "truncated":
        train.write_bytes(text[: len(text) // 2 + 3])  # cut mid-word, as it once trained
    else:
        i = text.index(b" the ", len(text) // 2)
        train.write_bytes(text[:i] + b" tha " + text[i + 5:])
        assert train.stat().st_size == len(text)
    workdir = tmp_path / "wd"
    _assert_refused(_binary(tmp_path / "data", workdir), workdir, train)
