"""Where a language-model training step spends its time, part by part.

Usage: python benchmarks/lm_step_breakdown.py [--workload zoneout_word] [--repeats 10]

Times, each jitted on its own (forward + backward, median of `--repeats`):
the whole step (as `experiments.bench`'s `ours_none`), the output layer with
softmax cross entropy on a fixed hidden state, the output layer's three
matmuls alone (fixed cotangent; a part of the output layer's time, printed
indented under it and left out of the sum), the recurrent stack alone, and the
embedding lookup with its gradient. Their sum against the whole step shows the glue.
Figures are for comparing parts within one run; this machine is shared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from experiments import bench_models as bm  # noqa: E402
from rnnreg_jax.nn import StackedRNN  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


# Parts timed again inside another part: printed under it, left out of the sum of
# parts (counted twice, the sum overran the whole step and the glue came out negative).
NESTED = {"head matmuls only": "head + cross entropy"}


def parts(spec: dict):
    b, t, h, v = spec["batch"], spec["steps"], spec["hidden"], spec["vocab"]
    keys = jax.random.split(jax.random.key(0), 4)
    y = jax.random.normal(keys[0], (b, t, h))
    w = 0.05 * jax.random.normal(keys[1], (h, v))
    bias = jnp.zeros((v,))
    labels = jax.random.randint(keys[2], (b, t), 0, v)
    cot = jax.random.normal(keys[3], (b, t, v))

    head_ce = jax.jit(jax.grad(
        lambda w, y: optax.softmax_cross_entropy_with_integer_labels(
            y @ w + bias, labels).mean(), argnums=(0, 1)))
    # value_and_grad: the forward product too (grad alone would drop it as dead code, and
    # "three matmuls" would be two).
    head_mm = jax.jit(jax.value_and_grad(lambda w, y: jnp.vdot(y @ w, cot), argnums=(0, 1)))

    rnn = StackedRNN((h,) * spec["layers"], cell="lstm", init_scale=0.05)
    x = jax.random.normal(keys[0], (b, t, h))
    rnn_params = rnn.init(keys[1], x)["params"]
    rnn_grad = jax.jit(jax.grad(
        lambda p, x: jnp.vdot(rnn.apply({"params": p}, x)[0], y), argnums=(0, 1)))

    table = jax.random.normal(keys[2], (v, h))
    # ids as an argument: a constant index array makes XLA constant-fold the scatter
    embed_grad = jax.jit(jax.grad(lambda e, ids: jnp.vdot(e[ids], y)))
    return {
        "head + cross entropy": lambda: head_ce(w, y),
        "head matmuls only": lambda: head_mm(w, y),
        "recurrent stack": lambda: rnn_grad(rnn_params, x),
        "embedding": lambda: embed_grad(table, labels),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", default="zoneout_word", choices=sorted(
        k for k, s in bm.WORKLOADS.items() if s["kind"] == "lm"))
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    spec = bm.WORKLOADS[args.workload]
    whole = median_ms(bm.build("ours_none", spec), args.repeats)
    print(f"{args.workload}: whole step {whole:.1f} ms")
    total = 0.0
    for name, fn in parts(spec).items():
        ms = median_ms(fn, args.repeats)
        if name in NESTED:  # already in its enclosing part's time
            print(f"    {name:20s} {ms:7.1f} ms  ({ms / whole:.0%}; within "
                  f"{NESTED[name]}, not in the sum)")
            continue
        total += ms
        print(f"  {name:22s} {ms:7.1f} ms  ({ms / whole:.0%})")
    print(f"  {'sum of parts':22s} {total:7.1f} ms; glue and update {whole - total:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
