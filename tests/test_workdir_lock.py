"""One run per workdir: a second process is refused in one line naming the first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

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
        if workdir == a_file:  # os.makedirs said "File exists"
            assert lines[0].endswith(": it is a file, not a folder."), lines
    assert a_file.read_text() == "not a folder"


@pytest.mark.slow
def test_two_runs_started_at_once_on_one_workdir_leave_one_clean_run(tmp_path):
    """Without the lock, two such runs crashed inside orbax, logged steps twice and left
    orphan checkpoints. Now one trains, the other is refused in one line; twice over."""
    import json

    from tests import data_fixtures as fx

    fx.write_repeated_ptb_word(tmp_path / "data")
    for trial in range(2):
        workdir = tmp_path / f"wd{trial}"
        cmd = [sys.executable, "-m", "experiments.ptb", "--config=tiny", f"--workdir={workdir}",
               f"--data_dir={tmp_path / 'data'}", "--config.data.batch_size=2",
               "--config.data.eval_batch_size=2", "--config.train.max_steps=8",
               "--config.train.mc_samples=0", "--config.train.checkpoint_every_steps=1",
               "--config.train.keep_checkpoints=2", "--config.train.tensorboard=False"]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        outs = [(p, *p.communicate(timeout=300)) for p in procs]
        codes = sorted(p.returncode for p, _, _ in outs)
        assert codes == [0, 2], [err[-2000:] for _, _, err in outs]
        refused = next(err for p, _, err in outs if p.returncode == 2)
        winner = next(p for p, _, _ in outs if p.returncode == 0)
        assert refused.strip().splitlines() == [
            line for line in refused.splitlines() if line.startswith("error: ")]
        assert f"is in use by process {winner.pid} on " in refused
        steps = [json.loads(line)["step"] for line in
                 (workdir / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["split"] == "train"]
        assert len(steps) == len(set(steps)) and steps == sorted(steps)
        assert sorted(os.listdir(workdir / "checkpoints")) == ["7", "8"]


def test_a_lock_taken_an_instant_ago_is_named_once_its_holder_wrote_it(tmp_path):
    """The winner of a race writes its line just after taking the lock: the loser read
    an empty file then ("in use by another process")."""
    import fcntl
    import threading

    workdir = tmp_path / "wd"
    workdir.mkdir()
    fd = os.open(workdir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, its line not yet written
    writer = threading.Timer(0.1, lambda: os.pwrite(fd, b"process 4242 on box", 0))
    writer.start()
    try:
        with pytest.raises(workdir_lock.WorkdirInUseError, match="in use by process 4242 on box;"):
            workdir_lock.lock_workdir(str(workdir))
    finally:
        writer.join()
        os.close(fd)
