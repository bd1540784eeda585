"""Reading report inputs: run workdirs (config.json, metrics.jsonl) and the data sets'
metrics, for `experiments.report`."""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence

from experiments import run_record

# Per data set: the title, the metric, the column labels of the splits, log-scale plots.
CATEGORIES: dict[str, dict] = {
    "ptb_word": dict(
        title="Penn Treebank, word level", metric="ppl", unit="perplexity", log=True,
        columns=("valid", "test", "test_mc"),
        splits={"valid": "valid ppl", "test": "test ppl", "test_mc": "test ppl (MC)"}),
    "ptb_char": dict(
        title="Penn Treebank, character level", metric="bpc", unit="bits per character",
        log=False, columns=("valid", "test"),
        splits={"valid": "valid BPC", "test": "test BPC", "test_mc": "test BPC (MC)"}),
    "pmnist": dict(
        title="Permuted sequential MNIST", metric="error", unit="error rate", log=False,
        columns=("valid", "test"),
        splits={"valid": "valid error", "test": "test error", "test_mc": "test error (MC)"}),
    "cornell": dict(
        title="Sentiment regression (Cornell scale data)", metric="rmse", unit="RMSE",
        log=False, columns=("test", "test_mc"),
        splits={"valid": "valid RMSE", "test": "test RMSE (dropout approx.)",
                "test_mc": "test RMSE (MC)"}),
    "imdb": dict(
        title="Sentiment classification (IMDB)", metric="error", unit="error rate", log=False,
        columns=("test", "test_mc"),
        splits={"valid": "valid error", "test": "test error", "test_mc": "test error (MC)"}),
}


SPLITS = ("valid", "test", "test_mc")  # also the keys of `config.paper`


def _float(value) -> float | None:
    """A metric value from metrics.jsonl (non-finite values are logged as strings)."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_events(path: str) -> list[dict]:
    """The events of a metrics.jsonl; a half-written last line (live run) and lines not
    of the training loop's form (`_well_formed`) are skipped."""
    events: list[dict] = []
    if not os.path.exists(path):
        return events
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if _well_formed(event):
                events.append(event)
    return events


def _well_formed(event) -> bool:
    """An event as the training loop writes it: an object whose `split` (where it has
    one) is a name and whose `epoch` and `step` are whole numbers. Another tool's lines
    were sorted with the names and counted as epochs: a TypeError."""
    if not isinstance(event, dict) or not isinstance(event.get("split", ""), str):
        return False
    return all(isinstance(event.get(key, 0), int) and not isinstance(event.get(key), bool)
               for key in ("epoch", "step"))


@dataclasses.dataclass
class Run:
    """One workdir: its config.json and the numbers the report needs."""

    workdir: str
    task: str
    command: str
    config: dict
    events: list[dict]
    provenance: dict = dataclasses.field(default_factory=dict)  # what produced the run

    @property
    def preset(self) -> str:
        return str(self.config.get("preset") or os.path.basename(self.workdir.rstrip("/")))

    @property
    def dataset(self) -> str:
        return str(self.config.get("data", {}).get("dataset", "unknown"))

    @property
    def metric(self) -> str:
        return CATEGORIES.get(self.dataset, {}).get("metric", "loss")

    @property
    def paper(self) -> dict:
        return self.config.get("paper") or {}

    @property
    def total_epochs(self) -> int | None:
        return self.config.get("train", {}).get("num_epochs")

    @property
    def max_steps(self) -> int:
        return int(self.config.get("train", {}).get("max_steps") or 0)

    @property
    def validation_split(self) -> str | None:
        """The split evaluated at epoch ends ("valid"; "test" where there is no valid)."""
        splits = [e["split"] for e in self.events if e.get("phase") == "epoch_end"]
        if "valid" in splits:
            return "valid"
        return splits[0] if splits else None

    def final(self) -> dict[str, dict]:
        """split -> its last `phase == "final"` event, unless training went on past it: a
        finished run resumed with a larger epoch budget keeps its old final events in the
        log, and they describe a model the run has since moved on from."""
        trained_to = max((int(e["step"]) for e in self.events if "step" in e
                          and e.get("phase") != "final"
                          and (e.get("split") == "train" or e.get("phase") == "epoch_end")),
                         default=0)
        out: dict[str, dict] = {}
        for e in self.events:
            if e.get("phase") == "final" and int(e.get("step", 0)) >= trained_to:
                out[e["split"]] = e
        return out

    @property
    def finished(self) -> bool:
        return bool(self.final())

    def final_missing(self) -> list[str]:
        """Final passes the run's config asks for that its log lacks: the test split's
        MC dropout, where a final evaluation stopped (SIGTERM) or was killed after the
        deterministic passes, which it records as each one ends. Only records of such an
        engine (their final events say `evaluated_as`) are judged: older ones wrote all
        passes at the end, and some ran without MC whatever their config said."""
        final, train = self.final(), self.config.get("train", {})
        if ("test" not in final or "test_mc" in final or not train.get("mc_samples")
                or "evaluated_as" not in final["test"]):
            return []
        asked = "test" in (train.get("mc_splits") or ()) or train.get("carry_state")
        return ["test_mc"] if asked else []

    def stop_message(self) -> str | None:
        """Why an unfinished run stopped, if its engine said so (`error_message` events:
        a NaN or infinite training loss), else None (still running, or killed)."""
        if self.finished:
            return None
        said = [e["error_message"] for e in self.events if e.get("error_message")]
        return said[-1] if said else None

    def epoch_curve(self, split: str | None = None) -> list[tuple[int, float]]:
        """(epoch, metric) of the epoch-end evaluations (epochs 1-based; resumes deduplicated)."""
        split = split or self.validation_split
        points: dict[int, float] = {}
        for e in self.events:
            if e.get("phase") == "epoch_end" and e.get("split") == split:
                value = _float(e.get(self.metric))
                if value is not None:
                    points[int(e["epoch"]) + 1] = value
        return sorted(points.items())

    def epoch_ends(self) -> list[tuple[int, int]]:
        """(epoch, its last step) of the logged epoch ends, epochs 1-based and ascending."""
        ends = {int(e["epoch"]) + 1: int(e["step"]) for e in self.events
                if e.get("phase") == "epoch_end"}
        return sorted(ends.items())

    def epoch_positions(self) -> Callable[[int], float] | None:
        """A map from a step to where it falls in epochs (2.5: half-way through the third),
        placed between the logged epoch ends, so epochs of different lengths
        (variable-length windows) are placed exactly; past the last end, at that epoch's
        length. None without epoch ends."""
        bounds = [(0, 0)]
        for epoch, last in self.epoch_ends():
            if last > bounds[-1][1]:  # a resume's repeated end adds no segment
                bounds.append((epoch, last))
        if len(bounds) < 2:
            return None
        steps = [last for _, last in bounds]

        def position(step: int) -> float:
            i = min(max(bisect.bisect_left(steps, step), 1), len(steps) - 1)
            (e0, s0), (e1, s1) = bounds[i - 1], bounds[i]
            return e0 + (step - s0) * (e1 - e0) / (s1 - s0)

        return position

    def train_curve(self) -> list[tuple[float, float]]:
        """(fractional epoch, training metric) of the training events; without epoch ends,
        each epoch's mean at its end."""
        position = self.epoch_positions()
        points: dict[int, tuple[float, float]] = {}
        per_epoch: dict[int, list[float]] = {}
        for e in self.events:
            if e.get("split") != "train" or "step" not in e:
                continue
            value = _float(e.get(self.metric))
            if value is None or not math.isfinite(value):
                continue
            if position is not None:
                points[int(e["step"])] = (position(int(e["step"])), value)
            else:
                per_epoch.setdefault(int(e.get("epoch", 0)), []).append(value)
        if position is not None:
            return [points[s] for s in sorted(points)]
        return [(ep + 1.0, sum(v) / len(v)) for ep, v in sorted(per_epoch.items())]

    def epochs_trained(self) -> int:
        """Completed epochs: the final events' epoch, else the last epoch end's."""
        final = self.final()
        if final:
            return max(int(e.get("epoch", 0)) for e in final.values())
        ends = [int(e["epoch"]) + 1 for e in self.events if e.get("phase") == "epoch_end"]
        return max(ends, default=0)

    def last_step(self) -> int:
        return max((int(e.get("step", 0)) for e in self.events), default=0)


