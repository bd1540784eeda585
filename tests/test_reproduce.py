"""The GPU-window runner on the CPU: plan refusal, a deadline stop, the bundle and a
resume from it that ends as an uninterrupted run does."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import bundle
from experiments import reproduce_plan as plan_lib
from rnnreg_jax.train.evaluation import Pass
from rnnreg_jax.train.logging import read_metrics
from tests import data_fixtures as fx

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("--config.data.batch_size=2;--config.data.eval_batch_size=2;"
         "--config.train.max_steps=0;--config.train.mc_samples=0;"
         "--config.train.checkpoint_every_steps=5")


def _reproduce(tmp_path, *args):
    data = tmp_path / "data"
    if not data.exists():
        fx.write_repeated_ptb_word(data)
    return subprocess.run(
        [sys.executable, "-m", "experiments.reproduce", f"--data_dir={data}", *args],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=600)


def test_specs_parse_and_name_their_errors():
    spec = plan_lib.Spec.parse("ptb:tiny:a:--config.train.seed=1;--config.data.batch_size=2")
    assert (spec.task, spec.preset, spec.name) == ("ptb", "tiny", "a")
    assert spec.config().train.seed == 1
    with pytest.raises(ValueError, match="Unknown ptb preset"):
        plan_lib.Spec.parse("ptb:nope")
    with pytest.raises(ValueError, match="Unknown batch"):
        plan_lib.batch_specs(["huge"])
    assert [s.preset for s in plan_lib.batch_specs(["medium"])] == [
        "zaremba_medium", "variational_medium", "variational_medium_untied"]


def test_a_plan_that_cannot_finish_is_refused_in_one_line(tmp_path):
    table = tmp_path / "times.json"
    table.write_text(json.dumps({"factor_per_run": 1.0, "presets": {
        "tiny": {"bench_ms": 5000.0, "source": "test"}}}))
    out = _reproduce(tmp_path, f"--runs=ptb:tiny:a:{FLAGS}", "--budget_s=100",
                     "--calibrate_s=0", f"--step_times={table}", f"--root={tmp_path / 'r'}")
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "the plan does not finish: a needs about" in errors[0]
    assert not (tmp_path / "r" / "a").exists()  # nothing started


def test_the_plan_says_which_runs_cannot_resume_in_a_later_window(tmp_path):
    """A run whose newest and best checkpoints are more than a bundle carries is named
    before anything runs (the char presets: 51 MB a checkpoint); the tiny preset's are
    counted from its shapes and fit."""
    import dataclasses

    data = tmp_path / "data"
    fx.write_repeated_ptb_word(data)
    tiny = plan_lib.count_work(plan_lib.Spec.parse(f"ptb:tiny:a:{FLAGS}"), str(data))
    assert 0 < tiny.checkpoint_bytes < 1e6 and tiny.bundle_bytes == 2 * tiny.checkpoint_bytes
    big = dataclasses.replace(tiny, checkpoint_bytes=51_000_000)
    estimate = plan_lib.estimate_s(tiny, 0.01)
    rows = [{"name": n, "work": w, "done": 0, "steps": 10, "epochs": 1.0, "step_s": 0.01,
             "estimate": estimate} for n, w in (("small", tiny), ("char", big))]
    lines = plan_lib.format_plan(rows, 540, bundle_budget=bundle.default_checkpoint_budget(0))
    notes = [line for line in lines if line.startswith("note: ")]
    assert notes == ["note: char's checkpoints (102.0 MB, newest and best) are more than a "
                     "bundle carries (66.1 MB): stopped at the deadline, it cannot resume in "
                     "a later window."]


@pytest.mark.parametrize("args, message", [
    (("--plan", "--budget_s=-5"), "error: --budget_s must be a finite number of seconds >= 0, "
     "got -5."),
    (("--plan", "--margin_s=nan"), "error: --margin_s must be a finite number of seconds >= 0"
     ", got nan."),
    (("--plan", "--resume_from=bundle"), "error: --plan reads the runs under --root and "
     "writes nothing; run with --resume_from (without --plan) to unpack the bundle."),
    (("--plan", "--step_times={tmp}/none.json"), "error: cannot read the step-time table "
     "{tmp}/none.json: No such file or directory."),
    (("--plan", "--step_times={tmp}/bad.json"), "error: cannot read the step-time table "
     "{tmp}/bad.json: its preset 'tiny' has neither in_training_ms with runs nor bench_ms "
     "with the table's factor_per_run."),
    # a plan of -5 ms steps was printed, a NaN total never counted as late
    (("--plan", "--step_times={tmp}/negative.json"), "error: cannot read the step-time "
     "table {tmp}/negative.json: its in_training_ms of preset 'tiny' is -5, not a number "
     "above 0."),
    (("--plan", "--step_times={tmp}/other.json"), "error: No step time for preset 'tiny' "
     "in the step-time table {tmp}/other.json; measure it (--calibrate_s) or add it."),
    # a bad --out was found after the whole batch had run
    (("--out={tmp}/bad.json", "--calibrate_s=0", "--budget_s=100"),
     "error: --out {tmp}/bad.json must be a "
     "new or empty folder: the bundle is written there after the runs, and files already "
     "there would be mixed in or block it."),
])
def test_bad_flags_are_one_line(tmp_path, capsys, args, message):
    """In this process (the flags parsed, then put back): each refusal comes before any
    data is read."""
    (tmp_path / "bad.json").write_text(json.dumps({"presets": {"tiny": {"ms": 3}}}))
    for name, preset, ms in (("negative", "tiny", -5), ("other", "zaremba_small", 3)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"presets": {preset: {
            "in_training_ms": ms, "runs": 1, "source": "measured"}}}))
    table = ROOT / "results" / "step_times_h200.json"
    args = [a.format(tmp=tmp_path) for a in args]
    if not any(a.startswith("--step_times") for a in args):
        args.append(f"--step_times={table}")
    assert _refusal(capsys, ["--runs=ptb:tiny", *args]) == [message.format(tmp=tmp_path)]


def _refusal(capsys, args: list[str]) -> list[str]:
    """The stderr lines of `experiments.reproduce` run in this process with `args` (the
    flags parsed, then put back), which must end it with status 2."""
    from experiments import reproduce

    reproduce.FLAGS(["reproduce", *args])
    try:
        with pytest.raises(SystemExit) as exit_:
            reproduce.main(["reproduce"])
    finally:
        reproduce.FLAGS.unparse_flags()
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("runs, ahead, message", [
    ("ptb:tiny:other", False, "error: the bundle {tmp}/b holds ['a'], which this batch "
     "(['other']) does not run; resume it with the batch that made it."),
    ("ptb:tiny:a", True, "error: {tmp}/w/a is at step 10, past the bundle's 5: unpacking "
     "would put its older logs back; resume from there without --resume_from, or give "
     "another --root."),
])
def test_a_bundle_of_another_batch_or_behind_the_root_is_refused(tmp_path, capsys, runs,
                                                                  ahead, message):
    """Another batch's bundle was unpacked and the batch started from zero beside it; a
    bundle behind the run under --root put older logs over newer ones (before the plan
    was even checked)."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / bundle.MANIFEST).write_text(json.dumps(
        {"runs": [{"name": "a", "step": 5}], "checkpoint_parts": [],
         "files": {bundle.RUNS_ARCHIVE: {"bytes": 0, "sha256": "0" * 64}}}))
    if ahead:
        (tmp_path / "w" / "a" / "checkpoints" / "10").mkdir(parents=True)
        (tmp_path / "w" / "a" / "metrics.jsonl").write_text("newer\n")
    lines = _refusal(capsys, [f"--runs={runs}", "--calibrate_s=0", "--budget_s=100",
                              f"--step_times={ROOT / 'results' / 'step_times_h200.json'}",
                              f"--resume_from={tmp_path / 'b'}", f"--root={tmp_path / 'w'}",
                              f"--out={tmp_path / 'out'}"])
    assert lines == [message.format(tmp=tmp_path)]
    if ahead:
        assert (tmp_path / "w" / "a" / "metrics.jsonl").read_text() == "newer\n"


