"""Training throughput and peak memory: ours against Flax and PyTorch, in one run.

    python -m experiments.bench                              # all workloads, table on stdout
    python -m experiments.bench --workloads=ptb_small --json=bench.json
    python -m experiments.bench --memory                     # also peak memory (subprocesses)

A step is forward + backward + optimizer update (SGD) on random data of the
workload's shape. Every contender is compiled / warmed up first, then timed in
interleaved rounds (each round runs `--steps` steps of every contender), and
the median step time gives tokens (or examples x steps) per second. Ratios
are only meaningful within one run: this machine's absolute speed drifts.

Peak memory runs each contender in a fresh subprocess and reports the peak
resident set during steady-state steps (VmHWM, reset after warm-up through
/proc/self/clear_refs) minus the resident set before the model was built.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from absl import app, flags

from experiments import bench_models as bm
from experiments.flag_parsing import NO_FILE_REMEDY, parse_flags

FLAGS = flags.FLAGS
flags.DEFINE_list("workloads", list(bm.WORKLOADS), "Workloads to run.")
flags.DEFINE_list("contenders", list(bm.CONTENDERS), "Contenders to run (those that apply).")
flags.DEFINE_integer("steps", 5, "Timed steps per contender per round.", lower_bound=1)
flags.DEFINE_integer("rounds", 3, "Interleaved timing rounds.", lower_bound=1)
flags.DEFINE_string("json", None, "Write the results as JSON to this file.")
flags.DEFINE_string("markdown", None, "Write the tables as Markdown to this file.")
flags.DEFINE_bool("memory", False, "Also measure peak memory (one subprocess per contender).")
flags.DEFINE_list("memory_workloads", ["ptb_medium"], "Workloads for the memory measurement.")
flags.DEFINE_string("_memory_child", None, "internal: workload:contender to measure")


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """Float32 matmul rate of this machine through XLA, GFLOP/s."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def torch_matmul_gflops(n: int = 1024, repeats: int = 10) -> float | None:
    """The same rate through PyTorch's GEMM on the peers' device (None without torch)."""
    if bm.torch_version() is None:
        return None
    import torch

    device = bm.torch_device()
    a = torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ a
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        sync()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def time_contenders(steps: dict[str, Callable[[], None]], n: int, rounds: int) -> dict:
    """Median seconds per step of every contender, timed in interleaved rounds.

    Each round starts at the next contender (a rotation), and each contender's first
    step after the switch is not timed: it runs in the caches and page mappings the
    previous contender left (on a 2-core x86 CPU, two identical pMNIST contenders, 1st
    and 3rd in a fixed order, measured 11-12% apart in two runs)."""
    samples: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            step = steps[name]
            step()  # the switch
            for _ in range(n):
                start = time.perf_counter()
                step()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(spec: str) -> None:
    """Subprocess body: peak RSS (MiB) of steady-state training steps."""
    workload, _, contender = spec.partition(":")
    if workload not in bm.WORKLOADS or contender not in bm.CONTENDERS:
        _fail(f"--_memory_child must be WORKLOAD:CONTENDER (of --workloads and --contenders), "
              f"got {spec!r}.")
    before = _rss_kb("VmRSS")
    step = bm.build(contender, bm.WORKLOADS[workload])
    for _ in range(3):
        step()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM: compilation and warm-up peaks do not count
    for _ in range(5):
        step()
    print(json.dumps({"peak_mib": (_rss_kb("VmHWM") - before) / 1024}))


