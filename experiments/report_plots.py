"""Learning-curve PNGs of the report (matplotlib, imported only when plotting)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from experiments.report_runs import CATEGORIES, Run, _float, fmt_value


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
