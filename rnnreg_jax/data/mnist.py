"""MNIST as pixel sequences, plain or permuted (pMNIST).

Images are read from the idx files (`.gz` or uncompressed), kept as uint8
`[N, 784]` in memory and turned into float32 sequences `[B, 784, 1]` in
[0, 1] batch by batch. Permuted MNIST applies ONE fixed pixel order,
`np.random.RandomState(permutation_seed).permutation(784)`, default seed
`PERMUTATION_SEED = 0`, to every image of every split. The validation set is
the last `validation_size` (default 5,000) training images, or with
`validation="shuffle"` a seeded random subset of them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

import numpy as np

from rnnreg_jax.data import batching
from rnnreg_jax.data.arguments import SEED_LIMIT, check_choice, check_switch, check_whole
from rnnreg_jax.data.errors import DataError, corrupt, find_file, read_bytes
from rnnreg_jax.data.locate import check_data_dir, dataset_dir

PERMUTATION_SEED = 0
VALIDATION_SIZE = 5000
IMAGE_MAGIC = 2051  # 0x00000803: uint8, 3 dims
LABEL_MAGIC = 2049  # 0x00000801: uint8, 1 dim
NUM_PIXELS = 784
NUM_CLASSES = 10
SOURCES = ("files", "tfds")
VALIDATIONS = ("last", "shuffle")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def parse_idx(data: bytes, path: object, magic: int, what: str = "MNIST file") -> np.ndarray:
    """Parses an idx file of unsigned bytes.

    Args:
        data: the whole (decompressed) file.
        path: shown in errors.
        magic: expected magic number (2051 images, 2049 labels).

    Returns:
        uint8 array of the dimensions in the header (e.g. `[N, 28, 28]`).

    Raises:
        DataError: wrong magic, truncated header or body, or trailing bytes.
    """
    if len(data) < 4:
        raise corrupt(what, path, f"is truncated ({len(data)} bytes, no idx header)")
    got = int.from_bytes(data[:4], "big")
    if got != magic:
        raise corrupt(what, path, f"has idx magic number {got} instead of {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise corrupt(what, path, f"is truncated ({len(data)} bytes, header needs {header})")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = header + int(np.prod(dims))
    if len(data) != size:
        kind = "shorter" if len(data) < size else "longer"
        raise corrupt(
            what, path, f"is {kind} than its header says ({len(data)} bytes instead of {size})"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def read_idx(folder: Path, stem: str, magic: int) -> np.ndarray:
    """Reads `<folder>/<stem>.gz` (or the uncompressed `<stem>`) and parses it; labels
    (`LABEL_MAGIC`) must be digits 0..9.

    Raises:
        DataError: missing or corrupt file, or a label outside 0..9 (a file of another
            data set or a damaged one: with the checksums off it trained to a NaN loss).
    """
    path = find_file(folder, [stem + ".gz", stem], "MNIST file")
    array = parse_idx(read_bytes(path, "MNIST file"), path, magic)
    if magic == LABEL_MAGIC and array.size and int(array.max()) >= NUM_CLASSES:
        where = int(np.argmax(array >= NUM_CLASSES))
        raise corrupt("MNIST file", path, f"holds label {int(array.flat[where])} at index "
                      f"{where}, where MNIST's labels are the digits 0 to {NUM_CLASSES - 1}")
    return array


def permutation(seed: int = PERMUTATION_SEED) -> np.ndarray:
    """Returns the fixed pixel order of permuted MNIST: int64 `[784]` (`seed`: a whole
    number in [0, 2**32), else a one-sentence ValueError)."""
    check_whole(seed, "seed", 0, SEED_LIMIT)
    return np.random.RandomState(seed).permutation(NUM_PIXELS)


def to_sequences(images: np.ndarray, perm: np.ndarray | None = None) -> np.ndarray:
    """uint8 `[N, 784]` or `[N, 28, 28]` -> float32 `[N, 784, 1]` in [0, 1], in `perm` order."""
    flat = np.asarray(images).reshape(len(images), NUM_PIXELS)
    if perm is not None:
        flat = flat[:, perm]
    return (flat.astype(np.float32) / 255.0)[..., None]


@dataclasses.dataclass(frozen=True, eq=False)
class MNIST:
    """MNIST splits, uint8 `[N, 784]` images and int32 `[N]` labels.

    Attributes:
        images, labels: split name ("train", "valid", "test") -> array.
        permutation: the pixel order int64 `[784]`, or None for sequential MNIST.
    """

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    permutation: np.ndarray | None

    def num_examples(self, split: str) -> int:
        return len(batching.of_split(self.labels, split))

    def sequences(self, split: str) -> np.ndarray:
        """Returns all of `split` as float32 `[N, 784, 1]` (permuted if set)."""
        return to_sequences(batching.of_split(self.images, split), self.permutation)

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool | None = None,
        seed: int = 0,
        drop_remainder: bool | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> batching.ArrayBatches:
        """Returns batches `{"inputs": float32[B/P, 784, 1], "labels": int32[B/P]}`.

        `shuffle` and `drop_remainder` default to True for "train" and False
        otherwise (evaluation batches then carry `weights`, see `ArrayBatches`).
        """
        perm = self.permutation

        def transform(batch: batching.Batch) -> batching.Batch:
            return {"inputs": to_sequences(batch["inputs"], perm), "labels": batch["labels"]}

        return batching.ArrayBatches.for_split(
            split,
            {"inputs": batching.of_split(self.images, split), "labels": self.labels[split]},
            batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_remainder=drop_remainder,
            transform=transform,
            process_index=process_index,
            process_count=process_count,
        )


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    permuted: bool = True,
    permutation_seed: int = PERMUTATION_SEED,
    validation_size: int = VALIDATION_SIZE,
    validation: Literal["last", "shuffle"] = "last",
    validation_seed: int = 0,
    source: Literal["files", "tfds"] = "files",
    verify: bool = True,
) -> MNIST:
    """Loads (permuted) sequential MNIST.

    Args:
        data_dir: data root (files: `<root>/mnist/`; tfds: a prepared TFDS data dir).
        permuted: apply the fixed permutation (pMNIST); False keeps raster order.
        permutation_seed: seed of that permutation.
        validation_size: training images moved to "valid" (0: no validation).
        validation: "last" takes the last images of train, "shuffle" a random
            subset chosen with `validation_seed`.
        source: "files" (idx files) or "tfds" (`tfds.data_source`, optional extra).
        verify: check the idx files against their published sha256s (data.checksums).

    Raises:
        DataError: missing or corrupt files, labels outside 0..9, or inconsistent
            image/label counts.
        ValueError: `validation_size` not a whole number in [0, N), N the training
            images (the message names it `config.data.validation_size`, as the
            binaries set it), or another argument of the wrong type or out of range.
    """
    check_data_dir(data_dir)
    check_switch(permuted, "permuted")
    check_whole(permutation_seed, "permutation_seed", 0, SEED_LIMIT)
    # named as the binaries' flag sets it, as the range check below (which needs the
    # training images): 2.5 or None failed in a comparison or a slice, True was 1
    check_whole(validation_size, "config.data.validation_size")
    check_choice(validation, "validation", VALIDATIONS)
    check_whole(validation_seed, "validation_seed", 0, SEED_LIMIT)
    check_choice(source, "source", SOURCES)
    check_switch(verify, "verify")
    if source == "tfds":
        from rnnreg_jax.data import tfds_source

        raw = tfds_source.mnist_arrays(data_dir)
    else:  # "files"
        folder = dataset_dir("mnist", data_dir, verify=verify)
        raw = {}
        for split, (img_stem, lbl_stem) in FILES.items():
            images = read_idx(folder, img_stem, IMAGE_MAGIC)
            labels = read_idx(folder, lbl_stem, LABEL_MAGIC)
            if len(images) != len(labels):
                raise DataError(
                    f"MNIST files {folder / img_stem} and {folder / lbl_stem} hold "
                    f"{len(images)} images but {len(labels)} labels; {_REFETCH}."
                )
            if images.size != len(images) * NUM_PIXELS:  # a header of other sizes
                raise DataError(
                    f"MNIST file {folder / img_stem} holds images of "
                    f"{images.size // max(len(images), 1)} pixels, not {NUM_PIXELS}; "
                    f"{_REFETCH}."
                )
            raw[split] = (images.reshape(len(images), NUM_PIXELS), labels.astype(np.int32))
    train_x, train_y = raw["train"]
    n = len(train_x)
    if not 0 <= validation_size < n:  # named as the binaries' flag sets it
        raise ValueError(f"config.data.validation_size must be in [0, {n}) ({n} training "
                         f"images), got {validation_size}.")
    if validation == "last":
        order = np.arange(n)
    else:  # "shuffle"
        order = np.random.RandomState(validation_seed).permutation(n)
    keep, held = np.sort(order[: n - validation_size]), np.sort(order[n - validation_size :])
    return MNIST(
        images={"train": train_x[keep], "valid": train_x[held], "test": raw["test"][0]},
        labels={"train": train_y[keep], "valid": train_y[held], "test": raw["test"][1]},
        permutation=permutation(permutation_seed) if permuted else None,
    )


_REFETCH = "delete them and download or copy them again (see docs/DATA.md)"
