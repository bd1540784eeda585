"""Exact resume under SIGKILL, and device-count invariance (subprocesses)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import train_helpers as th

from rnnreg_jax.train.logging import read_metrics

SCRIPT = os.path.join(os.path.dirname(__file__), "train_resume_script.py")
STEPS, EPOCH = 20, 5  # 4 epochs of 5 batches
CKPT_EVERY = 2  # train_resume_script.py's --ckpt_every default


def _next_save(step: int) -> int:
    """The first step after `step` that the script checkpoints (every CKPT_EVERY steps
    and at each epoch's end)."""
    return next(s for s in range(step + 1, STEPS + 1) if s % CKPT_EVERY == 0 or s % EPOCH == 0)


def _env(devices: int = 1) -> dict:
    th.enable_compilation_cache()
    return th.host_devices_env(devices)


def _start(workdir, *args, devices=1):
    return subprocess.Popen([sys.executable, SCRIPT, workdir, *args], env=_env(devices),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=240):
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


def _lines(path):
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for _ in f)


def _last(path):
    if not os.path.exists(path):
        return -1
    with open(path) as f:
        lines = f.read().split()
    return int(lines[-1]) if lines else -1


def _wait(pred, proc, timeout=120):
    end = time.time() + timeout
    while not pred():
        assert proc.poll() is None, f"child exited early: {proc.stderr.read()[-3000:]}"
        assert time.time() < end, "timed out waiting for the child"
        time.sleep(0.01)


def _kill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _check_all_checkpoints_readable(workdir):
    """Every step orbax lists restores, except possibly the oldest one alone: orbax prunes
    the oldest step after writing a new one by deleting it in place (`rmtree`, in every
    0.12 release), so a kill inside that deletion leaves it listed and half gone (seen
    once: its `_METADATA` already deleted). Writes are atomic, so no other step may be
    unreadable, and resuming never reads that one (newer ones restore). Returns
    (readable steps, leftover temp dirs)."""
    import orbax.checkpoint as ocp
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return [], []
    with ocp.CheckpointManager(directory) as manager:
        steps = sorted(manager.all_steps())
    readable = []
    for step in steps:
        try:
            tree = ocp.StandardCheckpointer().restore(
                os.path.join(directory, str(step), "default"))
        except (FileNotFoundError, ValueError):  # its _METADATA gone, or its arrays' files
            assert step == steps[0] and len(steps) > 1, (step, steps)  # a prune cut short
            continue
        assert int(np.asarray(tree["step"])) == step
        readable.append(step)
    temps = [n for n in os.listdir(directory) if "tmp" in n]
    return readable, temps


def _load(out):
    with open(out + ".json") as f:
        meta = json.load(f)
    return dict(np.load(out + ".npz")), meta


def _assert_same(ref_out, out):
    ref_params, ref_meta = _load(ref_out)
    params, meta = _load(out)
    for name, value in ref_params.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)   # bit-identical
    assert meta["losses"] == ref_meta["losses"]
    assert len(meta["losses"]) == STEPS


def _run_with_kills(tmp_path, kill_points, hang_step):
    """kill_points: increasing global batch indices at which to SIGKILL (after
    a random delay); the second kill lands inside orbax's commit of checkpoint
    `hang_step` (an even step after the first kill point), or of the first save after
    the newest checkpoint the first kill left where that one is not older."""
    print(f"kill points {kill_points}, hang in the save of step {hang_step}")  # on failure
    rng = random.Random()
    ref = str(tmp_path / "ref")
    ref_proc = _start(str(tmp_path / "ref_run"), "--out", ref)
    workdir = str(tmp_path / "run")
    progress = str(tmp_path / "progress")
    log = []
    plan = [("batch", k) for k in kill_points]
    plan.insert(1, ("save", hang_step))
    for kind, point in plan:
        if kind == "batch":
            fed_before = _lines(progress)
            proc = _start(workdir, "--progress", progress, "--sleep", "0.06")
            # a global batch index this process fed (its resume is logged before any): the
            # previous one may have run past `point` before its kill, and killing the new
            # one before it resumed would count no restart
            _wait(lambda point=point, fed_before=fed_before:
                  _lines(progress) > fed_before and _last(progress) >= point, proc)
            time.sleep(rng.uniform(0.0, 0.12))  # a random moment within the step
        else:
            # the save must be one the restart makes: the process killed before it may have
            # run on and saved `point` already (a kill lands up to 0.12 s late)
            newest = log[-1][3][-1] if log and log[-1][3] else 0
            point = max(point, _next_save(newest))
            proc = _start(workdir, "--progress", progress, "--sleep", "0.06",
                          "--hang_in_save_step", str(point))
            marker = os.path.join(workdir, "in_save")
            _wait(lambda marker=marker: os.path.exists(marker), proc)
            os.remove(marker)
        _kill(proc)
        steps, temps = _check_all_checkpoints_readable(workdir)
        log.append((kind, point, _lines(progress), steps, temps))
        if kind == "save":
            assert point not in steps, log        # the half-written step is not listed
            assert temps, log                     # ... and it was indeed half-written
    proc = _start(workdir, "--out", str(tmp_path / "resumed"), "--progress", progress)
    _finish(proc)
    # every restart resumed from the newest checkpoint on disk after the previous kill
    resumes = [e["step"] for e in read_metrics(workdir) if e["split"] == "resume"]
    expected = [entry[3][-1] for entry in log if entry[3]]
    assert resumes == expected, (resumes, log)
    assert len(resumes) >= len(plan) - 1
    restarts = resumes
    print("kills (kind, point, batches fed, steps on disk, temp dirs):", log,
          "resumed at steps", restarts)
    _finish(ref_proc)
    _assert_same(ref, str(tmp_path / "resumed"))
    return log


@pytest.mark.slow
def test_resume_after_sigkills_is_bit_identical(tmp_path):
    # 3 kills: epoch 1 or 2, inside the commit of checkpoint 8, epoch 3.
    log = _run_with_kills(tmp_path, kill_points=[random.randint(3, 6), random.randint(12, 15)],
                          hang_step=8)
    assert len(log) == 3


@pytest.mark.slow
def test_resume_after_many_random_sigkills(tmp_path):
    first = random.randint(2, 5)
    hang = first + 1 if (first + 1) % 2 == 0 else first + 2
    points = [first] + sorted(random.sample(range(hang + 1, STEPS), 5))
    log = _run_with_kills(tmp_path, kill_points=points, hang_step=hang)
    assert len(log) == 7


def test_same_losses_on_1_and_4_devices(tmp_path):
    procs = {n: _start(str(tmp_path / f"d{n}"), "--out", str(tmp_path / f"d{n}"),
                       "--ckpt_every", "0", devices=n) for n in (1, 4)}
    for proc in procs.values():
        _finish(proc)
    metas = {n: _load(str(tmp_path / f"d{n}"))[1] for n in (1, 4)}
    assert metas[1]["devices"] == 1 and metas[4]["devices"] == 4
    one, four = metas[1]["losses"], metas[4]["losses"]
    assert len(one) == STEPS and one.keys() == four.keys()
    for step in one:
        np.testing.assert_allclose(four[step], one[step], rtol=1e-5, err_msg=f"step {step}")
    worst = max(abs(four[s] - one[s]) / abs(one[s]) for s in one)
    print(f"1 vs 4 devices: {len(one)} steps, max relative loss difference {worst:.2e}, "
          f"losses {one['1']:.6f} -> {one[str(STEPS)]:.6f}")
    np.testing.assert_allclose(metas[4]["final"]["valid/loss"], metas[1]["final"]["valid/loss"],
                               rtol=1e-5)
