"""Where the Pallas recurrence beats the scan on a GPU, and how close it runs to its limits.

One layer (an LSTM with zoneout, the char-level presets' rates) over a grid of hidden
sizes, sequence lengths and batches: the forward pass and a training pass (forward and
the parameters' gradient) through the scan ("fused", what "auto" runs on a GPU) and
the Pallas kernels (W_h in the layer's float32, what "auto" would run), and the
forward kernel alone (inputs projected and masks drawn beforehand). From those:

* `suggest_rule`: the rule "auto" could encode (`pallas.plan.AUTO_PALLAS_MIN_STEPS`,
  `AUTO_PALLAS_MAX_HIDDEN`): the steps and hidden sizes where the kernels won at every
  batch measured.
* `step_limits`: per time step of the forward kernel alone, the nanoseconds against
  what one program (one SM, owning `BATCH_BLOCK` rows) needs at least to read W_h from
  shared memory and to compute the step's product on tensor cores (TF32) or on the
  FP32 units, from the SM's published rates (Hopper: H100, H200) and its clock.

Run by `benchmarks.gpu_pallas_check --sweep`; `--tiny` dry-runs it on the CPU.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp

import rnnreg_jax as rj
from rnnreg_jax import cells, noise, pallas, rnn
from rnnreg_jax.pallas import plan as plan_lib

HIDDEN = (64, 128, 256, 512)  # to MAX_PADDED_HIDDEN; 1000 (char level) is refused
STEPS = (784, 100, 20)  # pMNIST, char level, PTB small; longest first (the case for it)
BATCHES = (32, 100)  # char level, pMNIST
FEATURES = 32  # the input projection runs outside the kernels, alike in both paths
IMPLEMENTATIONS = ("fused", "pallas")

# Per SM and clock cycle on Hopper (sm_90: H100, H200): shared-memory bandwidth, dense
# TF32 tensor-core FLOPs (494.7 TFLOP/s over 132 SMs at 1.83 GHz), FP32 FMA-unit FLOPs.
HOPPER_PER_SM = {"shared_bytes": 128, "tf32_flops": 2048, "fp32_flops": 256}


def median_ms(run: Callable[[], object], calls: int, rounds: int) -> float:
    """Median over `rounds` of the mean milliseconds of `calls` calls (after two warm-up
    calls: compiled, caches warm); `run` blocks until its result is ready."""
    run()
    run()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        times.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(times)


def _layer(hidden: int):
    return rj.zoneout(0.5, 0.05), cells.init_params(jax.random.key(1), "lstm", FEATURES,
                                                    hidden, init_scale=0.1)


def layer_runs(hidden: int, batch: int, steps: int, implementation: str):
    """(forward, training) calls of one zoneout LSTM layer, each blocking."""
    reg, params = _layer(hidden)
    x = jax.random.uniform(jax.random.key(2), (batch, steps, FEATURES))
    carry = rnn.initial_carry("lstm", params, batch, reg)
    key = jax.random.key(3)

    def forward(p, x, c):
        return rnn.unroll("lstm", p, x, c, reg=reg, key=key, deterministic=False,
                          implementation=implementation)

    def loss(p, x, c):
        ys, c = forward(p, x, c)
        return jnp.sum(ys) + sum(jnp.sum(v) for v in c.values())

    fwd, train = jax.jit(forward), jax.jit(jax.value_and_grad(loss))
    return (lambda: jax.block_until_ready(fwd(params, x, carry)),
            lambda: jax.block_until_ready(train(params, x, carry)))


def kernel_forward_run(hidden: int, batch: int, steps: int):
    """The forward kernel alone, blocking: its inputs projected and its masks drawn
    beforehand, and passed in (a [T, B, H] mask is no constant to fold)."""
    reg, params = _layer(hidden)
    layer_noise = noise.layer_noise(reg, jax.random.key(3), 0, "lstm", batch, steps,
                                    FEATURES, hidden, False)
    xs = jax.random.uniform(jax.random.key(2), (steps, batch, FEATURES))
    xw = cells.project("lstm", params, xs, layer_noise.input, layer_noise.input_per_gate)
    carry = rnn.initial_carry("lstm", params, batch, reg)
    run = jax.jit(lambda p, xw, c, tied, per_step: pallas.recurrence("lstm", p, xw, c, tied,
                                                                     per_step))
    return lambda: jax.block_until_ready(run(params, xw, carry, layer_noise.tied,
                                             layer_noise.per_step))


def sm_clock_ghz() -> float | None:
    """The GPU's maximum SM clock (nvidia-smi), None where there is none to ask."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm",
                              "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
        return float(out.split()[0]) / 1e3
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def per_sm_rates(device_kind: str) -> dict | None:
    """The SM's published per-clock rates where this script knows the architecture."""
    return HOPPER_PER_SM if any(k in device_kind for k in ("H100", "H200")) else None


