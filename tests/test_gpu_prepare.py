"""scripts/gpu_prepare.sh: the data a GPU window reads, copied beside a checkout and kept
out of git (the wheels' download needs the package registry and is left out here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "gpu_prepare.sh", repo / "scripts")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    data = tmp_path / "data" / "ptb_word"
    data.mkdir(parents=True)
    (data / "ptb.train.txt").write_text(" a b \n")
    return repo


def _prepare(repo: Path, *names: str, **extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RNNREG_DATA_DIR=str(repo.parent / "data"), GPU_PREPARE_WHEELS="0",
               **extra)
    return subprocess.run(["bash", "scripts/gpu_prepare.sh", *names], cwd=repo, env=env,
                          capture_output=True, text=True, check=False)


def test_the_data_is_copied_and_kept_out_of_git(tmp_path):
    repo = _checkout(tmp_path)
    for _ in range(2):  # a second call replaces the copy and adds no exclude line
        out = _prepare(repo, "ptb_word")
        assert out.returncode == 0, out.stderr
    assert (repo / ".devdata" / "ptb_word" / "ptb.train.txt").read_text() == " a b \n"
    exclude = (repo / ".git" / "info" / "exclude").read_text().splitlines()
    assert exclude.count("/.devdata/") == 1 and exclude.count("/.whl/") == 1
    assert 'carry: [".devdata"]' in out.stdout
    assert "room left for a resume bundle: " in out.stdout
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                            text=True, check=True).stdout
    assert ".devdata" not in status


@pytest.mark.parametrize("names, message", [
    ((), "usage: bash scripts/gpu_prepare.sh DATASET..."),
    (("ptb_word", "ptb_chars"), "error: no data set ptb_chars in "),
])
def test_a_bad_call_is_one_line_and_copies_nothing(tmp_path, names, message):
    repo = _checkout(tmp_path)
    out = _prepare(repo, *names)
    assert out.returncode == 2
    assert out.stderr.startswith(message) and len(out.stderr.strip().splitlines()) == 1
    assert not (repo / ".devdata").exists()


def test_more_than_a_call_carries_is_refused_in_one_line(tmp_path):
    """The working tree (here the script, 1 kB of tracked text) and the data together
    against the call's limit, made small here."""
    repo = _checkout(tmp_path)
    (repo / "notes.txt").write_text("x" * 1000)  # untracked, not ignored: it travels
    env = {"GPU_CALL_LIMIT_BYTES": "1500"}
    out = _prepare(repo, "ptb_word", **env)
    assert out.returncode == 1
    assert out.stderr.startswith("error: the working tree and the carried data (")
    assert len(out.stderr.strip().splitlines()) == 1
    size = (repo / "scripts" / "gpu_prepare.sh").stat().st_size + 1000 + 6  # + ptb.train.txt
    assert f"a call carries {size} bytes (working tree {size - 6}, carry 6)" in out.stdout
