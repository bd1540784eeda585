"""`python -m rnnreg_jax.data`: stats on good data, one sentence and exit 2 on bad data."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    from tests import data_fixtures as fx
except ImportError:
    import data_fixtures as fx

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        XDG_CACHE_HOME=str(cache),
        RNNREG_DATA_URL="http://127.0.0.1:9",
    )  # never reach the internet
    env.pop("RNNREG_DATA_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "rnnreg_jax.data", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_good_data_prints_stats(tmp_path):
    fx.write_ptb_word(tmp_path)
    r = run_cli("ptb_word", "--data_dir", str(tmp_path), cache=tmp_path / "c")
    assert r.returncode == 0, r.stderr
    assert "vocab size: 8" in r.stdout and "train: 13 tokens" in r.stdout
    assert "load time:" in r.stdout


def _empty_ptb(root):
    fx.write_ptb_word(root)
    (root / "ptb_word" / "ptb.train.txt").write_bytes(b"")
    return "ptb_word", "ptb.train.txt is empty"


def _latin1_ptb(root):
    fx.write_ptb_word(root)
    (root / "ptb_word" / "ptb.test.txt").write_bytes(b" na\xefve \n")
    return "ptb_word", "ptb.test.txt has non-UTF-8 bytes"


def _bad_magic(root):
    fx.write_mnist(root)
    fx.write(
        root / "mnist" / "train-images-idx3-ubyte",
        fx.idx_bytes(np.zeros((2, 28, 28), np.uint8), 2049 + 0x200),
        gz=True,
    )
    return "mnist", "idx magic number"


def _short_idx(root):
    fx.write_mnist(root)
    data = fx.idx_bytes(np.zeros((3, 28, 28), np.uint8), 2051)[:-100]
    fx.write(root / "mnist" / "t10k-images-idx3-ubyte", data, gz=True)
    return "mnist", "shorter than its header says"


def _truncated_gzip(root):
    fx.write_ptb_char(root)
    path = root / "ptb_char" / "ptb.char.valid.txt.gz"
    path.write_bytes(path.read_bytes()[:-10])
    return "ptb_char", "ptb.char.valid.txt.gz is truncated"


def _missing_dir(root):
    return "cornell", "scaledata is missing; pass --data_dir or set RNNREG_DATA_DIR"


def _missing_file(root):
    fx.write_cornell(root)
    (root / "cornell_scale_v1.0/scaledata/Steve+Rhodes/subj.Steve+Rhodes").unlink()
    return "cornell", "subj.Steve+Rhodes is missing"


@pytest.mark.parametrize(
    "make",
    [_empty_ptb, pytest.param(_latin1_ptb, marks=pytest.mark.slow), _bad_magic,
     pytest.param(_short_idx, marks=pytest.mark.slow),
     pytest.param(_truncated_gzip, marks=pytest.mark.slow), _missing_dir,
     pytest.param(_missing_file, marks=pytest.mark.slow)],
)
def test_bad_data_exits_2_with_one_sentence(tmp_path, make):
    dataset, expected = make(tmp_path / "data")
    r = run_cli(dataset, "--data_dir", str(tmp_path / "data"), cache=tmp_path / "c")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert expected in lines[0] and lines[0].endswith(".")
    assert r.stdout == ""
