"""launch.sh's local subcommands: `multihost` (stub experiments under a stand-in venv, one
of them starting jax.distributed for real; tests/test_multihost.py runs the real
experiment), `run`'s malloc settings and `setup`'s Python version check."""

from __future__ import annotations

import json
import os
import socket
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


# A stub experiment that starts jax.distributed as the real ones do (process 0 runs the
# coordinator) and prints where it joined; each start is one line in $MHJAX_STARTS. With
# MHJAX_FAIL set, process 0 fails as a training run can (status 5) and the others sleep.
STUB_JAX = """import json, os, sys, time
if __name__ == "__main__":
    flags = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
    with open(os.environ["MHJAX_STARTS"], "a") as f:
        f.write(flags["process_id"] + "\\n")
    if os.environ.get("MHJAX_FAIL"):
        if flags["process_id"] == "0":
            print("RuntimeError: the loss is NaN at step 3", file=sys.stderr)
            sys.exit(5)
        time.sleep(60)
    import jax
    jax.distributed.initialize(coordinator_address=flags["coordinator_address"],
                               num_processes=int(flags["num_processes"]),
                               process_id=int(flags["process_id"]))
    print(json.dumps({"process": jax.process_index(), "of": jax.process_count(),
                      "coordinator": flags["coordinator_address"]}), flush=True)
"""

# A stand-in venv's python whose port probes (launch.sh's only `python -c`) answer with the
# ports listed in $TAKEN_PORTS, one each, before the kernel picks again.
PROBED_PYTHON = f"""#!{sys.executable}
import os, sys
path = os.environ.get("TAKEN_PORTS")
if sys.argv[1:2] == ["-c"] and path and os.path.isfile(path) and os.path.getsize(path):
    with open(path) as f:
        first, *rest = f.read().split()
    with open(path, "w") as f:
        f.write(" ".join(rest))
    print(first)
    sys.exit(0)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


@pytest.fixture()
def jax_launch(root, tmp_path):
    """run(n, env=...): `launch.sh multihost n mhjax` with the probing venv; its result, and
    how many times process 0 started."""
    (root / "experiments" / "mhjax.py").write_text(STUB_JAX)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(PROBED_PYTHON)
    (venv / "bin" / "python").chmod(0o755)
    (venv / ".rnnreg_installed").touch()
    starts = tmp_path / "starts"

    def run(n: int, env: dict | None = None):
        e = {k: v for k, v in os.environ.items()
             if k not in ("XLA_FLAGS", "MULTIHOST_PORT", "DRY_RUN", "JAX_PLATFORMS")}
        e.update(VENV=str(venv), TMPDIR=str(tmp_path), MHJAX_STARTS=str(starts),
                 TAKEN_PORTS=str(tmp_path / "taken"), **(env or {}))
        starts.write_text("")
        result = subprocess.run([BASH, str(root / "launch.sh"), "multihost", str(n), "mhjax",
                                 f"--workdir={tmp_path / 'work'}"], env=e, cwd=tmp_path,
                                capture_output=True, text=True, timeout=180)
        assert not list(tmp_path.glob("rnnreg_multihost.*"))  # its temporary files: gone
        return result, starts.read_text().split().count("0")

    run.tmp = tmp_path
    return run


# Process 0's status when its coordinator could not bind: jax raised, or it died of SIGSEGV
# as it often does (jax 0.10).
BIND_STATUS = (1, 128 + 11)


@pytest.fixture()
def taken_port():
    """A port another program holds (listening on 127.0.0.1) while the test runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_multihost_starts_again_on_a_new_port_when_the_picked_one_was_taken(jax_launch,
                                                                            taken_port):
    """The port launch.sh picked is taken before process 0's coordinator binds it: all the
    processes start again on another port, the user told in one line."""
    (jax_launch.tmp / "taken").write_text(str(taken_port))
    result, starts = jax_launch(2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert starts == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("launch.sh:")]
    retry = [line for line in lines if "was taken" in line]
    assert len(retry) == 1
    prefix = (f"launch.sh: port {taken_port} was taken before the coordinator could bind it; "
              "starting all 2 processes again on port ")
    assert retry[0].startswith(prefix) and retry[0].endswith(" (try 2 of 3).")
    port = int(retry[0][len(prefix):].split()[0])
    assert port != taken_port
    assert "Failed to add port to server" in result.stderr  # process 0's own words, kept
    assert not any("exited with status" in line for line in lines)
    joined = [json.loads(result.stdout),
              json.loads((jax_launch.tmp / "work" / "process_1.log").read_text())]
    assert [(j["process"], j["of"]) for j in joined] == [(0, 2), (1, 2)]
    assert {j["coordinator"] for j in joined} == {f"127.0.0.1:{port}"}


@pytest.mark.slow
def test_multihost_gives_up_on_a_taken_port_after_three_tries(jax_launch, taken_port):
    (jax_launch.tmp / "taken").write_text(f"{taken_port} {taken_port} {taken_port}")
    result, starts = jax_launch(1)
    assert result.returncode in BIND_STATUS and starts == 3
    assert result.stderr.count("was taken before the coordinator could bind it") == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "launch.sh: the coordinator could not bind any of the 3 ports tried (the last "
        f"{taken_port}); stopping the others.")


def test_multihost_does_not_retry_a_port_the_user_chose(jax_launch, taken_port):
    result, starts = jax_launch(1, env={"MULTIHOST_PORT": str(taken_port)})
    assert result.returncode in BIND_STATUS and starts == 1
    assert "was taken" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"launch.sh: the coordinator could not bind MULTIHOST_PORT={taken_port} (another "
        "program is likely using it); stopping the others.")


def test_multihost_runs_a_failed_training_once_with_its_status(jax_launch):
    """Process 0 failing for any other reason: one try, its exit status, no new port."""
    result, starts = jax_launch(2, env={"MHJAX_FAIL": "1"})
    assert (result.returncode, starts) == (5, 1)
    assert "RuntimeError: the loss is NaN at step 3" in result.stderr
    assert "launch.sh: process 0 exited with status 5; stopping the others." in result.stderr
    assert "was taken" not in result.stderr and "could not bind" not in result.stderr


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
