"""Results report: run workdirs -> RESULTS.md tables and learning-curve PNGs.

    python -m experiments.report --runs=runs --out=RESULTS.md --plots=docs/results
    python -m experiments.report --runs=runs/zaremba_small,runs/zoneout

Each DIR of `--runs` is a workdir (it holds `config.json`, written by
`experiments/main.py`, and `metrics.jsonl`) or a folder whose sub-folders are
workdirs. Every number in the report comes from those files: our numbers from
`metrics.jsonl`, the papers' from `config.paper`, the command from
`config.json`'s `command`. Nothing is typed in by hand.

One table per data set (PTB word, PTB char, pMNIST, Cornell sentiment
regression, IMDB): per run the preset, our final numbers beside the paper's
with the relative gap `(ours - paper) / paper` (every metric here is lower-is-
better, so a positive gap means worse than the paper), epochs trained / total,
and a copy-pasteable command. A run without final evaluation events is listed
as unfinished with its latest validation number. One PNG per data set: the
validation metric (solid) and the training metric (dotted) vs epoch, one line
per run, the paper's number as a dashed horizontal line in the run's colour.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import sys
from collections.abc import Iterable, Sequence

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


# --- reading workdirs --------------------------------------------------------------------

def _float(value) -> float | None:
    """A metric value from metrics.jsonl (non-finite values are logged as strings)."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_events(path: str) -> list[dict]:
    """The events of a metrics.jsonl; a half-written last line (live run) is skipped."""
    events = []
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
            if isinstance(event, dict):
                events.append(event)
    return events


def copy_paste_command(command: str, task: str) -> str:
    """`python -m experiments.<task> ...` from the logged `sys.argv` (script path first)."""
    args = command.split()
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
    return " ".join(["python", "-m", f"experiments.{module}"] + [shlex.quote(a) for a in rest])


def _flag_value(value) -> str:
    """A stored JSON value as a `--config.<field>=` override reads it back."""
    if isinstance(value, list):
        return "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def flags_since_changed(run: Run) -> list[str]:
    """Overrides that today's preset needs to rebuild the run: fields of model, data,
    reg and train whose preset value changed since the run and that its command does
    not set. Empty when the preset cannot be built."""
    try:
        module = __import__(f"experiments.configs.{run.task}", fromlist=["PRESETS"])
        preset = module.PRESETS[run.preset]()
    except Exception:  # noqa: BLE001 -- the annotation is optional
        return []
    from experiments.configs.common import FIXED_SECTIONS, config_differences

    current = json.loads(json.dumps(preset.to_dict(), default=str))
    given = {a.split("=", 1)[0] for a in run.command.split() if a.startswith("--config.")}
    # Fields the record lacks were added to the code after the run. They count when they
    # are switches, or numbers of the model, data and regularization (features added
    # switched off: 0 before them); a training number added later (say a setting of one
    # optimizer) says nothing about a run that had no such setting.
    sections = FIXED_SECTIONS + ("train",)

    def counts(section, field, now):
        if field in run.config[section] or isinstance(now, bool):
            return True
        return section != "train" and isinstance(now, int | float)

    return [f"--config.{section}.{field}={_flag_value(before)}"
            for section, field, before, now in config_differences(run.config, current, sections)
            if f"--config.{section}.{field}" not in given and counts(section, field, now)]


@dataclasses.dataclass
class Run:
    """One workdir: its config.json and the numbers the report needs."""

    workdir: str
    task: str
    command: str
    config: dict
    events: list[dict]

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
        """split -> its last `phase == "final"` event."""
        out: dict[str, dict] = {}
        for e in self.events:
            if e.get("phase") == "final":
                out[e["split"]] = e
        return out

    @property
    def finished(self) -> bool:
        return bool(self.final())

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

    def steps_per_epoch(self) -> float | None:
        ends = {int(e["epoch"]) + 1: int(e["step"]) for e in self.events
                if e.get("phase") == "epoch_end"}
        if not ends:
            return None
        epoch = max(ends)
        return ends[epoch] / epoch if ends[epoch] > 0 else None

    def train_curve(self) -> list[tuple[float, float]]:
        """(fractional epoch, training metric) of the training events."""
        spe = self.steps_per_epoch()
        points: dict[int, tuple[float, float]] = {}
        per_epoch: dict[int, list[float]] = {}
        for e in self.events:
            if e.get("split") != "train" or "step" not in e:
                continue
            value = _float(e.get(self.metric))
            if value is None or not math.isfinite(value):
                continue
            if spe:
                points[int(e["step"])] = (int(e["step"]) / spe, value)
            else:
                per_epoch.setdefault(int(e.get("epoch", 0)), []).append(value)
        if spe:
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
    """Workdirs (folders with config.json) at or below each path."""
    found: list[str] = []
    for root in paths:
        root = os.path.normpath(root)
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
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        meta = json.load(f)
    return Run(workdir=workdir, task=str(meta.get("task", "")),
               command=str(meta.get("command", "")), config=meta.get("config") or {},
               events=read_events(os.path.join(workdir, "metrics.jsonl")))


