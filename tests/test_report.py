"""experiments.report on synthetic workdirs: tables, gaps, unfinished runs, PNGs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from experiments import curves, provenance, report, report_notes


def _paper(source="", valid=None, test=None, test_mc=None):
    return {"source": source, "valid": valid, "test": test, "test_mc": test_mc}


def write_run(root: Path, name: str, task: str, preset: str, dataset: str, metric: str,
              num_epochs: int, curve: list[float], final: dict[str, float] | None,
              paper: dict, extra_args: str = "", carry_state=False,
              partial_line: bool = False) -> Path:
    """A workdir like experiments/main.py + train_and_evaluate write (steps_per_epoch 10)."""
    workdir = root / name
    workdir.mkdir(parents=True)
    command = (f"/repo/experiments/{task}.py --config={preset}{extra_args} "
               f"--workdir=runs/{name}")
    # the preset's whole config, as the binaries record it, with the run's own values
    module = __import__(f"experiments.configs.{task}", fromlist=["PRESETS"])
    config = json.loads(json.dumps(module.PRESETS[preset]().to_dict()))
    config.update(preset=preset, task="lm", paper=paper)
    config["data"]["dataset"] = dataset
    config["train"].update(num_epochs=num_epochs, max_steps=0, carry_state=carry_state)
    (workdir / "config.json").write_text(json.dumps(
        {"task": task, "command": command, "config": config}, indent=2))
    events, split = [], ("test" if dataset in ("cornell", "imdb") else "valid")
    for epoch, value in enumerate(curve):
        for k in (5, 10):
            events.append({"step": epoch * 10 + k, "epoch": epoch, "split": "train",
                           metric: value * 0.9, "loss": 1.0, "wall_time": 0.0})
        events.append({"step": epoch * 10 + 10, "epoch": epoch, "split": split,
                       metric: value, "loss": 1.0, "phase": "epoch_end", "wall_time": 0.0})
    for s, value in (final or {}).items():
        events.append({"step": len(curve) * 10, "epoch": len(curve), "split": s,
                       metric: value, "phase": "final", "wall_time": 0.0})
    text = "".join(json.dumps(e) + "\n" for e in events)
    if partial_line:
        text += '{"step": 99, "epoch": 3, "spl'  # a live run mid-write
    (workdir / "metrics.jsonl").write_text(text)
    return workdir


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    runs = tmp / "runs"
    write_run(runs, "zs", "ptb", "zaremba_small", "ptb_word", "ppl", 3,
              [200.0, 150.0, 125.0], {"valid": 121.0, "test": 115.0},
              _paper("Zaremba et al. 2014, Table 1 (small)", valid=120.7, test=114.5),
              carry_state=True)
    write_run(runs, "vm", "ptb", "variational_medium", "ptb_word", "ppl", 39,
              [180.0, 140.0, 110.0], None,
              _paper("Gal", valid=81.9, test=79.7, test_mc=78.6), partial_line=True,
              extra_args=" --config.model.hidden_sizes=(8,8)")
    write_run(runs, "zc", "ptb", "zoneout_char", "ptb_char", "bpc", 2, [1.6, 1.5], None,
              _paper("Krueger char", valid=1.362))
    write_run(runs, "pm", "pmnist", "zoneout", "pmnist", "error", 2, [0.2, 0.15],
              {"valid": 0.12, "test": 0.11}, _paper("Krueger", test=0.102))
    write_run(runs / "sentiment", "var", "sentiment", "variational_lstm", "cornell", "rmse", 2,
              [0.19, 0.17], {"test": 0.168, "test_mc": 0.165}, _paper("Gal sentiment"))
    write_run(runs / "sentiment", "nod", "sentiment", "no_dropout", "cornell", "rmse", 2,
              [0.18, 0.19], {"test": 0.19, "test_mc": 0.19}, _paper("Gal sentiment"))
    write_run(runs, "awd", "ptb", "awd_small", "ptb_word", "ppl", 2, [300.0, 200.0],
              {"valid": 200.0, "test": 190.0}, _paper("Merity"), carry_state=True)
    out = tmp / "RESULTS.md"
    with pytest.MonkeyPatch.context() as patch:  # these stand for the committed runs
        patch.setattr(report, "COMMITTED_RUNS", str(runs))
        rc = report.main([f"--runs={runs}", f"--out={out}",
                          f"--plots={tmp / 'docs' / 'results'}"])
    assert rc == 0
    return tmp, out.read_text()


def _row(text: str, preset: str) -> list[str]:
    rows = [line for line in text.splitlines() if line.startswith(f"| `{preset}`")]
    assert len(rows) == 1, rows
    return [c.strip() for c in rows[0].strip("|").split(" | ")]


def test_relative_gap():
    assert report.relative_gap(121.0, 120.7) == pytest.approx(0.3 / 120.7)
    assert report.relative_gap(0.11, 0.102) == pytest.approx(0.008 / 0.102)
    assert report.relative_gap(None, 1.0) is None
    assert report.relative_gap(1.0, None) is None
    assert report.relative_gap(math.inf, 1.0) is None
    assert report.fmt_gap(0.3 / 120.7) == "+0.2%"
    assert report.fmt_gap(-0.05) == "-5.0%"


def test_copy_paste_command():
    assert (report.copy_paste_command("/w/experiments/ptb.py --config=tiny --workdir=/r/t", "ptb")
            == "python -m experiments.ptb --config=tiny --workdir=/r/t")
    assert (report.copy_paste_command(
        "/w/experiments/pmnist.py --config=zoneout --config.model.hidden_sizes=(8,)", "pmnist")
        == "python -m experiments.pmnist --config=zoneout '--config.model.hidden_sizes=(8,)'")
    assert (report.copy_paste_command("python -m experiments.sentiment --config=tiny", "x")
            == "python -m experiments.sentiment --config=tiny")
    # a command recorded quoted (provenance.relative_command) is quoted once, not twice
    recorded = provenance.relative_command(
        ["/w/experiments/pmnist.py", "--config=zoneout", "--config.model.hidden_sizes=(8,)"])
    assert recorded.endswith("'--config.model.hidden_sizes=(8,)'")
    assert report.copy_paste_command(recorded, "pmnist") == recorded
    # a time limit (experiments.reproduce adds one) would stop a slower machine's run early
    assert (report.copy_paste_command(
        "python -m experiments.ptb --config=zaremba_medium --workdir=runs/z "
        "--config.train.time_limit_s=671 --config.data.verify_checksums=False "
        "--config.train.checkpoint_every_s=60", "ptb")
        == "python -m experiments.ptb --config=zaremba_medium --workdir=runs/z")


def test_workdir_of_reads_the_last_workdir_flag_either_way():
    assert report.workdir_of("ptb.py --config=tiny --workdir=runs/a/") == "runs/a"
    assert report.workdir_of("ptb.py --workdir runs/a --workdir=runs/b") == "runs/b"
    assert report.workdir_of("ptb.py --config=tiny") is None


def test_rows_whose_commands_share_a_workdir_are_told_to_take_their_own(tmp_path):
    """Two rows' commands naming one workdir (in different sections): run one after the
    other, the second would resume the first. Each row whose record folder is not that
    workdir's name gets one of its own; a third row with its own workdir gets no note."""
    runs = tmp_path / "runs"
    for name in ("zaremba_small", "zaremba_small_xeon"):
        write_run(runs, name, "ptb", "zaremba_small", "ptb_word", "ppl", 1, [200.0],
                  {"valid": 190.0, "test": 180.0}, _paper("Zaremba"))
    write_run(runs, "pm_baseline", "pmnist", "baseline", "pmnist", "error", 1, [0.3],
              {"valid": 0.2, "test": 0.2}, _paper("Krueger"))
    for name in ("zaremba_small_xeon", "pm_baseline"):  # as if both ran in runs/zaremba_small
        config = tmp_path / "runs" / name / "config.json"
        config.write_text(config.read_text().replace(f"runs/{name}", "runs/zaremba_small"))
    text = report.build_report([str(runs)], str(tmp_path / "R.md"), None)

    commands = [line.strip("| ").split(" | ")[-1] for line in text.splitlines()
                if line.startswith("| `")]
    note = "another row's command names this workdir too: give it its own"
    assert len(commands) == 3 and sum(note in c for c in commands) == 2
    assert any(f"{note}, `--workdir=runs/zaremba_small_xeon`" in c for c in commands)
    assert any(f"{note}, `--workdir=runs/pm_baseline`" in c for c in commands)
    # alone in its report (the other rows not read), a row says nothing
    alone = report.build_report([str(runs / "pm_baseline")], str(tmp_path / "A.md"), None)
    assert "another row's command" not in alone
    assert report.shared_workdirs(report.load_runs(report.find_workdirs([str(runs)]))) == {
        "runs/zaremba_small"}


