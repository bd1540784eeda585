"""Batch iterators: plain numpy dicts, host-sharded, resumable, seeded per epoch.

Every iterator here has the same small protocol (`BatchSource`):

* `num_batches` (alias `steps_per_epoch`): global batches per epoch;
* `get_batch(epoch, index)`: batch `index` of epoch `epoch`, a pure function
  of `(seed, epoch, index)`, so a trainer that checkpoints `(epoch, index)`
  resumes bit-exactly;
* `iterate(epoch=0, start_batch=0)`: `get_batch` for `index >= start_batch`.

Multi-host: the global batch `B` is split across `process_count` hosts; host
`i` gets rows `[i*B/P, (i+1)*B/P)` of every global batch, so the hosts
together read each example once. `B % P != 0` is a DataError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np

from rnnreg_jax.data.arguments import check_switch, check_tokens, check_whole
from rnnreg_jax.data.errors import DataError
from rnnreg_jax.shown import shown

Batch = dict[str, np.ndarray]
def of_split(by_split: Mapping[str, np.ndarray], split: str) -> np.ndarray:
    """`by_split[split]`, or a ValueError naming the splits there are (as PTB's)."""
    if split not in by_split:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(by_split)}")
    return by_split[split]


def host_rows(
    global_batch: int, process_index: int | None = None, process_count: int | None = None
) -> tuple[int, int]:
    """Returns `(lo, hi)`: this host's rows of a global batch.

    Args:
        global_batch: rows of the global batch `B`.
        process_index: this host's index `i`; default `jax.process_index()`.
        process_count: number of hosts `P`; default `jax.process_count()`.

    Raises:
        DataError: `B` is not divisible by `P` or `i` is out of range.
    """
    if process_index is None or process_count is None:
        import jax  # imported here so the data package loads without initializing jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(f"Process index {process_index} is not in [0, {process_count}).")
    if global_batch < 1 or global_batch % process_count:
        raise DataError(
            f"Global batch size {global_batch} is not a positive multiple of the "
            f"{process_count} processes; choose a batch size divisible by the process count."
        )
    per = global_batch // process_count
    return process_index * per, (process_index + 1) * per


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """Returns the shuffling order of epoch `epoch`: int64 `[n]`.

    Seeded by `(seed, epoch)` with the legacy `RandomState`, whose stream numpy
    keeps fixed across versions, so resumed runs see the same order. `n` is a whole
    number >= 0 and `seed`, `epoch` whole numbers (taken modulo 2**32), else a
    one-sentence ValueError (2.5 failed in numpy, -1 gave an empty order).
    """
    n = check_whole(n, "n", 0)
    # as Python ints: a numpy int32 seed overflowed in `seed % 2**32`
    seed, epoch = check_whole(seed, "seed"), check_whole(epoch, "epoch")
    rng = np.random.RandomState([seed % 2**32, epoch % 2**32])
    return rng.permutation(n)


def epoch_offset(high: int, seed: int, epoch: int) -> int:
    """Returns the start offset of epoch `epoch`'s window grid: an int in `[0, high)`.

    A pure function of `(seed, epoch)` (legacy `RandomState`, stable across numpy
    versions), drawn apart from `epoch_permutation`'s stream, so resumed runs see
    the same windows.
    """
    if high <= 1:
        return 0
    rng = np.random.RandomState([seed % 2**32, epoch % 2**32, 1])
    return int(rng.randint(high))


def _cached_permutation(owner: object, n: int, seed: int, epoch: int) -> np.ndarray:
    # One permutation per epoch, not per batch: keep the last one on the iterator.
    cached = getattr(owner, "_perm_cache", None)
    if cached is None or cached[0] != (n, seed, epoch):
        cached = ((n, seed, epoch), epoch_permutation(n, seed, epoch))
        owner._perm_cache = cached  # type: ignore[attr-defined]  # noqa: SLF001 -- a cache on the caller
    return cached[1]


class BatchSource:
    """Common protocol; subclasses set `num_batches` and implement `get_batch`."""

    num_batches: int
    global_batch_size: int
    local_batch_size: int

    @property
    def steps_per_epoch(self) -> int:
        """Alias of `num_batches`."""
        return self.num_batches

    def __len__(self) -> int:
        return self.num_batches

    def get_batch(self, epoch: int, index: int) -> Batch:
        raise NotImplementedError

    def iterate(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Batch]:
        """Yields batches `start_batch, ..., num_batches - 1` of epoch `epoch`."""
        for index in range(start_batch, self.num_batches):
            yield self.get_batch(epoch, index)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} not in [0, {self.num_batches})")


