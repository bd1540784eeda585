"""The command column of the report: each run's logged command, and the overrides that
rebuild the run from today's preset."""

from __future__ import annotations

import json
import os
import shlex

from experiments.cli import override_text
from experiments.report_runs import Run

# Settings that never change a run's numbers: when it stops, saves and resumes (a resumed
# run is bit-identical to an uninterrupted one) and whether the data's checksums were
# checked. A command shows none of them (a time limit copied to a slower machine would
# stop its run early) and a rebuild never asks for them.
RESULT_NEUTRAL = ("train.time_limit_s", "train.checkpoint_every_s", "data.verify_checksums")


def _neutral(arg: str) -> bool:
    return any(arg.startswith(f"--config.{field}=") for field in RESULT_NEUTRAL)


def command_args(command: str) -> list[str]:
    """The arguments of a recorded command, which `provenance.relative_command` quotes
    for a shell (a record cut inside a quote: split at spaces)."""
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def copy_paste_command(command: str, task: str) -> str:
    """`python -m experiments.<task> ...` from the logged `sys.argv` (script path first)."""
    args = command_args(command)
    if not args:
        return ""
    head, rest = args[0], args[1:]
    if head in ("-m", "python", "python3") or head.endswith(("/python", "/python3")):
        while rest and not rest[0].startswith("--"):  # "python -m experiments.ptb ..."
            head, rest = rest[0], rest[1:]
    module = os.path.splitext(os.path.basename(head))[0]
    if module in ("", "__main__", "-m", "-c") or not module.isidentifier():
        module = task
    if "." in head and not head.endswith(".py"):
        module = head.rsplit(".", 1)[-1]
    rest = [a for a in rest if not _neutral(a)]
    return " ".join(["python", "-m", f"experiments.{module}"] + [shlex.quote(a) for a in rest])


def _draws_noise(reg_block) -> bool:
    """Whether a recorded reg block's regularizer draws noise (True where it cannot be
    built today: then nothing is assumed)."""
    from experiments.configs.common import regularization

    if not isinstance(reg_block, dict):
        return True
    try:
        return regularization(reg_block).has_noise
    except Exception:  # noqa: BLE001 -- a block of an older layout: count its settings
        return True


def flags_since_changed(run: Run) -> list[str]:
    """Overrides that today's preset needs to rebuild the run: fields of model, data,
    reg and train whose preset value changed since the run and that its command does
    not set, leaving out fields today's config no longer has (no command could set
    them), result-neutral ones, and the MC-dropout settings of a run without MC dropout.
    Empty when the preset cannot be built."""
    try:
        module = __import__(f"experiments.configs.{run.task}", fromlist=["PRESETS"])
        preset = module.PRESETS[run.preset]()
    except Exception:  # noqa: BLE001 -- the annotation is optional
        return []
    from experiments.configs.common import (
        FIXED_SECTIONS,
        VALUE_BEFORE_ADDED,
        config_differences,
        flat_block,
        migrate_reg,
    )

    current = json.loads(json.dumps(preset.to_dict(), default=str))
    given = {a.split("=", 1)[0] for a in command_args(run.command) if a.startswith("--config.")}
    # Fields the record lacks were added to the code after the run. They count when they
    # are switches, or numbers of the model, data and regularization (features added
    # switched off: 0 before them); a training number added later (say a setting of one
    # optimizer) says nothing about a run that had no such setting.
    sections = FIXED_SECTIONS + ("train",)

    ran_mc = bool(run.config.get("train", {}).get("mc_samples"))
    # Without MC the other MC settings changed nothing; MC dropout of a model without
    # noise repeats its deterministic pass, so then none of them (mc_samples included) did.
    noiseless_mc = ran_mc and not _draws_noise(run.config.get("reg"))
    stored = {s: flat_block(migrate_reg(b) if s == "reg" else b)
              for s, b in run.config.items() if isinstance(b, dict)}
    today = {s: flat_block(b) for s, b in current.items() if isinstance(b, dict)}

    def counts(section, field, now):
        if (field not in today.get(section, {}) or f"{section}.{field}" in RESULT_NEUTRAL
                or (section == "train" and field.startswith("mc_")
                    and (noiseless_mc or (not ran_mc and field != "mc_samples")))):
            return False
        if (field in stored[section] or isinstance(now, bool)
                or (section, field) in VALUE_BEFORE_ADDED):
            return True
        return section != "train" and isinstance(now, int | float)

    return [f"--config.{section}.{field}={override_text(before)}"
            for section, field, before, now in config_differences(run.config, current, sections)
            if f"--config.{section}.{field}" not in given and counts(section, field, now)]


def workdir_of(command: str) -> str | None:
    """The `--workdir` a recorded command names (its last one, as absl reads it)."""
    args = command_args(command)
    found = None
    for i, arg in enumerate(args):
        if arg.startswith("--workdir="):
            found = arg.split("=", 1)[1]
        elif arg == "--workdir" and i + 1 < len(args):
            found = args[i + 1]
    return os.path.normpath(found) if found else None


def shared_workdirs(runs: list[Run]) -> frozenset[str]:
    """Workdirs that more than one run's command names: run one after the other, the
    second command would resume the first run instead of starting its own."""
    seen: dict[str, int] = {}
    for run in runs:
        workdir = workdir_of(run.command)
        if workdir:
            seen[workdir] = seen.get(workdir, 0) + 1
    return frozenset(w for w, count in seen.items() if count > 1)


def own_workdir_note(run: Run, shared: frozenset[str], taken: frozenset[str]) -> str:
    """For a run whose command's workdir another row's command names too: the words
    that say so and a workdir of its own, named after the run's record folder (none
    where that is the shared one: the others move; a generic word where another command
    names it); empty otherwise."""
    workdir = workdir_of(run.command)
    if workdir not in shared:
        return ""
    own = os.path.normpath(os.path.join(os.path.dirname(workdir) or ".",
                                        os.path.basename(run.workdir.rstrip("/"))))
    if own == workdir:
        return ""
    if own in taken:
        return "another row's command names this workdir too: give it one of its own"
    return f"another row's command names this workdir too: give it its own, `--workdir={own}`"