def test_missing_data_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.reproduce", f"--data_dir={tmp_path / 'none'}",
         "--plan", "--runs=ptb:zaremba_medium",
         f"--step_times={ROOT / 'results' / 'step_times_h200.json'}"],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        f"error: run zaremba_medium: PTB folder {tmp_path / 'none' / 'ptb_word'} is missing; "
        "pass --data_dir or set RNNREG_DATA_DIR to a folder laid out as in docs/DATA.md."]


def test_the_runner_keeps_itself_off_the_device():
    """jax is imported before the runner's main sets JAX_PLATFORMS, so the variable alone
    would leave jax free to open the GPU the runs need; its config must say cpu too, and
    the runs must get the caller's setting back."""
    script = ("import os, jax\n"
              "from experiments import reproduce\n"
              "caller = reproduce.count_on_cpu()\n"
              "print(caller, jax.config.jax_platforms, os.environ['JAX_PLATFORMS'])\n")
    env = dict(os.environ, JAX_PLATFORMS="cuda,cpu")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, env=env, check=True, timeout=300)
    assert out.stdout.split() == ["cuda,cpu", "cpu", "cpu"]


def test_the_bundle_refuses_more_files_than_come_back(tmp_path):
    for i in range(bundle.MAX_FILES + 1):
        (tmp_path / f"f{i}").write_text("x")
    with pytest.raises(ValueError, match="files, more than"):
        bundle.check_limits(tmp_path)


