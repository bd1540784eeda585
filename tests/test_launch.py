"""launch.sh: the `tpu` subcommands (dry run and a fake gcloud), `multihost`, errors,
shellcheck.

The launcher and scripts/tpu.sh are copied into a sandbox root with stub
experiments, so the tests never touch the real venv, git history or network. A
fake `gcloud` first on PATH records each call's argv (one JSON list a line).
`multihost` runs a stub experiment under a stand-in venv (tests/test_multihost.py
runs the real one).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash") or "/bin/bash"
ENV_KEYS = ("TPU_NAME", "TPU_ZONE", "TPU_TYPE", "TPU_VERSION", "TPU_PROJECT", "TPU_BUCKET",
            "CLOUDSDK_CORE_PROJECT", "DRY_RUN")
TPU_VM = ["gcloud", "compute", "tpus", "tpu-vm"]
WHERE = ["--zone=us-central2-b", "--project=proj"]  # the defaults + the test project
# Every worker: a fresh checkout, a Python 3.11 venv made by uv, the lock's hash-checked
# pins, then the package with the tpu extra.
UV, PY = "~/.local/bin/uv", "~/rnnreg_venv/bin/python"
INSTALL = ("rm -rf ~/rnnreg_jax && mkdir -p ~/rnnreg_jax && tar -xzf ~/rnnreg_jax.tar.gz "
           "-C ~/rnnreg_jax && cd ~/rnnreg_jax && python3 -m pip install --user --quiet uv && "
           f"rm -rf ~/rnnreg_venv && {UV} venv --quiet --python 3.11 ~/rnnreg_venv && "
           f"{UV} pip install --quiet --python {PY} --require-hashes -r requirements-lock.txt && "
           f"{UV} pip install --quiet --python {PY} -e \".[tpu,tfds]\"")
DATA_ENV = "if [ -d ~/data ]; then export RNNREG_DATA_DIR=$HOME/data; fi; "
WORKER = "bash ~/rnnreg_jax/scripts/tpu_worker.sh"

# A stub experiment for `multihost`: prints its argv and JAX environment as JSON; with
# MH_FAIL set, process 1 exits 3 at once and the others sleep (as if waiting for it).
STUB_MH = """import json, os, sys, time
if __name__ == "__main__":
    print(json.dumps({"argv": sys.argv[1:], "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
                      "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS"),
                      "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES")}), flush=True)
    if os.environ.get("MH_FAIL"):
        if "--process_id=1" in sys.argv:
            sys.exit(3)
        time.sleep(60)
"""

# FAKE_GCLOUD_REPLIES (optional): a JSON file {"describe": [...], "state": [...]}; each
# `tpu-vm describe` call / worker `state` query prints the next reply ("!fail": exit 1).
FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
path = os.environ.get("FAKE_GCLOUD_REPLIES")
key = ("describe" if "describe" in sys.argv else
       "state" if any(a.endswith("tpu_worker.sh state") for a in sys.argv) else None)
if path and key:
    with open(path) as f:
        replies = json.load(f)
    reply = replies[key].pop(0) if replies.get(key) else ""
    with open(path, "w") as f:
        json.dump(replies, f)
    if reply == "!fail":
        sys.exit(1)
    print(reply)
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A copy of the launcher with one stub experiment, committed to its own git repo."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copy2(REPO / "launch.sh", root / "launch.sh")
    (root / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "tpu.sh", root / "scripts" / "tpu.sh")
    shutil.copy2(REPO / "scripts" / "quote.sh", root / "scripts" / "quote.sh")
    shutil.copy2(REPO / "scripts" / "tpu_worker.sh", root / "scripts" / "tpu_worker.sh")
    (root / "experiments").mkdir()
    (root / "experiments" / "ptb.py").write_text("if __name__ == '__main__':\n    print('stub')\n")
    (root / "experiments" / "cli.py").write_text("")  # parts of the binaries, no __main__
    (root / "experiments" / "main.py").write_text("def run():\n    pass\n")
    (root / "experiments" / "mh.py").write_text(STUB_MH)
    (root / "pyproject.toml").write_text("[project]\nname = 'stub'\n")
    if shutil.which("git"):
        git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run([*git, "init", "-q"], check=True)
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "stub"], check=True)
    return root


@pytest.fixture()
def sandbox(tmp_path, root):
    """(run, calls): run the launcher with a fake gcloud first on PATH; calls() reads its log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gcloud"
    fake.write_text(FAKE_GCLOUD)
    fake.chmod(0o755)
    log = tmp_path / "gcloud.log"
    base = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    base.update(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                FAKE_GCLOUD_LOG=str(log), TMPDIR=str(tmp_path), TPU_PROJECT="proj")

    def run(*args, env=None, unset=()):
        e = {**base, **(env or {})}
        for k in unset:
            e.pop(k, None)
        return subprocess.run([BASH, str(root / "launch.sh"), *args], env=e,
                              capture_output=True, text=True, timeout=20, cwd=tmp_path)

    def calls():
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    run.tmp = tmp_path
    return run, calls