def test_finished_word_lm_row_has_ours_paper_gap_epochs_command(built):
    _, text = built
    assert "## Penn Treebank, word level" in text
    header = [line for line in text.splitlines() if line.startswith("| preset | valid ppl")][0]
    assert header.strip("|").split(" | ")[1:8] == [
        "valid ppl", "paper", "gap", "test ppl", "paper", "gap", "test ppl (MC)"]
    row = _row(text, "zaremba_small")
    assert row[1:7] == ["121.0", "120.7", "+0.2%", "115.0", "114.5", "+0.4%"]
    assert row[7] == "–"  # no MC for Zaremba
    assert row[-4] == "3/3"
    assert row[-3:-1] == ["–", "–"]  # a record without provenance: commit and device unknown
    # the record's 3 epochs are neither the preset's 13 nor in the command
    assert row[-1] == ("`python -m experiments.ptb --config=zaremba_small --workdir=runs/zs` "
                       "(to rebuild it today, add `--config.train.num_epochs=3`)")
    assert "batch 1 and carried state" in text


def test_a_run_the_engine_stopped_says_why(tmp_path):
    """A non-finite loss: the engine's error_message event ends the log; the report says
    "stopped" with it instead of "unfinished" (which reads as still running or killed)."""
    wd = write_run(tmp_path, "gru", "sentiment", "variational_gru", "cornell", "rmse", 250,
                   [0.19, 0.17], None, _paper("Gal sentiment"))
    message = ("The training loss became nan at step 25 (epoch 3); the run stopped and the "
               "last good checkpoint (step 20) is kept in runs/gru/checkpoints.")
    with open(wd / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 25, "epoch": 2, "split": "train", "objective": None,
                            "error_message": message}) + "\n")
    run = report.load_run(str(wd))
    assert not run.finished and run.stop_message() == message
    assert report.status(run) == f"2/250 **stopped**: {message}"
    assert report.load_run(str(write_run(tmp_path, "ok", "sentiment", "variational_gru",
                                         "cornell", "rmse", 250, [0.19], None,
                                         _paper("x")))).stop_message() is None


