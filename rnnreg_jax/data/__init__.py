"""Data sets of rnnreg_jax: locate/download, verify, load and batch.

Loaders return small frozen dataclasses of numpy arrays; their `batches(...)`
methods return resumable, host-sharded iterators of plain numpy dicts (see
`batching`). Every data problem raises `DataError` with a one-sentence message.
The layout of a data dir and every preprocessing choice are in docs/DATA.md.
"""

from rnnreg_jax.data.batching import (
    ArrayBatches,
    BatchSource,
    ContiguousStreams,
    ShuffledWindows,
    epoch_permutation,
    eval_stream,
    host_rows,
)
from rnnreg_jax.data.errors import DataError
from rnnreg_jax.data.imdb import load_imdb
from rnnreg_jax.data.locate import cache_dir, dataset_dir, resolve_data_dir
from rnnreg_jax.data.mnist import MNIST, PERMUTATION_SEED, load_mnist
from rnnreg_jax.data.ptb import TextCorpus, load_ptb_char, load_ptb_word
from rnnreg_jax.data.sentiment import SentimentData, load_cornell
from rnnreg_jax.data.variable_windows import (
    VariableLengthStreams,
    drawn_windows,
    window_lengths,
)

__all__ = [
    "MNIST",
    "PERMUTATION_SEED",
    "ArrayBatches",
    "BatchSource",
    "ContiguousStreams",
    "DataError",
    "SentimentData",
    "ShuffledWindows",
    "TextCorpus",
    "VariableLengthStreams",
    "cache_dir",
    "dataset_dir",
    "drawn_windows",
    "epoch_permutation",
    "eval_stream",
    "host_rows",
    "load_cornell",
    "load_imdb",
    "load_mnist",
    "load_ptb_char",
    "load_ptb_word",
    "resolve_data_dir",
    "window_lengths",
]