def find_workdirs(paths: Iterable[str], max_depth: int = 3) -> list[str]:
    """Workdirs (folders with config.json) at or below each path; a bundle folder of
    `experiments.reproduce` (experiments/bundle.py) is read through its logs."""
    from experiments import bundle

    found: list[str] = []
    for root in paths:
        root = os.path.normpath(root)
        if bundle.is_bundle(root):
            root = bundle.logs_view(root)
        if os.path.isfile(os.path.join(root, "config.json")):
            found.append(root)
            continue
        if not os.path.isdir(root):
            raise FileNotFoundError(f"No run directory {root!r}.")
        base_depth = root.count(os.sep)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames
                                 if d not in ("checkpoints", "best", "tb")
                                 and not d.startswith("."))
            if "config.json" in filenames:
                found.append(dirpath)
                dirnames[:] = []
            elif dirpath.count(os.sep) - base_depth >= max_depth:
                dirnames[:] = []
    seen, unique = set(), []
    for d in found:
        if os.path.abspath(d) not in seen:
            seen.add(os.path.abspath(d))
            unique.append(d)
    return unique


def load_run(workdir: str) -> Run:
    """The run in `workdir`; a ValueError naming its config.json if that is not a run
    record (torn by a full disk, or not a JSON object)."""
    meta = run_record.read(workdir)
    return Run(workdir=workdir, task=str(meta.get("task", "")),
               command=str(meta.get("command", "")), config=meta["config"],
               events=read_events(os.path.join(workdir, "metrics.jsonl")),
               provenance=meta.get("provenance") or {})


def load_runs(workdirs: Sequence[str]) -> list[Run]:
    """The runs of `workdirs`, less those whose record cannot be read, each named in a
    warning on stderr (one torn record does not stop a report of many runs)."""
    runs = []
    for workdir in workdirs:
        try:
            runs.append(load_run(workdir))
        except ValueError as err:
            print(f"warning: skipping {workdir}: {err}", file=sys.stderr)
    return runs


def no_runs_sentence(runs_flag: str) -> str:
    """What `experiments.report` and `experiments.curves` say when `--runs` holds no run."""
    return (f"No run under --runs={runs_flag} (a run is a folder with a readable "
            "config.json)")


def fmt_value(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    if not math.isfinite(value):
        return str(value)
    if metric == "ppl":  # a diverged run's 5e85 in 86 digits ran a table's columns together
        return f"{value:.1f}" if value < 1e6 else f"{value:.3g}"
    if metric == "bpc":
        return f"{value:.3f}"
    if metric == "error":
        return f"{100 * value:.2f}%"
    return f"{value:.4f}"
