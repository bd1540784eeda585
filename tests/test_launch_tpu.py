"""launch.sh's `tpu` subcommands: the dry run prints the documented gcloud commands, a run
(against a fake gcloud) executes the same ones, flags and environment choose the VM, run
names its workdir, and docs/TPU.md lists what the dry run prints."""

from __future__ import annotations

import shlex
import shutil
import tarfile

import launch_sandbox
import pytest
from launch_sandbox import DATA_ENV, PY, REPO, TPU_VM, WHERE, dry_lines, expected

# launch_sandbox's fixtures, bound here so that this file's tests find them
root, sandbox = launch_sandbox.root, launch_sandbox.sandbox


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


VALUE_FLAGS = ["--name", "--zone", "--accelerator-type", "--version", "--project", "--bucket",
               "--worker"]


@pytest.mark.parametrize("form", ["=", " "])
@pytest.mark.parametrize("flag", VALUE_FLAGS)
def test_an_empty_value_is_refused_like_a_missing_one(sandbox, flag, form):
    """`--zone=` went to gcloud as `--zone=` (and `--bucket=` dropped the bucket): every
    value flag refuses an empty value, one line on stderr, exit 2, nothing run."""
    run, calls = sandbox
    words = [f"{flag}="] if form == "=" else [flag, ""]
    result = run("tpu", "create", *words, env={"TPU_BUCKET": "bk"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"launch.sh tpu: {flag} needs a value, got an empty one.\n"
    assert calls() == []


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


def test_ssh_and_logs_take_a_worker(sandbox):
    run, _ = sandbox
    assert dry_lines(run("tpu", "ssh", "--worker=3", "--dry-run"))[0][6] == "--worker=3"
    assert dry_lines(run("tpu", "logs", "--worker", "1", "--dry-run"))[0][6] == "--worker=1"


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
