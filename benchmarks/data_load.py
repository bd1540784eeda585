"""Times loading each data set and iterating one epoch of batches.

Usage: python benchmarks/data_load.py [--data_dir D] [--datasets ptb_word,mnist] [--repeats 3]

Prints, per data set, the best and first load time of `--repeats` loads and the
time of one epoch of batches; PTB word must load (all three splits) in < 2 s.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rnnreg_jax import data  # noqa: E402

ONE = {"process_index": 0, "process_count": 1}
# name -> (load(data_dir) -> data set, data set -> its training batches)
LOADERS: dict[str, tuple[Callable[[str | None], Any], Callable[[Any], Any]]] = {
    "ptb_word": (data.load_ptb_word, lambda d: d.batches("train", 20, 35, **ONE)),
    "ptb_char": (
        data.load_ptb_char,
        lambda d: d.batches("train", 128, 100, mode="shuffled", **ONE),
    ),
    "mnist": (data.load_mnist, lambda d: d.batches("train", 100, **ONE)),
    "cornell": (data.load_cornell, lambda d: d.batches("train", 128, **ONE)),
    "imdb": (data.load_imdb, lambda d: d.batches("train", 64, **ONE)),
}
LIMITS = {"ptb_word": 2.0}  # seconds, from the task's requirements


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--datasets", default="ptb_word,ptb_char,mnist,cornell")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    names = [n for n in args.datasets.split(",") if n]
    unknown = [n for n in names if n not in LOADERS]
    if unknown or not names:
        parser.error(f"--datasets must name some of {', '.join(LOADERS)}; got {unknown or '[]'}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    failed = False
    for name in names:
        load, make_batches = LOADERS[name]
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            try:
                dataset = load(args.data_dir)
            except data.DataError as err:  # missing or damaged files: one line
                print(f"error: {err}", file=sys.stderr)
                return 2
            times.append(time.perf_counter() - start)
        it = make_batches(dataset)
        start = time.perf_counter()
        for _ in it.iterate(0):
            pass
        epoch = time.perf_counter() - start
        limit = LIMITS.get(name)
        flag = "" if limit is None else (" OK" if min(times) < limit else f" SLOWER THAN {limit} s")
        failed |= flag.startswith(" SLOWER")
        print(
            f"{name:9s} load best {min(times):6.2f} s, first {times[0]:6.2f} s{flag}; "
            f"one epoch of {it.num_batches} batches {epoch:6.2f} s"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
