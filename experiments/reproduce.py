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

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

from experiments import bundle
from experiments import reproduce_input as input_lib
from experiments import reproduce_plan as plan_lib
from experiments import reproduce_procs as procs_lib
from experiments.flag_parsing import parse_flags
from experiments.reproduce_input import (
    FLAGS,
    check_flags,
    check_workdirs,
    checked_out,
    read_specs,
    read_step_times,
)
from experiments.reproduce_input import check_resume as _check_resume  # tests call it here
from experiments.reproduce_input import fail as _fail
from experiments.reproduce_outcome import (  # noqa: F401 -- RUN_FAILED, stranded: re-exported
    RUN_FAILED,
    ended_run,
    exit_if_a_run_failed,
    stranded,
    write_bundle,
)
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

# This module is the driver; its flags and the refusals of bad input are reproduce_input, the
# plan's arithmetic reproduce_plan, the run processes reproduce_procs, what a run's workdir
# says reproduce_workdirs, and what the batch came to (the bundle, the exit status)
# reproduce_outcome.
flags.adopt_module_key_flags(input_lib)  # --help lists them as this binary's own


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
            if out[s.name][kind] is None and codes[s.name] not in procs_lib.STOPPED_CODES:
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
    codes = _wait_or_stop(procs, deadline)
    runs = [ended_run(spec, root, codes[spec.name]) for spec in specs]
    return write_bundle(root, runs, out)


def _wait_or_stop(procs: dict, deadline: float) -> dict[str, int]:
    """The runs' exit codes, once they end or are stopped at the deadline."""
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
    return codes


def main(argv) -> None:
    try:
        _main(argv)
    except DataError as err:  # the data sets the plan counts steps in: missing or unreadable
        _fail(str(err))  # `count_work` names the run: "run NAME: PTB folder ... is missing"


def _main(argv) -> None:
    check_flags(argv)
    start = time.monotonic()
    specs = read_specs()
    table = read_step_times(specs)
    if FLAGS.plan:
        _print_plans(specs, table)
        return
    out = checked_out(table)
    if FLAGS.resume_from:
        _unpack_resumed([s.name for s in specs])
    check_workdirs(specs, Path(FLAGS.root))
    # Counted before calibration: a run spec the task refuses (an MC split it does not
    # evaluate) or data that cannot be read ends the batch before anything runs.
    works = {spec.name: _count_or_fail(spec) for spec in specs}
    timings = calibrate(specs, FLAGS.calibrate_s) if FLAGS.calibrate_s > 0 else None
    deadline = start + FLAGS.budget_s - FLAGS.margin_s
    rows = _plan_or_fail(specs, FLAGS.budget_s, timings, table, works)
    _refuse_a_late_plan(rows, deadline - time.monotonic())
    manifest = run_batch(specs, rows, deadline, out)
    exit_if_a_run_failed(manifest, out)


def _print_plans(specs, table: dict | None) -> None:
    """`--plan`: the plan of each call (the `--runs` together, each batch on its own)
    from the step-time table; nothing runs."""
    if table is None:
        _fail("--plan needs --step_times.")
    groups = ([[plan_lib.Spec.parse(s) for s in FLAGS.runs]] if FLAGS.runs else []) + [
        plan_lib.batch_specs([b]) for b in FLAGS.batches]  # each batch is one call
    check_workdirs(specs, Path(FLAGS.root))
    for group in groups:
        _plan_or_fail(group, FLAGS.budget_s or 540.0, None, table)


def _unpack_resumed(names: list[str]) -> None:
    """The `--resume_from` bundle unpacked under `--root`, once `check_resume` lets it."""
    source, root = Path(FLAGS.resume_from), Path(FLAGS.root)
    _check_resume(source, root, names)
    try:
        bundle.unpack(source, root)
    except (OSError, ValueError) as err:
        _fail(f"cannot resume from {FLAGS.resume_from}: {err}")


def _refuse_a_late_plan(rows: list[dict], left_s: float) -> None:
    """Refuse a plan with a run that needs more than the `left_s` seconds left, unless
    `--stop_at_deadline`."""
    late = [r for r in rows if r["estimate"]["total"] > left_s]
    if late and not FLAGS.stop_at_deadline:
        worst = max(late, key=lambda r: r["estimate"]["total"])
        _fail(f"the plan does not finish: {worst['name']} needs about "
              f"{worst['estimate']['total'] / 60:.1f} min of the {left_s / 60:.1f} left; give "
              "more --budget_s, fewer runs, or --stop_at_deadline to resume in a later call.")


def _count_or_fail(spec) -> plan_lib.Work:
    try:
        return plan_lib.count_work(spec, FLAGS.data_dir)
    except ValueError as err:  # the config against its task and data, naming the run
        _fail(str(err).rstrip(".") + ".")


def _plan_or_fail(specs, budget_s, timings, table, works=None) -> list[dict]:
    """`make_plan`, or one line for what it cannot price (a preset the step-time table
    lacks, a run spec's override that is no config field), not a traceback."""
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
