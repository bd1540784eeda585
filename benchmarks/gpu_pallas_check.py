"""The Pallas recurrence on a GPU, in one command (scripts/gpu_pallas_check.sh, < 5 min):
compile it, check it against the scan, time it.

1. Correctness, float32 under `jax.default_matmul_precision("highest")` (IEEE dots in
   the kernels and the scan alike): outputs, final carry and every gradient of
   `rnn.unroll(..., implementation="pallas")` against the scan path ("fused") at the
   pMNIST shape (lstm and gru, H = 100, B = 100, T = 784, zoneout) and the PTB-small
   shape (lstm, H = 200, B = 20, T = 20, per-gate variational dropout); the errors at
   JAX's default precision (TF32) and with W_h on chip in bfloat16 are reported too.
2. Speed: a pMNIST training step (`experiments.bench`'s, zoneout on) through the scan
   ("fused", what "auto" runs on a GPU), the kernels (W_h in float32, streamed at this
   size, and in bfloat16, resident), and PyTorch's cuDNN `nn.LSTM` when torch is
   importable; the same for PTB small (per-gate variational). Ratios printed.
3. With `--sweep`: one layer's forward and training pass, kernels against the scan,
   over hidden sizes, sequence lengths and batches (`benchmarks.pallas_sweep`), until
   `--sweep_budget_s`: the crossover "auto" could encode, and each forward step's
   nanoseconds against the time to read W_h from shared memory and to compute the
   step's product.

Every section records its error instead of stopping the run. Writes `pallas_check.json`
to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

import rnnreg_jax as rj
from benchmarks import pallas_sweep
from experiments import bench_models as bm
from rnnreg_jax import cells, rnn
from rnnreg_jax.pallas import plan

# (name, cell, hidden, batch, steps, features, regularizer)
SHAPES = [
    ("pmnist_lstm", "lstm", 100, 100, 784, 1, lambda: rj.zoneout(0.5, 0.05)),
    ("pmnist_gru", "gru", 100, 100, 784, 1, lambda: rj.zoneout(0.0, 0.05)),
    ("ptb_small_lstm", "lstm", 200, 20, 20, 200,
     lambda: rj.variational(0.35, 0.2, 0.35, per_gate=True)),
]
# float32 over hundreds of steps: the two computation orders' rounding compounds; the
# errors are recorded whatever they are, the flag uses this fraction of each leaf's scale
RELATIVE_TOLERANCE = 1e-3


def _layer_loss(cell, reg, implementation):
    key = jax.random.key(3)

    def loss(params, x, carry):
        ys, carry = rnn.unroll(cell, params, x, carry, reg=reg, key=key, deterministic=False,
                               implementation=implementation)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(v**2) for v in carry.values())

    return loss


def _errors(actual, desired) -> dict:
    """Each leaf's largest error relative to its largest magnitude, and the worst."""
    out = {}
    paths = jax.tree_util.tree_flatten_with_path(desired)[0]
    for (path, d), a in zip(paths, jax.tree.leaves(actual), strict=True):
        d, a = np.asarray(d, np.float64), np.asarray(a, np.float64)
        scale = float(np.abs(d).max()) or 1.0
        out[jax.tree_util.keystr(path)] = float(np.abs(a - d).max()) / scale
    return {"worst": max(out.values()), "leaves": out}


def check_shape(name, cell, hidden, batch, steps, features, make_reg) -> dict:
    reg = make_reg()
    params = cells.init_params(jax.random.key(1), cell, features, hidden, init_scale=0.1)
    x = jax.random.uniform(jax.random.key(2), (batch, steps, features))
    carry = rnn.initial_carry(cell, params, batch, reg)

    def run(implementation):
        f = jax.jit(jax.value_and_grad(_layer_loss(cell, reg, implementation),
                                       argnums=(0, 1, 2)))
        forward = jax.jit(lambda p, x, c: rnn.unroll(cell, p, x, c, reg=reg,
                                                      key=jax.random.key(3),
                                                      deterministic=False,
                                                      implementation=implementation))
        return jax.block_until_ready((forward(params, x, carry), f(params, x, carry)))

    result: dict[str, Any] = {"plan": repr(plan.make_plan(cell, hidden, batch, jnp.float32))}
    with jax.default_matmul_precision("highest"):
        start = time.perf_counter()
        kernel = run("pallas")
        result["compile_and_run_s"] = time.perf_counter() - start
        scan = run("fused")
    result["highest"] = _errors(kernel, scan)
    result["pass"] = result["highest"]["worst"] <= RELATIVE_TOLERANCE
    result["default_precision"] = _errors(run("pallas"), run("fused"))["worst"]
    with mock.patch.object(plan, "DEFAULT_WEIGHT_DTYPE", jnp.bfloat16):
        result["bfloat16_weights_plan"] = repr(plan.make_plan(cell, hidden, batch, jnp.float32))
        result["bfloat16_weights"] = _errors(run("pallas"), scan)["worst"]
    return result


