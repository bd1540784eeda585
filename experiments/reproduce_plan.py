"""What a batch of runs costs: specs, the papers' batches, step times and the plan.

A run's time is estimated as

    startup + remaining_steps * step_s + evaluations,

where an evaluation window costs a training step scaled by its rows over the
training batch's rows and by 1/3 (a forward pass of the three passes of a step),
never less than a third of a step (small windows are latency-bound on an
accelerator). Validation runs once per remaining epoch; the final evaluation is
its passes (`rnnreg_jax.train.evaluation.final_passes`: every eval split once plus
MC dropout, K times the rows, where asked), less those a resumed run has recorded
for its last step (the engine runs only the rest). Wide MC
windows use an accelerator better than a training step does: a step-time table's
`wide_eval_factor` divides the cost of the rows beyond one training batch (without
one, the estimate errs towards refusing).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from collections.abc import Collection, Sequence
from pathlib import Path

TASKS = ("ptb", "pmnist", "sentiment")
STARTUP_S = 60.0  # data, compilation and the first step, when not measured


@dataclasses.dataclass(frozen=True)
class Spec:
    """One run of a batch: `task:preset[:name][:--flag;--flag...]`."""

    task: str
    preset: str
    name: str
    flags: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Spec:
        parts = text.split(":", 3)
        if len(parts) < 2 or parts[0] not in TASKS:
            raise ValueError(f"Run spec {text!r} is not task:preset[:name][:--flag;...] with "
                             f"a task in {', '.join(TASKS)}.")
        task, preset = parts[0], parts[1]
        name = parts[2] if len(parts) > 2 and parts[2] else preset
        if name in (".", "..") or "/" in name or "\\" in name:  # root / name left the root
            raise ValueError(f"Run name {name!r} in run spec {text!r} must be one folder name "
                             "(no '/', not '.' or '..'): it names the run's workdir under "
                             "--root.")
        flags = tuple(f for f in parts[3].split(";") if f) if len(parts) > 3 else ()
        presets = importlib.import_module(f"experiments.configs.{task}").PRESETS
        if preset not in presets:
            raise ValueError(f"Unknown {task} preset {preset!r} in run spec {text!r}.")
        return cls(task, preset, name, flags)

    def argv(self) -> list[str]:
        return [f"--config={self.preset}", *self.flags]

    def config(self):
        from experiments import cli

        presets = importlib.import_module(f"experiments.configs.{self.task}").PRESETS
        config, rest = cli.split_config_args(["reproduce", *self.argv()], presets)
        if len(rest) > 1:
            raise ValueError(f"run {self.name}: a run spec takes only --config flags, got "
                             f"{rest[1:]}.")
        return config

    def checked_config(self):
        """`config()` passed through every check the binary makes of it before anything
        runs (`experiments.configs.common.check_config` and the reg block's
        regularizers): a bad override (`--config.train.num_epochs=-3`) was planned as 0
        steps and started, to fail in the run's console.log. ValueError, one sentence
        that names the run: `run NAME: config.train.num_epochs must be ...`."""
        from experiments.configs.common import check_config, regularization

        try:
            config = self.config()
        except ValueError as err:  # cli.ConfigError: an unknown field or a bad value
            message = str(err)
            raise (err if message.startswith(f"run {self.name}: ")
                   else self.error(err)) from None
        try:
            check_config(config)
        except ValueError as err:
            raise self.error(err, _blocks(config)) from None
        try:
            regularization(config.reg)  # its errors name the block (config.reg.NAME: ...)
        except ValueError as err:
            raise self.error(err) from None
        return config

    def error(self, err: Exception, blocks: Collection[str] = ()) -> ValueError:
        """`err` as one sentence that names this run. A library check's field named
        without its block (`config.learning_rate`: the train block's check speaks of
        the block alone) gets the block's name where `blocks` (the config's top-level
        fields) lack it."""
        message = " ".join(str(err).split()).rstrip(".")
        if blocks and message.startswith("config."):
            head = message[len("config."):].split(".", 1)[0].split(" ", 1)[0]
            if head not in blocks:
                message = "config.train." + message[len("config."):]
        return ValueError(f"run {self.name}: {message}.")


def _blocks(config) -> tuple[str, ...]:
    return tuple(config.keys())


def split_runs(text: str) -> list[str]:
    """The run specs of `--runs`: separated by commas, except those inside (), [] or {}
    (a tuple override, `--config.model.hidden_sizes=(8,8)`) or inside a spec quoted in
    double quotes (CSV quoting, which absl's list flags read), each stripped of spaces
    around it, as absl's list flags split them. ValueError where a bracket or a quote
    is not closed."""
    if not text:
        return []
    pieces: list[str] = []
    field: list[str] = []
    depth, quoted, i = 0, False, 0
    while i < len(text):
        char = text[i]
        if quoted:
            if char == '"' and text[i + 1:i + 2] == '"':  # CSV's escaped quote
                field.append(char)
                i += 1
            elif char == '"':
                quoted = False
            else:
                field.append(char)
        elif char == '"' and not "".join(field).strip():
            quoted, field = True, []
        elif char == "," and depth == 0:
            pieces.append("".join(field).strip())
            field = []
        else:
            if char in "([{":
                depth += 1
            elif char in ")]}" and depth:
                depth -= 1
            field.append(char)
        i += 1
    last = "".join(field).strip()
    if quoted:
        raise ValueError(f"the run spec {last!r} opens a double quote it does not close.")
    if depth:
        raise ValueError(f"the run spec {last!r} opens a bracket it does not close.")
    pieces.append(last)
    return pieces


_MC = "--config.train.mc_samples=1000"
# The papers' headline rows, in the order GPU windows run them (docs/RESULTS_HOWTO.md).
BATCHES: dict[str, tuple[str, ...]] = {
    "medium": ("ptb:zaremba_medium", f"ptb:variational_medium::{_MC}",
               f"ptb:variational_medium_untied::{_MC}"),
    "large_zaremba": ("ptb:zaremba_large",),
    "large_untied": (f"ptb:variational_large_untied::{_MC}",),
    "large_tied": (f"ptb:variational_large::{_MC}",),
    "char": ("ptb:zoneout_char", "ptb:baseline_char"),
    "pmnist": ("pmnist:baseline:pmnist_baseline", "pmnist:recurrent_dropout:pmnist_rd",
               "pmnist:zoneout:pmnist_zoneout"),
}


def batch_specs(names: Sequence[str]) -> list[Spec]:
    specs = []
    for name in names:
        if name not in BATCHES:
            raise ValueError(f"Unknown batch {name!r}; batches: {', '.join(BATCHES)}.")
        specs += [Spec.parse(s) for s in BATCHES[name]]
    return specs


@dataclasses.dataclass(frozen=True)
class Work:
    """What a run has left to do, counted from its config and data."""

    steps_per_epoch: int
    total_steps: int
    train_rows: int
    eval_windows: dict[str, tuple[int, int]]  # split -> (windows, rows per window)
    validation_split: str | None
    final_passes: tuple  # rnnreg_jax.train.evaluation.Pass, in order
    mc_draws_noise: bool = True  # False: each MC pass runs once (`Evaluator.mc_draws_noise`)
    checkpoint_bytes: int = 0  # one checkpoint's arrays (`train.steps.checkpoint_bytes`)

    @property
    def bundle_bytes(self) -> int:
        """What a bundle carries of the run: its newest checkpoint and, where it
        validates, its best."""
        return self.checkpoint_bytes * (2 if self.validation_split else 1)


def count_work(spec: Spec, data_dir: str | None = None) -> Work:
    """Builds the run's task (loads its data) and counts its steps and eval windows.

    Every refusal is one sentence that names the run (`run NAME: ...`): ValueError for
    its config (`Spec.checked_config`), what its task lacks (an MC split it does not
    evaluate) or a data set's own check of the config (a validation split of the whole
    training set); `rnnreg_jax.data.DataError`, still a DataError, for data that is
    missing, unreadable or too small for the batch: a batch's refusal says which of its
    runs (and so data sets) it came from.
    """
    from rnnreg_jax.data.errors import DataError

    config = spec.checked_config()
    try:
        return _count_work(spec, config, data_dir)
    except DataError as err:
        raise DataError(str(spec.error(err))) from None
    except ValueError as err:
        raise spec.error(err, _blocks(config)) from None


def _count_work(spec: Spec, config, data_dir: str | None) -> Work:
    from experiments.configs.common import regularization
    from rnnreg_jax.tasks import build_task
    from rnnreg_jax.train.config import check_for_task, with_defaults
    from rnnreg_jax.train.evaluation import final_passes
    from rnnreg_jax.train.evaluator import mc_draws_noise, without_embedding_dropout
    from rnnreg_jax.train.optim import make_optimizer
    from rnnreg_jax.train.steps import checkpoint_bytes
    from rnnreg_jax.train.task import total_steps

    task = build_task(config, regularization(config.reg), data_dir)
    # what the task lacks (an MC split it does not evaluate), as the binary checks
    check_for_task(config.train, task, "config.train")
    train = with_defaults(config.train)
    spe = task.train.steps_per_epoch  # nominal where epochs differ (variable windows)
    total = total_steps(task, train)
    sample = next(iter(task.train.iterate(0)))
    rows = sample["inputs"].shape[0]
    windows = {}
    for split, source in task.evals.items():
        first = next(iter(source.iterate(0)))
        windows[split] = (source.steps_per_epoch, first["inputs"].shape[0])
    mc_model = task.model if train.mc_embedding_dropout else without_embedding_dropout(task.model)
    return Work(spe, total, rows, windows, task.validation_split,
                tuple(final_passes(task, train)), mc_draws_noise(mc_model),
                checkpoint_bytes(task, make_optimizer(train), sample))


def _eval_s(windows: int, rows: int, train_rows: int, step_s: float,
            wide_factor: float = 1.0) -> float:
    width = rows / train_rows
    if width > 1:
        width = 1 + (width - 1) / wide_factor
    return windows * step_s * max(1 / 3, width / 3)


def estimate_s(work: Work, step_s: float, done_steps: int = 0, startup_s: float = STARTUP_S,
               wide_eval_factor: float = 1.0, recorded: Collection[str] = (),
               validation_pending: bool = False) -> dict[str, float]:
    """Seconds left for a run: startup, training, validation, final evaluation (less
    the `recorded` final passes, by name). `validation_pending`: the checkpoint at
    `done_steps` ends an epoch saved before its validation, which the resume runs."""
    left = max(0, work.total_steps - done_steps)
    epochs_left = (math.ceil(left / work.steps_per_epoch) if left else 0) + validation_pending
    valid = 0.0
    if work.validation_split:
        w, r = work.eval_windows[work.validation_split]
        valid = epochs_left * _eval_s(w, r, work.train_rows, step_s)
    final = 0.0
    for p in work.final_passes:
        if p.name in recorded or p.split not in work.eval_windows:
            continue  # done, or a custom test protocol (its cost unknown)
        w, r = work.eval_windows[p.split]
        k = p.mc_samples if work.mc_draws_noise else 0  # noiseless: the pass runs once
        final += _eval_s(w, r * max(1, k), work.train_rows, step_s,
                         wide_eval_factor if k else 1.0)
    return {"startup": startup_s, "train": left * step_s, "validation": valid,
            "final_eval": final, "total": startup_s + left * step_s + valid + final}


def load_step_times(path: str | Path) -> dict:
    """A step-time table (results/step_times_h100.json): `factor_per_run` and `presets`,
    each preset's `in_training_ms` with its `runs` or `bench_ms` (ValueError: another
    shape)."""
    table = json.loads(Path(path).read_text())
    presets = table.get("presets") if isinstance(table, dict) else None
    if not isinstance(presets, dict):
        raise ValueError("it has no \"presets\" object")
    for field in ("factor_per_run", "wide_eval_factor"):
        if field in table:
            _check_positive(table[field], field)
    for name, entry in presets.items():
        measured = isinstance(entry, dict) and (
            ("in_training_ms" in entry and "runs" in entry)
            or ("bench_ms" in entry and "factor_per_run" in table))
        if not measured:
            raise ValueError(f"its preset {name!r} has neither in_training_ms with runs nor "
                             "bench_ms with the table's factor_per_run")
        for field in ("in_training_ms", "runs", "bench_ms"):  # a plan of -5 ms or NaN steps
            if field in entry:
                _check_positive(entry[field], f"{field} of preset {name!r}")
        if not isinstance(entry.get("source"), str):
            raise ValueError(f"its preset {name!r} does not say where its time comes from "
                             "(\"source\")")
    return table


def _check_positive(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"its {what} is {value!r}, not a number above 0")


def table_step_s(table: dict, spec: Spec, side_by_side: int) -> tuple[float, str]:
    """(seconds per step with `side_by_side` runs sharing the device, its source)."""
    entry = table["presets"].get(spec.preset)
    if entry is None:
        raise ValueError(f"No step time for preset {spec.preset!r} in the step-time table.")
    if "in_training_ms" in entry:  # measured in training, `runs` side by side
        ms = entry["in_training_ms"] * max(1.0, side_by_side / entry["runs"])
    else:  # a benchmark step alone, times the in-training slowdown per run
        ms = entry["bench_ms"] * table["factor_per_run"] * max(1, side_by_side)
    return ms / 1000, entry["source"]


def format_plan(rows: Sequence[dict], budget_s: float,
                bundle_budget: int | None = None) -> list[str]:
    """The plan table: one line per run, then a note for each run whose checkpoints
    are more than a bundle carries (`bundle_budget` bytes): stopped at the deadline,
    it cannot resume in a later window."""
    lines = [f"{'run':28} {'steps':>15} {'epochs':>7} {'ms/step':>8} {'train':>7} "
             f"{'evals':>7} {'total':>7}  (minutes; budget {budget_s / 60:.1f})"]
    for r in rows:
        e = r["estimate"]
        lines.append(
            f"{r['name']:28} {r['done']:>7,}/{r['steps']:<7,} {r['epochs']:>7.1f} "
            f"{r['step_s'] * 1000:>8.2f} {e['train'] / 60:>7.1f} "
            f"{(e['validation'] + e['final_eval']) / 60:>7.1f} {e['total'] / 60:>7.1f}")
    for r in rows:
        work = r.get("work")
        if bundle_budget is not None and work is not None and work.bundle_bytes > bundle_budget:
            lines.append(f"note: {r['name']}'s checkpoints ({work.bundle_bytes / 1e6:.1f} MB, "
                         f"newest and best) are more than a bundle carries "
                         f"({bundle_budget / 1e6:.1f} MB): stopped at the deadline, it cannot "
                         "resume in a later window.")
    return lines
