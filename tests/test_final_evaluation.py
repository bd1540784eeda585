"""The final evaluation records each pass as it ends: a run killed or sent SIGTERM
part-way keeps the passes done, and the same command runs only the rest."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import train_helpers as th

from rnnreg_jax import regularizers, train
from rnnreg_jax.train.evaluation import evaluate_all, final_passes
from rnnreg_jax.train.evaluator import Evaluator
from rnnreg_jax.train.logging import read_metrics

th.enable_compilation_cache()


VALID = "2 batches of 2x4, state carried"  # what _task's passes read
TEST = "3 batches of 1x4, state carried"


def _task():
    return train.Task(
        model=th.tiny_lm(hidden=8, reg=regularizers.zaremba(0.3)), kind="lm",
        train=th.LMSource(batch=4, steps=4, num_windows=3),
        evals={"valid": th.LMSource(batch=2, steps=4, num_windows=2, seed=1),
               "test": th.LMSource(batch=1, steps=4, num_windows=3, seed=2)},
        carry_state=True, test_protocol=True)


def _config(mc_samples=3):
    c = train.default_train_config()
    c.num_epochs, c.log_every_steps, c.mc_samples = 2, 3, mc_samples
    return c


def _finals(workdir):
    return [(e["split"], e.get("evaluated_as")) for e in read_metrics(workdir)
            if e.get("phase") == "final"]


class _Passes:
    """Counts the Evaluator's passes; `fail_mc` makes MC die like a killed process, and
    `sigterm_after` sends the process SIGTERM at the end of the pass with that label."""

    def __init__(self, monkeypatch, fail_mc=False, sigterm_after=None):
        self.labels: list[str] = []
        evaluate, evaluate_mc = Evaluator.evaluate, Evaluator.evaluate_mc

        def det(ev, *args, label="", **kwargs):
            self.labels.append(label)
            out = evaluate(ev, *args, label=label, **kwargs)
            if sigterm_after and label == sigterm_after:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        def mc(ev, *args, label="", **kwargs):
            self.labels.append(label)
            if fail_mc:
                raise KeyboardInterrupt("killed during the MC pass")
            return evaluate_mc(ev, *args, label=label, **kwargs)

        monkeypatch.setattr(Evaluator, "evaluate", det)
        monkeypatch.setattr(Evaluator, "evaluate_mc", mc)

    def final(self):
        return [label.removeprefix("final evaluation, ").split(" (")[0]
                for label in self.labels if label.startswith("final evaluation")]


@pytest.mark.slow
def test_a_run_killed_during_mc_keeps_its_deterministic_results_and_resumes_with_mc(
        tmp_path, monkeypatch):
    whole = train.train_and_evaluate(_task(), _config(), str(tmp_path / "whole"))
    workdir = str(tmp_path / "killed")
    with monkeypatch.context() as m:
        _Passes(m, fail_mc=True)
        with pytest.raises(KeyboardInterrupt):
            train.train_and_evaluate(_task(), _config(), workdir)
    assert _finals(workdir) == [("valid", f"deterministic, {VALID}"),
                                ("test", f"deterministic, {TEST}")]
    with monkeypatch.context() as m:
        passes = _Passes(m)
        resumed = train.train_and_evaluate(_task(), _config(), workdir)
    assert passes.final() == ["test with MC dropout"]  # valid and test not run again
    for key in ("valid/loss", "test/loss", "test_mc/loss", "step", "eval_epoch"):
        assert resumed[key] == whole[key], key
    # the last training log, as the run never killed reports it (no step ran since)
    timing = ("train/tokens_per_sec", "train/steps_per_sec")
    assert {k: v for k, v in resumed.items() if k.startswith("train/") and k not in timing} == {
        k: v for k, v in whole.items() if k.startswith("train/") and k not in timing}
    assert "train/loss" in resumed
    assert [s for s, _ in _finals(workdir)] == ["valid", "test", "test_mc"]


def test_sigterm_during_the_final_evaluation_stops_it_between_passes(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    with monkeypatch.context() as m:
        passes = _Passes(m, sigterm_after="final evaluation, valid")
        stopped = train.train_and_evaluate(_task(), _config(), workdir)
    assert stopped["stopped"] and passes.final() == ["valid"]
    events = read_metrics(workdir)
    assert events[-1]["split"] == "stopped" and events[-1]["reason"] == "SIGTERM"
    with monkeypatch.context() as m:
        passes = _Passes(m)
        done = train.train_and_evaluate(_task(), _config(), workdir)
    assert passes.final() == ["test", "test with MC dropout"]
    assert "test_mc/ppl" in done and "valid/ppl" in done


def test_a_pass_asked_with_other_settings_runs_again(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    first = train.train_and_evaluate(_task(), _config(mc_samples=3), workdir)
    with monkeypatch.context() as m:
        passes = _Passes(m)
        second = train.train_and_evaluate(_task(), _config(mc_samples=5), workdir)
    assert passes.final() == ["test with MC dropout"]
    assert second["test/loss"] == first["test/loss"]
    assert second["test_mc/loss"] != first["test_mc/loss"]
    signatures = [sig for split, sig in _finals(workdir) if split == "test_mc"]
    assert signatures == [
        f"MC dropout: 3 samples, masks per window, word-type dropout on, seed 0, {TEST}",
        f"MC dropout: 5 samples, masks per window, word-type dropout on, seed 0, {TEST}"]


def test_a_split_read_otherwise_is_evaluated_again(tmp_path, monkeypatch):
    """Validation read with its state reset instead of carried (or in other batches) is
    another pass: its old record is not reused."""
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(_task(), _config(), workdir)
    reset = dataclasses.replace(_task(), eval_carry_state=False)
    with monkeypatch.context() as m:
        passes = _Passes(m)
        train.train_and_evaluate(reset, _config(), workdir)
    assert passes.final() == ["valid"]
    assert _finals(workdir)[-1] == ("valid", "deterministic, 2 batches of 2x4, state reset")


def test_final_passes_name_each_pass_and_what_its_numbers_depend_on():
    passes = final_passes(_task(), _config(mc_samples=4))
    assert [(p.name, p.split, p.mc_samples, p.carry_state) for p in passes] == [
        ("valid", "valid", 0, None), ("test", "test", 0, True), ("test_mc", "test", 4, True)]
    assert [p.name for p in final_passes(_task(), _config(mc_samples=0))] == ["valid", "test"]
    custom = train.Task(model=th.tiny_lm(hidden=8), kind="lm", train=th.LMSource(),
                        evals={"valid": th.LMSource()}, test_protocol=lambda p, e: {"x": 1.0})
    assert [(p.name, p.signature) for p in final_passes(custom, _config())] == [
        ("valid", "deterministic, 6 batches of 8x5, state reset"), ("test_protocol", None)]


def test_evaluate_all_returns_done_passes_as_given_and_stops_when_asked():
    task = _task()
    mesh = train.make_mesh()
    config = _config()
    state = train.init_state(task, config, mesh, train.make_optimizer(config),
                             next(iter(task.train.iterate(0))))
    ev = Evaluator(task, mesh)
    heard: list[str] = []
    out = evaluate_all(task, ev, state.params, {}, config, done={"valid": {"loss": -1.0}},
                       on_result=lambda name, metrics: heard.append(name),
                       should_stop=lambda: len(heard) == 1)
    assert out["valid"] == {"loss": -1.0} and list(out) == ["valid", "test"]
    assert heard == ["test"]


def test_a_torn_last_event_neither_breaks_the_resume_nor_the_events_after_it(
        tmp_path, monkeypatch):
    """A run killed mid-write leaves half an event without its newline: the restart reads
    the events around it and starts its own on a line of their own."""
    workdir = str(tmp_path / "run")
    first = train.train_and_evaluate(_task(), _config(), workdir)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 24, "epoch": 2, "spl')
    with monkeypatch.context() as m:
        passes = _Passes(m)
        again = train.train_and_evaluate(_task(), _config(), workdir)
    assert passes.final() == [] and again["test_mc/loss"] == first["test_mc/loss"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert lines.count('{"step": 24, "epoch": 2, "spl') == 1
    assert read_metrics(workdir)[-1]["split"] == "resume"


def test_sigterm_during_a_pass_ends_it_at_the_next_batch(tmp_path, monkeypatch):
    """A long MC pass need not run to its end (or to a SIGKILL): the single-process loop
    stops it after the batch in which SIGTERM came, and keeps what it had recorded."""
    evaluate_mc, check = Evaluator.evaluate_mc, Evaluator._check_stop
    batches: list[str] = []

    def mc_with_sigterm(ev, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return evaluate_mc(ev, *args, **kwargs)

    def counted(ev, label):
        batches.append(label)
        return check(ev, label)

    workdir = str(tmp_path / "run")
    with monkeypatch.context() as m:
        m.setattr(Evaluator, "evaluate_mc", mc_with_sigterm)
        m.setattr(Evaluator, "_check_stop", counted)
        stopped = train.train_and_evaluate(_task(), _config(), workdir)
    assert stopped["stopped"]
    assert [b for b in batches if "MC" in b] == ["final evaluation, test with MC dropout "
                                                 "(3 samples)"]  # 1 of its 3 batches
    assert [s for s, _ in _finals(workdir)] == ["valid", "test"]
    assert read_metrics(workdir)[-1]["reason"] == "SIGTERM"
    done = train.train_and_evaluate(_task(), _config(), workdir)
    assert "test_mc/loss" in done
