"""The numbers the report's notes (experiments/report_notes.py) quote from committed runs
are those runs' numbers: a record replaced by a longer or rerun one fails here until its
note is brought up to date, instead of RESULTS.md printing a stale sentence beside
fresh tables. Numbers with no committed record behind them (paper figures, timings,
runs kept elsewhere) are not checked here."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest

from experiments import reference_curves
from experiments.report_notes import GROUPS, NOTES
from rnnreg_jax.train.logging import read_metrics

RESULTS = Path(__file__).resolve().parents[1] / "results"
RUNS = RESULTS / "runs"


@functools.cache  # the facts read each file dozens of times, at collection
def _events(run: str) -> list[dict]:
    """A run's events (read only); `run` is a folder under results/runs, or under
    results/evaluations as "../evaluations/<folder>"."""
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


def epochs(run: str, split: str = "test") -> int:
    """How many epochs the run evaluated (its last epoch-end evaluation's, 1-based)."""
    return max(e["epoch"] + 1 for e in _events(run)
               if e.get("split") == split and e.get("phase") == "epoch_end")


def last_logged(run: str, epoch: int, metric: str) -> float:
    """The last training log's `metric` in (1-based) `epoch` (dropout on, running mean)."""
    return [e[metric] for e in _events(run)
            if e.get("split") == "train" and e["epoch"] + 1 == epoch][-1]


@functools.cache
def _json(path: Path):
    return json.loads(path.read_text())


def _at(value, keys):
    for key in keys:
        value = value[key]
    return value


def config(run: str, key: str):
    """The run's recorded config value at a dotted `key` ("train.mc_samples")."""
    return _at(_json(RUNS / run / "config.json")["config"], key.split("."))


def evaluation(name: str, *keys: str):
    """A value of an evaluate JSON under results/evaluations ("valid", "ppl")."""
    return _at(_json(RESULTS / "evaluations" / name), keys)


def span(values, spec: str = "") -> str:
    """Values as a note gives a range: "3-28" from their extremes, or "3" when both
    extremes print alike."""
    lo, hi = format(min(values), spec), format(max(values), spec)
    return lo if lo == hi else f"{lo}-{hi}"


def within(value: float, digits: int = 0) -> str:
    """A bound a note states as "within X": `value` rounded up to `digits`."""
    return f"{math.ceil(value * 10 ** digits) / 10 ** digits:.{digits}f}"


def pct(fraction: float, digits: int = 1) -> str:
    return f"{100 * fraction:.{digits}f}%"


_ONE_NOTE = {"ptb_word": ("ptb", "ptb_word"), "ptb_char": ("ptb", "ptb_char"),
             "zoneout_word": ("ptb", GROUPS["ptb"]["zoneout"]),
             "awd": ("ptb", GROUPS["ptb"]["awd_small"]), "imdb": ("sentiment", "imdb")}


def _text(where: str) -> str:
    """One note (a key of _ONE_NOTE) or all of a task's notes ("sentiment")."""
    if where in _ONE_NOTE:
        task, note = _ONE_NOTE[where]
        return NOTES[task][note]
    return " ".join(NOTES[where].values())


KERAS = "sentiment_variational_lstm_keras_250ep"
NO_DROP = "sentiment_no_dropout_keras_250ep"
NAIVE = "sentiment_naive_dropout_keras_250ep"
GAL_SPLIT = "sentiment_variational_lstm_keras_gal_split"
GAL_NO_DROP = "sentiment_no_dropout_keras_gal_split"
TORCH = ("sentiment_variational_lstm_250ep", "sentiment_variational_lstm_250ep_seed1")
GAL_NAIVE = "sentiment_naive_dropout_keras_gal_split"
GAL_GRU = "sentiment_variational_gru_keras_gal_split"
CHUNK_GRU = "sentiment_variational_gru_keras_1250ep"
# The Cornell rows on Gal's split (the note counts them in words)
GAL_ROWS = [run.name for run in sorted(RUNS.iterdir()) if (run / "config.json").exists()
            and _json(run / "config.json")["config"]["data"].get("split") == "shuffled_reviews"]
COUNT_WORDS = {3: "three", 4: "four", 5: "five", 6: "six"}


def below_count(run: str, other: str) -> int:
    """At how many of the epochs both ran `run` is below `other`."""
    last = min(epochs(run), epochs(other))
    return sum(at_epoch(run, n) < at_epoch(other, n) for n in range(1, last + 1))


def below_from(run: str, other: str) -> int:
    """The first (1-based) epoch from which `run` is below `other` at every epoch both ran."""
    last = min(epochs(run), epochs(other))
    below = [at_epoch(run, n) < at_epoch(other, n) for n in range(1, last + 1)]
    return next(n for n in range(1, last + 1) if all(below[n - 1:]))


def fifth_epochs_train_within(run: str, other: str) -> str:
    """How close `run`'s training RMSE (the last log of each fifth epoch) stays to
    `other`'s, as the bound a note states."""
    shared = range(5, min(epochs(run), epochs(other)) + 1, 5)
    return within(max(100 * abs(last_logged(run, n, "rmse") / last_logged(other, n, "rmse")
                                - 1) for n in shared), 1)


def fifth_epochs_above(run: str, other: str, last: int = 10 ** 9) -> str:
    """How far `run` lies above `other` at every fifth epoch both ran (to `last`), as a
    range."""
    shared = [n for n in range(5, min(epochs(run), last) + 1, 5) if n <= epochs(other)]
    return span([100 * (at_epoch(run, n) / at_epoch(other, n) - 1) for n in shared], ".1f")


def fifth_epochs_band(run: str, other: str, what: str) -> str:
    """Where `run` lies against `other` (`what`) at every fifth epoch both ran, as a note
    says it: "is 1.1-5.9% above WHAT at every fifth epoch", or "lies between 1.6% below
    and 5.9% above WHAT at every fifth epoch (above at all but 120 and 155)"."""
    shared = list(range(5, min(epochs(run), epochs(other)) + 1, 5))
    gaps = {n: 100 * (at_epoch(run, n) / at_epoch(other, n) - 1) for n in shared}
    if min(gaps.values()) >= 0:
        return f"is {span(list(gaps.values()), '.1f')}% above {what} at every fifth epoch"
    below = [str(n) for n in shared if gaps[n] < 0]
    but = ", ".join(below[:-1]) + " and " + below[-1] if len(below) > 1 else below[0]
    return (f"lies between {-min(gaps.values()):.1f}% below and {max(gaps.values()):.1f}% "
            f"above {what} at every fifth epoch (above at all but {but})")


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
    ("sentiment", f"`variational_lstm` ran its {epochs(GAL_SPLIT)} epochs", "Gal split epochs"),
    ("sentiment", f"is {fifth_epochs_above(GAL_SPLIT, KERAS)}% above the same preset's "
                  "chunk-shuffled run at every fifth epoch", "Gal split vs chunks"),
    ("sentiment", f"150: {at_epoch(GAL_SPLIT, 150):.4f} against {at_epoch(KERAS, 150):.4f})",
     150),
    ("sentiment", f"within {fifth_epochs_train_within(GAL_SPLIT, KERAS)}% of that run's",
     "Gal split training RMSE"),
    ("sentiment", f"ends at {final(GAL_SPLIT, 'test', 'rmse'):.4f}, MC "
                  f"{final(GAL_SPLIT, 'test_mc', 'rmse'):.4f} (lowest "
                  f"{lowest(GAL_SPLIT)[0]:.4f} at epoch {lowest(GAL_SPLIT)[1]}), against that "
                  f"run's {final(KERAS, 'test', 'rmse'):.4f} and MC "
                  f"{final(KERAS, 'test_mc', 'rmse'):.4f}", "Gal split ends"),
    ("sentiment", f"`no_dropout` ran its {epochs(GAL_NO_DROP)} epochs: it"
     if epochs(GAL_NO_DROP) == config(GAL_NO_DROP, "train.num_epochs")
     else f"`no_dropout`, after {epochs(GAL_NO_DROP)},", "no dropout Gal epochs"),
    ("sentiment", fifth_epochs_band(GAL_NO_DROP, NO_DROP, "its chunk-shuffled run"),
     "no dropout Gal vs chunks"),
    ("sentiment", f"lowest {lowest(GAL_NO_DROP)[0]:.4f} at epoch {lowest(GAL_NO_DROP)[1]}, "
                  f"against {lowest(NO_DROP)[0]:.4f} at epoch {lowest(NO_DROP)[1]}",
     "no dropout lows"),
    ("sentiment", f"`naive_dropout` ran its {epochs(GAL_NAIVE)} epochs", "naive Gal epochs"),
    ("sentiment", f"split ({at_epoch(GAL_NAIVE, 5):.4f} at epoch 5)", "naive at 5"),
    ("sentiment", f"(lowest {lowest(GAL_NAIVE)[0]:.4f} at epoch {lowest(GAL_NAIVE)[1]}, against "
                  f"{lowest(NAIVE)[0]:.4f} at epoch {lowest(NAIVE)[1]})", "naive lows"),
    ("sentiment", f"50), {fifth_epochs_above(GAL_NAIVE, NAIVE, last=235)}% above that run at "
                  f"every fifth epoch to 235 (at 240 that run jumps to "
                  f"{at_epoch(NAIVE, 240):.4f})", "naive vs chunks"),
    ("sentiment", f"({final(GAL_NAIVE, 'test', 'rmse'):.4f} at 250, MC "
                  f"{final(GAL_NAIVE, 'test_mc', 'rmse'):.4f}, against {at_epoch(NAIVE, 250):.4f} "
                  f"and MC {final(NAIVE, 'test_mc', 'rmse'):.4f})", "naive ends"),
    ("sentiment", f"(50: {at_epoch(GAL_NAIVE, 50):.4f} against {at_epoch(GAL_SPLIT, 50):.4f})",
     "naive vs variational"),
    ("sentiment", f"Every row but {COUNT_WORDS[len(GAL_ROWS)]} ran on the split", "Gal rows"),
    ("sentiment", f"The {COUNT_WORDS[len(GAL_ROWS)]} ran today's presets", "Gal rows, again"),
    ("sentiment", f"`variational_gru` ran {epochs(GAL_GRU)} of its preset's "
                  f"{config(CHUNK_GRU, 'train.num_epochs')} epochs"
     if epochs(GAL_GRU) == config(GAL_GRU, "train.num_epochs")
     else f"`variational_gru`, after {epochs(GAL_GRU)} of its", "GRU Gal epochs"),
    ("sentiment", fifth_epochs_band(GAL_GRU, CHUNK_GRU, "the chunk-shuffled GRU"),
     "GRU Gal vs chunks"),
    ("sentiment", f"(30: {at_epoch(GAL_GRU, 30):.4f} against {at_epoch(CHUNK_GRU, 30):.4f}; "
                  f"90: {at_epoch(GAL_GRU, 90):.4f} against {at_epoch(CHUNK_GRU, 90):.4f}; "
                  f"{epochs(GAL_GRU)}: {at_epoch(GAL_GRU, epochs(GAL_GRU)):.4f} against "
                  f"{at_epoch(CHUNK_GRU, epochs(GAL_GRU)):.4f})",
     "GRU Gal vs chunks at 30, 90 and its last"),
    ("sentiment", f"its training RMSE within {fifth_epochs_train_within(GAL_GRU, CHUNK_GRU)}% "
                  "of that run's", "GRU Gal training RMSE"),
    ("sentiment", f"(lowest {lowest(GAL_GRU)[0]:.4f} at epoch {lowest(GAL_GRU)[1]}, against "
                  f"{lowest(CHUNK_GRU)[0]:.4f} at epoch {lowest(CHUNK_GRU)[1]})", "GRU lows"),
    *([("sentiment", f"MC {final(GAL_GRU, 'test_mc', 'rmse'):.4f}", "GRU Gal MC")]
      if epochs(GAL_GRU) == config(GAL_GRU, "train.num_epochs") else []),
    ("sentiment", f"below the variational LSTM of this split at {below_count(GAL_GRU, GAL_SPLIT)}"
                  f" of the {min(epochs(GAL_GRU), epochs(GAL_SPLIT))} epochs",
     "GRU vs LSTM, Gal split"),
]