def dry_lines(result) -> list[list[str]]:
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def expected(sub: str, tmp: Path, root: Path) -> list[list[str]]:
    """The documented commands for `./launch.sh tpu <sub>` with defaults and project `proj`."""
    tarball = str(tmp / "rnnreg_jax-rnnreg.tar.gz")
    return {
        "create": [[*TPU_VM, "create", "rnnreg", "--accelerator-type=v4-8",
                    "--version=tpu-ubuntu2204-base", *WHERE]],
        "setup": [["git", "-C", str(root), "archive", "--format=tar.gz", f"--output={tarball}",
                   "HEAD"],
                  [*TPU_VM, "scp", tarball, "rnnreg:rnnreg_jax.tar.gz", "--worker=all",
                   "--recurse", *WHERE],
                  [*TPU_VM, "ssh", "rnnreg", "--worker=all", f"--command={INSTALL}", *WHERE]],
        "run": [[*TPU_VM, "ssh", "rnnreg", "--worker=all",
                 "--command=cd ~/rnnreg_jax || exit 1; " + DATA_ENV +
                 f"bash scripts/tpu_worker.sh start '' -- {PY} -m experiments.ptb "
                 "--config=tiny --config.train.distributed=true "
                 "--workdir=$HOME/runs/ptb-tiny", *WHERE]],
        "status": [[*TPU_VM, "ssh", "rnnreg", "--worker=all", f"--command={WORKER} status",
                    *WHERE]],
        "stop": [[*TPU_VM, "ssh", "rnnreg", "--worker=all", f"--command={WORKER} stop",
                  *WHERE]],
        "logs": [[*TPU_VM, "ssh", "rnnreg", "--worker=0", "--command=tail -f ~/rnnreg_run.log",
                  *WHERE]],
        "ssh": [[*TPU_VM, "ssh", "rnnreg", "--worker=0", *WHERE]],
        "delete": [[*TPU_VM, "delete", "rnnreg", "--quiet", *WHERE]],
    }[sub]


SUBCOMMANDS = {
    "create": ["create"],
    "setup": ["setup"],
    "run": ["run", "ptb", "--config=tiny"],
    "status": ["status"],
    "stop": ["stop"],
    "logs": ["logs"],
    "ssh": ["ssh"],
    "delete": ["delete"],
}


@pytest.mark.parametrize("sub", list(SUBCOMMANDS))
def test_dry_run_prints_the_documented_commands(sandbox, root, sub):
    run, calls = sandbox
    got = dry_lines(run("tpu", *SUBCOMMANDS[sub], "--dry-run"))
    assert got == expected(sub, run.tmp, root)
    assert calls() == []  # nothing ran
    assert not (run.tmp / "rnnreg_jax-rnnreg.tar.gz").exists()


@pytest.mark.parametrize("sub", list(SUBCOMMANDS))
def test_real_run_executes_the_same_gcloud_argv(sandbox, root, sub):
    run, calls = sandbox
    if sub == "setup" and not shutil.which("git"):
        pytest.skip("git is not installed")
    dry = dry_lines(run("tpu", *SUBCOMMANDS[sub], "--dry-run"))
    result = run("tpu", *SUBCOMMANDS[sub])
    assert result.returncode == 0, result.stderr
    assert calls() == [argv[1:] for argv in dry if argv[0] == "gcloud"]
    if sub == "setup":  # the local step really ran: a tarball of the committed tree
        with tarfile.open(run.tmp / "rnnreg_jax-rnnreg.tar.gz") as tar:
            assert {"launch.sh", "scripts/tpu.sh", "experiments/ptb.py"} <= set(tar.getnames())


