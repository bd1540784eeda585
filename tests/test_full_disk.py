"""A full disk: one line and exit 2 from the binary, nothing torn, and a rerun resumes.

The workdir lies on a 2 MiB tmpfs mounted for the test (needs root, as on the CI
machine; skipped elsewhere); a filler file sets how much room is left.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnnreg_jax.train import checkpoint as ckpt_lib
from tests import data_fixtures as fx

ROOT = Path(__file__).resolve().parents[1]
PAGE = 4096
DISK_PAGES = 512  # 2 MiB


@pytest.fixture
def disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_PAGES * PAGE}", "tmpfs",
                           str(mount)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave_bytes: int) -> Path:
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - leave_bytes))
    return filler


def _binary(tmp_path: Path, workdir: Path) -> subprocess.CompletedProcess:
    data = tmp_path / "data"
    if not data.exists():
        fx.write_repeated_ptb_word(data)
    # Checkpoints of a 2 x 96 LSTM are about 0.55 MB: one fits beside the filler, two do not.
    return subprocess.run(
        [sys.executable, "-m", "experiments.ptb", "--config=tiny", f"--workdir={workdir}",
         f"--data_dir={data}", "--config.data.batch_size=2", "--config.data.eval_batch_size=2",
         "--config.model.hidden_sizes=(96,96)", "--config.train.max_steps=6",
         "--config.train.mc_samples=0", "--config.train.checkpoint_every_steps=1",
         "--config.train.keep_checkpoints=1"],
        capture_output=True, text=True, cwd=ROOT, check=False)


def _one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, \
        out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_is_one_line_and_the_run_resumes_after(tmp_path, disk):
    filler = _fill(disk, leave_bytes=1_000_000)
    workdir = disk / "wd"
    error = _one_error_line(_binary(tmp_path, workdir))
    assert error.startswith("error: Checkpoint step ") and " MB are free; free space" in error
    kept = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert kept and all(name.isdigit() for name in kept)  # complete steps, no temporaries
    filler.unlink()
    out = _binary(tmp_path, workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Resumed from step {kept[-1]}" in out.stderr
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["6"]


def test_a_disk_full_from_the_start_leaves_no_torn_record(tmp_path, disk):
    _fill(disk, leave_bytes=PAGE)  # the lock file's page, then nothing
    workdir = disk / "wd"
    error = _one_error_line(_binary(tmp_path, workdir))
    assert "No space left on device" in error
    assert sorted(os.listdir(workdir)) == [".lock"]  # no config.json, empty or otherwise


def test_a_save_that_runs_out_of_room_midway_names_the_reason(disk, monkeypatch):
    """The room check passes (a disk filling during the save): the save's own failure
    becomes CheckpointWriteError with the operating system's reason."""
    monkeypatch.setattr(ckpt_lib, "_check_room", lambda *args: None)
    checkpointer = ckpt_lib.Checkpointer(str(disk / "wd"))
    # 4 MiB of random floats on a 2 MiB disk (orbax compresses: constant arrays would fit)
    state = {"w": np.random.default_rng(0).random((1024, 1024), np.float32)}
    with pytest.raises(ckpt_lib.CheckpointWriteError) as err:
        checkpointer.save(state, 1)
    assert "could not be written" in str(err.value)
    assert "No space left on device" in str(err.value) and "\n" not in str(err.value)
    checkpointer.close()


def test_os_error_reason_reads_orbax_wrapped_errors():
    wrapped = ValueError('RESOURCE_EXHAUSTED: Error writing "w" ... [os_error_code=\'28\']')
    assert ckpt_lib.os_error_reason(wrapped) == os.strerror(28)
    assert ckpt_lib.os_error_reason(OSError(13, "Permission denied")) == "Permission denied"