def test_a_final_evaluation_stopped_before_mc_dropout_says_so(tmp_path):
    """The engine records each final pass as it ends: a run stopped or killed during its
    MC pass has its deterministic test number, and the report says MC is missing."""
    wd = write_run(tmp_path, "vm", "ptb", "variational_medium", "ptb_word", "ppl", 2,
                   [120.0, 100.0], {"valid": 99.0, "test": 95.0}, _paper("Gal"),
                   carry_state=True)
    assert report.load_run(str(wd)).final_missing() == []  # an old engine's record
    _as_recorded_pass_by_pass(wd)
    run = report.load_run(str(wd))
    assert run.finished and run.final_missing() == ["test_mc"]
    assert report.status(run) == ("2/2, final evaluation **stopped** before test_mc (the "
                                  "same command runs the rest)")
    assert report.run_numbers(run)["test"] == (95.0, "")
    with open(wd / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 20, "epoch": 2, "split": "test_mc", "ppl": 94.0,
                            "phase": "final"}) + "\n")
    run = report.load_run(str(wd))
    assert run.final_missing() == [] and report.status(run) == "2/2"
    no_mc = write_run(tmp_path, "zs", "ptb", "zaremba_small", "ptb_word", "ppl", 2,
                      [120.0, 100.0], {"valid": 99.0, "test": 95.0}, _paper("Zaremba"))
    _as_recorded_pass_by_pass(no_mc)
    assert report.load_run(str(no_mc)).final_missing() == []  # its preset asks for no MC