@pytest.mark.parametrize("args,env", [
    (["--dry-run", "create"], {}),
    (["create", "--dry-run"], {}),
    (["create"], {"DRY_RUN": "1"}),
])
def test_dry_run_anywhere_or_from_env(sandbox, root, args, env):
    run, calls = sandbox
    assert dry_lines(run("tpu", *args, env=env)) == expected("create", run.tmp, root)
    assert calls() == []


def test_flags_override_environment_and_defaults(sandbox):
    run, _ = sandbox
    env = {"TPU_NAME": "envname", "TPU_ZONE": "europe-west4-a", "TPU_TYPE": "v3-8",
           "TPU_VERSION": "envver", "TPU_PROJECT": "envproj"}
    assert dry_lines(run("tpu", "create", "--dry-run", env=env)) == [
        [*TPU_VM, "create", "envname", "--accelerator-type=v3-8", "--version=envver",
         "--zone=europe-west4-a", "--project=envproj"]]
    flags = ["--name=flagname", "--zone", "us-east5-a", "--accelerator-type=v5litepod-16",
             "--version=v2-alpha-tpuv5-lite", "--project=flagproj", "--spot"]
    assert dry_lines(run("tpu", "create", *flags, "--dry-run", env=env)) == [
        [*TPU_VM, "create", "flagname", "--accelerator-type=v5litepod-16",
         "--version=v2-alpha-tpuv5-lite", "--spot", "--zone=us-east5-a", "--project=flagproj"]]


def test_project_falls_back_to_cloudsdk_core_project(sandbox):
    run, _ = sandbox
    got = dry_lines(run("tpu", "delete", "--dry-run", env={"CLOUDSDK_CORE_PROJECT": "sdk"},
                        unset=["TPU_PROJECT"]))
    assert got == [[*TPU_VM, "delete", "rnnreg", "--quiet", "--zone=us-central2-b",
                    "--project=sdk"]]


def test_setup_with_bucket_syncs_data_and_worktree_uses_tar(sandbox, root):
    run, _ = sandbox
    got = dry_lines(run("tpu", "setup", "--bucket=gs://bk/", "--worktree", "--dry-run"))
    tarball = str(run.tmp / "rnnreg_jax-rnnreg.tar.gz")
    assert got[0][:3] == ["tar", "-czf", tarball] and got[0][-3:] == ["-C", str(root), "."]
    assert got[1:3] == expected("setup", run.tmp, root)[1:]
    assert got[3:] == [[*TPU_VM, "ssh", "rnnreg", "--worker=all",
                        "--command=mkdir -p ~/data && gsutil -m rsync -r gs://bk/data ~/data",
                        *WHERE]]


def remote_words(argv: list[str]) -> list[str]:
    """The words of the `--command=` string, as the worker's shell would split them."""
    command = next(a for a in argv if a.startswith("--command="))
    return shlex.split(command[len("--command="):])


def test_run_with_bucket_checks_it_then_starts_with_the_log_copied_there(sandbox):
    run, _ = sandbox
    env = {"TPU_BUCKET": "bk", "TPU_NAME": "pod"}
    check, argv = dry_lines(run("tpu", "run", "ptb", "--config", "zaremba_small",
                                "--config.model.name=it's a b", "--dry-run", env=env))
    # Worker 0 writes and deletes a probe through the venv's etils.epath first.
    assert check == [*TPU_VM, "ssh", "pod", "--worker=0", "--command=cd ~/rnnreg_jax && bash "
                     "scripts/tpu_worker.sh check-workdir gs://bk/pod/ptb-zaremba_small", *WHERE]
    assert argv[:7] == [*TPU_VM, "ssh", "pod", "--worker=all"]
    command = next(a for a in argv if a.startswith("--command="))
    assert "; " + DATA_ENV + "export TFDS_DATA_DIR=gs://bk/tfds; bash " in command
    words = remote_words(argv)
    start = words.index("bash")
    assert words[start:] == [
        "bash", "scripts/tpu_worker.sh", "start", "gs://bk/pod/ptb-zaremba_small", "--", PY,
        "-m", "experiments.ptb", "--config", "zaremba_small",
        "--config.model.name=it's a b", "--config.train.distributed=true",
        "--workdir=gs://bk/pod/ptb-zaremba_small"]


