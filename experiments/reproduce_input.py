"""The input of `python -m experiments.reproduce`: its flags, and the refusals of bad
input before anything is planned or runs, each one line `error: ...` on stderr and exit
status 2 (`fail`): flags that contradict each other, run specs and configs the binaries
refuse, a step-time table that cannot be read or prices no preset of the batch, an
`--out` that is not empty, and workdirs or a bundle the runs cannot resume from."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import NoReturn

from absl import flags

from experiments import bundle, cli  # noqa: F401 - cli defines --data_dir, as for the binaries
from experiments import reproduce_plan as plan_lib
from experiments.flag_parsing import DATA_DIR_REMEDY, refuse_empty
from experiments.reproduce_workdirs import done_steps


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


def fail(message: str) -> NoReturn:
    """Refuse: one `error:` line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_flags(argv: list[str]) -> None:
    """Refuse positional arguments, a budget that is no number of seconds, and `--plan`
    with `--resume_from` (a plan writes nothing, so it would not unpack the bundle)."""
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}.")
    refuse_empty({"root": (FLAGS.root, "pass a folder, or leave the flag out for "
                                       "runs/reproduce"),
                  "out": (FLAGS.out, "pass a new or empty folder, or leave the flag out for "
                                     "$OUT, else runs/bundle"),
                  "resume_from": (FLAGS.resume_from, "pass a bundle folder, or leave the "
                                                     "flag out to resume from --root alone"),
                  "step_times": (FLAGS.step_times, "pass a step-time table (JSON), or leave "
                                                   "the flag out to calibrate"),
                  "data_dir": (FLAGS.data_dir, DATA_DIR_REMEDY)})
    blocker = file_in_the_way(Path(FLAGS.root))
    if blocker is not None:  # the runs' start failed on it with a traceback
        fail(f"--root={FLAGS.root} cannot hold the runs' workdirs: {blocker} is a file, not a "
             "folder.")
    for name in ("budget_s", "calibrate_s", "margin_s"):
        value = FLAGS[name].value
        assert value is not None  # DEFINE_float with a default
        if not (math.isfinite(value) and value >= 0):
            fail(f"--{name} must be a finite number of seconds >= 0, got {value:g}.")
    if FLAGS.plan and FLAGS.resume_from:
        fail("--plan reads the runs under --root and writes nothing; run with "
             "--resume_from (without --plan) to unpack the bundle.")


def file_in_the_way(path: Path) -> Path | None:
    """`path`, or the nearest of its parents that exists, where that is not a folder (so
    nothing can be made at `path`); else None."""
    for place in (path, *path.parents):
        if place.exists():
            return None if place.is_dir() else place
    return None


def read_specs() -> list[plan_lib.Spec]:
    """The runs of `--runs` and `--batches`, each named once and its config passed by the
    binaries' own checks."""
    try:
        specs = [plan_lib.Spec.parse(s) for s in FLAGS.runs] + plan_lib.batch_specs(FLAGS.batches)
    except ValueError as err:
        fail(str(err))
    if not specs:
        fail("pass --runs or --batches.")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        fail(f"two runs share a name in {names}; name them (task:preset:name).")
    for spec in specs:  # the binaries' own checks, before anything is planned or runs
        try:
            spec.checked_config()
        except ValueError as err:
            fail(str(err))
    return specs


def read_step_times(specs: list[plan_lib.Spec]) -> dict | None:
    """The `--step_times` table, or None without one; where the plan prices the runs from
    it alone, refused (before any data is read) if it lacks one of their presets."""
    if not FLAGS.step_times:
        return None
    try:
        table = plan_lib.load_step_times(FLAGS.step_times)
    except (OSError, ValueError) as err:  # missing, unreadable, or not JSON
        fail(f"cannot read the step-time table {FLAGS.step_times}: "
             f"{getattr(err, 'strerror', None) or err}.")
    if FLAGS.plan or FLAGS.calibrate_s == 0:
        unpriced = sorted({s.preset for s in specs} - set(table["presets"]))
        if unpriced:
            fail(f"No step time for preset {unpriced[0]!r} in the step-time table "
                 f"{FLAGS.step_times}; measure it (--calibrate_s) or add it.")
    return table


def checked_out(table: dict | None) -> Path:
    """The bundle folder of a batch that runs, once its budget, its `--out` and its source
    of step times are checked."""
    if FLAGS.budget_s <= FLAGS.margin_s:
        fail(f"--budget_s must exceed --margin_s ({FLAGS.margin_s:g} s).")
    out = Path(FLAGS.out or os.environ.get("OUT") or "runs/bundle")
    if file_in_the_way(out.parent) is not None or out.is_file() or (
            out.is_dir() and any(out.iterdir())):  # found only after the batch
        fail(f"--out {out} must be a new or empty folder: the bundle is written there "
             "after the runs, and files already there would be mixed in or block it.")
    if FLAGS.calibrate_s == 0 and table is None:
        fail("without calibration (--calibrate_s=0) pass --step_times.")
    return out


def check_workdirs(specs, root: Path) -> None:
    """Refuse, before anything runs, a run whose workdir under `root` holds another run
    (another task, model, data or trajectory): its binary refuses it at once, as
    `experiments.resume_check.resume_conflict` says."""
    from experiments.resume_check import resume_conflict

    for spec in specs:
        conflict = resume_conflict(str(root / spec.name), spec.config().to_dict(), spec.task)
        if conflict:
            fail(f"run {spec.name}: {conflict.rstrip('.')}.")


def check_resume(source: Path, root: Path, names: list[str]) -> None:
    """Refuse, before unpacking, a bundle whose manifest is malformed, whose runs this batch
    does not name (another batch's: they were unpacked and the batch started from zero
    beside them) or whose run is behind the same run under `root` (unpacking put its
    older logs back over the newer ones)."""
    try:
        manifest = bundle.read_manifest(source)
    except ValueError as err:
        fail(f"cannot resume from {source}: {err}")
    bundled = {r["name"]: r.get("step", 0) for r in manifest["runs"]}
    strangers = sorted(set(bundled) - set(names))
    if strangers:
        fail(f"the bundle {source} holds {strangers}, which this batch ({names}) does not "
             "run; resume it with the batch that made it.")
    for name, step in bundled.items():
        here = done_steps(root / name)
        if here > step:
            fail(f"{root / name} is at step {here}, past the bundle's {step}: unpacking "
                 "would put its older logs back; resume from there without --resume_from, "
                 "or give another --root.")
