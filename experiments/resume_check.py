"""Whether a config may run in a workdir that already holds a run: the same task, and
the same model, data, regularization and training-trajectory settings, so that the
checkpoints continue the model the record describes and the log holds one run."""

from __future__ import annotations

import json

from experiments import cli, run_record
from experiments.configs.common import config_differences, flat_block
from experiments.report_commands import RESULT_NEUTRAL

# Train fields a resume must keep: the restored optimizer state holds some (the learning
# rate, the optimizer's own), and the rest shaped the steps already taken, so a change
# was either ignored or true of part of the run only, while config.json, rewritten at
# each start, claimed it for the whole. Training length, logs, checkpoints, the time limit
# and the final evaluation's settings may change.
TRAJECTORY_TRAIN_FIELDS = (
    "seed", "optimizer", "learning_rate", "momentum", "rmsprop_decay", "ntasgd_nonmono",
    "clip_norm", "clip_update", "weight_decay", "weight_decay_mode", "lr_window_reference",
    "lr_schedule", "decay_after", "decay_factor", "plateau_factor", "early_stop_patience",
    "loss_sum_over_time", "carry_state",
)


def _train_differences(stored: dict, current: dict) -> list[tuple]:
    """`(section, field, stored, current)` of the trajectory fields both records hold (a
    field an older record lacks is left alone: its value then is not known here)."""
    old, new = stored.get("train", {}), current.get("train", {})
    return [("train", field, old[field], new[field]) for field in TRAJECTORY_TRAIN_FIELDS
            if field in old and field in new and old[field] != new[field]]


def _dropped(current: dict, section: str, field: str) -> bool:
    """A data or model field today's config no longer has (the Cornell split fields left
    IMDB's presets, which never read them): nothing today reads it."""
    return section in ("data", "model") and field not in flat_block(current.get(section, {}))


def resume_conflict(workdir, config: dict, task_name: str | None = None) -> str | None:
    """Why `config` (of the binary `task_name`) cannot run in `workdir`, or None.

    A workdir whose `config.json` sits beside checkpoints, or beside the log of a run
    killed before its first checkpoint, takes only a run of the same task with the same
    model, data and regularization fields (a field the stored config lacks counts as
    unset: equal to False, 0 or None) and the same `TRAJECTORY_TRAIN_FIELDS`. Without
    this a changed preset would continue another model's weights, or append another
    run's events to the log, and overwrite its `config.json`.
    """
    if not run_record.path_of(workdir).exists():
        return None
    resumes = run_record.has_checkpoint(workdir)
    if not run_record.continues(workdir, resumes):
        return None
    try:
        record = run_record.read(workdir)
    except run_record.NotARunRecord as err:
        return (f"{err.path} is not a run record ({err.why}); restore it, or remove it to "
                "let the run check the checkpoints against this model.")
    stored = record["config"]
    if task_name and record.get("task") not in (None, task_name):
        return (f"{workdir} holds a {record['task']} run, not a {task_name} one: use a fresh "
                "--workdir.")
    current = json.loads(json.dumps(config, default=str))  # tuples -> lists, as stored
    differences = [d for d in config_differences(stored, current)
                   + _train_differences(stored, current)
                   if f"{d[0]}.{d[1]}" not in RESULT_NEUTRAL  # checksums checked or not
                   and not _dropped(current, *d[:2])]
    if not differences:
        return None
    section, field, before, value = differences[0]
    before, value = cli.override_text(before), cli.override_text(value)
    if resumes:
        return (f"{workdir} holds a run with {section}.{field} = {before}, not {value}: "
                f"resume it with --config.{section}.{field}={before}, or use a fresh "
                "--workdir.")
    return (f"{workdir} holds the log of a run with {section}.{field} = {before}, not "
            f"{value}, stopped before its first checkpoint: run it again with "
            f"--config.{section}.{field}={before}, or use a fresh --workdir (or remove "
            "its metrics.jsonl).")