def test_runs_with_work_left_carry_their_checkpoints_before_finished_ones(tmp_path):
    """A smaller finished run must not take the room of a run that still has to resume
    (unfinished training, or final passes a deadline cut)."""
    for name, size in (("done", 2000), ("left", 6000)):
        step = tmp_path / "root" / name / "checkpoints" / "7"
        step.mkdir(parents=True)
        (step / "state").write_bytes(os.urandom(size))  # incompressible
    runs = [{"name": "done", "status": "finished"}, {"name": "left", "status": "stopped"}]
    manifest = bundle.pack(tmp_path / "root", runs, tmp_path / "out", checkpoint_budget=7000)
    assert {r["name"]: r["checkpoint_carried"] for r in manifest["runs"]} == {
        "done": False, "left": True}
    both = bundle.pack(tmp_path / "root", runs, tmp_path / "out2", checkpoint_budget=20_000)
    assert all(r["checkpoint_carried"] for r in both["runs"])


def test_the_bundle_keeps_to_the_total_that_comes_back(tmp_path, monkeypatch):
    """The device returns 64 MiB together, not 8 x 16 MiB: a checkpoint that the file
    count would let in but the total would not stays behind, and says so."""
    from experiments import reproduce

    monkeypatch.setattr(bundle, "MAX_TOTAL_BYTES", 30_000)
    monkeypatch.setattr(bundle, "PART_BYTES", 9_000)
    monkeypatch.setattr(bundle, "MAX_FILE_BYTES", 10_000)
    monkeypatch.setattr(bundle, "CALLER_ROOM_BYTES", 1_000)
    for name, size in (("small", 2_000), ("big", 30_000)):
        step = tmp_path / "root" / name / "checkpoints" / "7"
        step.mkdir(parents=True)
        (step / "state").write_bytes(os.urandom(size))  # incompressible
    runs = [{"name": n, "status": "stopped"} for n in ("small", "big")]
    manifest = bundle.pack(tmp_path / "root", runs, tmp_path / "out")
    assert {r["name"]: r["checkpoint_carried"] for r in manifest["runs"]} == {
        "small": True, "big": False}  # 5 parts of 9000 would hold both; 30000 does not
    assert manifest["checkpoint_budget"] < 32_000
    assert reproduce.stranded(manifest) == [
        "big: its checkpoints (0.0 MB, the newest and the best) did not travel (the "
        f"bundle's room for checkpoints: {manifest['checkpoint_budget'] / 1e6:.1f} MB): it "
        "cannot resume in a later window."]
    (tmp_path / "out" / "extra").write_bytes(os.urandom(29_000))
    with pytest.raises(ValueError, match="together"):
        bundle.check_limits(tmp_path / "out")


