"""Optional TFDS source for MNIST and IMDB (`source="tfds"`).

Reads an already prepared TFDS data dir (local or `gs://...`) with
`tfds.data_source`, which needs `tensorflow_datasets` (plus
`importlib_resources` and Pillow) but not TensorFlow; the datasets must have
been prepared in the `array_record` file format. This module is imported only
when a loader is called with `source="tfds"`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from rnnreg_jax.data.errors import DataError

INSTALL = "pip install 'rnnreg_jax[tfds]' or use the default source='files'"


def import_tfds() -> Any:
    """Imports `tensorflow_datasets` or raises a one-sentence DataError."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(
            f"The TFDS source needs tensorflow_datasets, which cannot be imported ({e}); {INSTALL}."
        ) from None
    return tfds


def data_source(name: str, split: str, data_dir: str | os.PathLike | None) -> Any:
    """Returns `tfds.data_source(name, split=split, data_dir=data_dir)` with clear errors."""
    tfds = import_tfds()
    try:
        return tfds.data_source(
            name, split=split, data_dir=None if data_dir is None else os.fspath(data_dir)
        )
    except Exception as e:  # TFDS raises many types; the user needs one sentence
        msg = " ".join(str(e).split())[:300]
        raise DataError(
            f"TFDS data set {name} split {split} cannot be read from {data_dir} ({msg}); "
            "prepare it there with file_format='array_record' as in docs/DATA.md."
        ) from None


def _records(ds: Any, chunk: int = 4096) -> list[dict]:
    n = len(ds)
    getitems = getattr(ds, "__getitems__", None)
    if getitems is None:
        return [ds[i] for i in range(n)]
    out: list[dict] = []
    for lo in range(0, n, chunk):
        out.extend(getitems(list(range(lo, min(lo + chunk, n)))))
    return out


def mnist_arrays(data_dir: str | os.PathLike | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Returns `{"train"|"test": (uint8 [N, 784], int32 [N])}` from TFDS `mnist`."""
    out = {}
    for split in ("train", "test"):
        recs = _records(data_source("mnist", split, data_dir))
        images = np.stack([np.asarray(r["image"], np.uint8).reshape(784) for r in recs])
        labels = np.asarray([int(r["label"]) for r in recs], np.int32)
        out[split] = (images, labels)
    return out


def imdb_reviews(data_dir: str | os.PathLike | None) -> dict[str, list[tuple[int, int, str]]]:
    """Returns `{"train"|"test": [(label, index, text)]}` from TFDS `imdb_reviews` (1 = pos)."""
    out = {}
    for split in ("train", "test"):
        recs = _records(data_source("imdb_reviews", split, data_dir))
        items = []
        for i, r in enumerate(recs):
            text = r["text"]
            text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
            items.append((int(r["label"]), i, text))
        out[split] = items
    return out
