"""The sandbox the test_launch_* files run launch.sh in, and the gcloud commands its `tpu`
subcommands are documented to run.

The launcher and scripts/tpu.sh are copied into a sandbox root with stub
experiments, so the tests never touch the real venv, git history or network. A
fake `gcloud` first on PATH records each call's argv (one JSON list a line).
A test file binds the fixtures `root` and `sandbox` by name to use them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
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
    shutil.copy2(REPO / "scripts" / "launch_common.sh", root / "scripts" / "launch_common.sh")
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
