"""Every run records what produced it: config.json's provenance, TensorBoard's hparams,
and the report's commit and device columns."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

from experiments import provenance
from tests import data_fixtures as fx

REPO = provenance.REPO_ROOT


def test_relative_command_from_an_absolute_module_path_and_workdirs(tmp_path):
    argv = [os.path.join(REPO, "experiments", "ptb.py"), "--config=zoneout",
            f"--workdir={os.path.join(REPO, 'runs', 'zoneout')}",
            "--config.train.num_epochs=3"]
    assert provenance.relative_command(argv) == (
        "python -m experiments.ptb --config=zoneout --workdir=runs/zoneout "
        "--config.train.num_epochs=3")
    # Outside the checkout: where the same command writes from the repository root.
    outside = ["ptb.py", "--workdir", str(tmp_path / "scratch" / "zc_zoneout_char")]
    assert provenance.relative_command(outside) == (
        "python -m experiments.ptb --workdir=runs/zc_zoneout_char")
    assert str(tmp_path) not in provenance.relative_command(outside)
    # Already relative, a bucket, and a data folder inside the checkout.
    assert provenance.relative_command(
        ["x/sentiment.py", "--workdir=runs/a", "--data_dir=" + os.path.join(REPO, ".devdata")]
    ) == "python -m experiments.sentiment --workdir=runs/a --data_dir=.devdata"
    assert provenance.relative_command(["ptb.py", "--workdir=gs://b/run"]).endswith(
        "--workdir=gs://b/run")


def test_device_label_names_the_accelerator_or_the_host_cpu():
    assert provenance.device_label({"backend": "gpu", "device_kind": "NVIDIA H200",
                                    "device_count": 1}) == "NVIDIA H200"
    assert provenance.device_label({"backend": "tpu", "device_kind": "TPU v4",
                                    "device_count": 8}) == "8 x TPU v4"
    assert provenance.device_label({"backend": "cpu", "device_kind": "cpu",
                                    "host_cpu": "Intel Xeon", "host_cpu_count": 2}) == (
        "Intel Xeon (2 cores)")


def _tb_records(path):
    """The serialized Event protos of a TensorBoard event file (TFRecord framing)."""
    data = open(path, "rb").read()
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        out.append(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
    return out


def _run_tiny(workdir, max_steps, env=None):
    """`experiments.ptb --config=tiny` through the binary on the data beside `workdir`,
    for `max_steps` steps in all (a workdir with a checkpoint resumes)."""
    return subprocess.run(
        [sys.executable, "-m", "experiments.ptb", "--config=tiny", f"--workdir={workdir}",
         f"--data_dir={workdir.parent / 'data'}", f"--config.train.max_steps={max_steps}",
         "--config.data.batch_size=2", "--config.data.eval_batch_size=2",
         "--config.train.mc_samples=0"],
        capture_output=True, text=True, check=False, cwd=REPO, env=env)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`experiments.ptb --config=tiny` through the binary, as a user runs it."""
    root = tmp_path_factory.mktemp("prov")
    fx.write_repeated_ptb_word(root / "data")
    workdir = root / "wd"
    out = _run_tiny(workdir, 2, dict(os.environ, XLA_FLAGS="--xla_cpu_enable_fast_math=false"))
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


def test_config_json_records_versions_commit_devices_and_a_relative_command(tiny_run):
    meta = json.loads((tiny_run / "config.json").read_text())
    record = meta["provenance"]
    assert meta["command"] == record["command"]
    assert meta["command"].startswith("python -m experiments.ptb --config=tiny --workdir=runs/wd")
    assert REPO not in meta["command"] and str(tiny_run) not in meta["command"]
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        assert record["packages"][name], name
    import jax

    assert record["packages"]["jax"] == jax.__version__
    assert record["backend"] == "cpu" and record["device_kind"] == jax.devices()[0].device_kind
    assert record["device_count"] >= 1 and record["process_count"] == 1
    assert record["xla_flags"] == "--xla_cpu_enable_fast_math=false"
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False)
    if head.returncode == 0:  # a git checkout (CI clones one)
        assert record["commit"] == head.stdout.strip()
        assert isinstance(record["dirty"], bool)
    else:
        assert record["commit"] is None


def test_config_json_is_as_readable_as_the_rest_of_the_workdir(tiny_run):
    """config.json gets the umask's permissions, as metrics.jsonl does, so whoever may read
    the logs (a TensorBoard server, a colleague's `experiments.report`) may read the
    config; the temporary file it is written through used to leave it owner-only."""
    import stat

    mode = lambda name: stat.S_IMODE((tiny_run / name).stat().st_mode)
    assert mode("config.json") == mode("metrics.jsonl")


def test_tensorboard_hparams_hold_the_config_and_the_commit(tiny_run):
    files = [os.path.join(d, f) for d, _, fs in os.walk(tiny_run / "tb") for f in fs
             if "tfevents" in f]
    blob = b"".join(r for f in files for r in _tb_records(f))
    # The HParams plugin's session-start summary, with our field names and values.
    assert b"_hparams_/session_start_info" in blob
    assert b"model.hidden_sizes" in blob and b"reg.variational.recurrent" in blob
    # The regularizer and training fields a sweep varies, for the HParams view.
    for field in (b"reg.variational.input", b"reg.variational.output", b"reg.zoneout.cells",
                  b"reg.zoneout.tie", b"train.learning_rate",
                  b"train.num_epochs", b"train.optimizer", b"train.clip_norm", b"data.batch_size",
                  b"preset"):
        assert field in blob, field
    assert b"provenance.commit" in blob and b"valid/ppl" in blob
    assert b"provenance.jaxlib" in blob and b"provenance.xla_flags" in blob


