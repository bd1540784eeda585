"""`launch.sh tpu run --until-done`: it polls the VM and the run, recreates a preempted
spot VM and resumes, restarts a stopped run and ends with a failed run's status."""

from __future__ import annotations

import json
import shutil

import launch_sandbox
import pytest
from launch_sandbox import TPU_VM, WHERE, WORKER, dry_lines, expected

# launch_sandbox's fixtures, bound here so that this file's tests find them
root, sandbox = launch_sandbox.root, launch_sandbox.sandbox


def _replies(run, **replies) -> dict:
    path = run.tmp / "replies.json"
    path.write_text(json.dumps(replies))
    return {"FAKE_GCLOUD_REPLIES": str(path), "TPU_POLL": "0"}


def test_until_done_dry_run_prints_the_start_and_one_poll(sandbox, root):
    run, calls = sandbox
    got = dry_lines(run("tpu", "run", "ptb", "--config=tiny", "--until-done", "--spot",
                        "--dry-run"))
    assert got == expected("run", run.tmp, root) + [
        [*TPU_VM, "describe", "rnnreg", "--format=value(state)", *WHERE],
        [*TPU_VM, "ssh", "rnnreg", "--worker=0", f"--command={WORKER} state", *WHERE]]
    assert calls() == []


def test_until_done_recreates_a_preempted_spot_vm_and_resumes(sandbox, root):
    """Running, then preempted: delete, create --spot, wait for READY, setup, start again
    (the same workdir: it resumes); then the run finishes and the loop ends with 0."""
    run, calls = sandbox
    if not shutil.which("git"):
        pytest.skip("git is not installed")
    env = _replies(run, describe=["READY", "PREEMPTED", "CREATING", "READY", "READY"],
                   state=["running", "exit:0"])
    result = run("tpu", "run", "ptb", "--config=tiny", "--until-done", "--spot", env=env)
    assert result.returncode == 0, result.stderr
    assert "the VM is PREEMPTED: recreating it and resuming" in result.stderr
    assert "the run finished" in result.stderr
    start = expected("run", run.tmp, root)[0][1:]
    describe = [*TPU_VM[1:], "describe", "rnnreg", "--format=value(state)", *WHERE]
    state = [*TPU_VM[1:], "ssh", "rnnreg", "--worker=0", f"--command={WORKER} state", *WHERE]
    create = expected("create", run.tmp, root)[0][1:]
    create = create[:-2] + ["--spot"] + create[-2:]
    setup = [argv[1:] for argv in expected("setup", run.tmp, root) if argv[0] == "gcloud"]
    assert calls() == [start, describe, state, describe,
                       expected("delete", run.tmp, root)[0][1:], create, describe, describe,
                       *setup, start, describe, state]


@pytest.mark.parametrize("state,rc,needle", [
    ("exit:3", 3, "the run failed with exit status 3"),
])
def test_until_done_stops_on_a_failed_run(sandbox, state, rc, needle):
    run, calls = sandbox
    env = _replies(run, describe=["READY"], state=[state])
    result = run("tpu", "run", "ptb", "--config=tiny", "--until-done", env=env)
    assert result.returncode == rc and needle in result.stderr
    assert len(calls()) == 3  # start, describe, state: nothing recreated


def test_until_done_restarts_a_run_that_stopped_before_its_end(sandbox, root):
    run, calls = sandbox
    env = _replies(run, describe=["READY", "READY"], state=["stopped", "exit:0"])
    result = run("tpu", "run", "ptb", "--config=tiny", "--until-done", env=env)
    assert result.returncode == 0, result.stderr
    start = expected("run", run.tmp, root)[0][1:]
    assert [c for c in calls() if c == start] == [start, start]
