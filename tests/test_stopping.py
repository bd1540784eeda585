"""The stop rules of a run (`train.stopping.RunStop`) and the multi-process helpers
they rest on, as one process sees them (tests/test_multihost_stop.py runs several)."""

from __future__ import annotations

import os
import signal
import types

import pytest

from rnnreg_jax.train import mesh as mesh_lib
from rnnreg_jax.train.stopping import RunStop


@pytest.fixture
def rules():
    made = []

    def make(*args):
        made.append(RunStop(*args))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_the_time_limit_stops_training_and_is_the_reason(rules, monkeypatch):
    from rnnreg_jax.train import stopping

    now = [1000.0]  # a clock of the test's own: a loaded machine may stall for 50 ms
    monkeypatch.setattr(stopping, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    r = rules(0.05, 10, 8)
    assert not r.in_training(1)
    now[0] += 0.049
    assert not r.in_training(1)
    now[0] += 0.002
    assert r.in_training(1)  # one process: at any step, not only log steps
    assert r.reason() == "the time limit (0.05 s)"


def test_sigterm_is_the_reason_whatever_the_time_limit(rules):
    r = rules(0.0, 10, 8)
    assert not r.in_training(3) and not r.between_passes()
    os.kill(os.getpid(), signal.SIGTERM)
    assert r.in_training(3) and r.between_passes()
    assert r.reason() == "SIGTERM"


def test_sigterm_handler_is_put_back_on_close():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    r = RunStop(None, 1, 8)
    assert all(signal.getsignal(s) is not h for s, h in before.items())
    r.close()
    assert all(signal.getsignal(s) is h for s, h in before.items())


def test_ctrl_c_stops_like_sigterm_and_a_second_one_aborts(rules, capsys):
    """A first Ctrl-C sets the flag (saved and stopped at the next step, reason SIGINT)
    instead of a KeyboardInterrupt wherever it fell; a second one raises at once."""
    r = rules(None, 10, 8)
    os.kill(os.getpid(), signal.SIGINT)
    assert r.in_training(3) and r.between_passes()
    assert r.reason() == "SIGINT"
    assert "Ctrl-C again aborts" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)  # a later SIGTERM keeps the first reason
    assert r.reason() == "SIGINT"


def test_evaluation_stops_on_sigterm_only_within_the_context(rules):
    class Ev:
        should_stop = None

    r, ev = rules(None, 1, 8), Ev()
    with r.passes_stop_on_sigterm(ev):
        assert ev.should_stop() is False
        os.kill(os.getpid(), signal.SIGTERM)
        assert ev.should_stop() is True
    assert ev.should_stop is None


def test_an_agreed_check_asks_every_nth_call_only():
    asked = []
    check = mesh_lib.agreed_every(3, lambda: asked.append(1) or True)
    assert [check() for _ in range(7)] == [False, False, True, False, False, True, False]
    assert len(asked) == 2  # the flag is read (and the collective made) at calls 3 and 6


def test_one_process_reads_for_itself():
    assert mesh_lib.from_first_process(lambda: {"a": [1.5, 2]}) == {"a": [1.5, 2]}
    assert mesh_lib.on_any_process(True) and not mesh_lib.on_any_process(False)
    assert mesh_lib.on_any_process_each([True, False]).tolist() == [True, False]


def test_several_processes_decide_at_log_steps_and_epoch_ends(rules, monkeypatch):
    asked = []
    monkeypatch.setattr(mesh_lib, "on_any_process", lambda flag: asked.append(flag) or flag)
    r = rules(None, 4, 8)
    r.multihost = True  # as with several processes: the decision is a collective
    os.kill(os.getpid(), signal.SIGTERM)
    assert not r.in_training(3) and not asked  # no collective between log steps
    assert r.in_training(4) and r.in_training(3, epoch_end=True)
    assert asked == [True, True]