class ContiguousStreams(BatchSource):
    """Zaremba's language-model batching: `B` parallel streams, windows of `T`.

    The tokens are cut into `B` streams, `data[:B*(N//B)].reshape(B, -1)`;
    window `k` has inputs `x[:, kT:kT+T]` and targets `x[:, kT+1:kT+T+1]`, in
    order, so a model can carry its state from window to window. There are
    `(N//B - 1)//T` windows per epoch (the tail is dropped) unless `pad_last`,
    which adds one shorter window zero-padded to `T` and adds a `weights` key
    (1.0 on real targets, 0.0 on padding) to every batch.

    Each host gets its slice of the `B` streams. Batches:
    `{"inputs": int32[B/P, T], "targets": int32[B/P, T]}` (+ `"weights": float32[B/P, T]`).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        *,
        pad_last: bool = False,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        tokens = check_tokens(tokens)
        check_whole(batch_size, "batch_size", 1)
        check_whole(seq_len, "seq_len", 1)
        check_switch(pad_last, "pad_last")
        length = len(tokens) // batch_size
        if length < 2:
            raise DataError(
                f"{len(tokens)} tokens cannot make {batch_size} streams of windows of "
                f"{seq_len}; use a smaller batch size or sequence length."
            )
        lo, hi = host_rows(batch_size, process_index, process_count)
        self.streams = tokens[: batch_size * length].reshape(batch_size, length)[lo:hi]
        self.stream_length = length
        self.seq_len = seq_len
        self.pad_last = pad_last
        self.global_batch_size = batch_size
        self.local_batch_size = hi - lo
        n_targets = length - 1
        self.num_batches = -(-n_targets // seq_len) if pad_last else n_targets // seq_len
        if self.num_batches < 1:
            raise DataError(
                f"Streams of {length} tokens are shorter than one window of {seq_len}; "
                "use a smaller batch size or sequence length."
            )

    def get_batch(self, epoch: int, index: int) -> Batch:
        """Returns window `index` (the same in every epoch: no shuffling)."""
        del epoch
        self._check_index(index)
        t = self.seq_len
        start = index * t
        stop = min(start + t, self.stream_length - 1)
        inputs = self.streams[:, start:stop].astype(np.int32)
        targets = self.streams[:, start + 1 : stop + 1].astype(np.int32)
        if not self.pad_last:
            return {"inputs": inputs, "targets": targets}
        pad = t - (stop - start)
        weights = np.ones((self.local_batch_size, t), np.float32)
        if pad:
            inputs = np.pad(inputs, ((0, 0), (0, pad)))
            targets = np.pad(targets, ((0, 0), (0, pad)))
            weights[:, t - pad :] = 0.0
        return {"inputs": inputs, "targets": targets, "weights": weights}


def eval_stream(tokens: np.ndarray, seq_len: int) -> ContiguousStreams:
    """The whole split as one stream (batch 1), every target covered once.

    The last window is zero-padded and every batch carries `weights`
    `float32[1, T]`. A batch of one cannot be split across hosts, so every host
    reads the whole stream (`process_count=1`); evaluate on one host or
    replicate.
    """
    return ContiguousStreams(tokens, 1, seq_len, pad_last=True, process_index=0, process_count=1)


class ShuffledWindows(BatchSource):
    """Independent windows of `T + 1` tokens, shuffled each epoch, no state carry.

    Window `w` starts at `w * stride` and gives inputs `x[s:s+T]`, targets
    `x[s+1:s+T+1]`. `stride=T` (default) makes consecutive windows share only
    their boundary token, so every token is a target exactly once (the
    zoneout-style non-overlapping setting); `stride=T+1` makes them fully
    disjoint; `stride<T` overlaps them (e.g. `T//2` for char-level). The
    incomplete last global batch is dropped.

    `random_offset`: every epoch shifts the whole grid by `epoch_offset(stride,
    seed, epoch)` tokens, so windows are not always cut at the same points (the
    zoneout authors' `augment`, their utils.py `PTB.open`); `stride - 1` tokens
    at the end are kept free for the shift, so every epoch has the same number
    of windows.

    Batches: `{"inputs": int32[B/P, T], "targets": int32[B/P, T]}`.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        *,
        stride: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        random_offset: bool = False,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        self.tokens = check_tokens(tokens)
        check_whole(batch_size, "batch_size", 1)
        check_whole(seq_len, "seq_len", 1)
        if stride is not None:
            check_whole(stride, "stride", 1)
        check_switch(shuffle, "shuffle")
        check_switch(random_offset, "random_offset")
        check_whole(seed, "seed")
        self.seq_len = seq_len
        self.stride = seq_len if stride is None else stride
        self.random_offset = random_offset
        room = self.stride - 1 if random_offset else 0  # the largest shift
        self.num_windows = max(0, (len(self.tokens) - 1 - room - seq_len) // self.stride + 1)
        self.lo, self.hi = host_rows(batch_size, process_index, process_count)
        self.global_batch_size = batch_size
        self.local_batch_size = self.hi - self.lo
        self.shuffle = shuffle
        self.seed = seed
        self.num_batches = self.num_windows // batch_size
        if self.num_batches < 1:
            raise DataError(
                f"{len(self.tokens)} tokens make {self.num_windows} windows of {seq_len + 1}, "
                f"fewer than one batch of {batch_size}; use a smaller batch or window."
            )
        self._offsets = np.arange(seq_len + 1)

    def window_order(self, epoch: int) -> np.ndarray:
        """Returns the window indices of epoch `epoch` in batch order."""
        if not self.shuffle:
            return np.arange(self.num_windows)
        return _cached_permutation(self, self.num_windows, self.seed, epoch)

    def start_offset(self, epoch: int) -> int:
        """Returns the shift of epoch `epoch`'s window grid (0 without `random_offset`)."""
        return epoch_offset(self.stride, self.seed, epoch) if self.random_offset else 0

    def get_batch(self, epoch: int, index: int) -> Batch:
        self._check_index(index)
        b = self.global_batch_size
        windows = self.window_order(epoch)[index * b : (index + 1) * b][self.lo : self.hi]
        starts = windows * self.stride + self.start_offset(epoch)
        rows = self.tokens[starts[:, None] + self._offsets].astype(np.int32)
        return {"inputs": rows[:, :-1], "targets": rows[:, 1:]}


class ArrayBatches(BatchSource):
    """Batches of examples from equally long arrays (MNIST, Cornell, IMDB).

    Each epoch visits the examples in `epoch_permutation(N, seed, epoch)` order
    (or in order with `shuffle=False`). With `drop_remainder=False` the last
    batch is filled up with example 0 and every batch gets `weights`
    `float32[B/P]` (1.0 real, 0.0 filler), so evaluation sees every example once
    with a fixed shape.

    Args:
        arrays: name -> array with the example axis first; all the same length.
        batch_size: global batch size `B`.
        transform: applied to each host batch (e.g. uint8 pixels to float32 sequences).
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_remainder: bool = True,
        transform: Callable[[Batch], Batch] | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        if not isinstance(arrays, Mapping):
            raise ValueError(f"arrays must be a mapping of names to arrays (a dict), got "
                             f"{type(arrays).__name__}.")
        if not arrays:
            raise ValueError("arrays must hold at least one array, got an empty mapping.")
        for key, a in arrays.items():
            if len(getattr(a, "shape", ())) < 1:  # a list failed only in get_batch
                got = "a 0-d array" if hasattr(a, "shape") else type(a).__name__
                raise ValueError(f"arrays[{key!r}] must be an array with the example axis "
                                 f"first, got {got}.")
        check_whole(batch_size, "batch_size", 1)
        check_switch(shuffle, "shuffle")
        check_whole(seed, "seed")
        check_switch(drop_remainder, "drop_remainder")
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be a function of a batch or None, got "
                             f"{shown(transform)}.")
        self.arrays = dict(arrays)
        lengths = {key: len(a) for key, a in self.arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays must all hold the same number of examples (their first "
                             f"axis), got {shown(lengths)}.")
        self.num_examples = next(iter(lengths.values()))
        self.lo, self.hi = host_rows(batch_size, process_index, process_count)
        self.global_batch_size = batch_size
        self.local_batch_size = self.hi - self.lo
        self.shuffle, self.seed = shuffle, seed
        self.drop_remainder = drop_remainder
        self.transform = transform
        n, b = self.num_examples, batch_size
        self.num_batches = n // b if drop_remainder else -(-n // b)
        if self.num_batches < 1:
            raise DataError(
                f"{n} examples are fewer than one batch of {b}; use a smaller batch size."
            )

    @classmethod
    def for_split(
        cls,
        split: str,
        arrays: Mapping[str, np.ndarray],
        batch_size: int,
        *,
        shuffle: bool | None = None,
        drop_remainder: bool | None = None,
        **kwargs,
    ) -> ArrayBatches:
        """`ArrayBatches` with the split's defaults: "train" shuffles and drops the
        remainder; other splits keep their order and every example (with `weights`)."""
        train = split == "train"
        return cls(arrays, batch_size,
                   shuffle=train if shuffle is None else shuffle,
                   drop_remainder=train if drop_remainder is None else drop_remainder,
                   **kwargs)

    def order(self, epoch: int) -> np.ndarray:
        """Returns the example indices of epoch `epoch` in batch order."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        return _cached_permutation(self, self.num_examples, self.seed, epoch)

    def get_batch(self, epoch: int, index: int) -> Batch:
        self._check_index(index)
        b = self.global_batch_size
        idx = self.order(epoch)[index * b : (index + 1) * b]
        weights = np.ones(b, np.float32)
        if len(idx) < b:
            weights[len(idx) :] = 0.0
            idx = np.concatenate([idx, np.zeros(b - len(idx), idx.dtype)])
        idx = idx[self.lo : self.hi]
        batch = {k: a[idx] for k, a in self.arrays.items()}
        if self.transform is not None:
            batch = self.transform(batch)
        if not self.drop_remainder:
            batch["weights"] = weights[self.lo : self.hi]
        return batch
