"""SIGTERM reaching one process of a multi-host run during an evaluation: every process
leaves the pass at the same batch, the run is saved, and the same command resumes as
one process does (the validation first; the final passes recorded before are not run
again; NT-ASGD's trigger hears the history an uninterrupted run hears).

Two processes (one CPU device each) joined by jax.distributed on 127.0.0.1 run
`tests/multihost_stop_script.py`: an NT-ASGD tiny LM, validation and test passes of 12
batches, so that the agreed checks (every `stopping.EVAL_CHECK_BATCHES`) fall
inside a pass.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from multihost_stop_script import EVAL_WINDOWS
from test_multihost import PATIENT  # XLA:CPU's patience with a loaded 2-core machine

from rnnreg_jax.train.stopping import EVAL_CHECK_BATCHES

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("multihost_stop_script.py")
TIMEOUT = 240
EVERY = EVAL_CHECK_BATCHES
FINAL_MC = "final evaluation, test with MC dropout (2 samples)"


# What process 0 logs when its coordinator could not bind the port (launch.sh's
# bind_failed: gRPC's line names the port; jax then raises or the process dies of SIGSEGV).
BIND_FAILED = ("Failed to add port to server", "Failed to start RPC server")
TRIES = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))  # every address: the coordinator listens on all of them
        return s.getsockname()[1]


def _start(workdir: Path, name: str, sigterm_at: str, env: dict) -> tuple[list, list, list]:
    """Both processes on a fresh port: (processes, their --out files, their log files)."""
    port = _free_port()
    procs, outs, logs = [], [], []
    for i in range(2):
        out = workdir.parent / f"{workdir.name}_{name}_{i}.json"
        log = workdir.parent / f"{workdir.name}_{name}_{i}.log"
        argv = [sys.executable, str(SCRIPT), str(workdir), f"--port={port}",
                f"--process_id={i}", "--num_processes=2", f"--out={out}"]
        if sigterm_at:
            argv.append(f"--sigterm_at={sigterm_at}")
        with open(log, "w") as f:  # a file, not a pipe: nothing must drain it while we wait
            procs.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=f,
                                          stderr=subprocess.STDOUT))
        outs.append(out)
        logs.append(log)
    return procs, outs, logs


def run(workdir: Path, name: str, sigterm_at: str = "") -> list[dict]:
    """Both processes of one run; each one's record (the script's --out). Started again on
    a new port when another program took the one picked before process 0 could bind it."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=PATIENT)
    for attempt in range(1, TRIES + 1):
        procs, outs, logs = _start(workdir, name, sigterm_at, env)
        try:
            procs[0].wait(timeout=TIMEOUT)
            first = logs[0].read_text()
            if (procs[0].returncode != 0 and attempt < TRIES
                    and any(m in first for m in BIND_FAILED)):
                print(f"port taken before process 0 could bind it; try {attempt + 1}",
                      file=sys.stderr)
                continue  # process 1, waiting for a coordinator, is killed below
            if procs[0].returncode == 0:  # else process 1 may wait for it for minutes
                procs[1].wait(timeout=TIMEOUT)
        finally:
            for p in procs:
                p.kill()
                p.wait()
        break
    texts = [log.read_text() for log in logs]
    for p, text in zip(procs, texts, strict=True):
        assert p.returncode == 0, text[-4000:]
    records = [json.loads(out.read_text()) for out in outs]
    for record, text in zip(records, texts, strict=True):
        record["log"] = text
    return records


def events(workdir: Path) -> list[dict]:
    with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> list[dict]:
    return run(tmp_path_factory.mktemp("whole") / "run", "whole")


@pytest.mark.slow
def test_sigterm_on_one_process_stops_every_evaluation_pass_together(tmp_path, whole):
    workdir = tmp_path / "run"
    # 1. SIGTERM to process 1 alone as epoch 2's validation starts.
    first = run(workdir, "a", sigterm_at="epoch 2 valid")
    for record in first:
        assert record["result"] == {"step": 6, "epoch": 1, "stopped": True}
        assert record["checks"].count("epoch 2 valid") == EVERY  # stopped part-way
        assert record["broadcast"] == {"from": 0}
    stop = events(workdir)[-1]
    assert (stop["split"], stop["during"], stop["reason"]) == ("stopped", "validation",
                                                              "SIGTERM")
    # 2. Resumed: epoch 2 validated first; SIGTERM as the final MC pass starts.
    second = run(workdir, "b", sigterm_at=FINAL_MC)
    for record in second:
        assert record["checks"][0] == "epoch 2 valid"
        assert record["result"]["stopped"]
        # (the final evaluation's passes share one count of checks)
        assert 0 < record["checks"].count(FINAL_MC) < EVAL_WINDOWS - 1
    assert second[0]["checks"] == second[1]["checks"]
    finals = [e["split"] for e in events(workdir) if e.get("phase") == "final"]
    assert finals == ["valid", "test"]
    # 3. Resumed again: only the MC pass runs; numbers as the run never stopped.
    third = run(workdir, "c")
    finals = [e["split"] for e in events(workdir) if e.get("phase") == "final"]
    assert finals == ["valid", "test", "test_mc"]
    for record, same in zip(third, whole, strict=True):
        assert set(record["checks"]) == {FINAL_MC}
        for key in ("valid/loss", "test/loss", "test_mc/loss", "step", "epoch"):
            assert record["result"][key] == same["result"][key], key
    # NT-ASGD's trigger heard, over the three runs, what it heard in one.
    for i in range(2):
        heard = first[i]["heard"] + second[i]["heard"] + third[i]["heard"]
        assert heard == whole[i]["heard"] and len(heard) == 3