def test_report_shows_commit_and_device_per_row(tiny_run):
    from experiments import report

    meta = json.loads((tiny_run / "config.json").read_text())
    run = report.load_run(str(tiny_run))
    lines = report.category_table([run], "ptb_word")
    assert lines[0].split(" | ")[-3:] == ["commit", "device", "command |"]
    commit = meta["provenance"]["commit"]
    if commit:
        assert commit[:7] in lines[2]
    assert provenance.device_label(meta["provenance"]) in lines[2]
    # Records from before provenance: the inferred commit is marked.
    assert report.commit_cell({"commit": "0123456789", "inferred": "why"}) == "~0123456"
    assert report.commit_cell({"commit": "0123456789", "dirty": True}) == "0123456+dirty"
    assert report.commit_cell({}) == "–"


@pytest.mark.slow
def test_a_resumed_run_keeps_its_earlier_starts_commit_and_device(tiny_run, tmp_path):
    """config.json is rewritten at each start: a run resumed on another machine or commit
    named only the last one in the report."""
    import shutil

    from experiments import report

    workdir = tmp_path / "wd"
    shutil.copytree(tiny_run, workdir)
    shutil.copytree(tiny_run.parent / "data", tmp_path / "data")
    meta = json.loads((workdir / "config.json").read_text())
    assert "earlier_starts" not in meta["provenance"]  # a new run has none
    meta["provenance"].update(commit="f" * 40, dirty=False, backend="cpu", host_cpu="Old CPU",
                              host_cpu_count=8)  # as if it started elsewhere
    (workdir / "config.json").write_text(json.dumps(meta))
    out = _run_tiny(workdir, 4)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Resumed from step 2" in out.stderr
    record = json.loads((workdir / "config.json").read_text())["provenance"]
    [earlier] = record["earlier_starts"]
    assert earlier["commit"] == "f" * 40 and earlier["host_cpu"] == "Old CPU"
    assert set(earlier) <= set(provenance.START_KEYS)
    out = _run_tiny(workdir, 6)  # a third start: both earlier ones, oldest first
    assert out.returncode == 0, out.stderr[-3000:]
    starts = json.loads((workdir / "config.json").read_text())["provenance"]["earlier_starts"]
    assert [s["commit"] for s in starts] == ["f" * 40, record["commit"]]
    cells = report.category_table([report.load_run(str(workdir))], "ptb_word")[2]
    if record["commit"]:  # the second start's commit, dirty or not, equals the third's
        last = report.commit_cell({"commit": record["commit"], "dirty": record["dirty"]})
        assert f"| {last} (earlier fffffff) |" in cells
    assert f"{provenance.device_label(record)} (earlier Old CPU (8 cores))" in cells


def test_a_record_without_a_run_beside_it_gives_no_earlier_starts(tmp_path):
    """A refused start's record, with no checkpoint and no log, is no earlier start."""
    fx.write_repeated_ptb_word(tmp_path / "data")
    workdir = tmp_path / "wd"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(
        {"task": "ptb", "config": {}, "provenance": {"commit": "f" * 40}}))
    out = _run_tiny(workdir, 1)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "earlier_starts" not in json.loads((workdir / "config.json").read_text())[
        "provenance"]


def test_commit_and_device_cells_name_differing_earlier_starts_once():
    from experiments import report

    gpu = {"backend": "gpu", "device_kind": "NVIDIA H200", "device_count": 1}
    cpu = {"backend": "cpu", "host_cpu": "AMD EPYC", "host_cpu_count": 2}
    record = {"commit": "1" * 40, **cpu, "earlier_starts": [
        {"commit": "2" * 40, **gpu}, {"commit": "1" * 40, **cpu}, {"commit": "2" * 40, **gpu},
        "not a start"]}
    assert report.commit_cell(record) == "1111111 (earlier 2222222)"
    assert report.device_cell(record) == "AMD EPYC (2 cores) (earlier NVIDIA H200)"
    assert report.commit_cell({"commit": "1" * 40}) == "1111111"
    assert report.device_cell({}) == "–"


def test_test_batch_size_shapes_the_carried_state_test_pass(tmp_path):
    from experiments.configs import ptb
    from experiments.configs.common import regularization
    from rnnreg_jax.tasks import build_task

    fx.write_repeated_ptb_word(tmp_path)
    config = ptb.tiny()
    config.data.batch_size = config.data.eval_batch_size = 2
    shapes = {}
    for batch in (1, 3):
        config.data.test_batch_size = batch
        task = build_task(config, regularization(config.reg), str(tmp_path))
        shapes[batch] = next(iter(task.evals["test"].iterate(0)))["inputs"].shape
    assert shapes[1][0] == 1 and shapes[3][0] == 3
    config.data.test_batch_size = 0
    with pytest.raises(ValueError, match="test_batch_size must be at least 1"):
        build_task(config, regularization(config.reg), str(tmp_path))
