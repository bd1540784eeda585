"""The benchmark's bookkeeping (timing medians, ratio tables), without timing anything real."""

from experiments import bench


def test_time_contenders_takes_medians_of_interleaved_rounds():
    calls = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    seconds = bench.time_contenders(steps, n=2, rounds=3)
    assert calls == ["a", "a", "b", "b"] * 3  # interleaved: every round runs every contender
    assert set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())


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
