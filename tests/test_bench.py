"""The benchmark's bookkeeping (timing medians, ratio tables), without timing anything real."""

import functools
import pathlib
import subprocess
import sys
import types

import pytest

from experiments import bench
from experiments import bench_models as bm


def test_time_contenders_takes_medians_of_interleaved_rotated_rounds(monkeypatch):
    """Every round runs every contender, starting one further along each time, with an
    untimed step at each switch: n + 1 calls per contender per round, n timed. A fake
    clock that only the steps advance makes the timings exact (no real clock's load)."""
    now = [0.0]
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    # Each contender's k-th call takes costs[k] seconds; calls 0, 3 and 6 are the
    # switches, whose 1000 s a timed switch would put in the median.
    costs = {"a": [1000, 1, 7, 1000, 2, 9, 1000, 3, 50],  # timed: median 5, mean 12
             "b": [1000, 4, 4, 1000, 1, 1, 1000, 1, 4],  # timed: median 2.5
             "c": [1000, 6, 6, 1000, 6, 6, 1000, 6, 6]}
    calls = []

    def step(name):
        now[0] += costs[name][calls.count(name)]
        calls.append(name)

    steps = {name: functools.partial(step, name) for name in costs}
    seconds = bench.time_contenders(steps, n=2, rounds=3)
    assert calls == (["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["b"] * 3 + ["c"] * 3 + ["a"] * 3
                     + ["c"] * 3 + ["a"] * 3 + ["b"] * 3)
    assert seconds == {"a": 5.0, "b": 2.5, "c": 6.0}


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
    ("", "--contenders is empty; choose from ['ours_none',"),
])
def test_bench_refuses_contenders_it_cannot_run(contenders, message):
    """An unknown contender, only PyTorch peers without torch, or none at all is one
    line and exit status 2 (as a bad flag is) before anything is timed (they were a
    ValueError or a ZeroDivisionError, and an empty list was blamed on torch)."""
    if message.startswith("None") and bm.torch_version() is not None:
        pytest.skip("torch is installed here")
    out = _run_bench(f"--contenders={contenders}", "--nomemory")
    assert out.returncode == 2 and out.stderr.startswith("error: ") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and out.stdout == ""


