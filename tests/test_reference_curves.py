"""The authors' learning curves in results/reference: what the docs and notes quote of
them, their checks, and their place in the report's plots."""

from __future__ import annotations

import json

import pytest

from experiments import reference_curves, report
from experiments.configs import ptb
from experiments.report_runs import CATEGORIES


def test_the_zoneout_char_record_holds_what_the_docs_quote():
    (ref,) = reference_curves.load("ptb_char")
    assert ref.citation == ("teganmaharaj/zoneout drop_prob_cells=0.5_drop_prob_states="
                            "0.95.4/log.txt (07a3ef2)")
    assert (ref.preset, ref.split, ref.metric) == ("zoneout_char", "valid", "bpc")
    assert CATEGORIES[ref.dataset]["metric"] == ref.metric
    # the preset it is drawn beside has the run's settings (its exp_params.txt)
    preset = ptb.zoneout_char()
    assert (preset.reg.zoneout.cells, preset.reg.zoneout.hiddens) == (0.5, 0.05)
    assert preset.model.hidden_sizes == (1000,) and preset.data.batch_size == 32
    assert (preset.data.seq_len, preset.train.optimizer, preset.train.learning_rate) == (
        100, "adam", 0.002)
    # docs/FIDELITY.md and the report's char note
    assert [e for e, _ in ref.curve] == list(range(1, 111))
    assert (ref.at(1), ref.at(10), ref.at(20), ref.at(50)) == (
        1.733314, 1.43762, 1.402312, 1.372785)
    assert ref.lowest() == (107, 1.364422)
    late = [v for e, v in ref.curve if e >= 76]  # "within 1.364-1.368" from epoch 76
    assert (round(min(late), 3), round(max(late), 3)) == (1.364, 1.368)
    with pytest.raises(ValueError, match=r"logs epochs 1-110, not 111\."):
        ref.at(111)
    assert ref.until(3) == ref.curve[:3] and ref.until(0) == ()


@pytest.mark.parametrize("record,message", [
    ({"label": "x"}, "lacks ['dataset', 'preset', 'split', 'metric', 'source', 'curve']."),
    ([], "lacks ['label',"),
    (dict(label="x", dataset="d", preset="p", split="valid", metric="bpc", source={},
          curve=[[2, 1.0], [1, 2.0]]), "its epochs must rise from 1 or later, each once"),
    (dict(label="x", dataset="d", preset="p", split="valid", metric="bpc", source={},
          curve=[]), "its epochs must rise"),
    (dict(label="x", dataset="d", preset="p", split="valid", metric="bpc", source={},
          curve=[[1], [2, "x"]]), "its curve must be [epoch, value] pairs, got [[1], [2,"),
])
def test_a_malformed_record_is_one_sentence(tmp_path, record, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=f"^Reference curve {path}"):
        reference_curves.load(directory=str(tmp_path))
    with pytest.raises(ValueError) as err:
        reference_curves.read(str(path))
    assert message in str(err.value)
    path.write_text("{")
    with pytest.raises(ValueError, match="cannot be read"):
        reference_curves.read(str(path))
    assert reference_curves.load(directory=str(tmp_path / "none")) == []


def _char_run(preset: str, epochs: int) -> report.Run:
    events = [{"step": 10 * (e + 1), "epoch": e, "split": "valid", "bpc": 2.0 - 0.1 * e,
               "phase": "epoch_end"} for e in range(epochs)]
    config = {"preset": preset, "data": {"dataset": "ptb_char"}}
    return report.Run(workdir=preset, task="ptb", command="", config=config, events=events)


def test_the_plot_draws_the_curve_beside_its_preset_up_to_the_runs_last_epoch(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments import report_plots

    (ref,) = reference_curves.load("ptb_char")
    _, ax = plt.subplots()
    assert report_plots._plot_references(ax, [_char_run("zoneout_char", 4),
                                              _char_run("baseline_char", 9)], [ref])
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [1, 2, 3, 4]  # zoneout_char's epochs, not baseline's
    assert list(line.get_ydata()) == [v for _, v in ref.curve[:4]]
    assert line.get_label() == "authors' zoneout run (first 4 of 110 epochs logged)"
    _, ax = plt.subplots()
    assert not report_plots._plot_references(ax, [_char_run("baseline_char", 9)], [ref])
    assert not ax.get_lines()
    plt.close("all")
    png = report_plots.plot_category([_char_run("zoneout_char", 3)], "ptb_char",
                                     str(tmp_path / "c.png"))
    assert png and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
