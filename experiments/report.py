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
the commit and device that produced it (`config.json`'s `provenance`), and a
copy-pasteable command. A run without final evaluation events is listed
as unfinished with its latest validation number. One PNG per data set: the
validation metric (solid) and the training metric (dotted) vs epoch, one line
per run, the paper's number as a dashed horizontal line in the run's colour.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

# Reading workdirs, a row's cells, the command column and the plots live in their own
# modules; their public names are re-exported here for notebooks and tests.
from experiments.report_cells import (  # noqa: F401
    _escape,
    commit_cell,
    device_cell,
    fmt_gap,
    relative_gap,
    run_numbers,
    status,
)
from experiments.report_commands import (  # noqa: F401
    copy_paste_command,
    flags_since_changed,
    own_workdir_note,
    shared_workdirs,
    workdir_of,
)
from experiments.report_plots import _slug, plot_category
from experiments.report_runs import (  # noqa: F401
    CATEGORIES,
    SPLITS,
    Run,
    _float,
    find_workdirs,
    fmt_value,
    load_run,
    load_runs,
    no_runs_sentence,
    read_events,
)

# --- tables -----------------------------------------------------------------------------

def category_table(runs: Sequence[Run], dataset: str,
                   report_runs: Sequence[Run] | None = None) -> list[str]:
    """Markdown lines of the table of one data set. A command whose workdir another
    command of `report_runs` (the whole report's runs; default `runs`) names too says
    so: run after that one, it would resume it."""
    everyone = list(report_runs if report_runs is not None else runs)
    shared = shared_workdirs(everyone)
    taken = frozenset(w for w in map(lambda r: workdir_of(r.command), everyone) if w)
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
    header += ["epochs", "commit", "device", "command"]
    align += ["---", "---", "---", "---"]
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
        row += [commit_cell(run.provenance), device_cell(run.provenance)]
        cell = f"`{_escape(copy_paste_command(run.command, run.task))}`"
        changed = flags_since_changed(run)
        notes = [f"to rebuild it today, add `{_escape(' '.join(changed))}`"] if changed else []
        notes += [_escape(n) for n in [own_workdir_note(run, shared, taken)] if n]
        if notes:
            cell += f" ({'; '.join(notes)})"
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
    """The task's entry of `experiments.report_notes.GROUPS` or `.NOTES`."""
    from experiments import report_notes

    return dict(getattr(report_notes, name).get(task, {}))


def _report_groups(task: str) -> dict[str, str]:
    """The task's presets that get their own section and plot (`report_notes.GROUPS`)."""
    return _config_table(task, "GROUPS")


def sort_runs(runs: Sequence[Run]) -> list[Run]:
    orders: dict[str, list[str]] = {}

    def key(run: Run):
        order = orders.setdefault(run.task, _preset_order(run.task))
        index = order.index(run.preset) if run.preset in order else len(order)
        return (index, run.preset, run.workdir)

    return sorted(runs, key=key)


# --- the report ---------------------------------------------------------------------------

class NoRunsError(ValueError):
    """`build_report` found no readable run: nothing is written."""


def build_report(run_dirs: Sequence[str], out: str, plots: str | None,
                 intro: str | None = None) -> str:
    """Write the report to `out` (and PNGs under `plots`); returns its text.

    `intro`, when given, is markdown placed under the header that describes these runs;
    it replaces the section notes of `experiments.report_notes`. Those notes describe
    RESULTS.md's runs, so they are printed only when every run read is one of them (a
    workdir under this repository's `results/runs`): a report of a user's own runs, or
    of ablations and variants, says nothing it cannot know.
    """
    workdirs = find_workdirs(run_dirs)
    runs = sort_runs(load_runs(workdirs))
    if not runs:  # an empty folder, only torn records: a report saying so replaced `out`
        raise NoRunsError(f"No run under {', '.join(map(str, run_dirs))}.")
    with_notes = not intro and bool(workdirs) and all(map(_is_committed_run, workdirs))
    # Sections: one per data set, plus one per report group of the task's presets
    # (comparisons beyond the papers, e.g. AWD-LSTM's recipe against variational dropout).
    by_section: dict[tuple[str, str], list[Run]] = {}
    groups: dict[str, dict[str, str]] = {}
    for run in runs:
        group_name = groups.setdefault(run.task, _report_groups(run.task)).get(run.preset, "")
        by_section.setdefault((run.dataset, group_name), []).append(run)
    datasets = list(CATEGORIES) + sorted({d for d, _ in by_section} - set(CATEGORIES))
    order = [(d, g) for d in datasets for g in sorted({g for dd, g in by_section if dd == d})]
    out_dir = os.path.dirname(os.path.abspath(out))
    lines = ["# Results", "",
             "Generated by `python -m experiments.report` from the runs' `config.json` and "
             "`metrics.jsonl`; do not edit by hand. Gap = (ours - paper) / paper: every "
             "metric is lower-is-better, so a positive gap is worse than the paper. "
             "Unfinished runs show their latest validation number and its epoch. Commit "
             "and device are the run's own record: its last start's, then those of its "
             "earlier starts where they differ (runs recorded before the record kept them "
             "show the last start's only); a commit marked `~` is inferred (the "
             "newest commit before the run's first event, for runs from before runs "
             "recorded it), `+dirty` means the tree had uncommitted changes. Commands "
             "run from the repository root.", ""]
    if intro:
        lines += [intro.strip(), ""]
    for dataset, group_name in order:
        group = by_section[(dataset, group_name)]
        cat = dict(CATEGORIES.get(dataset, {"title": dataset}))
        if group_name:
            cat["title"] = f"{cat['title']}: {group_name}"
        lines += [f"## {cat['title']}", ""]
        # A note on the section from `experiments.report_notes` (`NOTES`, keyed by
        # group title; a data set's main section by its name, or "" for any data set).
        notes = _config_table(group[0].task, "NOTES") if with_notes else {}
        note = notes.get(group_name) if group_name else notes.get(dataset, notes.get(""))
        lines += [note, ""] if note else []
        lines += _protocol_notes(group)
        lines += category_table(group, dataset, report_runs=runs)
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


COMMITTED_RUNS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "results", "runs")


