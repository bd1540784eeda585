"""experiments.curves: rows that name their runs apart, and no table where there is
nothing to compare."""

from __future__ import annotations

import json

from experiments import curves


def _run(workdir, dataset: str, metric: str, curve: list[float]) -> None:
    """A workdir as the binaries leave it: a record and epoch-end validation events."""
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(
        {"task": "ptb", "config": {"data": {"dataset": dataset}, "train": {}}}))
    (workdir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": 10 * (epoch + 1), "epoch": epoch, "split": "valid",
                    "phase": "epoch_end", "loss": 1.0, metric: value}) + "\n"
        for epoch, value in enumerate(curve)))


def _rows(capsys) -> list[list[str]]:
    return [line.split() for line in capsys.readouterr().out.splitlines()[1:]]


def test_runs_in_folders_of_the_same_name_are_told_apart(tmp_path, capsys):
    """A sweep's `a/wd` and `b/wd` were two rows named `wd`."""
    _run(tmp_path / "a" / "wd", "ptb_word", "ppl", [120.0, 110.0])
    _run(tmp_path / "b" / "wd", "ptb_word", "ppl", [130.0, 100.0])
    _run(tmp_path / "c" / "other", "ptb_word", "ppl", [140.0])
    assert curves.main([f"--runs={tmp_path}", "--epochs=1,2", "--split=valid"]) == 0
    assert _rows(capsys) == [
        [str(tmp_path / "a" / "wd"), "120.0", "110.0", "110.0", "(2)"],
        [str(tmp_path / "b" / "wd"), "130.0", "100.0", "100.0", "(2)"],
        ["other", "140.0", "–", "140.0", "(1)"]]


def test_runs_of_different_metrics_name_theirs(tmp_path, capsys):
    """A word model's perplexity and a character model's bpc were unlabeled numbers in
    one column."""
    _run(tmp_path / "words", "ptb_word", "ppl", [120.0])
    _run(tmp_path / "chars", "ptb_char", "bpc", [1.5])
    assert curves.main([f"--runs={tmp_path}", "--epochs=1", "--split=valid"]) == 0
    assert _rows(capsys) == [["chars", "(bpc)", "1.500", "1.500", "(1)"],
                             ["words", "(ppl)", "120.0", "120.0", "(1)"]]


def test_no_run_or_no_evaluation_is_one_line(tmp_path, capsys):
    """An empty folder (or `--runs=,`) printed an empty table, and runs without any
    epoch-end evaluation a table of dashes, both with status 0."""
    (tmp_path / "empty").mkdir()
    for runs in (str(tmp_path / "empty"), ","):
        assert curves.main([f"--runs={runs}", "--epochs=1"]) == 2
        out = capsys.readouterr()
        assert out.out == ""
        assert out.err == (f"error: No run under --runs={runs} (a run is a folder with a "
                           "readable config.json).\n")
    _run(tmp_path / "runs" / "fresh", "ptb_word", "ppl", [])
    _run(tmp_path / "runs" / "new", "ptb_word", "ppl", [])
    assert curves.main([f"--runs={tmp_path / 'runs'}", "--epochs=1"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == "error: None of the runs (fresh, new) has an epoch-end evaluation yet.\n"


def test_a_diverged_perplexity_keeps_to_its_column():
    from experiments.report_runs import fmt_value

    assert fmt_value(82.94, "ppl") == "82.9"
    assert fmt_value(5e85, "ppl") == "5e+85"  # 86 digits ran the table's columns together
    assert fmt_value(float("inf"), "ppl") == "inf" and fmt_value(None, "ppl") == "–"