def test_the_variational_run_crosses_the_naive_one_as_the_note_says():
    """Naive dropout below at every epoch to the first the variational LSTM is below it,
    the variational LSTM below at the said count of epochs from there and at every epoch
    from the said one on (the Gal-split Cornell note)."""
    shared = range(1, min(epochs(GAL_NAIVE), epochs(GAL_SPLIT)) + 1)
    below = [n for n in shared if at_epoch(GAL_SPLIT, n) < at_epoch(GAL_NAIVE, n)]
    note = _text("sentiment")
    assert f"at every epoch to {below[0] - 1} (50:" in note
    assert (f"below it at {len(below)} of the epochs from {below[0]} on and at every epoch "
            f"from {below_from(GAL_SPLIT, GAL_NAIVE)} (250: {at_epoch(GAL_SPLIT, 250):.4f} "
            f"against {at_epoch(GAL_NAIVE, 250):.4f})") in note
    assert f"chunk-shuffled split ({below_from(KERAS, NAIVE)})" in note


def test_the_variational_run_crosses_the_one_without_dropout_as_the_note_says():
    """The variational LSTM first below the LSTM without dropout, below at the said count
    of their epochs and at every epoch from the said one (Gal's split), against the
    chunk-shuffled split's crossing (the Gal-split Cornell note)."""
    shared = range(1, min(epochs(GAL_NO_DROP), epochs(GAL_SPLIT)) + 1)
    below = [n for n in shared if at_epoch(GAL_SPLIT, n) < at_epoch(GAL_NO_DROP, n)]
    last = shared[-1]
    assert (f"The variational LSTM is first below it at epoch {below[0]}, below it at "
            f"{len(below)} of the {last} epochs and at every epoch from "
            f"{below_from(GAL_SPLIT, GAL_NO_DROP)} ({last}: {at_epoch(GAL_NO_DROP, last):.4f} "
            f"against {at_epoch(GAL_SPLIT, last):.4f}), where on the chunk-shuffled split it "
            f"is below at every epoch from {below_from(KERAS, NO_DROP)} on") in _text("sentiment")