def _is_committed_run(workdir: str) -> bool:
    """Whether `workdir` lies under this repository's `results/runs` (RESULTS.md's runs,
    which `experiments.report_notes` describes)."""
    root = os.path.realpath(COMMITTED_RUNS)
    return os.path.commonpath([os.path.realpath(workdir), root]) == root


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

    from experiments.flag_parsing import ArgumentParser, refuse_empty

    parser = ArgumentParser(prog="python -m experiments.report", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True,
                        help="comma-separated workdirs or folders of workdirs")
    parser.add_argument("--out", default="RESULTS.md")
    parser.add_argument("--plots", default=None,
                        help="folder for the PNGs ('' for none; default: docs/results "
                             "beside --out, where RESULTS.md's own plots are)")
    parser.add_argument("--intro", default=None,
                        help="markdown file describing these runs, placed under the header "
                             "(the section notes of experiments/report_notes.py describe "
                             "results/runs and appear only in a report of those runs)")
    args = parser.parse_args(argv)
    refuse_empty({"out": (args.out, "pass the report's file, or leave the flag out for "
                                    "RESULTS.md"),
                  "intro": (args.intro, "pass a markdown file, or leave the flag out for "
                                        "none")})
    dirs = [d for d in args.runs.split(",") if d]
    plots = (os.path.join(os.path.dirname(args.out), "docs", "results") if args.plots is None
             else args.plots)
    if plots and os.path.exists(plots) and not os.path.isdir(plots):
        print(f"error: --plots={plots} is a file, not a folder.", file=sys.stderr)
        return 2
    intro = None
    if args.intro:  # before the runs are read: a report without it is not the one asked for
        try:
            with open(args.intro, encoding="utf-8") as f:
                intro = f.read()
        except FileNotFoundError:
            print(f"error: --intro={args.intro}: no such file.", file=sys.stderr)
            return 2
        except UnicodeDecodeError:
            print(f"error: --intro={args.intro} is not UTF-8 text.", file=sys.stderr)
            return 2
        except OSError as err:  # a folder, permissions
            print(f"error: cannot read --intro={args.intro} ({err.strerror or err}).",
                  file=sys.stderr)
            return 2
    try:
        build_report(dirs, args.out, plots or None, intro=intro)
    except NoRunsError:  # as `experiments.curves` refuses it
        print(f"error: {no_runs_sentence(args.runs)}; nothing written.", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an --out or --plots that cannot be written
        print(f"error: cannot write the report: {err.strerror or err} "
              f"({err.filename or args.out}).", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
