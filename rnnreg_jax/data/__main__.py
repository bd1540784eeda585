"""`python -m rnnreg_jax.data <dataset> [--data_dir D] [--source files|tfds]
[--skip_checks]`: load and verify a data set, print its stats.

Exit status 2 with one sentence on stderr (no traceback) when the data is
missing or corrupt, or differs from the published files (data.checksums).
"""

from __future__ import annotations

import sys
import time
from typing import Literal

import numpy as np

from rnnreg_jax.command_line import DATA_DIR_REMEDY, ArgumentParser
from rnnreg_jax.data.errors import DataError

DATASETS = ("ptb_word", "ptb_char", "mnist", "cornell", "imdb")
TFDS_DATASETS = ("mnist", "imdb")  # the others have files only


def describe(
    name: str, data_dir: str | None, source: Literal["files", "tfds"] = "files",
    verify: bool = True,
) -> list[str]:
    """Loads data set `name` and returns lines of statistics."""
    from rnnreg_jax import data

    if name in ("ptb_word", "ptb_char"):
        load = data.load_ptb_word if name == "ptb_word" else data.load_ptb_char
        c = load(data_dir, verify=verify)
        lines = [f"vocab size: {c.vocab_size}"]
        lines += [f"{s}: {len(c.split(s)):,} tokens" for s in ("train", "valid", "test")]
        lines.append("first symbols: " + " ".join(c.decode(c.train[:12])))
        return lines
    if name == "mnist":
        m = data.load_mnist(data_dir, source=source, verify=verify)
        lines = [f"permutation seed: {data.PERMUTATION_SEED}"]
        for s in ("train", "valid", "test"):
            counts = np.bincount(m.labels[s], minlength=10)
            lines.append(f"{s}: {m.num_examples(s):,} images, labels {counts.tolist()}")
        return lines
    if name == "cornell":
        d = data.load_cornell(data_dir, verify=verify)
        docs = len(np.union1d(d.doc_ids["train"], d.doc_ids["test"]))
        return [
            f"documents: {docs:,}; vocabulary {len(d.vocab):,} words ({d.num_ids:,} ids)",
            f"train: {d.num_examples('train'):,} chunks; test: {d.num_examples('test'):,} chunks",
            f"rating mean {d.target_mean:.4f}, std {d.target_std:.4f} (training chunks)",
        ]
    if name == "imdb":
        d = data.load_imdb(data_dir, source=source, verify=verify)
        return [
            f"vocabulary {len(d.vocab):,} words ({d.num_ids:,} ids), "
            f"length {d.inputs['train'].shape[1]}",
        ] + [
            f"{s}: {d.num_examples(s):,} reviews, {int(d.targets[s].sum()):,} positive"
            for s in ("train", "test")
        ]
    raise ValueError(name)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m rnnreg_jax.data", description=__doc__)
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument(
        "--data_dir",
        default=None,
        help="data root (default: $RNNREG_DATA_DIR, else the download cache)",
    )
    parser.add_argument(
        "--source",
        default="files",
        choices=("files", "tfds"),
        help="mnist/imdb only: raw files or a prepared TFDS data dir",
    )
    parser.add_argument(
        "--skip_checks",
        action="store_true",
        help="read files that differ from the published ones (no sha256 check)",
    )
    args = parser.parse_args(argv)
    problem = None
    if args.source != "files" and args.dataset not in TFDS_DATASETS:  # it read the files
        problem = (f"--source={args.source} applies to {' and '.join(TFDS_DATASETS)}; "
                   f"{args.dataset} has files only")
    elif args.data_dir == "":  # taken as left out: $RNNREG_DATA_DIR or the download cache
        problem = f"--data_dir is empty; {DATA_DIR_REMEDY}"
    if problem:
        print(f"error: {problem}.", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        lines = describe(args.dataset, args.data_dir, args.source, not args.skip_checks)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.dataset}:")
    for line in lines:
        print("  " + line)
    print(f"  load time: {time.perf_counter() - start:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