def _run_bench(*flags):
    """`experiments.bench` at its smallest, so that a flag it wrongly accepts costs
    one short run, not the whole benchmark."""
    return subprocess.run([sys.executable, "-m", "experiments.bench", "--workloads=ptb_small",
                           "--contenders=ours_none", "--steps=1", "--rounds=1", *flags],
                          capture_output=True, text=True, check=False,
                          cwd=pathlib.Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("flag, message", [
    ("--memory_workloads=nope", "Unknown memory workloads ['nope']; choose from "
                                "['ptb_small', 'ptb_medium', 'zoneout_word', 'pmnist']."),
    ("--json=/nonexistent_dir/b.json",
     "cannot write --json=/nonexistent_dir/b.json (its folder /nonexistent_dir does not "
     "exist)."),
])
def test_bench_refuses_bad_flags_before_measuring(flag, message):
    """A memory workload it does not know (measured nothing) or a JSON file in a missing
    folder (a FileNotFoundError after the whole run, the results lost) is one line and
    exit status 2 before the machine's matmul rate, the first thing it measures."""
    out = _run_bench("--memory", "--memory_workloads=ptb_small", flag)
    assert out.returncode == 2 and out.stderr == f"error: {message}\n" and out.stdout == ""


def test_bench_flags_problem_names_each_bad_flag(tmp_path):
    """Each refusal in one sentence; good flags and absent outputs pass."""
    ok = dict(workloads=["ptb_small"], contenders=["ours_none"], memory=True,
              memory_workloads=["ptb_small"], outputs={"json": None, "markdown": None})
    assert bench.flags_problem(**ok) is None
    assert bench.flags_problem(**dict(ok, outputs={"json": str(tmp_path / "b.json"),
                                                   "markdown": str(tmp_path / "b.md")})) is None
    cases = {
        "--workloads is empty": dict(workloads=[]),
        "--contenders is empty": dict(contenders=[]),
        "Unknown memory workloads ['nope']": dict(memory_workloads=["nope"]),
        "--memory with an empty --memory_workloads": dict(memory_workloads=[]),
        "--memory_workloads ['pmnist'] are not among --workloads ['ptb_small']":
            dict(memory_workloads=["pmnist"]),
        f"cannot write --json={tmp_path} (a directory).": dict(outputs={"json": str(tmp_path)}),
        "cannot write --markdown=/nonexistent_dir/b.md (its folder /nonexistent_dir does not "
        "exist).": dict(outputs={"json": None, "markdown": "/nonexistent_dir/b.md"}),
    }
    for message, change in cases.items():
        problem = bench.flags_problem(**dict(ok, **change))
        assert problem is not None and problem.startswith(message), (message, problem)
    # without --memory, a known memory workload that does not run is the default's case
    assert bench.flags_problem(**dict(ok, memory=False, memory_workloads=["pmnist"])) is None


@pytest.mark.slow
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


@pytest.mark.parametrize("module, argv, message", [
    ("lm_step_breakdown", ["--repeats", "0"], "--repeats must be at least 1, got 0"),
    ("mask_sampling", ["--repeats", "0"], "--repeats must be at least 1, got 0"),
    ("mask_sampling", ["--size", "-5"], "--size must be at least 1, got -5"),
    ("keras_gru_projection", ["--rounds", "0"], "--rounds must be at least 1, got 0"),
    ("keras_gru_projection", ["--batch", "0"], "--batch must be at least 1, got 0"),
    ("keras_gru_projection", ["--steps", "-1"], "--steps must be at least 1, got -1"),
    ("keras_gru_projection", ["--hidden", "0"], "--hidden must be at least 1, got 0"),
])
def test_benchmark_scripts_refuse_counts_below_one(module, argv, message, monkeypatch, capsys):
    """A repeat count or size below 1 is argparse's usage error (exit status 2) before
    anything is built or timed (it was a StatisticsError, `inf ms ... (nanx faster)` or
    a traceback from a negative shape)."""
    import importlib

    script = importlib.import_module(f"benchmarks.{module}")
    monkeypatch.setattr("sys.argv", [module, *argv])
    with pytest.raises(SystemExit) as done:
        script.main()
    assert done.value.code == 2
    captured = capsys.readouterr()
    assert f"error: {message}" in captured.err and captured.out == ""


def test_lm_step_breakdown_leaves_the_nested_head_matmuls_out_of_the_sum(monkeypatch, capsys):
    """The head's matmuls are timed again inside "head + cross entropy": added twice, the
    sum of parts overran the whole step (257.4 against 169.0 ms on PTB small) and the glue
    came out negative. Run on a tiny language model."""
    from benchmarks import lm_step_breakdown

    tiny = dict(kind="lm", vocab=11, hidden=4, layers=1, batch=2, steps=3)
    monkeypatch.setattr(bm, "WORKLOADS", {"tiny": tiny})
    monkeypatch.setattr("sys.argv", ["lm_step_breakdown", "--workload", "tiny",
                                     "--repeats", "1"])
    assert lm_step_breakdown.main() == 0
    import re

    out = capsys.readouterr().out
    ms = {name: float(value) for name, value in re.findall(r"^ +(\S.*?) +([\d.]+) ms", out,
                                                           re.MULTILINE)}
    parts = ("head + cross entropy", "recurrent stack", "embedding")
    assert set(ms) == {*parts, "head matmuls only", "sum of parts"}
    assert ms["sum of parts"] == pytest.approx(sum(ms[p] for p in parts), abs=0.2)
    nested = [line for line in out.splitlines() if "head matmuls only" in line]
    assert nested[0].endswith("; within head + cross entropy, not in the sum)")
