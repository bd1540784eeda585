"""Runs a batch of presets side by side on one accelerator within a time budget.

    python -m experiments.reproduce --batches=medium --budget_s=540 --out=$OUT
    python -m experiments.reproduce --runs=ptb:zoneout_char,ptb:baseline_char \\
        --budget_s=540 --resume_from=BUNDLE --stop_at_deadline
    python -m experiments.reproduce --plan --batches=medium,char \\
        --step_times=results/step_times_h100.json

1. Counts each run's steps and evaluation windows from its config and data, and
   what a workdir (or a bundle given with `--resume_from`) has already done.
2. Calibrates (`--calibrate_s`, default 60): each run alone, then all of them side
   by side, timed from their `metrics.jsonl`; or takes the step times of
   `--step_times`. Prints the plan and refuses, in one line with exit status 2, one
   that does not finish training and its final evaluations in the budget, unless
   `--stop_at_deadline`.
3. Starts every run (CUDA MPS is started by scripts/gpu_window.sh where present)
   with `train.time_limit_s` set to the deadline: a run still training then saves a
   checkpoint and stops; one still evaluating gets SIGTERM, then SIGKILL. SIGTERM or
   Ctrl-C to this driver stops the runs the same way at once.
4. Writes the bring-back bundle (experiments/bundle.py) to `--out`. A run that failed
   (a non-zero exit the driver did not cause) has the last lines of its console.log
   repeated on stderr, and the driver, once the bundle is written, ends with exit status 1
   (`RUN_FAILED`) and one `error:` line naming the failed runs; 0 when every run finished
   or was stopped. Bad input (a flag, a run spec whose config the binaries' checks
   refuse, data a run cannot read, a plan that does not finish) is refused before
   anything runs: one line, 2; one about a run's config or data names the run
   (`error: run NAME: ...`).

`--runs` takes run specs separated by commas; a comma inside (), [] or {} stays in its
spec: `--runs=ptb:tiny:a:--config.model.hidden_sizes=(8,8),ptb:tiny:b`.

`--plan` stops after step 2 without running anything (step times from the table).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

from absl import app, flags

from experiments import bundle, cli  # noqa: F401 - cli defines --data_dir, as for the binaries
from experiments import reproduce_plan as plan_lib
from experiments import reproduce_procs as procs_lib
from experiments.flag_parsing import parse_flags
from experiments.reproduce_workdirs import (  # noqa: F401 -- re-exported
    console_tail,
    done_steps,
    measured_step_s,
    read_events,
    recorded_passes,
    train_events,
    validation_pending,
)
from rnnreg_jax.data.errors import DataError
from rnnreg_jax.train.termination import TerminationFlag


class _RunsParser(flags.ListParser):
    """`--runs`: run specs split at commas outside brackets (`plan_lib.split_runs`), so
    that a tuple override (`--config.model.hidden_sizes=(8,8)`) stays in its spec; absl's
    list flag split it there and refused the spec `8)`."""

    def parse(self, argument):
        if isinstance(argument, list):
            return argument
        return plan_lib.split_runs(argument)


flags.DEFINE(_RunsParser(), "runs", [],
             "Run specs task:preset[:name][:--flag;--flag...], separated by commas; a comma "
             "inside (), [] or {} stays in its spec: "
             "ptb:tiny:a:--config.model.hidden_sizes=(8,8),ptb:tiny:b.",
             serializer=flags.CsvListSerializer(","))
flags.DEFINE_list("batches", [], f"Named batches: {', '.join(plan_lib.BATCHES)}.")
flags.DEFINE_float("budget_s", 0.0, "Seconds this call may take in all, bundle included.")
flags.DEFINE_float("calibrate_s", 60.0, "Seconds of calibration (0: use --step_times).")
flags.DEFINE_string("step_times", None, "Step-time table (JSON) for --plan or no calibration.")
flags.DEFINE_bool("plan", False, "Print the plan from --step_times and exit.")
flags.DEFINE_bool("stop_at_deadline", False, "Run a plan that does not finish in the budget.")
flags.DEFINE_string("root", "runs/reproduce", "Folder of the runs' workdirs.")
flags.DEFINE_string("out", None, "Bundle folder (default $OUT, else runs/bundle).")
flags.DEFINE_string("resume_from", None, "A bundle folder to resume the runs from.")
flags.DEFINE_float("margin_s", 45.0, "Seconds kept at the end for saves, stops and the bundle.")
FLAGS = flags.FLAGS


RUN_FAILED = 1  # the exit status of a batch that ran, and wrote its bundle, with a run failed
STOPPED_CODES = (0, -signal.SIGTERM, -signal.SIGKILL)  # finished, or stopped by the driver


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _command(spec: plan_lib.Spec, workdir: Path, extra: list[str]) -> list[str]:
    args = [sys.executable, "-m", f"experiments.{spec.task}", *spec.argv(),
            f"--workdir={workdir}", *extra]
    if FLAGS.data_dir:
        args.append(f"--data_dir={FLAGS.data_dir}")
    return args


_DEVICE_PLATFORMS: str | None = None  # the caller's JAX_PLATFORMS, for the runs


def _child_env() -> dict:
    env = dict(os.environ)
    env.pop("JAX_PLATFORMS", None)
    if _DEVICE_PLATFORMS is not None:
        env["JAX_PLATFORMS"] = _DEVICE_PLATFORMS
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(FLAGS.root).resolve() / ".xla_cache"))
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # several runs share one device
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(spec, workdir: Path, extra: list[str]) -> subprocess.Popen:
    return procs_lib.start(_command(spec, workdir, extra), workdir, _child_env())


def calibrate(specs, seconds: float) -> dict[str, dict]:
    """Each run alone, then all side by side, for `seconds` in all; {name: timings}."""
    phase_s = seconds / (len(specs) + (1 if len(specs) > 1 else 0))
    scratch = Path(FLAGS.root) / ".calibrate"
    shutil.rmtree(scratch, ignore_errors=True)
    extra = [f"--config.train.time_limit_s={phase_s:g}", "--config.train.log_every_steps=10",
             "--config.train.checkpoint_every_steps=0", "--config.train.tensorboard=False",
             "--config.train.max_steps=0", "--config.train.checkpoint_every_s=0"]
    out: dict[str, dict] = {s.name: {} for s in specs}
    phases = [[s] for s in specs] + ([list(specs)] if len(specs) > 1 else [])
    for group in phases:
        kind = "alone" if len(group) == 1 else "together"
        started = time.time()
        procs = {s.name: _start(s, scratch / f"{s.name}-{kind}", extra) for s in group}
        codes = procs_lib.wait_all(procs, time.monotonic() + phase_s + 120)
        for s in group:
            workdir = scratch / f"{s.name}-{kind}"
            out[s.name][kind] = measured_step_s(workdir)
            if out[s.name][kind] is None and codes[s.name] not in STOPPED_CODES:
                # it failed (out of memory, say): "measured no steps" hid why
                tail = console_tail(workdir, 1)
                shutil.rmtree(scratch, ignore_errors=True)
                _fail(f"run {s.name} failed in calibration (exit {codes[s.name]})"
                      + (f"; its console.log ends: {tail[0].strip().rstrip('.')}."
                         if tail else ", with an empty console.log."))
            events = train_events(workdir)
            if kind == "alone" and events:
                out[s.name]["startup_s"] = events[0]["wall_time"] - started
    shutil.rmtree(scratch, ignore_errors=True)
    for name, timing in out.items():
        print(f"calibration {name}: alone {_ms(timing.get('alone'))} ms/step, side by side "
              f"{_ms(timing.get('together', timing.get('alone')))} ms/step, startup "
              f"{timing.get('startup_s', float('nan')):.0f} s", flush=True)
    return out


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.2f}"


def make_plan(specs, budget_s: float, timings: dict | None, table: dict | None,
              works: dict[str, plan_lib.Work] | None = None) -> list[dict]:
    """The plan's rows, printed; `works`: each run's `count_work` by name, where counted
    already."""
    rows = []
    for spec in specs:
        work = (works or {}).get(spec.name) or plan_lib.count_work(spec, FLAGS.data_dir)
        workdir = Path(FLAGS.root) / spec.name
        done = done_steps(workdir)
        startup = plan_lib.STARTUP_S
        if timings is not None:
            t = timings[spec.name]
            step_s = t.get("together") or t.get("alone")
            if step_s is None:
                _fail(f"calibration measured no steps of {spec.name} in "
                      f"{FLAGS.calibrate_s:g} s; give it more --calibrate_s or --step_times.")
            startup = t.get("startup_s", startup)
        else:
            assert table is not None  # main refuses no calibration without --step_times
            step_s, _ = plan_lib.table_step_s(table, spec, len(specs))
        wide = (table or {}).get("wide_eval_factor", 1.0)
        events = read_events(workdir)  # read once for both questions
        estimate = plan_lib.estimate_s(work, step_s, done, startup, wide,
                                       recorded_passes(events, work, done),
                                       validation_pending(events, done))
        rows.append({"name": spec.name, "spec": spec, "work": work, "done": done,
                     "steps": work.total_steps,
                     "epochs": max(0, work.total_steps - done) / work.steps_per_epoch,
                     "step_s": step_s, "estimate": estimate})
    room = bundle.default_checkpoint_budget(0)
    print("\n".join(plan_lib.format_plan(rows, budget_s, room)), flush=True)
    return rows


def run_batch(specs, rows, deadline: float, out: Path) -> dict:
    limit = deadline - time.monotonic()
    extra = [f"--config.train.time_limit_s={max(1.0, limit):.0f}"]
    root = Path(FLAGS.root)
    procs = {s.name: _start(s, root / s.name, extra) for s in specs}
    print(f"started {len(procs)} runs; training stops at the latest in {limit:.0f} s",
          flush=True)
    # SIGTERM or Ctrl-C to the driver (a call's own time limit, say) stops the runs as the
    # deadline would and still writes the bundle: killed at once it left them running
    # without it, and what they had trained never came back.
    told = TerminationFlag()
    try:
        codes = procs_lib.wait_all(procs, deadline + FLAGS.margin_s / 3,
                                   grace_s=min(15.0, max(5.0, FLAGS.margin_s / 3)),
                                   stop_now=lambda: told.set)
    finally:
        told.restore()
    if told.set:
        print(f"{told.name}: the runs were stopped now, before the deadline; writing the "
              "bundle.", flush=True)
    runs = []
    for spec in specs:
        workdir = root / spec.name
        stdout = root / f".{spec.name}.stdout"
        final = {}
        try:
            final = json.loads(stdout.read_text())
            (workdir / "final.json").write_text(json.dumps(final, indent=1))
        except (OSError, ValueError):
            pass
        code = codes[spec.name]
        status = ("failed" if code not in STOPPED_CODES
                  else "stopped" if code != 0 or final.get("stopped") else "finished")
        runs.append({"name": spec.name, "task": spec.task, "preset": spec.preset,
                     "flags": list(spec.flags), "status": status, "exit_code": code,
                     "step": done_steps(workdir)})
        print(f"{spec.name}: {status} (exit {code}), step {runs[-1]['step']}", flush=True)
        if status == "failed":  # the reason is in its console.log: say it here
            for line in console_tail(workdir):
                print(f"{spec.name} console: {line}", file=sys.stderr, flush=True)
    manifest = bundle.pack(root, runs, out)
    carried = [r["name"] for r in manifest["runs"] if r["checkpoint_carried"]]
    print(f"bundle {out}: {len(manifest['files']) + 1} files; checkpoints carried for "
          f"{', '.join(carried) or 'no run'}", flush=True)
    for line in stranded(manifest):
        print(line, flush=True)
    return manifest


def stranded(manifest: dict) -> list[str]:
    """One line per run with work left whose checkpoints did not travel."""
    budget = manifest["checkpoint_budget"]
    return [f"{r['name']}: its checkpoints ({r['checkpoint_bytes'] / 1e6:.1f} MB, the newest "
            f"and the best) did not travel (the bundle's room for checkpoints: "
            f"{budget / 1e6:.1f} MB): it cannot resume in a later window."
            for r in manifest["runs"] if r["status"] != "finished"
            and not r["checkpoint_carried"] and r["checkpoint_bytes"]]


def main(argv) -> None:
    try:
        _main(argv)
    except DataError as err:  # the data sets the plan counts steps in: missing or unreadable
        _fail(str(err))  # `count_work` names the run: "run NAME: PTB folder ... is missing"


def _main(argv) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}.")
    for name in ("budget_s", "calibrate_s", "margin_s"):
        value = FLAGS[name].value
        assert value is not None  # DEFINE_float with a default
        if not (math.isfinite(value) and value >= 0):
            _fail(f"--{name} must be a finite number of seconds >= 0, got {value:g}.")
    if FLAGS.plan and FLAGS.resume_from:
        _fail("--plan reads the runs under --root and writes nothing; run with "
              "--resume_from (without --plan) to unpack the bundle.")
    start = time.monotonic()
    try:
        specs = [plan_lib.Spec.parse(s) for s in FLAGS.runs] + plan_lib.batch_specs(FLAGS.batches)
    except ValueError as err:
        _fail(str(err))
    if not specs:
        _fail("pass --runs or --batches.")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        _fail(f"two runs share a name in {names}; name them (task:preset:name).")
    for spec in specs:  # the binaries' own checks, before anything is planned or runs
        try:
            spec.checked_config()
        except ValueError as err:
            _fail(str(err))
    table = None
    if FLAGS.step_times:
        try:
            table = plan_lib.load_step_times(FLAGS.step_times)
        except (OSError, ValueError) as err:  # missing, unreadable, or not JSON
            _fail(f"cannot read the step-time table {FLAGS.step_times}: "
                  f"{getattr(err, 'strerror', None) or err}.")
    if table is not None and (FLAGS.plan or FLAGS.calibrate_s == 0):  # before any data
        unpriced = sorted({s.preset for s in specs} - set(table["presets"]))
        if unpriced:
            _fail(f"No step time for preset {unpriced[0]!r} in the step-time table "
                  f"{FLAGS.step_times}; measure it (--calibrate_s) or add it.")
    if FLAGS.plan:
        if table is None:
            _fail("--plan needs --step_times.")
        groups = ([[plan_lib.Spec.parse(s) for s in FLAGS.runs]] if FLAGS.runs else []) + [
            plan_lib.batch_specs([b]) for b in FLAGS.batches]  # each batch is one call
        _check_workdirs(specs, Path(FLAGS.root))
        for group in groups:
            _plan_or_fail(group, FLAGS.budget_s or 540.0, None, table)
        return
    if FLAGS.budget_s <= FLAGS.margin_s:
        _fail(f"--budget_s must exceed --margin_s ({FLAGS.margin_s:g} s).")
    out = Path(FLAGS.out or os.environ.get("OUT") or "runs/bundle")
    if out.is_file() or (out.is_dir() and any(out.iterdir())):  # found only after the batch
        _fail(f"--out {out} must be a new or empty folder: the bundle is written there "
              "after the runs, and files already there would be mixed in or block it.")
    if FLAGS.calibrate_s == 0 and table is None:
        _fail("without calibration (--calibrate_s=0) pass --step_times.")
    if FLAGS.resume_from:
        _check_resume(Path(FLAGS.resume_from), Path(FLAGS.root), names)
        try:
            bundle.unpack(Path(FLAGS.resume_from), Path(FLAGS.root))
        except (OSError, ValueError) as err:
            _fail(f"cannot resume from {FLAGS.resume_from}: {err}")
    _check_workdirs(specs, Path(FLAGS.root))
    # Counted before calibration: a run spec the task refuses (an MC split it does not
    # evaluate) or data that cannot be read ends the batch before anything runs.
    works = {spec.name: _count_or_fail(spec) for spec in specs}
    timings = None
    if FLAGS.calibrate_s > 0:
        timings = calibrate(specs, FLAGS.calibrate_s)
    deadline = start + FLAGS.budget_s - FLAGS.margin_s
    rows = _plan_or_fail(specs, FLAGS.budget_s, timings, table, works)
    left = deadline - time.monotonic()
    late = [r for r in rows if r["estimate"]["total"] > left]
    if late and not FLAGS.stop_at_deadline:
        worst = max(late, key=lambda r: r["estimate"]["total"])
        _fail(f"the plan does not finish: {worst['name']} needs about "
              f"{worst['estimate']['total'] / 60:.1f} min of the {left / 60:.1f} left; give "
              "more --budget_s, fewer runs, or --stop_at_deadline to resume in a later call.")
    manifest = run_batch(specs, rows, deadline, out)
    failed = [r for r in manifest["runs"] if r["status"] == "failed"]
    if failed:  # the bundle is written: a status that says so, after it
        which = "; ".join(f"{r['name']}, exit {r['exit_code']}" for r in failed)
        print(f"error: {len(failed)} of {len(manifest['runs'])} runs failed ({which}); the "
              f"bundle {out} holds what the batch did, with each run's console.log.",
              file=sys.stderr, flush=True)
        sys.exit(RUN_FAILED)


def _check_workdirs(specs, root: Path) -> None:
    """Refuse, before anything runs, a run whose workdir under `root` holds another run
    (another task, model, data or trajectory): its binary refuses it at once, as
    `experiments.resume_check.resume_conflict` says."""
    from experiments.resume_check import resume_conflict

    for spec in specs:
        conflict = resume_conflict(str(root / spec.name), spec.config().to_dict(), spec.task)
        if conflict:
            _fail(f"run {spec.name}: {conflict.rstrip('.')}.")


def _count_or_fail(spec) -> plan_lib.Work:
    try:
        return plan_lib.count_work(spec, FLAGS.data_dir)
    except ValueError as err:  # the config against its task and data, naming the run
        _fail(str(err).rstrip(".") + ".")


def _check_resume(source: Path, root: Path, names: list[str]) -> None:
    """Refuse, before unpacking, a bundle whose manifest is malformed, whose runs this batch
    does not name (another batch's: they were unpacked and the batch started from zero
    beside them) or whose run is behind the same run under `root` (unpacking put its
    older logs back over the newer ones)."""
    try:
        manifest = bundle.read_manifest(source)
    except ValueError as err:
        _fail(f"cannot resume from {source}: {err}")
    bundled = {r["name"]: r.get("step", 0) for r in manifest["runs"]}
    strangers = sorted(set(bundled) - set(names))
    if strangers:
        _fail(f"the bundle {source} holds {strangers}, which this batch ({names}) does not "
              "run; resume it with the batch that made it.")
    for name, step in bundled.items():
        here = done_steps(root / name)
        if here > step:
            _fail(f"{root / name} is at step {here}, past the bundle's {step}: unpacking "
                  "would put its older logs back; resume from there without --resume_from, "
                  "or give another --root.")


def _plan_or_fail(specs, budget_s, timings, table, works=None) -> list[dict]:
    """`make_plan`, or one line for what it cannot price (a preset the step-time table
    lacks, a run spec's override that is no config field): tracebacks before."""
    try:
        return make_plan(specs, budget_s, timings, table, works)
    except ValueError as err:  # ConfigError is one
        _fail(str(err).rstrip(".") + ".")


def count_on_cpu() -> str | None:
    """Keep this process off the device (it only plans and watches; the runs get the device)
    and return the caller's JAX_PLATFORMS for them. jax is imported by now and read the
    variable then, so its config is set as well: the variable alone would not reach it."""
    import jax

    caller = os.environ.get("JAX_PLATFORMS")
    os.environ["JAX_PLATFORMS"] = "cpu"
    jax.config.update("jax_platforms", "cpu")
    return caller


if __name__ == "__main__":
    _DEVICE_PLATFORMS = count_on_cpu()
    app.run(main, flags_parser=parse_flags)
