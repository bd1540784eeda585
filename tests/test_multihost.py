"""A real multi-process run: `./launch.sh multihost 2 ptb` (2 processes x 2 CPU devices
joined by jax.distributed on 127.0.0.1) against one process with 4 devices.

Both train the `tiny` PTB preset on a small generated PTB data dir (the real
layout) with the same seed and global batch; their per-step training losses,
and the final validation and batch-1 test numbers, must agree to 1e-5
relative. The 2-process run must write metrics from process 0 only, save an
orbax checkpoint from both processes into the one workdir, and a rerun with
more steps must resume from it. The same pair with AWD-LSTM's windows of drawn lengths
(`data.batching="variable"`) must agree too: every process cuts the same windows.

Every test here is marked slow (CI runs them; tests/test_launch_local.py keeps one
jax.distributed start in the default suite).

launch.sh runs with a stand-in VENV (a `python` that execs this interpreter,
and an install stamp newer than pyproject.toml), so it never pip-installs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import train_helpers as th

try:
    from tests import data_fixtures as fx
except ImportError:  # pragma: no cover - run from inside tests/
    import data_fixtures as fx

REPO = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash") or "/bin/bash"
STEPS = 20
RTOL = 1e-5
# The tiny preset (2x16 LSTM, batch 20, windows of 10) for 20 steps, a metrics line per
# step, no MC evaluation (the deterministic batch-1 test pass still runs), no TensorBoard.
FLAGS = ["--config=tiny", f"--config.train.max_steps={STEPS}",
         "--config.train.log_every_steps=1", "--config.train.mc_samples=0",
         "--config.train.tensorboard=false"]
TIMEOUT = 240
PATIENT = th.PATIENT


def _text(rng: random.Random, words: int) -> str:
    vocab = [f"w{i}" for i in range(40)]
    lines, count = [], 0
    while count < words:
        n = rng.randint(4, 12)
        lines.append(" " + " ".join(rng.choice(vocab) for _ in range(n)) + " ")
        count += n + 1
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """PTB word files: ~6000 training tokens (29 windows of the tiny preset's 20 x 10,
    so 24 steps stay inside epoch 1), a short validation text and a 40-token test stream."""
    root = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    fx.write_ptb_word(root, {"train": _text(rng, 5300), "valid": _text(rng, 280),
                             "test": _text(rng, 40)})
    return root


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A stand-in for .venv: bin/python execs this interpreter; the stamp skips pip."""
    venv = tmp_path_factory.mktemp("venv")
    (venv / "bin").mkdir()
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    (venv / ".rnnreg_installed").touch()
    return venv


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "DRY_RUN")}
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=path, **extra)  # keep the caller's path
    return env


