"""One run per workdir: a second process is refused in one line naming the first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from rnnreg_jax.train import workdir_lock

HOLD = """import sys, time
from rnnreg_jax.train.workdir_lock import lock_workdir
lock_workdir(sys.argv[1]); print("locked", flush=True); time.sleep(60)
"""


def _holder(workdir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_on_a_locked_workdir_is_refused_in_one_line(tmp_path):
    workdir = tmp_path / "wd"
    holder = _holder(workdir)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "experiments.ptb", "--config=tiny", f"--workdir={workdir}",
             f"--data_dir={tmp_path / 'nodata'}"], capture_output=True, text=True,
            check=False)
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        assert lines[0].startswith(f"error: {workdir} is in use by process {holder.pid} on ")
        assert "Traceback" not in out.stderr
        assert sorted(os.listdir(workdir)) == [".lock"]  # nothing else written
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    workdir = tmp_path / "wd"
    holder = _holder(workdir)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    time.sleep(0.05)
    assert workdir_lock.lock_workdir(str(workdir))
    assert workdir_lock.lock_workdir(str(workdir))  # this process again: idempotent
    workdir_lock.unlock_workdir(str(workdir))


def test_in_process_lock_refuses_another_process_and_is_released(tmp_path):
    workdir = tmp_path / "wd"
    assert workdir_lock.lock_workdir(str(workdir))
    probe = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom rnnreg_jax.train.workdir_lock import *\n"
         "try:\n    lock_workdir(sys.argv[1])\nexcept WorkdirInUseError as e:\n"
         "    print(e); sys.exit(3)", str(workdir)], capture_output=True, text=True,
        check=False)
    assert probe.returncode == 3 and f"process {os.getpid()}" in probe.stdout
    workdir_lock.unlock_workdir(str(workdir))
    again = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(60)", ""),
                            str(workdir)], capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "locked" in again.stdout
    assert not workdir_lock.lock_workdir("gs://bucket/run")  # remote: no lock


def test_an_unusable_workdir_is_one_line(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for workdir in (a_file, "/proc/rnnreg_jax_workdir"):
        out = subprocess.run(
            [sys.executable, "-m", "experiments.ptb", "--config=tiny", f"--workdir={workdir}"],
            capture_output=True, text=True, check=False)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert lines == [lines[0]] and lines[0].startswith(
            f"error: cannot use {workdir} as the workdir: "), out.stderr
    assert a_file.read_text() == "not a folder"
