"""The benchmark's bookkeeping (timing medians, ratio tables), without timing anything real."""

import pathlib
import subprocess
import sys

import pytest

from experiments import bench
from experiments import bench_models as bm


def test_time_contenders_takes_medians_of_interleaved_rotated_rounds():
    """Every round runs every contender, starting one further along each time, with an
    untimed step at each switch: n + 1 calls per contender per round, n timed."""
    import itertools
    import time

    calls = []
    clock = itertools.count()

    def step(name):
        calls.append(name)
        next(clock)

    steps = {"a": lambda: step("a"), "b": lambda: step("b"), "c": lambda: step("c")}
    seconds = bench.time_contenders(steps, n=2, rounds=3)
    assert calls == (["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["b"] * 3 + ["c"] * 3 + ["a"] * 3
                     + ["c"] * 3 + ["a"] * 3 + ["b"] * 3)
    assert set(seconds) == {"a", "b", "c"} and all(s >= 0 for s in seconds.values())
    # the untimed switch step: a contender slow only right after a switch times as fast
    first = {"slow": True}

    def after_switch():
        if first["slow"]:
            time.sleep(0.05)
        first["slow"] = False

    def other():
        first["slow"] = True

    timed = bench.time_contenders({"x": after_switch, "y": other}, n=1, rounds=2)
    assert timed["x"] < 0.02


def test_markdown_ratios():
    results = {
        "info": {"cpus": 2, "machine": "x86_64", "backend": "cpu", "jax": "0", "torch": None,
                 "matmul_gflops": 10.0},
        "workloads": {"w": {
            "ours_none": {"seconds_per_step": 0.5, "tokens_per_s": 200.0},
            "ours_zoneout": {"seconds_per_step": 1.0, "tokens_per_s": 100.0},
            "flax": {"seconds_per_step": 1.0, "tokens_per_s": 100.0},
        }},
    }
    text = bench.markdown(results, "python -m experiments.bench")
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()
            if line.startswith("| ours") or line.startswith("| flax")}
    assert "| 2.00 | 1.00 |" in rows["ours_none"]  # x flax, x ours_none
    assert "| 1.00 | 0.50 |" in rows["ours_zoneout"]


def test_flops_per_step_counts_every_matmul_of_forward_and_backward():
    from experiments import bench_models as bm

    # LM, 2 layers of H 3 over embeddings of width 3, V 5, B 2, T 4 (8 tokens):
    # per token and layer x and h products 2*3*12 + 2*3*12 = 144; softmax 2*3*5 = 30.
    lm = dict(kind="lm", vocab=5, hidden=3, layers=2, batch=2, steps=4)
    assert bm.flops_per_step(lm) == 3 * 8 * (2 * 144 + 30)
    # Classifier over 1 feature: first layer 2*1*12 + 2*3*12 = 96 per step; head per sequence.
    seq = dict(kind="seq", classes=10, features=1, hidden=3, layers=1, batch=2, steps=4)
    assert bm.flops_per_step(seq) == 3 * (8 * 96 + 2 * 2 * 3 * 10)


def test_markdown_reports_gflops_and_both_matmul_ceilings():
    results = {
        "info": {"cpus": 2, "machine": "x86_64", "backend": "cpu", "jax": "0", "torch": "2",
                 "matmul_gflops": 80.0, "torch_matmul_gflops": 100.0},
        "workloads": {"w": {"ours_none": {"seconds_per_step": 0.5, "tokens_per_s": 200.0,
                                          "gflops": 42.25}}},
    }
    text = bench.markdown(results, "cmd")
    assert "80.0 GFLOP/s (1024x1024 through XLA), 100.0 GFLOP/s through PyTorch" in text
    assert "| ours_none | 200 | 500.0 | 42.2 |" in text


def test_markdown_reports_the_matmul_floor_and_the_ratios_it_bounds():
    """A step of 2 GFLOP at 100 GFLOP/s cannot beat 20 ms: a 60 ms peer bounds its ratio at 3x."""
    results = {
        "info": {"cpus": 2, "machine": "x86_64", "backend": "cpu", "jax": "0", "torch": "2",
                 "matmul_gflops": 100.0, "xla_flags": "--xla_x=1"},
        "workloads": {"w": {"ours_none": {"seconds_per_step": 0.03, "tokens_per_s": 200.0},
                            "torch_lstm": {"seconds_per_step": 0.06, "tokens_per_s": 100.0}}},
        "matmul_floor_ms": {"w": 20.0},
    }
    text = bench.markdown(results, "cmd")
    assert "matmul floor 20.0 ms/step" in text
    assert "1.50x ours_none" not in text and "3.00x torch_lstm" in text
    assert "XLA_FLAGS=`--xla_x=1`" in text


def test_mask_sampling_script_runs_and_reports_a_ratio():
    import pathlib
    import subprocess
    import sys

    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "mask_sampling.py"
    out = subprocess.run([sys.executable, str(script), "--size", "1001",
                          "--repeats", "1"], capture_output=True, text=True, check=True)
    platform = __import__("jax").default_backend()  # the script's, when run beside the tests
    assert f"1,001 draws on {platform}" in out.stdout and "x faster" in out.stdout


@pytest.mark.parametrize("contenders, message", [
    ("nope", "Unknown contenders ['nope']"),
    ("torch_lstm", "None of the contenders ['torch_lstm'] can run here"),
])
def test_bench_refuses_contenders_it_cannot_run(contenders, message):
    """An unknown contender, or only PyTorch peers without torch, is a usage error
    before anything is timed (it was a ValueError or a ZeroDivisionError)."""
    if message.startswith("None") and bm.torch_version() is not None:
        pytest.skip("torch is installed here")
    out = subprocess.run([sys.executable, "-m", "experiments.bench",
                          f"--contenders={contenders}", "--nomemory"],
                         capture_output=True, text=True, check=False,
                         cwd=pathlib.Path(__file__).resolve().parents[1])
    assert out.returncode == 1 and message in out.stderr


def test_keras_gru_projection_benchmark_checks_the_peer_and_prints_four_ratios(
        monkeypatch, capsys):
    """The benchmark's peer computes the same gradients (the script asserts it) and each
    mask form x backward pass prints a ratio."""
    from benchmarks import keras_gru_projection

    monkeypatch.setattr("sys.argv", ["keras_gru_projection", "--batch", "2", "--steps", "3",
                                     "--hidden", "4", "--rounds", "1"])
    keras_gru_projection.main()
    lines = [line for line in capsys.readouterr().out.splitlines() if "peer/ours" in line]
    assert [line.split()[:2] for line in lines] == [
        ["per-gate", "autodiff"], ["per-gate", "fused"], ["shared", "autodiff"],
        ["shared", "fused"]]