def measure_memory(workload: str, contender: str) -> float | None:
    cmd = [sys.executable, "-m", "experiments.bench", f"--_memory_child={workload}:{contender}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"memory of {contender} on {workload} failed: {out.stderr.strip()[-300:]}",
              file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def _fail(message: str) -> NoReturn:
    """End the binary with one line on stderr and exit status 2 (as a bad flag does)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def output_problem(flag: str, path: str) -> str | None:
    """Why `path` cannot take the results (a directory, a missing or read-only
    folder), found before the run rather than after it, or None."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        why = "a directory"
    elif not os.path.isdir(folder):
        why = f"its folder {folder} does not exist"
    elif not os.access(path if os.path.exists(path) else folder, os.W_OK):
        why = "permission denied"
    else:
        return None
    return f"cannot write --{flag}={path} ({why})."  # as experiments.evaluate says it


def flags_problem(workloads: list[str], contenders: list[str], memory: bool,
                  memory_workloads: list[str], outputs: dict[str, str | None]) -> str | None:
    """The first thing wrong with the flags, as one sentence, or None."""
    if not workloads:
        return f"--workloads is empty; choose from {list(bm.WORKLOADS)}."
    unknown = [w for w in workloads if w not in bm.WORKLOADS]
    if unknown:
        return f"Unknown workloads {unknown}; choose from {list(bm.WORKLOADS)}."
    if not contenders:
        return f"--contenders is empty; choose from {list(bm.CONTENDERS)}."
    unknown = [c for c in contenders if c not in bm.CONTENDERS]
    if unknown:
        return f"Unknown contenders {unknown}; choose from {list(bm.CONTENDERS)}."
    skipped = [c for c in contenders if not bm.applies(c, {})]
    if len(skipped) == len(contenders):
        return (f"None of the contenders {skipped} can run here: torch is not installed "
                "(pip install torch==2.13.0).")
    unknown = [w for w in memory_workloads if w not in bm.WORKLOADS]
    if unknown:
        return f"Unknown memory workloads {unknown}; choose from {list(bm.WORKLOADS)}."
    if memory and not memory_workloads:
        return "--memory with an empty --memory_workloads would measure no memory."
    not_run = [w for w in memory_workloads if w not in workloads]
    if memory and not_run:
        return (f"--memory_workloads {not_run} are not among --workloads {workloads}; "
                "memory is measured only on workloads that run.")
    for flag, path in outputs.items():
        if path == "":  # taken as no file: the results went nowhere
            return f"--{flag} is empty; {NO_FILE_REMEDY}."
        problem = output_problem(flag, path) if path else None
        if problem:
            return problem
    return None


def main(argv):
    if len(argv) > 1:  # ignored before: `bench ptb_small` ran every workload
        _fail(f"unexpected arguments {argv[1:]}; name workloads with --workloads.")
    child = FLAGS["_memory_child"].value  # an internal flag of the binary's own children
    if child:
        memory_child(child)
        return
    problem = flags_problem(FLAGS.workloads, FLAGS.contenders, FLAGS.memory,
                            FLAGS.memory_workloads, {"json": FLAGS.json,
                                                     "markdown": FLAGS.markdown})
    if problem:  # before anything is built or timed
        _fail(problem)
    skipped = [c for c in FLAGS.contenders if not bm.applies(c, {})]
    if skipped:  # the peers' ratios would be missing from the tables without a word
        print(f"# skipping {', '.join(skipped)}: torch is not installed here "
              "(pip install torch==2.13.0)", file=sys.stderr)
    import jax

    info = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "torch": bm.torch_version(), "matmul_gflops": matmul_gflops(),
            "torch_matmul_gflops": torch_matmul_gflops(),
            # how the C library allocates big buffers moves CPU steps by up to a third
            # (launch.sh sets it; BENCHMARKS.md)
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            # XLA:CPU's scheduler flag moves the per-gate variant by a third (BENCHMARKS.md)
            "xla_flags": os.environ.get("XLA_FLAGS", "")}
    print(f"# {info}")
    results = {"info": info, "workloads": {}, "matmul_floor_ms": {}}
    for name in FLAGS.workloads:
        spec = bm.WORKLOADS[name]
        steps = {c: bm.build(c, spec) for c in FLAGS.contenders if bm.applies(c, spec)}
        for step in steps.values():  # compile and warm up
            step()
            step()
        seconds = time_contenders(steps, FLAGS.steps, FLAGS.rounds)
        tokens = spec["batch"] * spec["steps"]
        flops = bm.flops_per_step(spec)
        rows = {c: {"seconds_per_step": s, "tokens_per_s": tokens / s, "gflops": flops / s / 1e9}
                for c, s in seconds.items()}
        if FLAGS.memory and name in FLAGS.memory_workloads:
            for c in rows:
                rows[c]["peak_mib"] = measure_memory(name, c)
        results["workloads"][name] = rows
        floor = 1e3 * flops / (info["matmul_gflops"] * 1e9)
        results["matmul_floor_ms"][name] = floor
        print_table(name, rows)
        print(floor_line(rows, floor))
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(results, f, indent=1)
    if FLAGS.markdown:
        with open(FLAGS.markdown, "w") as f:
            f.write(markdown(results, " ".join(["python -m experiments.bench", *sys.argv[1:]])))