def step_limits(plan: plan_lib.Plan, forward_ms: float, steps: int,
                rates: dict | None, clock_ghz: float | None) -> dict:
    """One program's time step of the forward kernel against its floors (ns)."""
    w_h_bytes = plan.weight_bytes
    flops = 2 * plan.batch_block * plan.padded_hidden * plan.num_gates * plan.padded_hidden
    out: dict = {"ns_per_step": forward_ms * 1e6 / steps, "w_h_bytes": w_h_bytes,
                 "step_flops_per_program": flops,
                 "programs": plan.padded_batch // plan.batch_block, "resident": plan.resident}
    if rates is not None and clock_ghz:
        out["w_h_from_shared_ns"] = w_h_bytes / (rates["shared_bytes"] * clock_ghz)
        out["product_tf32_ns"] = flops / (rates["tf32_flops"] * clock_ghz)
        out["product_fp32_ns"] = flops / (rates["fp32_flops"] * clock_ghz)
    return out


def measure_point(hidden: int, batch: int, steps: int, calls: int, rounds: int,
                  rates: dict | None = None, clock_ghz: float | None = None) -> dict:
    """One grid point: each path's forward and training pass (or its error), the
    kernel's forward alone, the speedup of the training pass and the step limits."""
    entry: dict = {"hidden": hidden, "steps": steps, "batch": batch}
    started = time.monotonic()  # compilation included: for sizing a sweep to a window
    for implementation in IMPLEMENTATIONS:
        try:
            forward, train = layer_runs(hidden, batch, steps, implementation)
            entry[implementation] = {"forward_ms": median_ms(forward, calls, rounds),
                                     "train_ms": median_ms(train, calls, rounds)}
            if implementation == "pallas":
                kernel = kernel_forward_run(hidden, batch, steps)
                entry["pallas"]["kernel_forward_ms"] = median_ms(kernel, calls, rounds)
        except Exception as error:  # noqa: BLE001 -- record, go on
            entry[implementation] = {"error": f"{type(error).__name__}: {str(error)[-1000:]}"}
    if "kernel_forward_ms" in entry["pallas"] and "train_ms" in entry["fused"]:
        entry["speedup"] = entry["fused"]["train_ms"] / entry["pallas"]["train_ms"]
        layout = plan_lib.make_plan("lstm", hidden, batch, jnp.float32)
        entry["limits"] = step_limits(layout, entry["pallas"]["kernel_forward_ms"], steps,
                                      rates, clock_ghz)
    entry["wall_s"] = time.monotonic() - started
    return entry


def sweep(hidden_sizes: Iterable[int] = HIDDEN, steps_list: Iterable[int] = STEPS,
          batches: Iterable[int] = BATCHES, calls: int = 5, rounds: int = 3,
          deadline: float | None = None, on_entry: Callable[[dict], None] | None = None
          ) -> list[dict]:
    """Times every grid point (longest sequences first) until `deadline` (monotonic
    seconds); each entry as it is measured to `on_entry`. A failed run is recorded as
    its error, and the sweep goes on."""
    rates = per_sm_rates(jax.devices()[0].device_kind)
    clock = sm_clock_ghz() if rates is not None else None
    entries: list[dict] = []
    for steps in steps_list:
        for hidden in hidden_sizes:
            for batch in batches:
                if deadline is not None and time.monotonic() > deadline:
                    return entries
                entries.append(measure_point(hidden, batch, steps, calls, rounds, rates, clock))
                if on_entry is not None:
                    on_entry(entries[-1])
    return entries


def suggest_rule(entries: Iterable[dict]) -> dict | None:
    """The rule "steps >= min_steps and hidden <= max_hidden" that covers the most grid
    points measured, every one of them a win (speedup >= 1) at every batch measured;
    None where no point is a win. Points not measured (an error, the deadline) count
    as losses."""
    wins: dict[tuple[int, int], bool] = {}
    for e in entries:
        point = (e["steps"], e["hidden"])
        wins[point] = wins.get(point, True) and e.get("speedup", 0.0) >= 1.0
    best = None
    for min_steps in sorted({t for t, _ in wins}):
        for max_hidden in sorted({h for _, h in wins}):
            covered = [won for (t, h), won in wins.items() if t >= min_steps and h <= max_hidden]
            if covered and all(covered) and (best is None or len(covered) > best[0]):
                best = (len(covered), min_steps, max_hidden)
    if best is None:
        return None
    return {"min_steps": best[1], "max_hidden": best[2], "points": best[0]}
