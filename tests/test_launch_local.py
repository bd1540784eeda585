"""launch.sh's local subcommands: `multihost` (a stub experiment under a stand-in venv;
tests/test_multihost.py runs the real one), `run`'s malloc settings and `setup`'s Python
version check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import launch_sandbox
import pytest
from launch_sandbox import BASH, REPO, dry_lines

# launch_sandbox's fixtures, bound here so that this file's tests find them
root, sandbox = launch_sandbox.root, launch_sandbox.sandbox


def multihost_argv(root: Path, venv: Path, n: int, i: int, port: str, workdir: str,
                   *flags: str, devices: int = 2) -> list[str]:
    return ["env", f"XLA_FLAGS=--xla_force_host_platform_device_count={devices}",
            "JAX_PLATFORMS=cpu", str(venv / "bin" / "python"), "-m", "experiments.ptb", *flags,
            f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={n}",
            f"--process_id={i}"] + ([] if i == 0 else [">", f"{workdir}/process_{i}.log", "2>&1"])


def test_multihost_dry_run_prints_one_command_per_process(sandbox, root):
    run, _ = sandbox
    got = dry_lines(run("multihost", "--dry-run", "2", "ptb", "--config=tiny", "--x=a b",
                        env={"MULTIHOST_PORT": "4321"}, unset=["VENV", "XLA_FLAGS",
                                                               "JAX_PLATFORMS"]))
    venv = root / ".venv"
    flags = ["--config=tiny", "--x=a b", "--workdir=runs/ptb_tiny"]  # the default workdir
    assert got == [multihost_argv(root, venv, 2, i, "4321", "runs/ptb_tiny", *flags)
                   for i in range(2)]
    # DRY_RUN=1, the user's workdir and devices per process; no port: a placeholder.
    got = dry_lines(run("multihost", "3", "ptb", "--config", "tiny", "--workdir", "/w",
                        env={"DRY_RUN": "1", "DEVICES_PER_PROCESS": "4"},
                        unset=["VENV", "XLA_FLAGS", "JAX_PLATFORMS", "MULTIHOST_PORT"]))
    assert got == [multihost_argv(root, venv, 3, i, "PORT", "/w", "--config", "tiny",
                                  "--workdir", "/w", devices=4) for i in range(3)]
    assert not (root / ".venv").exists()  # a dry run sets nothing up


@pytest.fixture()
def stand_in_venv(tmp_path) -> Path:
    """bin/python execs this interpreter; the install stamp makes `setup` skip pip."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    (venv / ".rnnreg_installed").touch()
    return venv


def test_multihost_starts_n_processes_and_separates_their_logs(sandbox, stand_in_venv):
    run, _ = sandbox
    workdir = run.tmp / "work"
    result = run("multihost", "3", "mh", f"--workdir={workdir}", "--flag=1",
                 env={"VENV": str(stand_in_venv)}, unset=["XLA_FLAGS", "MULTIHOST_PORT"])
    assert result.returncode == 0, result.stderr
    seen = [json.loads(result.stdout)]  # process 0: this terminal
    seen += [json.loads((workdir / f"process_{i}.log").read_text()) for i in (1, 2)]
    ports = set()
    for i, got in enumerate(seen):
        *rest, coordinator, nproc, pid = got["argv"]
        assert rest == [f"--workdir={workdir}", "--flag=1"]
        assert (nproc, pid) == ("--num_processes=3", f"--process_id={i}")
        assert coordinator.startswith("--coordinator_address=127.0.0.1:")
        ports.add(int(coordinator.rsplit(":", 1)[1]))
        assert got["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
        assert got["JAX_PLATFORMS"] == "cpu"
    assert len(ports) == 1  # one coordinator for all


def test_multihost_stops_the_others_when_one_fails(sandbox, stand_in_venv):
    run, _ = sandbox
    result = run("multihost", "2", "mh", f"--workdir={run.tmp / 'work'}",
                 env={"VENV": str(stand_in_venv), "MH_FAIL": "1"})  # process 0 would sleep 60 s
    assert result.returncode == 3
    assert "launch.sh: process 1 exited with status 3; stopping the others." in result.stderr


def test_run_keeps_big_malloc_blocks_in_the_heap_unless_told_otherwise(sandbox, stand_in_venv):
    """`run` passes glibc the mmap/trim thresholds that spare CPU steps their page faults;
    a GLIBC_TUNABLES of the user's own wins."""
    run, _ = sandbox
    result = run("run", "mh", "--x=1", env={"VENV": str(stand_in_venv)},
                 unset=["GLIBC_TUNABLES"])
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["argv"] == ["--x=1"]
    assert got["GLIBC_TUNABLES"] == ("glibc.malloc.mmap_threshold=268435456:"
                                     "glibc.malloc.trim_threshold=4294967296")
    mine = run("run", "mh", env={"VENV": str(stand_in_venv), "GLIBC_TUNABLES": "glibc.x=1"})
    assert json.loads(mine.stdout)["GLIBC_TUNABLES"] == "glibc.x=1"


def test_setup_refuses_a_python_older_than_pyproject_requires(tmp_path):
    """A 3.10 interpreter would resolve an older, untested jax: one line, exit 2, no venv."""
    old = tmp_path / "python3.10"
    old.write_text("#!/bin/sh\nexit 1\n")  # fails the version check as an old one does
    old.chmod(0o755)
    venv = tmp_path / "venv"
    out = subprocess.run([BASH, str(REPO / "launch.sh"), "setup"], capture_output=True,
                         text=True, check=False,
                         env=dict(os.environ, PYTHON=str(old), VENV=str(venv)))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"launch.sh: {old} is not Python >= 3.11 (jax and flax need it); set "
        "PYTHON=python3.11 or newer."]
    assert not venv.exists()
    requires = (REPO / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.11"' in requires