def run_single(workdir: Path, data_dir: Path, *extra: str,
               devices: int = 4) -> subprocess.CompletedProcess:
    env = _env(XLA_FLAGS=f"{PATIENT} --xla_force_host_platform_device_count={devices}")
    return subprocess.run([sys.executable, "-m", "experiments.ptb", *FLAGS,
                           f"--data_dir={data_dir}", f"--workdir={workdir}", *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def run_multihost(venv: Path, workdir: Path, data_dir: Path, *extra: str,
                  processes: int = 2, devices: int = 2) -> subprocess.CompletedProcess:
    env = _env(VENV=str(venv), DEVICES_PER_PROCESS=str(devices),
               XLA_FLAGS=PATIENT)  # launch.sh appends the device count
    return subprocess.run([BASH, str(REPO / "launch.sh"), "multihost", str(processes), "ptb",
                           *FLAGS, f"--data_dir={data_dir}", f"--workdir={workdir}", *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def events(workdir: Path, split: str) -> list[dict]:
    with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
        return [e for e in map(json.loads, f) if e["split"] == split]


def assert_close(a: float, b: float, what: str) -> None:
    assert abs(a - b) <= RTOL * abs(a), f"{what}: {a} vs {b} (rel {abs(a - b) / abs(a):.2e})"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir, venv) -> dict:
    """The 1 x 4 and 2 x 2 runs, one after the other (never both at once)."""
    tmp = tmp_path_factory.mktemp("runs")
    single = run_single(tmp / "1x4", data_dir)
    assert single.returncode == 0, single.stderr[-4000:]
    multi = run_multihost(venv, tmp / "2x2", data_dir)
    log1 = tmp / "2x2" / "process_1.log"
    assert multi.returncode == 0, multi.stderr[-4000:] + (
        log1.read_text()[-2000:] if log1.exists() else "")
    return {"1x4": tmp / "1x4", "2x2": tmp / "2x2", "multi": multi}


@pytest.mark.slow
def test_two_processes_match_one_process(runs):
    single, multi = events(runs["1x4"], "train"), events(runs["2x2"], "train")
    assert [e["step"] for e in single] == list(range(1, STEPS + 1))
    assert [e["step"] for e in multi] == list(range(1, STEPS + 1))  # process 0 only: no twins
    for a, b in zip(single, multi, strict=True):
        assert_close(a["loss"], b["loss"], f"train loss at step {a['step']}")
        assert_close(a["objective"], b["objective"], f"objective at step {a['step']}")
    assert single[-1]["loss"] < single[0]["loss"]  # it trains
    # The final evaluation: validation (sharded) and the batch-1 test stream (replicated).
    for split in ("valid", "test"):
        (a,), (b,) = events(runs["1x4"], split), events(runs["2x2"], split)
        assert a["phase"] == b["phase"] == "final"
        assert_close(a["loss"], b["loss"], f"final {split} loss")


@pytest.mark.slow
def test_two_processes_share_one_workdir(runs):
    workdir, out = runs["2x2"], runs["multi"]
    assert "launch.sh: 2 processes x 2 devices, coordinator 127.0.0.1:" in out.stderr
    assert "process 0 of 2, 2 local devices of 4" in out.stderr
    final = json.loads(out.stdout[out.stdout.index("{"):])  # process 0's final metrics
    assert final["step"] == STEPS and "test/loss" in final
    log1 = (workdir / "process_1.log").read_text()
    assert "process 1 of 2, 2 local devices of 4" in log1
    assert "epoch 1 step" not in log1 and "Connecting to JAX distributed service" in log1
    assert sorted(os.listdir(workdir / "checkpoints")) == [str(STEPS)]


# AWD-LSTM's windows of drawn lengths (different compiled shapes step to step) and the
# learning rate scaled by each window's length: every process must cut the same windows.
VARIABLE_STEPS = 8  # with windows padded to multiples of 5: at most 4 compiled shapes
VARIABLE = ["--config.data.batching=variable", "--config.train.lr_window_reference=10",
            "--config.data.window_bucket=5", f"--config.train.max_steps={VARIABLE_STEPS}"]


@pytest.mark.slow
def test_two_processes_cut_the_same_variable_windows(tmp_path, data_dir, venv, runs):
    single = run_single(tmp_path / "1x4", data_dir, *VARIABLE)
    assert single.returncode == 0, single.stderr[-4000:]
    multi = run_multihost(venv, tmp_path / "2x2", data_dir, *VARIABLE)
    assert multi.returncode == 0, multi.stderr[-4000:]
    a, b = events(tmp_path / "1x4", "train"), events(tmp_path / "2x2", "train")
    assert [e["step"] for e in b] == list(range(1, VARIABLE_STEPS + 1))
    for x, y in zip(a, b, strict=True):
        assert_close(x["loss"], y["loss"], f"train loss at step {x['step']}")
    # the run read windows of drawn lengths, not the fixed ones of the `runs` fixture
    config = json.loads((tmp_path / "2x2" / "config.json").read_text())["config"]
    assert config["data"]["batching"] == "variable"
    fixed = events(runs["1x4"], "train")[:VARIABLE_STEPS]
    assert max(abs(x["loss"] - f["loss"]) for x, f in zip(a, fixed, strict=True)) > 1e-3
    (x,), (y,) = events(tmp_path / "1x4", "valid"), events(tmp_path / "2x2", "valid")
    assert_close(x["loss"], y["loss"], "final valid loss")


@pytest.mark.slow
def test_rerun_resumes_from_the_checkpoint(runs, data_dir, venv):
    workdir = runs["2x2"]
    more = STEPS + 4
    out = run_multihost(venv, workdir, data_dir, f"--config.train.max_steps={more}")
    assert out.returncode == 0, out.stderr[-4000:]
    assert f"Resumed from step {STEPS} (epoch 1, batch {STEPS})" in out.stderr
    (resume,) = events(workdir, "resume")
    assert resume["step"] == STEPS
    assert [e["step"] for e in events(workdir, "train")] == list(range(1, more + 1))
    assert str(more) in os.listdir(workdir / "checkpoints")