# ptb_word: the small rows run twice, the medium rows against the paper and as Lua prints
TWINS = ("zaremba_small_2bias", "zaremba_small_xeon")
MEDIUM = ("zaremba_medium", "variational_medium", "variational_medium_untied")
# Zaremba's and Gal's run_valid divide the sum of PTB's 105 whole validation windows
# (T 35 over 20 streams of 73,760 / 20 tokens) by (3688 - 1) / 35, not by 105
LUA_WINDOWS = (73_760 // 20 - 1) / 35
LUA_SHARE = 105 / LUA_WINDOWS


def lua_printed(run: str) -> float:
    """The validation perplexity the papers' code would print for the run."""
    return final(run, "valid", "ppl") ** LUA_SHARE


PTB_WORD = [
    (f"both end at {span([final(r, 'test', 'ppl') for r in TWINS], '.1f')} test", "twins"),
    ("within {}% of the paper's".format(within(100 * max(  # every test split it gives
        abs(final(r, s, "ppl") / config(r, "paper." + s) - 1)
        for r in MEDIUM for s in ("test", "test_mc") if config(r, "paper." + s)))), "vs paper"),
    (f"Zaremba ({final('zaremba_medium', 'test', 'ppl'):.1f})", "Zaremba medium"),
    (f"variational ({final('variational_medium', 'test', 'ppl'):.1f} tied, "
     f"{final('variational_medium_untied', 'test', 'ppl'):.1f} untied)", "Gal medium"),
    (f"({final('variational_medium', 'test_mc', 'ppl'):.1f}, "
     f"{final('variational_medium_untied', 'test_mc', 'ppl'):.1f};", "Gal medium MC"),
    (f"{span([config(r, 'train.mc_samples') for r in MEDIUM[1:]])} samples", "MC samples"),
    (f"exp({LUA_SHARE:.5f} x the mean loss)", "Lua share (PTB's size)"),
    (f"divides the 105 windows' sum by {LUA_WINDOWS:.2f}", "Lua windows (PTB's size)"),
    (f"{span([100 * (1 - lua_printed(r) / final(r, 'valid', 'ppl')) for r in MEDIUM], '.1f')}"
     "% below the per-target perplexity", "Lua printing"),
    ("would read {:.1f}, {:.1f} and {:.1f}".format(*map(lua_printed, MEDIUM)), "as Lua prints"),
]

CHAR = ("baseline_char", "recurrent_dropout_char", "zoneout_char")
# the authors' zoneout char run as its log has it (results/reference), not a record here
(AUTHORS_CHAR,) = reference_curves.load("ptb_char")
LOWEST = AUTHORS_CHAR.lowest()


def over_authors(epoch: int) -> tuple[str, str]:
    """How far `zoneout_char` lies above the authors' curve after `epoch`, and its BPC."""
    ours = at_epoch("zoneout_char", epoch, "bpc", "valid")
    return pct(ours / AUTHORS_CHAR.at(epoch) - 1), f"{ours:.3f}"


PTB_CHAR = [
    (f"logged a validation BPC of {AUTHORS_CHAR.at(1):.3f} after epoch 1 and "
     f"{AUTHORS_CHAR.at(10):.3f} after 10, and its lowest, {LOWEST[1]:.3f}, at epoch "
     f"{LOWEST[0]} of {len(AUTHORS_CHAR.curve)}", "authors' curve"),
    ("`zoneout_char` is {} above that curve after epoch 1 ({}) and {} after 10 ({})".format(
        *over_authors(1), *over_authors(10)), "vs authors"),
    (f"after {span([epochs(r, 'valid') for r in CHAR])} of the presets' up to "
     f"{span([config(r, 'train.num_epochs') for r in CHAR])} epochs", "epochs"),
    (f"early after {span([config(r, 'train.early_stop_patience') for r in CHAR])} without",
     "patience"),
    (f"a {span([config(r, 'model.embed_size') for r in CHAR])}-wide embedding", "embedding"),
]

# Krueger et al.'s Table 2: every row, the CPU's first epochs, the authors' evaluation
ZONEOUT_ROWS = sorted(path.name for path in RUNS.glob("zoneout_word_*"))
CPU_ZONEOUT = "../evaluations/cpu_vs_h100/cpu_zoneout_3ep"
EVALUATED = ("zoneout", "recurrent_dropout")


def eval_ratio(row: str, split: str, metric: str) -> float:
    """`metric` of `split` over the deterministic validation perplexity of a checkpoint."""
    name = f"zoneout_word_eval_protocols/eval_{row}.json"
    return evaluation(name, split, metric) / evaluation(name, "valid", "ppl")


def authors_estimate(row: str) -> float:
    """The row's validation perplexity with one mask sample and the batch mean on top."""
    return (final(f"zoneout_word_{row}", "valid", "ppl") * eval_ratio(row, "valid_mc", "ppl")
            * eval_ratio(row, "valid", "ppl_batch_mean"))


ZONEOUT_WORD = [
    (f"The first {epochs(CPU_ZONEOUT, 'valid')} epochs of `zoneout`", "CPU epochs"),
    ("match the H100's within {}%".format(within(100 * max(
        abs(at_epoch(CPU_ZONEOUT, n, "ppl", "valid")
            / at_epoch("zoneout_word_zoneout", n, "ppl", "valid") - 1)
        for n in range(1, epochs(CPU_ZONEOUT, "valid") + 1)), 1)), "CPU vs H100"),
    ("({:.1f} / {:.1f} < {:.1f} / {:.1f} < {:.1f} / {:.1f})".format(*[
        final(f"zoneout_word_{row}{seed}", "valid", "ppl")
        for row in ("zoneout", "recurrent_dropout", "baseline") for seed in ("", "_seed1")]),
     "zoneout order"),
    ("every row is {}% better than the paper".format(span(
        [100 * (1 - final(r, "valid", "ppl") / config(r, "paper.valid")) for r in ZONEOUT_ROWS],
        ".0f")), "rows vs paper"),
    ("our {}-epoch checkpoints".format(span(
        [evaluation(f"zoneout_word_eval_protocols/eval_{row}.json", "checkpoint", "epoch")
         for row in EVALUATED])), "checkpoints"),
    ("adds {} (zoneout) and {} (recurrent dropout)".format(
        *[pct(eval_ratio(row, "valid_mc", "ppl") - 1, 0) for row in EVALUATED]), "one mask"),
    ("the batch mean {} and {}".format(
        *[pct(eval_ratio(row, "valid", "ppl_batch_mean") - 1) for row in EVALUATED]),
     "batch mean"),
    ("our {:.1f} and {:.1f} near {:.0f} and {:.0f}".format(
        *[final(f"zoneout_word_{row}", "valid", "ppl") for row in EVALUATED],
        *map(authors_estimate, EVALUATED)), "the authors' evaluation"),
]

# AWD-LSTM's recipe then (awd_small) and now against Gal's on the same 2x400 LSTM
AWD_THEN, AWD_NOW, GAL_SMALL = "awd_small", "awd_small_variable_windows", "variational_small"
AWD_DROPOUTS = ("variational.input", "dropout.rate", "variational.output",
                "variational.embedding")
AWD = [
    (f"for the same {span([epochs(r, 'valid') for r in (AWD_THEN, AWD_NOW, GAL_SMALL)])} "
     "epochs", "epochs"),
    (f"(weight drop {config(AWD_NOW, 'reg.weight_drop.rate'):g}, dropouts "
     + "/".join(f"{config(AWD_NOW, 'reg.' + key):g}" for key in AWD_DROPOUTS)
     + f", AR/TAR, lr {config(AWD_NOW, 'train.learning_rate'):g}, "
       f"T {config(AWD_NOW, 'data.seq_len')}, batch {config(AWD_NOW, 'data.batch_size')})",
     "recipe"),
    (f"Gal's (lr {config(GAL_SMALL, 'train.learning_rate'):g}, "
     f"T {config(GAL_SMALL, 'data.seq_len')})", "Gal's recipe"),
    (f"before {config(AWD_NOW, 'train.ntasgd_nonmono')} evaluations", "NT-ASGD"),
    (f"fixed windows of {config(AWD_THEN, 'data.seq_len')}, "
     f"U(+-{config(AWD_THEN, 'model.init_scale'):g})", "then"),
    ("{:.1f} / {:.1f} against {:.1f} / {:.1f} after {} epochs".format(
        *[final(run, split, "ppl") for run in (AWD_NOW, AWD_THEN) for split in ("valid", "test")],
        epochs(AWD_NOW, "valid")), "now vs then"),
    ("gives the {}%".format(span([100 * (1 - final(AWD_NOW, s, "ppl") / final(AWD_THEN, s, "ppl"))
                                  for s in ("valid", "test")], ".0f")), "the gain"),
]

# pMNIST: the old init's 12 epochs, today's presets on the H100 and the CPU
OLD_INIT = ("pmnist_baseline", "pmnist_zoneout")
NEW_INIT = ("pmnist_baseline_orthogonal", "pmnist_zoneout_orthogonal")
ON_CPU = ("pmnist_baseline_cpu", "pmnist_zoneout_cpu")
# today's presets toward their 150 epochs on the CPU, resumed across sittings
LONG = ("pmnist_baseline_150ep", "pmnist_recurrent_dropout_150ep", "pmnist_zoneout_150ep")


def valid_error(run: str, epoch: int | None = None) -> str:
    """Validation error after `epoch` (the run's last by default), as a percentage."""
    return pct(at_epoch(run, epoch or epochs(run, "valid"), "error", "valid"))


N_NEW = epochs(NEW_INIT[0], "valid")
PMNIST = [
    (f"`baseline` and `zoneout` ran {span([epochs(r, 'valid') for r in OLD_INIT])} epochs",
     "old init epochs"),
    (f"`batchnorm` ran {epochs('pmnist_batchnorm', 'valid')} on", "batchnorm epochs"),
    ("after {} epochs, validation error {} (baseline) and {} (zoneout) against {} and {} "
     "after {} epochs with the old init, which reached {} and {} only after {}".format(
         span([epochs(r, "valid") for r in NEW_INIT]),
         *[valid_error(r, N_NEW) for r in (*NEW_INIT, *OLD_INIT)], N_NEW,
         *map(valid_error, OLD_INIT), span([epochs(r, "valid") for r in OLD_INIT])),
     "init"),
    (f"The {span([epochs(r, 'valid') for r in ON_CPU])}-epoch rows", "CPU epochs"),
    ("validation error {} / {} (baseline) and {} / {} (zoneout) after epochs 1 / 2, against "
     "the H100 runs' {} / {} and {} / {}".format(
         *[valid_error(r, n) for r in (*ON_CPU, *NEW_INIT) for n in (1, 2)]), "CPU vs H100"),
    ("with {:,} training images held out for validation (the H100 rows' {:,})".format(
        config(LONG[0], "data.validation_size"), config(NEW_INIT[0], "data.validation_size")),
     "validation sizes"),
    ("After 5 epochs their validation error is {} (baseline), {} (recurrent dropout) and {} "
     "(zoneout)".format(*[valid_error(r, 5) for r in LONG]), "150-epoch rows at 5"),
    ("baseline's is {} after {} and zoneout's {} after {}".format(
        valid_error(LONG[0]), epochs(LONG[0], "valid"), valid_error(LONG[2]),
        epochs(LONG[2], "valid")), "150-epoch rows now"),
    (f"The {config(LONG[0], 'train.num_epochs')}-epoch rows (`runs/pmnist_*_150ep`)",
     "150-epoch budget"),
]

# IMDB: test error after every epoch, with and without variational dropout
IMDB_NO, IMDB_VAR = "imdb_baseline_15ep", "imdb_variational_15ep"
IMDB_RATES = ("embedding", "input", "recurrent", "output")
(NO_LOW, NO_LOW_AT), (VAR_LOW, VAR_LOW_AT) = lowest(IMDB_NO, "error"), lowest(IMDB_VAR, "error")
E_NO, E_VAR = epochs(IMDB_NO), epochs(IMDB_VAR)
IMDB = [
    ("embedding and LSTM {}".format(span(
        [config(IMDB_VAR, "model.embed_size"), *config(IMDB_VAR, "model.hidden_sizes")])), "sizes"),
    (f"batch {config(IMDB_VAR, 'data.batch_size')})", "batch"),
    (f"last {config(IMDB_VAR, 'data.seq_len')} word ids of the "
     f"{config(IMDB_VAR, 'data.vocab_size'):,} most frequent", "data"),
    (f"{span([E_NO, E_VAR])} epochs each", "epochs"),
    (f"best after its {({1: 'first'}).get(NO_LOW_AT, NO_LOW_AT)} epoch ({pct(NO_LOW, 2)})",
     "no dropout low"),
    (f"training error {pct(last_logged(IMDB_NO, E_NO, 'error'))} at epoch {E_NO}, "
     f"test {pct(at_epoch(IMDB_NO, E_NO, 'error'), 2)})", "no dropout end"),
    (f"({span([config(IMDB_VAR, 'reg.variational.' + k) for k in IMDB_RATES], 'g')} on the "
     "word types", "rates"),
    (f"({pct(last_logged(IMDB_VAR, E_VAR, 'error'))} with the dropout on, at epoch {E_VAR})",
     "variational training"),
    (f"{pct(VAR_LOW, 2)} at its best (epoch {VAR_LOW_AT}), "
     f"{pct(at_epoch(IMDB_VAR, E_VAR, 'error'), 2)} at {E_VAR}", "variational"),
    (f"MC dropout ({config(IMDB_VAR, 'train.mc_samples')} samples)", "MC samples"),
    (f"approximation here ({pct(final(IMDB_VAR, 'test_mc', 'error'), 2)})", "MC"),
]

# (note, what it must say, the number as the runs give it)
FACTS += [(note, said, what) for note, facts in {
    "ptb_word": PTB_WORD, "ptb_char": PTB_CHAR, "zoneout_word": ZONEOUT_WORD, "awd": AWD,
    "pmnist": PMNIST, "imdb": IMDB}.items() for said, what in facts]

@pytest.mark.parametrize(("task", "said", "what"), FACTS,
                         ids=[f"{t}-{w}-{s}" for t, s, w in FACTS])
def test_the_notes_quote_the_committed_runs(task, said, what):
    assert said in _text(task), f"the {task} notes should say {said!r} ({what})"


def test_the_char_runs_stopped_before_their_final_evaluation():
    assert "there is no final evaluation and no test number" in _text("ptb_char")
    assert not [e for run in CHAR for e in _events(run) if e.get("phase") == "final"]