def _as_recorded_pass_by_pass(workdir: Path) -> None:
    """Final events as today's engine writes them, each saying how it was computed."""
    events = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    for e in events:
        if e.get("phase") == "final":
            e["evaluated_as"] = "deterministic"
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def test_a_finished_run_resumed_with_a_larger_budget_is_unfinished_again(tmp_path):
    """The 100-epoch run's final events stay in the log when it is resumed to 250 epochs;
    once training passes them, the row is the resumed run's, not the old final model's."""
    wd = write_run(tmp_path, "gru", "sentiment", "variational_gru", "cornell", "rmse", 250,
                   [0.19, 0.17], {"test": 0.16}, _paper("Gal sentiment"))
    run = report.load_run(str(wd))
    assert run.finished and report.run_numbers(run)["test"] == (0.16, "")
    with open(wd / "metrics.jsonl", "a") as f:  # the resumed run's third epoch
        f.write(json.dumps({"step": 25, "epoch": 2, "split": "train", "rmse": 0.14}) + "\n")
        f.write(json.dumps({"step": 30, "epoch": 2, "split": "test", "rmse": 0.15,
                            "phase": "epoch_end"}) + "\n")
    run = report.load_run(str(wd))
    assert not run.finished and run.epochs_trained() == 3
    assert report.run_numbers(run)["test"] == (0.15, "epoch 3")
    assert report.status(run) == "3/250 **unfinished** (step 30)"
    with open(wd / "metrics.jsonl", "a") as f:  # and finished again
        f.write(json.dumps({"step": 30, "epoch": 3, "split": "test", "rmse": 0.145,
                            "phase": "final"}) + "\n")
    run = report.load_run(str(wd))
    assert run.finished and report.run_numbers(run)["test"] == (0.145, "")


def test_unfinished_run_shows_latest_validation(built):
    _, text = built
    row = _row(text, "variational_medium")
    assert row[1] == "110.0 (epoch 3)"
    assert row[2:4] == ["81.9", "+34.3%"]
    assert row[4] == "–" and row[5] == "79.7" and row[7] == "–" and row[8] == "78.6"
    assert row[-4].startswith("3/39 **unfinished**")
    assert "--config.model.hidden_sizes=(8,8)'" in row[-1]
    # Paper's row order within a table (PRESETS order), not alphabetical.
    assert text.index("`zaremba_small`") < text.index("`variational_medium`")


def test_pmnist_and_sentiment_tables(built):
    _, text = built
    row = _row(text, "zoneout")
    assert row[1:5] == ["12.00%", "11.00%", "10.20%", "+7.8%"]
    assert row[-4] == "2/2"
    assert "## Sentiment regression (Cornell scale data)" in text
    assert ("| preset | test RMSE (dropout approx.) | test RMSE (MC) | epochs | commit | device "
            "| command |") in text
    assert _row(text, "variational_lstm")[1:3] == ["0.1680", "0.1650"]
    assert _row(text, "no_dropout")[1:3] == ["0.1900", "0.1900"]
    assert "Sentiment classification (IMDB)" not in text  # no runs, no table


def test_pngs_written_and_linked(built):
    tmp, text = built
    for name in ("ptb_word", "pmnist", "cornell"):
        png = tmp / "docs" / "results" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 5000
        assert f"](docs/results/{name}.png)" in text


def test_run_curves_and_missing_dir(tmp_path, capsys):
    wd = write_run(tmp_path, "r", "ptb", "tiny", "ptb_word", "ppl", 5, [300.0, 200.0], None,
                   _paper())
    run = report.load_run(str(wd))
    assert run.epoch_curve() == [(1, 300.0), (2, 200.0)]
    assert run.train_curve()[0] == (0.5, 270.0)  # step 5 of 10 per epoch
    assert not run.finished and run.epochs_trained() == 2
    assert report.main([f"--runs={tmp_path / 'nope'}", f"--out={tmp_path / 'R.md'}"]) == 2
    assert "No run directory" in capsys.readouterr().err


