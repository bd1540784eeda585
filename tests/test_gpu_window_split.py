"""scripts/gpu_window_split.sh: a GPU window's batch over two calls. `start` leaves the
batch running past its own call (setsid); `collect` brings its bundle back, stopping a
batch that overran its wait, and fails at once where nothing was started."""

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import bundle
from tests import data_fixtures as fx
from tests.test_reproduce import FLAGS, ROOT


@pytest.mark.slow
def test_a_batch_split_over_two_calls_comes_back_whole(tmp_path):
    """scripts/gpu_window_split.sh: `start` leaves the batch running past its own end
    (setsid), `collect` waits for the bundle and copies it to $OUT."""
    data = tmp_path / "data"
    fx.write_repeated_ptb_word(data)
    env = {**os.environ, "WINDOW_DIR": str(tmp_path / "state"), "WATCH_S": "0",
           "WHEELS": str(tmp_path / "no_wheels"), "RNNREG_DATA_DIR": str(data),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def call(out, *args):
        return subprocess.run(["bash", "scripts/gpu_window_split.sh", *args], cwd=ROOT,
                              env={**env, "OUT": str(tmp_path / out)}, capture_output=True,
                              text=True, timeout=300, check=False)

    start = call("out1", "start", f"--runs=ptb:tiny:a:{FLAGS}", "--budget_s=200",
                 "--calibrate_s=0", "--stop_at_deadline", f"--data_dir={data}",
                 f"--step_times={ROOT / 'results' / 'step_times_h200.json'}")
    assert start.returncode == 0, start.stderr[-2000:]
    assert (tmp_path / "out1" / "window.log").is_file()
    again = call("out3", "start", f"--runs=ptb:tiny:a:{FLAGS}")  # it deleted the running one
    assert again.returncode == 2 and "is still running; run collect" in again.stderr
    collect = call("out2", "collect")
    assert collect.returncode == 0, collect.stderr[-2000:]
    manifest = json.loads((tmp_path / "out2" / bundle.MANIFEST).read_text())
    assert [(r["name"], r["status"]) for r in manifest["runs"]] == [("a", "finished")]
    assert (tmp_path / "out2" / bundle.RUNS_ARCHIVE).is_file()
    assert "started 1 runs" in (tmp_path / "out2" / "window.log").read_text()


@pytest.mark.slow
def test_collect_stops_a_batch_still_running_after_its_wait_and_brings_its_bundle(tmp_path):
    """A batch that overran its plan came back with nothing: collect gave up at WAIT_S and
    the call ended with the runs' training stranded on the machine."""
    data = tmp_path / "data"
    fx.write_repeated_ptb_word(data)
    env = {**os.environ, "WINDOW_DIR": str(tmp_path / "state"), "WATCH_S": "0",
           "WAIT_S": "0", "STOP_WAIT_S": "120", "WHEELS": str(tmp_path / "no_wheels"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def call(out, *args):
        return subprocess.run(["bash", "scripts/gpu_window_split.sh", *args], cwd=ROOT,
                              env={**env, "OUT": str(tmp_path / out)}, capture_output=True,
                              text=True, timeout=300, check=False)

    start = call("out1", "start", f"--runs=ptb:tiny:a:{FLAGS};--config.train.num_epochs=1000",
                 "--budget_s=900", "--calibrate_s=0", "--stop_at_deadline",
                 f"--data_dir={data}", f"--step_times={ROOT / 'results' / 'step_times_h200.json'}")
    assert start.returncode == 0, start.stderr[-2000:]
    checkpoints = tmp_path / "state" / "runs" / "a" / "checkpoints"
    began = time.monotonic()
    while not (checkpoints.is_dir() and any(checkpoints.iterdir())):
        assert time.monotonic() - began < 240, (tmp_path / "state" / "window.log").read_text()
        time.sleep(0.5)
    collect = call("out2", "collect")
    assert collect.returncode == 0, collect.stderr[-2000:]
    assert "stopping it (SIGTERM) for its bundle" in collect.stderr
    [run] = bundle.read_manifest(tmp_path / "out2")["runs"]
    assert run["status"] == "stopped" and run["step"] >= 5 and run["checkpoint_carried"]


def test_a_split_batch_that_fails_at_once_says_so_and_collect_does_not_wait(tmp_path):
    """A refused flag ended the driver at once, yet `start` succeeded and `collect` waited
    its whole WAIT_S (device time) for a bundle that would never come."""
    env = {**os.environ, "WINDOW_DIR": str(tmp_path / "state"), "WATCH_S": "60",
           "WHEELS": str(tmp_path / "no_wheels"), "OUT": str(tmp_path / "out"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    call = functools.partial(subprocess.run, cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300, check=False)
    start = call(["bash", "scripts/gpu_window_split.sh", "start", "--runs=ptb:tiny",
                  "--budget_s=abc"])
    assert start.returncode == 2, start.stderr[-2000:]  # the refused flag's status
    assert "the batch ended with status 2 and no bundle" in start.stderr
    began = time.monotonic()
    collect = call(["bash", "scripts/gpu_window_split.sh", "collect"])
    assert collect.returncode == 1 and "no bundle" in collect.stderr
    assert time.monotonic() - began < 60  # not WAIT_S (400 s)


def test_collect_without_a_started_batch_fails_at_once(tmp_path):
    """With no driver.pid, collect ran `kill -0 0` (its own process group: it succeeds) and
    waited all of WAIT_S (device time) before failing on a missing window.log."""
    (tmp_path / "empty").mkdir()
    for window in (tmp_path / "nowin", tmp_path / "empty"):
        env = {**os.environ, "WINDOW_DIR": str(window), "WAIT_S": "30",
               "OUT": str(tmp_path / "out")}
        began = time.monotonic()
        collect = subprocess.run(["bash", "scripts/gpu_window_split.sh", "collect"], cwd=ROOT,
                                 env=env, capture_output=True, text=True, timeout=120,
                                 check=False)
        assert time.monotonic() - began < 10  # not WAIT_S
        assert collect.returncode == 2 and collect.stdout == ""
        lines = collect.stderr.splitlines()
        assert len(lines) == 1 and str(window) in lines[0] and "run start first" in lines[0]
        assert not (tmp_path / "out").exists()
