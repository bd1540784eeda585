"""Runs side by side at chosen epochs: each run's epoch-end metric (the report's curve,
`Run.epoch_curve`) after the given epochs, to compare runs of different lengths at equal
training.

    python -m experiments.curves --runs=results/runs/sentiment_variational_lstm_keras_100ep,\
results/runs/sentiment_variational_lstm_250ep --split=test --epochs=25,50,75,100
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from experiments.flag_parsing import ArgumentParser
from experiments.report_runs import Run, find_workdirs, fmt_value, load_runs, no_runs_sentence


def run_names(runs: Sequence[Run]) -> list[str]:
    """Each run's row name: its folder's name, or its path where another run's folder
    has the same name (`a/wd` and `b/wd` were two rows named `wd`); with the metric
    where the runs do not share one (a perplexity and a bpc were unlabeled numbers in
    one column)."""
    bases = [os.path.basename(os.path.normpath(run.workdir)) for run in runs]
    names = [os.path.normpath(run.workdir) if bases.count(base) > 1 else base
             for run, base in zip(runs, bases, strict=True)]
    if len({run.metric for run in runs}) > 1:
        names = [f"{name} ({run.metric})" for name, run in zip(names, runs, strict=True)]
    return names


def table(runs: Sequence[Run], split: str, epochs: Sequence[int]) -> list[str]:
    """One line per run: its name, then its `split` metric after each of `epochs` ("–"
    where it has no evaluation then), then its lowest value and that epoch."""
    lines = ["run".ljust(48) + "".join(f"{'epoch ' + str(e):>12}" for e in epochs)
             + f"{'lowest (epoch)':>20}"]
    for run, name in zip(runs, run_names(runs), strict=True):
        curve = dict(run.epoch_curve(split))
        cells = "".join(f"{fmt_value(curve.get(e), run.metric):>12}" for e in epochs)
        best = min(curve.items(), key=lambda item: item[1]) if curve else None
        lowest = f"{fmt_value(best[1], run.metric)} ({best[0]})" if best else "–"
        lines.append(name.ljust(48) + cells + f"{lowest:>20}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m experiments.curves", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True,
                        help="comma-separated workdirs or folders of workdirs")
    parser.add_argument("--split", default="test", help="the evaluation split, e.g. valid")
    parser.add_argument("--epochs", required=True, help="comma-separated epochs (1-based)")
    args = parser.parse_args(argv)
    try:
        epochs = [int(e) for e in args.epochs.split(",") if e]
    except ValueError:
        epochs = []
    if not epochs or min(epochs) < 1:  # epochs count from 1: 0 or -3 gave dashes only
        print(f"error: --epochs must be comma-separated whole numbers >= 1, got "
              f"{args.epochs!r}.", file=sys.stderr)
        return 2
    try:
        workdirs = find_workdirs(d for d in args.runs.split(",") if d)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    runs = load_runs(workdirs)
    if not runs:  # an empty folder, or only unreadable records: an empty table before
        print(f"error: {no_runs_sentence(args.runs)}.", file=sys.stderr)
        return 2
    # A typo'd split would print a table of dashes, as if no run had been evaluated.
    splits = sorted({e["split"] for run in runs for e in run.events
                     if e.get("phase") == "epoch_end" and "split" in e})
    if not splits:  # no run evaluated at any epoch end: a table of dashes alone before
        print(f"error: None of the runs ({', '.join(run_names(runs))}) has an epoch-end "
              "evaluation yet.", file=sys.stderr)
        return 2
    if args.split not in splits:
        print(f"error: None of the runs has epoch-end evaluations of split {args.split!r}; "
              f"they have: {', '.join(splits)}.", file=sys.stderr)
        return 2
    print("\n".join(table(runs, args.split, epochs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