def time_workload(spec: dict, reg, steps: int, rounds: int) -> dict:
    contenders = {
        "scan_fused": lambda: bm._jax_step(spec, reg, flax_peer=False,  # noqa: SLF001
                                           implementation="fused"),
        "pallas_f32": lambda: bm._jax_step(spec, reg, flax_peer=False,  # noqa: SLF001
                                           implementation="pallas"),
        "pallas_bf16_weights": lambda: bm._jax_step(spec, reg, flax_peer=False,  # noqa: SLF001
                                                    implementation="pallas"),
    }
    if bm.torch_version() is not None:
        contenders["torch_cudnn_lstm"] = lambda: bm._torch_step(  # noqa: SLF001
            spec, variational_cell=False)
    ms: dict[str, float | str] = {}  # a contender's ms per step, or its error
    for name, build in contenders.items():
        weights = jnp.bfloat16 if name.endswith("bf16_weights") else None
        try:
            with mock.patch.object(plan, "DEFAULT_WEIGHT_DTYPE", weights):
                ms[name] = pallas_sweep.median_ms(build(), steps, rounds)
        except Exception as error:  # noqa: BLE001 -- record, go on with the others
            ms[name] = f"error: {type(error).__name__}: {str(error)[-2000:]}"
    out: dict[str, dict] = {"ms_per_step": ms}
    numbers = {k: v for k, v in ms.items() if isinstance(v, float)}
    if "scan_fused" in numbers:
        out["speedup_over_scan"] = {k: numbers["scan_fused"] / v for k, v in numbers.items()}
    if "torch_cudnn_lstm" in numbers:
        out["cudnn_over"] = {k: v / numbers["torch_cudnn_lstm"] for k, v in numbers.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/pallas_check"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip_correctness", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="section 3 (module docstring)")
    parser.add_argument("--sweep_only", action="store_true", help="section 3 alone")
    parser.add_argument("--sweep_budget_s", type=float, default=240.0)
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes: a dry run of this script on CPU (interpret mode)")
    args = parser.parse_args()
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be whole numbers >= 1.")
    if not args.sweep_budget_s > 0:  # NaN too
        parser.error(f"--sweep_budget_s must be a number of seconds > 0, got "
                     f"{args.sweep_budget_s:g}.")
    shapes, workloads = SHAPES, dict(bm.WORKLOADS)
    if args.tiny:
        shapes = [(name, cell, 6, 3, 4, features, reg)
                  for name, cell, _, _, _, features, reg in SHAPES]
        workloads = {name: dict(spec, hidden=6, batch=3, steps=4, vocab=50)
                     for name, spec in workloads.items()}
    os.makedirs(args.out, exist_ok=True)
    report: dict[str, Any] = {"jax": jax.__version__, "backend": jax.default_backend(),
              "devices": [str(d) for d in jax.devices()], "torch": bm.torch_version(),
              "correctness": {}, "timing": {}}
    path = os.path.join(args.out, "pallas_check.json")

    def save():
        with open(path, "w") as f:
            json.dump(report, f, indent=1, default=str)

    if args.sweep_only:
        args.skip_correctness, args.sweep = True, True
    if not args.skip_correctness:
        for name, *shape in shapes:
            try:
                report["correctness"][name] = check_shape(name, *shape)
            except Exception:  # noqa: BLE001 -- record, go on with the others
                report["correctness"][name] = {"error": traceback.format_exc()[-4000:]}
            print(name, json.dumps(report["correctness"][name], default=str)[:1500], flush=True)
            save()
    timed = () if args.sweep_only else (
        ("pmnist", rj.zoneout(0.5, 0.05)),
        ("ptb_small", rj.variational(0.35, 0.2, 0.35, embedding=0.2, per_gate=True)))
    for workload, reg in timed:
        report["timing"][workload] = time_workload(workloads[workload], reg, args.steps,
                                                   args.rounds)
        print(workload, json.dumps(report["timing"][workload], default=str)[:3000], flush=True)
        save()
    if args.sweep:
        run_sweep(report, save, args)
    print("wrote", path)


def run_sweep(report: dict, save, args) -> None:
    """Section 3, each grid point saved as it is measured, then the suggested rule."""
    grid = {}
    if args.tiny:
        grid = {"hidden_sizes": (6, 20), "steps_list": (4,), "batches": (3,)}
    report["sweep"] = {"entries": [], "rule": None}

    def record(entry):
        report["sweep"]["entries"].append(entry)
        report["sweep"]["rule"] = pallas_sweep.suggest_rule(report["sweep"]["entries"])
        print("sweep", json.dumps(entry, default=str)[:1500], flush=True)
        save()

    pallas_sweep.sweep(calls=args.steps, rounds=args.rounds, on_entry=record,
                       deadline=time.monotonic() + args.sweep_budget_s, **grid)
    print("suggested rule for auto:", report["sweep"]["rule"], flush=True)


if __name__ == "__main__":
    main()