def test_run_names_the_workdir_after_a_config_files_preset(sandbox):
    run, _ = sandbox
    for config, name in (("experiments/configs/ptb.py:zaremba_small", "zaremba_small"),
                         ("my/own_config.py", "own_config")):
        *_, argv = dry_lines(run("tpu", "run", "ptb", f"--config={config}", "--dry-run",
                                 env={"TPU_BUCKET": "bk"}))
        words = remote_words(argv)
        assert f"--config={config}" in words
        assert words[-1] == f"--workdir=gs://bk/rnnreg/ptb-{name}"


def test_run_keeps_the_users_workdir_and_distributed_flag(sandbox):
    run, _ = sandbox
    check, argv = dry_lines(run("tpu", "run", "ptb", "--config=tiny", "--workdir=gs://x/y",
                                "--config.train.distributed=false", "--dry-run"))
    assert remote_words(check)[-2:] == ["check-workdir", "gs://x/y"]
    words = remote_words(argv)
    assert words[words.index("start") + 1] == "gs://x/y"  # the log goes beside the run
    assert "--workdir=gs://x/y" in words and "--config.train.distributed=false" in words
    assert sum(w.startswith("--workdir") for w in words) == 1
    assert "--config.train.distributed=true" not in words


def test_queued_resources_create_and_delete(sandbox):
    run, _ = sandbox
    qr = ["gcloud", "compute", "tpus", "queued-resources"]
    assert dry_lines(run("tpu", "create", "--queued", "--spot", "--dry-run")) == [
        [*qr, "create", "rnnreg", "--node-id=rnnreg", "--accelerator-type=v4-8",
         "--runtime-version=tpu-ubuntu2204-base", "--spot", *WHERE]]
    assert dry_lines(run("tpu", "delete", "--queued", "--dry-run")) == [
        [*qr, "delete", "rnnreg", "--force", "--quiet", *WHERE]]


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


def test_ssh_and_logs_take_a_worker(sandbox):
    run, _ = sandbox
    assert dry_lines(run("tpu", "ssh", "--worker=3", "--dry-run"))[0][6] == "--worker=3"
    assert dry_lines(run("tpu", "logs", "--worker", "1", "--dry-run"))[0][6] == "--worker=1"


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


SHELL_FILES = ["launch.sh", ".ci/run", "scripts/tpu.sh", "scripts/tpu_worker.sh",
               "scripts/quote.sh",
               "scripts/gpu_window.sh", "scripts/gpu_window_split.sh"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("path", SHELL_FILES)
def test_shellcheck_clean(path):
    # -x follows the `source`d scripts/quote.sh, so it is checked in context too.
    result = subprocess.run(["shellcheck", "-x", path], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_show_the_commands_launch_sh_runs(sandbox):
    """Every gcloud line in docs/TPU.md's command listing is what the dry run prints."""
    run, _ = sandbox
    env = {"TPU_PROJECT": "my-project", "TPU_BUCKET": "my-bucket", "TMPDIR": "/tmp"}
    printed = set()
    for args in (["create"], ["setup"], ["run", "ptb", "--config=zaremba_small"], ["status"],
                 ["stop"], ["logs"], ["delete"]):
        result = run("tpu", *args, "--dry-run", env=env)
        assert result.returncode == 0, result.stderr
        printed.update(result.stdout.splitlines())
    doc = (REPO / "docs" / "TPU.md").read_text().splitlines()
    listed = [line for line in doc if line.startswith("gcloud compute tpus tpu-vm ")
              and "my-project" in line]
    assert len(listed) == 10
    assert set(listed) <= printed


# --- multihost ------------------------------------------------------------------------------

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