@pytest.mark.slow  # about 3 minutes on a 2-core CPU
def test_deadline_stop_bundle_and_resume_end_as_an_uninterrupted_run(tmp_path):
    specs = [f"ptb:tiny:a:{FLAGS};--config.train.num_epochs=100",
             f"ptb:tiny:b:{FLAGS};--config.train.num_epochs=100;--config.train.seed=1"]
    # Stopped at the deadline, side by side, with the checkpoints bundled.
    first = _reproduce(tmp_path, f"--runs={','.join(specs)}", "--budget_s=40",
                       "--margin_s=20", "--calibrate_s=0", "--stop_at_deadline",
                       f"--step_times={ROOT / 'results' / 'step_times_h100.json'}",
                       f"--root={tmp_path / 'w1'}", f"--out={tmp_path / 'b1'}")
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = json.loads((tmp_path / "b1" / bundle.MANIFEST).read_text())
    assert [r["status"] for r in manifest["runs"]] == ["stopped", "stopped"]
    assert all(r["checkpoint_carried"] for r in manifest["runs"])
    files = list((tmp_path / "b1").iterdir())
    assert len(files) <= bundle.MAX_FILES
    assert all(f.stat().st_size <= bundle.MAX_FILE_BYTES for f in files)
    # A later call elsewhere resumes from the bundle alone and finishes.
    second = _reproduce(tmp_path, f"--runs={','.join(specs)}", "--budget_s=1500",
                        "--calibrate_s=0", "--resume_from=" + str(tmp_path / "b1"),
                        f"--step_times={ROOT / 'results' / 'step_times_h100.json'}",
                        f"--root={tmp_path / 'w2'}", f"--out={tmp_path / 'b2'}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resumed from step" in (tmp_path / "w2" / "a" / "console.log").read_text()
    # The same runs uninterrupted, straight through the binary, side by side.
    parsed = [plan_lib.Spec.parse(spec) for spec in specs]
    refs = [subprocess.Popen(
        [sys.executable, "-m", "experiments.ptb", *s.argv(),
         f"--workdir={tmp_path / 'ref' / s.name}", f"--data_dir={tmp_path / 'data'}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        env=dict(os.environ)) for s in parsed]
    for s, ref in zip(parsed, refs, strict=True):
        stdout, _ = ref.communicate(timeout=600)
        assert ref.returncode == 0
        resumed = json.loads((tmp_path / "w2" / s.name / "final.json").read_text())
        uninterrupted = json.loads(stdout)
        for key in ("valid/loss", "test/loss"):
            assert resumed[key] == uninterrupted[key], key


@pytest.mark.slow
def test_sigterm_to_the_driver_stops_the_runs_and_still_writes_the_bundle(tmp_path):
    """Killed by a call's time limit, the driver left its runs training without it (they
    are in sessions of their own) and wrote no bundle: nothing came back."""
    data = tmp_path / "data"
    fx.write_repeated_ptb_word(data)
    log = tmp_path / "driver.log"
    with open(log, "w") as sink:
        driver = subprocess.Popen(
            [sys.executable, "-m", "experiments.reproduce", f"--data_dir={data}",
             f"--runs=ptb:tiny:a:{FLAGS};--config.train.num_epochs=1000", "--budget_s=900",
             "--calibrate_s=0", "--stop_at_deadline", f"--root={tmp_path / 'w'}",
             f"--step_times={ROOT / 'results' / 'step_times_h100.json'}",
             f"--out={tmp_path / 'b'}"], stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
    checkpoints = tmp_path / "w" / "a" / "checkpoints"
    began = time.monotonic()
    while not (checkpoints.is_dir() and any(checkpoints.iterdir())):
        assert driver.poll() is None and time.monotonic() - began < 300, log.read_text()
        time.sleep(0.5)
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=120) == 0, log.read_text()[-3000:]
    said = log.read_text()
    assert "SIGTERM: the runs were stopped now, before the deadline" in said
    manifest = bundle.read_manifest(tmp_path / "b")
    [run] = manifest["runs"]
    assert run["status"] == "stopped" and run["step"] >= 5 and run["checkpoint_carried"]
    assert '"reason": "SIGTERM"' in (tmp_path / "w" / "a" / "metrics.jsonl").read_text()


def test_the_report_reads_a_bundle_as_it_reads_workdirs(tmp_path):
    from experiments import report_runs

    run = tmp_path / "root" / "a"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": "ptb", "config": {}}))
    (run / "metrics.jsonl").write_text("")
    bundle.pack(tmp_path / "root", [{"name": "a"}], tmp_path / "b")
    found = report_runs.find_workdirs([str(tmp_path / "b")])
    assert len(found) == 1 and Path(found[0]).name == "a"
    assert json.loads((Path(found[0]) / "config.json").read_text())["task"] == "ptb"


_MC = "MC dropout: 1000 samples, masks per pass, word-type dropout off, seed 0"


def _test_work():
    return plan_lib.Work(steps_per_epoch=10, total_steps=10, train_rows=20,
                         eval_windows={"test": (100, 1)}, validation_split=None,
                         final_passes=(Pass("test", "deterministic", "test", 0, True),
                                       Pass("test_mc", _MC, "test", 1000, True)))


def test_wide_mc_windows_cost_less_with_a_wide_eval_factor():
    work = _test_work()
    plain = plan_lib.estimate_s(work, 0.01, startup_s=0)["final_eval"]
    wide = plan_lib.estimate_s(work, 0.01, startup_s=0, wide_eval_factor=4.5)["final_eval"]
    # the batch-1 pass costs a third of a step a window; MC 1000 rows = 50 batches of 20
    assert plain == pytest.approx(100 * 0.01 / 3 * (1 + 50))
    assert wide == pytest.approx(100 * 0.01 / 3 * (1 + 1 + 49 / 4.5))


def test_the_plan_counts_only_the_final_passes_a_stopped_evaluation_left(tmp_path):
    """A run whose final evaluation was cut after its deterministic test pass costs only
    its MC pass; a record of other settings, or of an earlier step, counts for nothing."""
    from experiments import reproduce

    work = _test_work()
    events = [{"step": 10, "split": "test", "phase": "final", "evaluated_as": "deterministic"},
              {"step": 10, "split": "test_mc", "phase": "final",
               "evaluated_as": _MC.replace("1000", "100")},
              {"step": 5, "split": "test_mc", "phase": "final", "evaluated_as": _MC}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events)
                                            + '{"step": 1')  # and a line being written
    events = read_metrics(str(tmp_path))  # skips the line being written
    recorded = reproduce.recorded_passes(events, work, done=10)
    assert recorded == {"test"}
    assert reproduce.recorded_passes(events, work, done=5) == set()  # still training
    full = plan_lib.estimate_s(work, 0.01, done_steps=10, startup_s=0)["final_eval"]
    left = plan_lib.estimate_s(work, 0.01, done_steps=10, startup_s=0,
                               recorded=recorded)["final_eval"]
    assert full - left == pytest.approx(100 * 0.01 / 3)  # the batch-1 pass, not run again


def test_mc_of_a_model_without_noise_is_priced_as_the_one_pass_it_runs():
    import dataclasses

    noisy = _test_work()
    noiseless = dataclasses.replace(noisy, mc_draws_noise=False)
    one_pass = 100 * 0.01 / 3
    assert plan_lib.estimate_s(noiseless, 0.01, startup_s=0)["final_eval"] == pytest.approx(
        2 * one_pass)
    assert plan_lib.estimate_s(noisy, 0.01, startup_s=0)["final_eval"] > 40 * one_pass


def test_an_epoch_saved_before_its_validation_is_priced_with_that_validation(tmp_path):
    """SIGTERM in an epoch-end validation saves the epoch unvalidated: the resume runs that
    validation first, one pass more than the steps left say."""
    import dataclasses

    from experiments import reproduce

    work = dataclasses.replace(_test_work(), total_steps=30, validation_split="test")
    events = [{"step": 10, "split": "stopped", "reason": "SIGTERM"},
              {"step": 20, "split": "stopped", "reason": "SIGTERM", "during": "validation"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    events = read_metrics(str(tmp_path))
    assert not reproduce.validation_pending(events, 10)  # stopped while training
    assert reproduce.validation_pending(events, 20)
    one_pass = 100 * 0.01 / 3
    for done, epochs_left in ((20, 1), (30, 0)):
        plain = plan_lib.estimate_s(work, 0.01, done_steps=done, startup_s=0)
        pending = plan_lib.estimate_s(work, 0.01, done_steps=done, startup_s=0,
                                      validation_pending=True)
        assert plain["validation"] == pytest.approx(epochs_left * one_pass)
        assert pending["validation"] == pytest.approx((epochs_left + 1) * one_pass)