def test_a_torn_record_is_skipped_with_a_warning_and_plots_go_beside_out(tmp_path, capsys):
    """One unreadable config.json among many runs is named and skipped (a JSONDecodeError
    ended the report); without --plots the PNGs go to docs/results beside --out (they
    replaced the repository's own); a --plots that is a file is one line."""
    runs = tmp_path / "runs"
    write_run(runs, "pm", "pmnist", "zoneout", "pmnist", "error", 2, [0.2, 0.15],
              {"valid": 0.12, "test": 0.11}, _paper("Krueger", test=0.102))
    (runs / "torn").mkdir()
    (runs / "torn" / "config.json").write_text('{"task": "ptb", "conf')
    out = tmp_path / "elsewhere" / "R.md"
    assert report.main([f"--runs={runs}", f"--out={out}"]) == 0
    err = capsys.readouterr().err
    assert f"warning: skipping {runs / 'torn'}: {runs / 'torn' / 'config.json'} is not a run " \
           "record (" in err
    assert "## Permuted sequential MNIST" in out.read_text()
    assert os.listdir(tmp_path / "elsewhere" / "docs" / "results") == ["pmnist.png"]
    assert "](docs/results/pmnist.png)" in out.read_text()
    plots_file = tmp_path / "plots.png"
    plots_file.write_text("")
    assert report.main([f"--runs={runs}", f"--out={out}", f"--plots={plots_file}"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --plots={plots_file} is a file, not a folder.")
    assert curves.main([f"--runs={runs}", "--epochs=1,2", "--split=valid"]) == 0
    assert "skipping" in capsys.readouterr().err


def test_train_curve_places_epochs_of_different_lengths():
    """Variable-length windows make epochs of different step counts: each training event
    is placed between the epoch ends around it, not at an average epoch length."""
    events = [{"step": s, "epoch": e, "split": "train", "ppl": 100.0 + s}
              for s, e in ((5, 0), (20, 1), (40, 2))]
    events += [{"step": s, "epoch": e, "split": "valid", "ppl": 1.0, "phase": "epoch_end"}
               for s, e in ((10, 0), (30, 1), (30, 1))]  # epoch 2 logged twice (a resume)
    config = {"data": {"dataset": "ptb_word"}}
    run = report.Run(workdir="r", task="ptb", command="", config=config, events=events)
    assert run.train_curve() == [(0.5, 105.0), (1.5, 120.0), (2.5, 140.0)]
    no_ends = report.Run(workdir="r", task="ptb", command="", config=config, events=events[:3])
    assert no_ends.train_curve() == [(1.0, 105.0), (2.0, 120.0), (3.0, 140.0)]


def test_report_group_gets_its_own_section_and_plot(built):
    from experiments.report_notes import GROUPS, NOTES

    tmp, text = built
    group = GROUPS["ptb"]["awd_small"]
    title = f"## Penn Treebank, word level: {group}"
    assert title in text
    section = text.split(title)[1].split("\n## ")[0]
    assert "| `awd_small` | 200.0 |" in section and "zaremba_small" not in section
    assert NOTES["ptb"][group] in section
    main = text.split("## Penn Treebank, word level\n")[1].split("\n## ")[0]
    assert "awd_small" not in main and "`zaremba_small`" in main
    png = tmp / "docs" / "results" / f"ptb_word_{report._slug(group)}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"](docs/results/{png.name})" in section


def test_main_section_note_from_the_report_notes(built):
    from experiments.report_notes import NOTES

    _, text = built
    section = text.split("## Permuted sequential MNIST\n")[1].split("\n## ")[0]
    assert NOTES["pmnist"][""] in section
    ptb_main = text.split("## Penn Treebank, word level\n")[1].split("\n## ")[0]
    assert "150 epochs" not in ptb_main


def test_main_section_notes_are_keyed_by_data_set(built):
    """One task, two data sets (PTB word and char): each main section gets its own note."""
    from experiments.report_notes import NOTES

    _, text = built
    notes = NOTES["ptb"]
    word = text.split("## Penn Treebank, word level\n")[1].split("\n## ")[0]
    char = text.split("## Penn Treebank, character level\n")[1].split("\n## ")[0]
    assert notes["ptb_word"] in word and notes["ptb_word"] not in char
    assert notes["ptb_char"] in char and notes["ptb_char"] not in word


def _early_stopped_run(final_extra: dict) -> report.Run:
    curve = [200.0, 150.0, 140.0, 145.0, 147.0]  # best at epoch 3, stopped at 5
    events = [{"step": 10 * (e + 1), "epoch": e, "split": "valid", "ppl": v,
               "phase": "epoch_end"} for e, v in enumerate(curve)]
    events += [{"step": 50, "epoch": 5, "split": s, "ppl": v, "phase": "final", **final_extra}
               for s, v in (("valid", 147.0), ("test", 139.0))]
    config = {"data": {"dataset": "ptb_word"}, "train": {"num_epochs": 100,
                                                         "early_stop_patience": 2}}
    return report.Run(workdir="w", task="ptb", command="", config=config, events=events)


def test_old_early_stopped_run_reports_its_best_validation_epoch():
    numbers = report.run_numbers(_early_stopped_run({}))
    assert numbers["valid"] == (140.0, "best, epoch 3")
    assert numbers["test"] == (139.0, "epoch 5 model")
    # runs whose final evaluation already read the best checkpoint are taken as they are
    numbers = report.run_numbers(_early_stopped_run({"eval_epoch": 3}))
    assert numbers["valid"] == (147.0, "") and numbers["test"] == (139.0, "")


def test_command_flags_for_fields_the_preset_changed_since_the_run():
    from experiments.configs import ptb

    config = json.loads(json.dumps(ptb.baseline().to_dict()))
    config["preset"] = "baseline"
    config["model"]["forget_bias"], config["model"]["hidden_sizes"] = 1.0, [128]
    del config["reg"]["recurrent_dropout"]["eval_scaling"]  # added later: unset in old runs
    run = report.Run(workdir="w", task="ptb", command="ptb.py --config=baseline",
                     config=config, events=[])
    assert report.flags_since_changed(run) == [
        "--config.model.forget_bias=1.0", "--config.model.hidden_sizes=(128,)"]
    run.command += " --config.model.hidden_sizes=(128,)"
    assert report.flags_since_changed(run) == ["--config.model.forget_bias=1.0"]
    # as provenance.relative_command records it: quoted for a shell
    run.command = "python -m experiments.ptb --config=baseline '--config.model.hidden_sizes=(128,)'"
    assert report.flags_since_changed(run) == ["--config.model.forget_bias=1.0"]
    run.task = "no_such_task"
    assert report.flags_since_changed(run) == []


def test_a_field_added_with_a_value_before_it_counts_when_the_record_lacks_it():
    """A sentiment run recorded before `model.head_init` existed ran Flax's head init
    (`VALUE_BEFORE_ADDED`): its rebuild asks for it, though the field is a string."""
    from experiments.configs import sentiment

    config = json.loads(json.dumps(sentiment.variational_lstm().to_dict()))
    config["preset"] = "variational_lstm"
    del config["model"]["head_init"]
    run = report.Run(workdir="w", task="sentiment", command="sentiment.py "
                     "--config=variational_lstm", config=config, events=[])
    assert report.flags_since_changed(run) == ["--config.model.head_init=lecun_normal"]
    config["model"]["head_init"] = "glorot_uniform"
    assert report.flags_since_changed(run) == []


def test_a_flat_reg_block_of_an_older_run_is_read_in_todays_layout():
    """Runs recorded before the reg block was keyed by constructor: the same settings give
    no rebuild flags, another setting gives today's flag for it."""
    from experiments.configs import ptb

    config = json.loads(json.dumps(ptb.zoneout().to_dict()))
    config["preset"] = "zoneout"
    config["reg"] = {"input": 0.0, "hidden": 0.0, "recurrent": 0.0, "output": 0.0,
                     "cell": 0.0, "tie": "step", "per_gate": False, "embedding": 0.0,
                     "update_dropout": 0.0, "update_tie": "step", "zoneout_cells": 0.0,
                     "zoneout_hiddens": 0.25, "zoneout_shared": False,
                     "stochastic_depth": 0.0, "weight_noise": 0.0, "norm_stabilizer": 0.0}
    run = report.Run(workdir="w", task="ptb", command="ptb.py --config=zoneout",
                     config=config, events=[])
    assert report.flags_since_changed(run) == []
    config["reg"]["zoneout_hiddens"], config["reg"]["weight_noise"] = 0.5, 0.1
    assert report.flags_since_changed(run) == ["--config.reg.weight_noise.std=0.1",
                                               "--config.reg.zoneout.hiddens=0.5"]


def test_rebuild_flags_leave_out_removed_neutral_and_unused_mc_fields():
    """Fields no command can set, result-neutral ones, and MC settings where MC was not
    run or the model draws no noise."""
    from experiments.configs import ptb

    config = json.loads(json.dumps(ptb.zaremba_small().to_dict()))
    config["preset"] = "zaremba_small"
    config["train"]["eval_batch_size"] = 0  # a field since removed: no command can set it
    config["train"]["time_limit_s"] = 671.0  # when it stopped: never changes the numbers
    config["train"]["checkpoint_every_s"] = 60.0  # nor how often it saved
    del config["data"]["verify_checksums"]  # a switch added later, result-neutral
    del config["train"]["mc_embedding_dropout"]  # MC settings of a run without MC
    config["model"]["forget_bias"] = 1.0
    run = report.Run(workdir="w", task="ptb", command="ptb.py --config=zaremba_small",
                     config=config, events=[])
    assert config["train"]["mc_samples"] == 0
    assert report.flags_since_changed(run) == ["--config.model.forget_bias=1.0"]
    config["train"]["mc_samples"] = 10
    # MC passes of a model without noise repeat the deterministic one: no MC flag
    assert report.flags_since_changed(run) == ["--config.model.forget_bias=1.0"]
    config["reg"]["variational"]["output"] = 0.5  # with noise the MC settings count again
    # MC passes kept word-type dropout before the switch existed: today's True rebuilds it
    assert report.flags_since_changed(run) == [
        "--config.model.forget_bias=1.0", "--config.reg.variational.output=0.5",
        "--config.train.mc_samples=10"]
    config["preset"] = "variational_medium"  # a preset whose MC turns it off
    assert "--config.train.mc_embedding_dropout=True" in report.flags_since_changed(run)


def test_intro_file_replaces_the_presets_section_notes(tmp_path, capsys):
    """`--intro F` (an ablation report) puts F under the header and drops the notes
    experiments/report_notes.py writes for RESULTS.md's runs; a missing F is a one-line
    error."""
    runs = tmp_path / "runs"
    write_run(runs, "pm", "pmnist", "zoneout", "pmnist", "error", 2, [0.2, 0.15],
              {"valid": 0.12, "test": 0.11}, _paper("Krueger", test=0.102))
    intro = tmp_path / "intro.md"
    intro.write_text("These runs vary the init.\n")
    out = tmp_path / "V.md"
    assert report.main([f"--runs={runs}", f"--out={out}", "--plots=", f"--intro={intro}"]) == 0
    text = out.read_text()
    assert text.index("These runs vary the init.") < text.index("## Permuted sequential MNIST")
    assert report_notes.NOTES["pmnist"][""] not in text
    assert report.main([f"--runs={runs}", f"--out={out}", f"--intro={tmp_path / 'no.md'}"]) == 2
    assert "no.md" in capsys.readouterr().err


def test_section_notes_only_in_a_report_of_the_committed_runs(tmp_path, monkeypatch):
    """report_notes describes results/runs: a report of other runs (a user's own) leaves
    the notes out, one of committed runs keeps them, and a mix leaves them out."""
    committed, own = tmp_path / "results" / "runs", tmp_path / "runs"
    for root in (committed, own):
        write_run(root, "pm", "pmnist", "zoneout", "pmnist", "error", 2, [0.2, 0.15],
                  {"valid": 0.12, "test": 0.11}, _paper("Krueger", test=0.102))
    monkeypatch.setattr(report, "COMMITTED_RUNS", str(committed))
    note = report_notes.NOTES["pmnist"][""]
    assert note not in report.build_report([str(own)], str(tmp_path / "own.md"), None)
    assert note in report.build_report([str(committed)], str(tmp_path / "ours.md"), None)
    assert note not in report.build_report([str(committed), str(own)],
                                           str(tmp_path / "mixed.md"), None)


def test_the_committed_runs_folder_is_the_repositorys():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert report.COMMITTED_RUNS == os.path.join(root, "results", "runs")
    assert report._is_committed_run(os.path.join(root, "results", "runs", "x"))
    assert not report._is_committed_run(os.path.join(root, "runs", "x"))


def test_curves_compare_runs_at_equal_epochs(capsys):
    """`python -m experiments.curves`: each run's epoch-end test metric after the given
    epochs (committed runs), a dash where a run has none, its lowest value; bad input is
    one line on stderr."""
    from experiments import curves

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "results", "runs")
    runs = ",".join(os.path.join(root, name) for name in (
        "sentiment_variational_lstm_keras_100ep", "sentiment_variational_gru_250ep"))
    assert curves.main(["--runs", runs, "--epochs", "25,100"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["sentiment_variational_lstm_keras_100ep", "0.1631", "0.1516"]
    assert lines[2].split()[:3] == ["sentiment_variational_gru_250ep", "0.1436", "–"]
    assert lines[2].split()[3:] == ["0.1391", "(74)"]
    for bad in ("ten", "0", "25,-3", ","):  # the last three gave tables of dashes
        assert curves.main(["--runs", runs, "--epochs", bad]) == 2
        assert capsys.readouterr().err == ("error: --epochs must be comma-separated whole "
                                           f"numbers >= 1, got {bad!r}.\n")
    assert curves.main(["--runs", "no/such/run", "--epochs", "1"]) == 2
    capsys.readouterr()
    assert curves.main(["--runs", runs, "--split", "tset", "--epochs", "25"]) == 2
    out = capsys.readouterr()
    assert out.out == ""  # not a table of dashes, as if the runs had no evaluations then
    assert out.err == ("error: None of the runs has epoch-end evaluations of split 'tset'; "
                       "they have: test.\n")


def test_plots_put_todays_presets_and_earlier_versions_in_panels_of_their_own(tmp_path):
    """A run whose record equals today's preset goes in the first panel, one that needs
    rebuild flags (its config differs in a field its command did not set) in the second;
    a section of one kind is one panel, and the PNG is drawn either way."""
    from experiments import report_plots

    epochs = 13  # zaremba_small's own budget: nothing to rebuild
    today = report.load_run(str(write_run(
        tmp_path, "today", "ptb", "zaremba_small", "ptb_word", "ppl", epochs,
        [200.0, 150.0], None, _paper(), carry_state=True)))
    older = report.load_run(str(write_run(
        tmp_path, "older", "ptb", "zaremba_small", "ptb_word", "ppl", epochs,
        [210.0, 160.0], None, _paper(), carry_state=False)))
    assert report.flags_since_changed(today) == []
    assert report.flags_since_changed(older) == ["--config.train.carry_state=False"]
    assert report_plots.panels([older, today]) == [(report_plots.TODAY, [today]),
                                                   (report_plots.EARLIER, [older])]
    assert report_plots.panels([today]) == [(report_plots.TODAY, [today])]
    assert report_plots.panels([older]) == [(report_plots.EARLIER, [older])]
    for runs in ([today, older], [older]):
        png = report_plots.plot_category(runs, "ptb_word", str(tmp_path / "p.png"))
        assert png and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