def floor_line(rows: dict, floor_ms: float) -> str:
    """The matmul floor of a step and the most any contender could gain on each peer.

    `floor_ms` is the step's matmul FLOPs at the machine's 1024^3 matmul rate: a step
    that also does its elementwise work, launches and synchronisation cannot run
    faster, so a ratio to a peer above `peer ms / floor ms` cannot be reached here.
    """
    peers = [p for p in ("flax", "torch_lstm", "torch_cell_variational") if p in rows]
    bounds = ", ".join(f"{1e3 * rows[p]['seconds_per_step'] / floor_ms:.2f}x {p}"
                       for p in peers)
    return (f"matmul floor {floor_ms:.1f} ms/step (every matmul FLOP at the 1024^3 rate)"
            + (f"; at the floor a contender would be {bounds}" if bounds else ""))


def markdown(results: dict, command: str) -> str:
    """The run's tables as Markdown: absolute figures and ratios to the peers."""
    info = results["info"]
    lines = [f"Command: `{command}`", "",
             f"Machine: {info['cpus']} CPUs ({info['machine']}), backend {info['backend']}, "
             f"jax {info['jax']}, torch {info['torch']}; float32 matmul "
             f"{info['matmul_gflops']:.1f} GFLOP/s (1024x1024 through XLA)"
             + (f", {info['torch_matmul_gflops']:.1f} GFLOP/s through PyTorch"
                if info.get("torch_matmul_gflops") else "") + "; GLIBC_TUNABLES="
             + (f"`{info['glibc_tunables']}`" if info.get("glibc_tunables") else "unset")
             + "; XLA_FLAGS="
             + (f"`{info['xla_flags']}`" if info.get("xla_flags") else "unset") + ".",
             "", "GFLOP/s: the step's matmul FLOPs (forward and backward, "
             "`bench_models.flops_per_step`) over its time.", ""]
    for workload, rows in results["workloads"].items():
        base = rows.get("ours_none", {}).get("tokens_per_s")
        peers = [p for p in ("flax", "torch_lstm", "torch_cell_variational") if p in rows]
        memory = any("peak_mib" in r for r in rows.values())
        head = ["contender", "tokens/s", "ms/step", "GFLOP/s", *[f"x {p}" for p in peers],
                "x ours_none"]
        head += ["peak MiB"] if memory else []
        lines += [f"### {workload}", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for name, r in rows.items():
            cells = [name, f"{r['tokens_per_s']:.0f}", f"{1e3 * r['seconds_per_step']:.1f}",
                     f"{r['gflops']:.1f}" if "gflops" in r else ""]
            cells += [f"{r['tokens_per_s'] / rows[p]['tokens_per_s']:.2f}" for p in peers]
            cells += [f"{r['tokens_per_s'] / base:.2f}" if base else ""]
            if memory:
                peak = r.get("peak_mib")
                cells += [f"{peak:.0f}" if peak is not None else "n/a"]
            lines.append("| " + " | ".join(cells) + " |")
        floor = results.get("matmul_floor_ms", {}).get(workload)
        lines += ["", floor_line(rows, floor) + "."] if floor else []
        lines.append("")
    return "\n".join(lines)


def print_table(workload: str, rows: dict) -> None:
    """Absolute figures and ratios to the peers and to our unregularized model."""
    base = rows.get("ours_none", {}).get("tokens_per_s")
    peers = [p for p in ("flax", "torch_lstm", "torch_cell_variational") if p in rows]
    header = f"{'contender':26s} {'tokens/s':>10s} {'ms/step':>9s} {'GFLOP/s':>8s}"
    header += "".join(f" {'x ' + p:>24s}" for p in peers) + f" {'x ours_none':>12s}"
    if any("peak_mib" in r for r in rows.values()):
        header += f" {'peak MiB':>9s}"
    print(f"\n## {workload}\n{header}")
    for name, r in rows.items():
        line = f"{name:26s} {r['tokens_per_s']:10.0f} {1e3 * r['seconds_per_step']:9.1f}"
        line += f" {r.get('gflops', float('nan')):8.1f}"
        line += "".join(f" {r['tokens_per_s'] / rows[p]['tokens_per_s']:24.2f}" for p in peers)
        line += f" {r['tokens_per_s'] / base:12.2f}" if base else f" {'':>12s}"
        if "peak_mib" in r:
            peak = r["peak_mib"]
            line += f" {peak:9.0f}" if peak is not None else f" {'n/a':>9s}"
        print(line)
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