# --- numbers and tables -------------------------------------------------------------------

def relative_gap(ours: float | None, paper: float | None) -> float | None:
    """(ours - paper) / paper; None where either is missing or the paper's is 0."""
    if ours is None or paper is None or not math.isfinite(ours) or paper == 0:
        return None
    return (ours - paper) / paper


def fmt_value(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    if not math.isfinite(value):
        return str(value)
    if metric == "ppl":
        return f"{value:.1f}"
    if metric == "bpc":
        return f"{value:.3f}"
    if metric == "error":
        return f"{100 * value:.2f}%"
    return f"{value:.4f}"


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
        return text
    where = f"step {run.last_step()}"
    if not run.epoch_curve():
        where += ", no validation yet"
        train = [e for e in run.events if e.get("split") == "train"
                 and _float(e.get(run.metric)) is not None]
        if train:
            where += (f"; train {run.metric} "
                      f"{fmt_value(_float(train[-1][run.metric]), run.metric)}")
    return f"{text} **unfinished** ({where})"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def category_table(runs: Sequence[Run], dataset: str) -> list[str]:
    """Markdown lines of the table of one data set."""
    cat = CATEGORIES.get(dataset, dict(metric="loss", splits={s: s for s in SPLITS}))
    metric = cat["metric"]
    numbers = {id(r): run_numbers(r) for r in runs}
    # The data set's usual columns, plus any other split a run reports.
    splits = [s for s in SPLITS
              if s in cat.get("columns", ()) or any(
                  s in numbers[id(r)] or r.paper.get(s) is not None for r in runs)]
    header, align = ["preset"], ["---"]
    for split in splits:
        header.append(cat["splits"].get(split, split))
        align.append("---:")
        if any(r.paper.get(split) is not None for r in runs):
            header += ["paper", "gap"]
            align += ["---:", "---:"]
    header += ["epochs", "command"]
    align += ["---", "---"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for run in runs:
        nums = numbers[id(run)]
        row = [f"`{run.preset}`"]
        for split in splits:
            value, note = nums.get(split, (None, ""))
            row.append(fmt_value(value, metric) + (f" ({note})" if note else ""))
            if any(r.paper.get(split) is not None for r in runs):
                paper = _float(run.paper.get(split))
                row += [fmt_value(paper, metric), fmt_gap(relative_gap(value, paper))]
        row.append(status(run))
        cell = f"`{_escape(copy_paste_command(run.command, run.task))}`"
        changed = flags_since_changed(run)
        if changed:
            cell += f" (to rebuild it today, add `{_escape(' '.join(changed))}`)"
        row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _preset_order(task: str) -> list[str]:
    """Preset names in their config file's order (the papers' row order), if importable."""
    try:
        module = __import__(f"experiments.configs.{task}", fromlist=["PRESETS"])
        return list(module.PRESETS)
    except Exception:  # noqa: BLE001 -- ordering only
        return []


def _config_table(task: str, name: str) -> dict[str, str]:
    """A dict a task's config module may define (`REPORT_GROUPS`, `REPORT_NOTES`)."""
    try:
        module = __import__(f"experiments.configs.{task}", fromlist=[name])
        return dict(getattr(module, name, {}))
    except Exception:  # noqa: BLE001 -- grouping only
        return {}


def _report_groups(task: str) -> dict[str, str]:
    """The task's presets that get their own section and plot (`REPORT_GROUPS`), if any."""
    return _config_table(task, "REPORT_GROUPS")


def sort_runs(runs: Sequence[Run]) -> list[Run]:
    orders: dict[str, list[str]] = {}

    def key(run: Run):
        order = orders.setdefault(run.task, _preset_order(run.task))
        index = order.index(run.preset) if run.preset in order else len(order)
        return (index, run.preset, run.workdir)

    return sorted(runs, key=key)


# --- plots --------------------------------------------------------------------------------

def _slug(text: str) -> str:
    words = "".join(c.lower() if c.isalnum() else " " for c in text).split()
    return "_".join(words[:6])


def plot_category(runs: Sequence[Run], dataset: str, path: str, title: str | None = None
                  ) -> str | None:
    """Learning curves of one data set as a PNG; None if no run has a point to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cat = CATEGORIES.get(dataset, dict(title=dataset, metric="loss", unit="loss", log=False,
                                       splits={}))
    curves = [(r, r.epoch_curve(), r.train_curve()) for r in runs]
    if not any(v or t for _, v, t in curves):
        return None
    labels = _labels(runs)
    fig, ax = plt.subplots(figsize=(10, 4.8))
    # One legend entry per run (its colour); the line style says which curve it is.
    colors = (plt.get_cmap("tab20").colors if len(curves) > 10
              else plt.rcParams["axes.prop_cycle"].by_key()["color"])
    val_names = set()
    for i, (run, valid, train) in enumerate(curves):
        color = colors[i % len(colors)]
        split = run.validation_split or "valid"
        val_names.add(split)
        paper = _float(run.paper.get(split))
        label = labels[id(run)] + ("" if run.finished else " (unfinished)")
        if paper is not None:
            label += f"; paper {fmt_value(paper, cat['metric'])}"
        if valid:
            ax.plot([e for e, _ in valid], [v for _, v in valid], "-o", color=color,
                    markersize=3, label=label)
        if train:
            ax.plot([e for e, _ in train], [v for _, v in train], ":", color=color,
                    alpha=0.6, label=None if valid else label)
        if paper is not None:
            ax.axhline(paper, color=color, linestyle="--", linewidth=1)
    if cat.get("log"):
        ax.set_yscale("log")
        papers = [p for r in runs if (p := _float(r.paper.get(r.validation_split or "valid")))]
        if papers:  # the first steps' perplexities in the thousands would flatten the rest
            ax.set_ylim(top=3 * max(papers))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{cat['unit']}")
    ax.set_title(f"{title or cat.get('title', dataset)}\n"
                 f"({' / '.join(sorted(val_names))} solid, train dotted, paper dashed)",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _labels(runs: Sequence[Run]) -> dict[int, str]:
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.preset] = counts.get(r.preset, 0) + 1
    return {id(r): r.preset if counts[r.preset] == 1
            else f"{r.preset} ({os.path.basename(r.workdir.rstrip('/'))})" for r in runs}


# --- the report ---------------------------------------------------------------------------

def build_report(run_dirs: Sequence[str], out: str, plots: str | None) -> str:
    """Write the report to `out` (and PNGs under `plots`); returns its text."""
    runs = sort_runs([load_run(d) for d in find_workdirs(run_dirs)])
    # Sections: one per data set, plus one per report group of the task's presets
    # (comparisons beyond the papers, e.g. AWD-LSTM's recipe against variational dropout).
    by_section: dict[tuple[str, str], list[Run]] = {}
    groups: dict[str, dict[str, str]] = {}
    for run in runs:
        group = groups.setdefault(run.task, _report_groups(run.task)).get(run.preset, "")
        by_section.setdefault((run.dataset, group), []).append(run)
    datasets = list(CATEGORIES) + sorted({d for d, _ in by_section} - set(CATEGORIES))
    order = [(d, g) for d in datasets for g in sorted({g for dd, g in by_section if dd == d})]
    out_dir = os.path.dirname(os.path.abspath(out))
    lines = ["# Results", "",
             "Generated by `python -m experiments.report` from the runs' `config.json` and "
             "`metrics.jsonl`; do not edit by hand. Gap = (ours - paper) / paper: every "
             "metric is lower-is-better, so a positive gap is worse than the paper. "
             "Unfinished runs show their latest validation number and its epoch.", ""]
    if not runs:
        lines += ["No runs found.", ""]
    for dataset, group_name in order:
        group = by_section[(dataset, group_name)]
        cat = dict(CATEGORIES.get(dataset, {"title": dataset}))
        if group_name:
            cat["title"] = f"{cat['title']}: {group_name}"
        lines += [f"## {cat['title']}", ""]
        # A note on the section from the task's config module (`REPORT_NOTES`, keyed by
        # group title; "" is the data set's main section).
        note = _config_table(group[0].task, "REPORT_NOTES").get(group_name)
        lines += [note, ""] if note else []
        lines += _protocol_notes(group)
        lines += category_table(group, dataset)
        lines.append("")
        sources = [(r.preset, r.paper.get("source")) for r in group if r.paper.get("source")]
        if sources:
            lines += ["Paper numbers: " + "; ".join(
                f"`{p}`: {s}" for p, s in dict(sources).items()) + ".", ""]
        if plots:
            stem = dataset + ("_" + _slug(group_name) if group_name else "")
            png = plot_category(group, dataset, os.path.join(plots, f"{stem}.png"),
                                title=cat["title"])
            if png:
                rel = os.path.relpath(os.path.abspath(png), out_dir).replace(os.sep, "/")
                lines += [f"![{cat['title']} learning curves]({rel})", ""]
    text = "\n".join(lines)
    os.makedirs(out_dir, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    return text


def _protocol_notes(runs: Sequence[Run]) -> list[str]:
    notes = []
    if any(r.dataset == "ptb_word" and r.config.get("train", {}).get("carry_state")
           for r in runs):
        notes.append("Runs with carried state (Zaremba, Gal): test = one pass over the test "
                     "stream with batch 1 and carried state; MC = Monte Carlo dropout with "
                     "`train.mc_samples` samples.")
    if any(r.dataset == "cornell" for r in runs):
        notes.append("Test RMSE on the 20% held-out chunks, with the dropout approximation "
                     "(deterministic) and with MC dropout; the curve is the test RMSE after "
                     "each epoch, as in Gal & Ghahramani's sentiment figure.")
    return [n for note in notes for n in (note, "")]


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True,
                        help="comma-separated workdirs or folders of workdirs")
    parser.add_argument("--out", default="RESULTS.md")
    parser.add_argument("--plots", default="docs/results",
                        help="folder for the PNGs ('' for none)")
    args = parser.parse_args(argv)
    dirs = [d for d in args.runs.split(",") if d]
    try:
        build_report(dirs, args.out, args.plots or None)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
