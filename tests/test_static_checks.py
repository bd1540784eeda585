"""Lint and types in the default suite: `ruff check .` and `mypy` (its `[tool.mypy]`
section in pyproject.toml: the library, whose annotations ship with it in py.typed, the
experiment binaries and the benchmarks) must pass from the repository root, so CI
enforces both."""

from __future__ import annotations

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_ruff_passes():
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, f"ruff check . failed:\n{result.stdout}{result.stderr}"


def test_mypy_passes():
    result = _run("mypy")
    assert result.returncode == 0, f"mypy failed:\n{result.stdout}{result.stderr}"
    assert "Success" in result.stdout  # it checked the files pyproject.toml names
