"""The numbers the report's notes (experiments/report_notes.py) quote from committed runs
are those runs' numbers: a record replaced by a longer or rerun one fails here until its
note is brought up to date, instead of RESULTS.md printing a stale sentence beside
fresh tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.report_notes import NOTES
from rnnreg_jax.train.logging import read_metrics

RUNS = Path(__file__).resolve().parents[1] / "results" / "runs"


def _events(run: str) -> list[dict]:
    return read_metrics(str(RUNS / run))


def at_epoch(run: str, epoch: int, metric: str = "rmse", split: str = "test") -> float:
    """`metric` of `split` after (1-based) `epoch`, as the run logged it at that epoch's end."""
    values = {e["epoch"] + 1: e[metric] for e in _events(run)
              if e.get("split") == split and e.get("phase") == "epoch_end"}
    return values[epoch]


def final(run: str, split: str, metric: str) -> float:
    """The last final evaluation's `metric` of `split`."""
    return [e[metric] for e in _events(run)
            if e.get("split") == split and e.get("phase") == "final"][-1]


def lowest(run: str, metric: str = "rmse", split: str = "test") -> tuple[float, int]:
    """The lowest per-epoch `metric` of `split` and its (1-based) epoch."""
    curve = [(e[metric], e["epoch"] + 1) for e in _events(run)
             if e.get("split") == split and e.get("phase") == "epoch_end"]
    return min(curve)


def epochs(run: str) -> int:
    """How many epochs the run evaluated (its last epoch-end evaluation's, 1-based)."""
    return max(e["epoch"] + 1 for e in _events(run)
               if e.get("split") == "test" and e.get("phase") == "epoch_end")


def _text(task: str) -> str:
    return " ".join(NOTES[task].values())


KERAS = "sentiment_variational_lstm_keras_250ep"
NO_DROP = "sentiment_no_dropout_keras_250ep"
NAIVE = "sentiment_naive_dropout_keras_250ep"
GAL_SPLIT = "sentiment_variational_lstm_keras_gal_split"
GAL_NO_DROP = "sentiment_no_dropout_keras_gal_split"
TORCH = ("sentiment_variational_lstm_250ep", "sentiment_variational_lstm_250ep_seed1")

# (task, what the note must say, the number as the runs give it)
FACTS = [
    *[("sentiment", f"{at_epoch(KERAS, n):.4f}", n) for n in (25, 75, 250)],
    *[("sentiment", f"{at_epoch(run, n):.4f}", n) for run in TORCH for n in (25, 75, 250)],
    ("sentiment", f"{final(KERAS, 'test_mc', 'rmse'):.4f}", "MC 250"),
    ("sentiment", f"{final(NO_DROP, 'test', 'rmse'):.4f}", "no dropout 250"),
    ("sentiment", f"{lowest(NO_DROP)[0]:.4f} at epoch {lowest(NO_DROP)[1]}", "no dropout low"),
    *[("sentiment", f"{at_epoch(NO_DROP, n):.4f}", n) for n in (25, 100)],
    ("sentiment", f"{lowest(NAIVE)[0]:.4f} at epoch {lowest(NAIVE)[1]}", "naive low"),
    *[("sentiment", f"{at_epoch(NAIVE, n):.4f}", n) for n in (25, 100, 220, 250)],
    ("sentiment", f"MC {final(NAIVE, 'test_mc', 'rmse'):.4f}", "naive MC"),
    *[("sentiment", f"{n}: {at_epoch(GAL_SPLIT, n):.4f} against {at_epoch(KERAS, n):.4f}", n)
      for n in (15, 30, 50, 90)],
    ("sentiment", f"epoch 5: {at_epoch(GAL_SPLIT, 5):.4f} against {at_epoch(KERAS, 5):.4f}", 5),
    ("sentiment", f"after {epochs(GAL_SPLIT)} of its 250 epochs", "Gal split epochs"),
    ("sentiment", f"`no_dropout`, after {epochs(GAL_NO_DROP)}, is", "no dropout Gal epochs"),
    ("sentiment", f"lowest {lowest(GAL_NO_DROP)[0]:.4f} at epoch {lowest(GAL_NO_DROP)[1]}, "
                  f"against {lowest(NO_DROP)[0]:.4f} at epoch {lowest(NO_DROP)[1]}",
     "no dropout lows"),
    ("sentiment", f"{epochs(GAL_NO_DROP)}: {at_epoch(GAL_NO_DROP, epochs(GAL_NO_DROP)):.4f} "
                  f"against {at_epoch(GAL_SPLIT, epochs(GAL_NO_DROP)):.4f}", "both at the end"),
    ("ptb", f"Zaremba ({final('zaremba_medium', 'test', 'ppl'):.1f})", "Zaremba medium"),
    ("ptb", f"variational ({final('variational_medium', 'test', 'ppl'):.1f} tied, "
            f"{final('variational_medium_untied', 'test', 'ppl'):.1f} untied)", "Gal medium"),
    ("ptb", f"({final('variational_medium', 'test_mc', 'ppl'):.1f}, "
            f"{final('variational_medium_untied', 'test_mc', 'ppl'):.1f};", "Gal medium MC"),
    ("ptb", f"({final('zoneout_word_zoneout', 'valid', 'ppl'):.1f} / "
            f"{final('zoneout_word_zoneout_seed1', 'valid', 'ppl'):.1f} < "
            f"{final('zoneout_word_recurrent_dropout', 'valid', 'ppl'):.1f} / "
            f"{final('zoneout_word_recurrent_dropout_seed1', 'valid', 'ppl'):.1f} < "
            f"{final('zoneout_word_baseline', 'valid', 'ppl'):.1f} / "
            f"{final('zoneout_word_baseline_seed1', 'valid', 'ppl'):.1f})", "zoneout order"),
]


@pytest.mark.parametrize(("task", "said", "what"), FACTS,
                         ids=[f"{t}-{w}-{s}" for t, s, w in FACTS])
def test_the_notes_quote_the_committed_runs(task, said, what):
    assert said in _text(task), f"the {task} notes should say {said!r} ({what})"
