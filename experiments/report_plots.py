"""Learning-curve PNGs of the report (matplotlib, imported only when plotting)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from experiments import reference_curves
from experiments.reference_curves import ReferenceCurve
from experiments.report_runs import CATEGORIES, Run, _float, fmt_value


def _slug(text: str) -> str:
    words = "".join(c.lower() if c.isalnum() else " " for c in text).split()
    return "_".join(words[:6])


TODAY = "today's presets"
EARLIER = "earlier versions of the presets (the table gives the flags that rebuild them)"


def panels(runs: Sequence[Run]) -> list[tuple[str, list[Run]]]:
    """The plot's panels: runs of today's presets, then runs of earlier versions of them
    (those whose command needs `flags_since_changed` overrides to run again today), so a
    figure's first curves are what the presets give now; one panel if only one kind."""
    from experiments.report_commands import flags_since_changed

    earlier = [r for r in runs if flags_since_changed(r)]
    today = [r for r in runs if r not in earlier]
    return [(title, group) for title, group in ((TODAY, today), (EARLIER, earlier)) if group]


def plot_category(runs: Sequence[Run], dataset: str, path: str, title: str | None = None,
                  references: Sequence[ReferenceCurve] | None = None) -> str | None:
    """Learning curves of one data set as a PNG, one panel per `panels` group; None if no
    run has a point to plot. `references` (default: the data set's in
    `reference_curves`) are drawn in each panel holding a run of their preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cat = CATEGORIES.get(dataset, dict(title=dataset, metric="loss", unit="loss", log=False,
                                       splits={}))
    if not any(r.epoch_curve() or r.train_curve() for r in runs):
        return None
    groups = panels(runs)
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 4.8 * len(groups)), squeeze=False,
                             sharex=True, sharey=True)
    if references is None:
        references = reference_curves.load(dataset)
    val_names: set[str] = set()
    drawn = False
    labels = _labels(runs)  # over every panel: a preset in both is told apart in both
    for ax, (panel, group) in zip(axes[:, 0], groups, strict=True):
        drawn |= _plot_references(ax, group, references)
        val_names |= _plot_runs(ax, group, cat, labels)
        if len(groups) > 1 or panel == EARLIER:  # one panel of today's: the plain figure
            ax.set_title(panel, fontsize=9)
    if cat.get("log"):
        papers = [p for r in runs if (p := _float(r.paper.get(r.validation_split or "valid")))]
        if papers:  # the first steps' perplexities in the thousands would flatten the rest
            axes[0, 0].set_ylim(top=3 * max(papers))
    axes[-1, 0].set_xlabel("epoch")
    fig.suptitle(f"{title or cat.get('title', dataset)}\n"
                 f"({' / '.join(sorted(val_names))} solid, train dotted, paper dashed"
                 f"{', authors dash-dot' if drawn else ''})",
                 fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_runs(ax, runs: Sequence[Run], cat: dict, labels: dict[int, str]) -> set[str]:
    """One panel: each run's validation (solid), training (dotted) and paper (dashed)
    curves in its own colour, one legend entry per run (`labels`, by `id(run)`); returns
    the validation splits."""
    import matplotlib.pyplot as plt

    curves = [(r, r.epoch_curve(), r.train_curve()) for r in runs]
    colors = ([tuple(c) for c in plt.get_cmap("tab20")(range(20))]  # its 20 listed colours
              if len(curves) > 10 else plt.rcParams["axes.prop_cycle"].by_key()["color"])
    val_names = set()
    for i, (run, valid, train) in enumerate(curves):
        color = colors[i % len(colors)]
        split = run.validation_split or "valid"
        val_names.add(split)
        paper = _float(run.paper.get(split))
        label = labels[id(run)] + ("" if run.finished else
                                   " (stopped)" if run.stop_message() else " (unfinished)")
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
    ax.set_ylabel(f"{cat['unit']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return val_names


def _plot_references(ax, runs: Sequence[Run], references: Sequence[ReferenceCurve]
                     ) -> bool:
    """Each reference curve of a preset among `runs` (grey, dash-dot), up to the last
    epoch those runs reached, so that a short run is not squeezed against a long curve;
    whether any was drawn. Drawn first: the legend lists it above the runs."""
    drawn = False
    for ref in references:
        last = max((e for r in runs if (r.preset, r.metric, r.validation_split)
                    == (ref.preset, ref.metric, ref.split)
                    for e, _ in r.epoch_curve() or ()), default=0)
        points = ref.until(last)
        if not points:
            continue
        shown = "" if points == ref.curve else f"first {len(points)} of "
        ax.plot([e for e, _ in points], [v for _, v in points], "-.", color="0.35",
                linewidth=1.2, label=f"{ref.label} ({shown}{len(ref.curve)} epochs "
                                     "logged)")
        drawn = True
    return drawn


def _labels(runs: Sequence[Run]) -> dict[int, str]:
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.preset] = counts.get(r.preset, 0) + 1
    return {id(r): r.preset if counts[r.preset] == 1
            else f"{r.preset} ({os.path.basename(r.workdir.rstrip('/'))})" for r in runs}
