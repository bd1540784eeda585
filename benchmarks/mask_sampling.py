"""Mask sampling cost: `jax.random.bernoulli` against `noise.bernoulli_draw`.

Usage: python benchmarks/mask_sampling.py [--size N] [--repeats 7]

`noise.bernoulli_draw` takes 16 bits per draw, two per threefry word, so it
should take about half the time of `jax.random.bernoulli` (one word per draw)
wherever the threefry dominates, as it does on CPU. The default size is one
pMNIST zoneout step's masks (cells and hiddens, 784 x 100 x 100 each). Prints
the best of `--repeats` for each and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from rnnreg_jax import noise  # noqa: E402


def best_ms(fn, arg, repeats: int) -> float:
    jax.block_until_ready(fn(arg))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(arg))
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=2 * 784 * 100 * 100)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    for flag in ("size", "repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    key = jax.random.key(0)
    shape = (args.size,)
    ours = jax.jit(lambda k: noise.bernoulli_draw(k, 0.85, shape))
    plain = jax.jit(lambda k: jax.random.bernoulli(k, 0.85, shape))
    t_plain, t_ours = best_ms(plain, key, args.repeats), best_ms(ours, key, args.repeats)
    print(f"{args.size:,} draws on {jax.default_backend()}: jax.random.bernoulli "
          f"{t_plain:.1f} ms, noise.bernoulli_draw {t_ours:.1f} ms "
          f"({t_plain / t_ours:.2f}x faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
