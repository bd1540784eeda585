"""The GPU crossover sweep of the Pallas recurrence (benchmarks/pallas_sweep.py): its
rule, its limits arithmetic, and a dry run in interpret mode on the CPU."""

from __future__ import annotations

import argparse
import json
import time

import jax.numpy as jnp
import pytest

from benchmarks import gpu_pallas_check, pallas_sweep
from rnnreg_jax.pallas import plan


def _entry(steps, hidden, batch, speedup=None):
    e = {"steps": steps, "hidden": hidden, "batch": batch}
    if speedup is not None:
        e["speedup"] = speedup
    return e


def test_the_rule_covers_the_most_points_all_won_at_every_batch():
    wins = {(784, 64): 3.0, (784, 128): 2.0, (784, 256): 1.2, (784, 512): 0.7,
            (100, 64): 1.5, (100, 128): 1.1, (100, 256): 0.9, (100, 512): 0.5,
            (20, 64): 0.8, (20, 128): 0.6, (20, 256): 0.5, (20, 512): 0.4}
    entries = [_entry(t, h, b, s) for (t, h), s in wins.items() for b in (32, 100)]
    # T >= 784 and H <= 256 covers 3 points; T >= 100 and H <= 128 covers 4
    assert pallas_sweep.suggest_rule(entries) == {"min_steps": 100, "max_hidden": 128,
                                                  "points": 4}
    lost_at_100 = entries + [_entry(100, 128, 100, 0.95)]  # one batch lost: not a win
    assert pallas_sweep.suggest_rule(lost_at_100) == {"min_steps": 784, "max_hidden": 256,
                                                      "points": 3}
    failed = [_entry(784, 64, 32)]  # an error (no speedup) is a loss
    assert pallas_sweep.suggest_rule(failed) is None
    assert pallas_sweep.suggest_rule([]) is None


def test_step_limits_for_pmnists_layer_on_hopper():
    layout = plan.make_plan("lstm", 100, 100, jnp.float32)  # padded 128, 7 programs
    rates = pallas_sweep.per_sm_rates("NVIDIA H200")
    out = pallas_sweep.step_limits(layout, forward_ms=2.0, steps=784, rates=rates,
                                   clock_ghz=2.0)
    assert out["programs"] == 7 and not out["resident"]
    assert out["w_h_bytes"] == 4 * 128 * 128 * 4
    assert out["step_flops_per_program"] == 2 * 16 * 128 * 4 * 128
    assert out["ns_per_step"] == pytest.approx(2e6 / 784)
    assert out["w_h_from_shared_ns"] == pytest.approx(262144 / 256)  # 128 B a clock, 2 GHz
    assert out["product_tf32_ns"] == pytest.approx(2097152 / 4096)
    assert out["product_fp32_ns"] == pytest.approx(2097152 / 512)
    unknown = pallas_sweep.step_limits(layout, 2.0, 784, pallas_sweep.per_sm_rates("cpu"),
                                       None)
    assert "product_tf32_ns" not in unknown and unknown["ns_per_step"] > 0
    assert pallas_sweep.per_sm_rates("NVIDIA H100 80GB HBM3") is pallas_sweep.HOPPER_PER_SM


@pytest.mark.slow
def test_the_sweep_dry_runs_on_the_cpu_and_saves_each_point(tmp_path):
    """`gpu_pallas_check --tiny --sweep_only`'s section in process: each grid point
    measured through both paths (Pallas in interpret mode), saved as it comes, with
    the rule it suggests so far; a deadline already past measures nothing."""
    report: dict = {}
    path = tmp_path / "pallas_check.json"

    def save():
        path.write_text(json.dumps(report, default=str))

    args = argparse.Namespace(tiny=True, steps=1, rounds=1, sweep_budget_s=600.0)
    gpu_pallas_check.run_sweep(report, save, args)
    entries = json.loads(path.read_text())["sweep"]["entries"]
    assert [(e["hidden"], e["steps"], e["batch"]) for e in entries] == [(6, 4, 3), (20, 4, 3)]
    for e in entries:
        for implementation in ("fused", "pallas"):
            assert e[implementation]["forward_ms"] > 0 and e[implementation]["train_ms"] > 0
        assert e["speedup"] > 0 and e["limits"]["programs"] == 1 and e["wall_s"] > 0
        assert e["limits"]["ns_per_step"] == e["pallas"]["kernel_forward_ms"] * 1e6 / 4
    assert pallas_sweep.sweep(deadline=time.monotonic() - 1) == []


def test_a_hidden_size_the_kernels_refuse_is_a_recorded_loss():
    entry = pallas_sweep.measure_point(plan.MAX_PADDED_HIDDEN + 1, batch=2, steps=3, calls=1,
                                       rounds=1)
    assert "hidden sizes up to" in entry["pallas"]["error"]
    assert entry["fused"]["train_ms"] > 0 and "speedup" not in entry
    assert pallas_sweep.suggest_rule([entry]) is None


@pytest.mark.parametrize("argv, message", [
    (["--sweep_budget_s=-5"], "--sweep_budget_s must be a number of seconds > 0, got -5."),
    (["--rounds=0"], "--steps and --rounds must be whole numbers >= 1."),
])
def test_bad_flags_are_one_line(monkeypatch, capsys, tmp_path, argv, message):
    """Refused before anything is measured or written (a negative budget swept nothing
    and wrote an empty report)."""
    monkeypatch.setattr("sys.argv", ["gpu_pallas_check.py", "--tiny", "--sweep_only",
                                     f"--out={tmp_path / 'out'}", *argv])
    with pytest.raises(SystemExit) as exit_:
        gpu_pallas_check.main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"gpu_pallas_check.py: error: {message}")
    assert not (tmp_path / "out").exists()
