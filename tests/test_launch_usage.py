"""launch.sh's help, and its errors: one line on stderr, exit 2, nothing run."""

from __future__ import annotations

import launch_sandbox
import pytest

# launch_sandbox's fixtures, bound here so that this file's tests find them
root, sandbox = launch_sandbox.root, launch_sandbox.sandbox


def test_help_prints_usage(sandbox):
    run, _ = sandbox
    top = run("help")
    assert top.returncode == 0 and "./launch.sh tpu <command>" in top.stdout
    assert "./launch.sh multihost N <experiment>" in top.stdout
    tpu = run("tpu", "help")
    assert tpu.returncode == 0
    for word in ("create", "setup", "run", "status", "stop", "logs", "ssh", "delete", "--spot",
                 "--queued", "--until-done", "TPU_PROJECT", "--dry-run"):
        assert word in tpu.stdout


@pytest.mark.parametrize("args,env,unset,needle", [
    (["tpu", "create"], {"PATH": "EMPTY"}, [], "gcloud is not on PATH"),
    (["tpu", "create", "--dry-run"], {}, ["TPU_PROJECT"], "no GCP project"),
    (["tpu", "create"], {}, ["TPU_PROJECT"], "no GCP project"),
    (["tpu", "frobnicate", "--dry-run"], {}, [], "unknown tpu command 'frobnicate'"),
    (["frobnicate"], {}, [], "unknown command 'frobnicate'"),
    (["tpu", "run", "--dry-run"], {}, [], "needs an experiment name"),
    (["tpu", "run", "nope", "--config=x", "--dry-run"], {}, [],
     "unknown experiment 'nope'; choose one of: mh ptb."),
    (["tpu", "run", "main", "--config=x", "--dry-run"], {}, [], "unknown experiment 'main'"),
    (["tpu", "run", "ptb", "--dry-run"], {}, [], "needs --config=PRESET"),
    (["tpu", "create", "--name=Bad_Name", "--dry-run"], {}, [], "bad TPU name"),
    (["tpu", "ssh", "--worker=all", "--dry-run"], {}, [], "--worker must be"),
    (["tpu", "delete", "extra", "--dry-run"], {}, [], "takes no argument"),
    (["tpu", "status", "extra", "--dry-run"], {}, [], "takes no argument"),
    (["tpu", "create", "--until-done", "--dry-run"], {}, [], "--until-done goes with run only"),
    (["tpu", "run", "ptb", "--config=x", "--until-done"], {"TPU_POLL": "soon"}, [],
     "TPU_POLL must be a number of seconds"),
    (["tpu", "create", "--zone"], {}, [], "--zone needs a value"),
    (["run", "nope"], {}, [], "unknown experiment 'nope'; choose one of: mh ptb."),
    (["run", "cli"], {}, [], "unknown experiment 'cli'; choose one of: mh ptb."),
    (["multihost", "2"], {}, [], "multihost needs a process count and an experiment name"),
    (["multihost", "two", "ptb"], {}, [], "process count must be a positive integer"),
    (["multihost", "2", "nope"], {}, [], "unknown experiment 'nope'"),
    (["multihost", "2", "ptb"], {}, [], "multihost needs --config=PRESET"),
    (["multihost", "2", "ptb", "--config=tiny"], {"DEVICES_PER_PROCESS": "0"}, [],
     "DEVICES_PER_PROCESS must be a positive integer"),
])
def test_errors_are_one_line_and_exit_2(sandbox, args, env, unset, needle):
    run, calls = sandbox
    if env.get("PATH") == "EMPTY":  # no gcloud, and nothing else either
        empty = run.tmp / "empty"
        empty.mkdir()
        env = {**env, "PATH": str(empty)}
    result = run(*args, env=env, unset=unset)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert calls() == []
