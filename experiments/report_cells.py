"""The cells of one run's row in the results report (`experiments.report`): our numbers
and their gap to the paper's, the epochs and how the run ended, and the commit and device
that produced it (its earlier starts' too, where a resumed run's differ)."""

from __future__ import annotations

import math

from experiments.provenance import device_label
from experiments.report_runs import SPLITS, Run, _float, fmt_value


def relative_gap(ours: float | None, paper: float | None) -> float | None:
    """(ours - paper) / paper; None where either is missing or the paper's is 0."""
    if ours is None or paper is None or not math.isfinite(ours) or paper == 0:
        return None
    return (ours - paper) / paper


def fmt_gap(gap: float | None) -> str:
    return "–" if gap is None else f"{100 * gap:+.1f}%"


def run_numbers(run: Run) -> dict[str, tuple[float | None, str]]:
    """split -> (our number, note). Unfinished runs: the latest validation number."""
    out: dict[str, tuple[float | None, str]] = {}
    final = run.final()
    if final:
        for split in SPLITS:
            if split in final:
                out[split] = (_float(final[split].get(run.metric)), "")
        _best_of_old_early_stopped(run, final, out)
        return out
    curve = run.epoch_curve()
    if curve and run.validation_split in SPLITS:
        epoch, value = curve[-1]
        out[run.validation_split] = (value, f"epoch {epoch}")
    return out


def _best_of_old_early_stopped(run: Run, final: dict, out: dict) -> None:
    """Runs with early stopping made before the engine's final evaluation read the
    best validation checkpoint (their final events lack `eval_epoch`) evaluated the
    last epoch's model. Their validation number becomes the best epoch-end one (the
    same evaluation, of the model early stopping selects); the other splits keep
    the last model's, and say so."""
    patience = run.config.get("train", {}).get("early_stop_patience") or 0
    split = run.validation_split
    if not patience or split not in out or any("eval_epoch" in e for e in final.values()):
        return
    curve = run.epoch_curve()
    if not curve:
        return
    epoch, value = min(curve, key=lambda point: point[1])
    if epoch == curve[-1][0]:
        return
    out[split] = (value, f"best, epoch {epoch}")
    for other in out:
        if other != split:
            out[other] = (out[other][0], f"epoch {curve[-1][0]} model")


def status(run: Run) -> str:
    trained, total = run.epochs_trained(), run.total_epochs
    text = f"{trained}/{total}" if total is not None else str(trained)
    if run.finished:
        if run.max_steps and total is not None and trained < total:
            text += f" (max_steps {run.max_steps})"
        elif total is not None and trained < total:
            text += " (early stop)"
        missing = run.final_missing()
        if missing:
            text += (f", final evaluation **stopped** before {', '.join(missing)} (the same "
                     "command runs the rest)")
        return text
    stop = run.stop_message()
    if stop:  # the engine's own account of why it stopped (a non-finite loss)
        return f"{text} **stopped**: {stop}"
    where = f"step {run.last_step()}"
    if not run.epoch_curve():
        where += ", no validation yet"
        train = [e for e in run.events if e.get("split") == "train"
                 and _float(e.get(run.metric)) is not None]
        if train:
            where += (f"; train {run.metric} "
                      f"{fmt_value(_float(train[-1][run.metric]), run.metric)}")
    return f"{text} **unfinished** ({where})"


def _commit_text(record: dict) -> str:
    commit = record.get("commit")
    if not commit:
        return ""
    return commit[:7] + ("+dirty" if record.get("dirty") else "")


def _with_earlier(last: str, record: dict, describe) -> str:
    """`last` (of the run's last start), then what `describe` says of its earlier starts
    where that differs, oldest first."""
    earlier: list[str] = []
    for start in record.get("earlier_starts") or []:
        text = describe(start) if isinstance(start, dict) else ""
        if text and text != last and text not in earlier:
            earlier.append(text)
    return f"{last} (earlier {', '.join(earlier)})" if earlier else last


def commit_cell(record: dict) -> str:
    """The run's commit, short: `+dirty` when the tree had changes, `~` when inferred
    (runs from before provenance was recorded), – when unknown; a resumed run's earlier
    starts' commits follow where they differ."""
    text = _commit_text(record)
    if not text:
        return "–"
    return _with_earlier(f"~{text}" if record.get("inferred") else text, record, _commit_text)


def device_cell(record: dict) -> str:
    """The run's device (`provenance.device_label`), its earlier starts' after it where
    they differ; – when unknown."""
    return _escape(_with_earlier(device_label(record), record, device_label)) or "–"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")
