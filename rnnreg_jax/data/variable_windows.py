"""AWD-LSTM's variable-length BPTT: contiguous streams cut into windows of drawn lengths.

Each training window's length is drawn on its own: the base length `bptt` with
probability `1 - short_prob`, else `bptt / 2`, then `max(min_len, int(N(base, std)))`
(AWD-LSTM's main.py with its defaults 0.05, 5 and 5). Windows follow each other along
the `B` streams with no gap or overlap, so a model carries its state across them as
with `ContiguousStreams`, and every target of the stream is trained on in every epoch,
the shorter last window included. Cutting the stream at different points each epoch
is the point: with fixed windows a token always sits at the same distance from the
start of its window.

The lengths of epoch `e` are a pure function of `(seed, e)` (legacy `RandomState`,
fixed across numpy versions), so a resumed run sees the same windows, every host the
same cuts; the number of windows differs from epoch to epoch (`steps_in_epoch`).

A jitted step compiles once per distinct window length: on PTB's training stream at
batch 40 and `bptt` 70, the 500 epochs of seed 0 hold 92 lengths (2 to 94; the short
ones are the epochs' last windows and the `bptt / 2` draws). `bucket=k` pads each
window to a multiple of `k` steps instead and marks the padding (`weights`, `lengths`):
12 shapes at `k = 8` for those 500 epochs, for up to `k - 1` steps of padding each, the
same training step (the carry is the state after the last real step, the loss and
AR/TAR cover the real steps). docs/DATA.md.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from rnnreg_jax.data.arguments import check_tokens, check_whole
from rnnreg_jax.data.batching import Batch, BatchSource, host_rows
from rnnreg_jax.data.errors import DataError

# AWD-LSTM's main.py: p(bptt / 2) = 0.05, std 5, at least 5 steps.
SHORT_PROB, STD, MIN_LEN = 0.05, 5.0, 5


def _check(value, name: str, expected: str, ok) -> None:
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (number and ok(value)):
        raise ValueError(f"{name} must be {expected}, got {value!r}.")


def window_lengths(n_tokens: int, bptt: int, seed: int, epoch: int, *,
                   short_prob: float = SHORT_PROB, std: float = STD,
                   min_len: int = MIN_LEN) -> np.ndarray:
    """The window lengths of epoch `epoch` over a stream of `n_tokens`: int64 `[W]`.

    Windows start at 0 and at each previous window's end while the start is below
    `n_tokens - 2`, and a window ends at the stream's last target at the latest
    (main.py's `while i < train_data.size(0) - 1 - 1` and utils.py's `get_batch`), so
    the lengths sum to `n_tokens - 1`, but for one target left over when the last start
    would be `n_tokens - 2`.
    """
    return drawn_windows(n_tokens, bptt, seed, epoch, short_prob=short_prob, std=std,
                         min_len=min_len)[2]


def drawn_windows(n_tokens: int, bptt: int, seed: int, epoch: int, *,
                  short_prob: float = SHORT_PROB, std: float = STD,
                  min_len: int = MIN_LEN) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(starts, drawn, lengths)` of epoch `epoch`'s windows, int64 `[W]` each: where each
    starts, the length drawn for it and the length it has (`window_lengths`; the drawn
    one cut at the stream's last target, so they differ in the last window at most).
    AWD-LSTM scales a window's learning rate by its drawn length (main.py line 135 reads
    `seq_len` before `get_batch` cuts it)."""
    _check(bptt, "bptt", "an integer >= 1", lambda v: float(v).is_integer() and v >= 1)
    _check(short_prob, "short_prob", "a probability in [0, 1]", lambda v: 0 <= v <= 1)
    _check(std, "std", "a finite number >= 0", lambda v: 0 <= v < math.inf)
    _check(min_len, "min_len", "an integer >= 1", lambda v: float(v).is_integer() and v >= 1)
    bptt, min_len = int(bptt), int(min_len)
    if n_tokens < 3:
        raise DataError(f"A stream of {n_tokens} tokens is too short for a window; use a "
                        "smaller batch size.")
    rng = np.random.RandomState([seed % 2**32, epoch % 2**32, 2])
    starts_below = n_tokens - 2
    blocks: list[np.ndarray] = []
    covered = 0
    while covered < starts_below:  # draw in blocks: every window is at least min_len long
        n = starts_below // min_len + 1
        short = rng.random_sample(n) >= 1.0 - short_prob
        base = np.where(short, bptt / 2.0, float(bptt))
        block = np.maximum(min_len, np.trunc(rng.normal(base, std)).astype(np.int64))
        blocks.append(block)
        covered += int(block.sum())
    drawn = np.concatenate(blocks)
    starts = np.concatenate([[0], np.cumsum(drawn)[:-1]])
    keep = starts < starts_below
    starts, drawn = starts[keep], drawn[keep]
    return starts, drawn, np.minimum(drawn, n_tokens - 1 - starts)


class VariableLengthStreams(BatchSource):
    """`B` contiguous streams (`ContiguousStreams`' cut) read in windows of drawn lengths.

    Batch `k` of epoch `e`: inputs `x[:, s:s+T]`, targets `x[:, s+1:s+T+1]`, with `T` the
    `k`-th of `window_lengths(stream_length, bptt, seed, e, ...)` and `s` the sum of the
    ones before it, and `drawn_length` int32 `[B/P]` the length drawn for it (`T` but
    in an epoch's last window, cut at the stream's end; the learning-rate factor reads
    it). `num_batches` (`steps_per_epoch`) is epoch 0's count, the nominal one;
    `steps_in_epoch(e)` is epoch `e`'s. Each host gets its slice of the streams.

    `bucket=k > 1`: each window zero-padded to the next multiple of `k` steps, with
    `weights` float32 `[B/P, T_k]` (1 on the `T` real targets) and `lengths` int32
    `[B/P]` (`T` in every row; the model's `seq_lengths`).
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, bptt: int, *, seed: int = 0,
                 short_prob: float = SHORT_PROB, std: float = STD, min_len: int = MIN_LEN,
                 bucket: int = 1, process_index: int | None = None,
                 process_count: int | None = None):
        _check(bucket, "bucket", "an integer >= 1", lambda v: float(v).is_integer() and v >= 1)
        self.bucket = int(bucket)
        tokens = check_tokens(tokens)
        # a batch size of 2.0 failed in a reshape, 0 was a stream "too short"
        check_whole(batch_size, "batch_size", 1)
        check_whole(seed, "seed")
        length = len(tokens) // batch_size
        if length < 3:
            raise DataError(f"{len(tokens)} tokens cannot make {batch_size} streams of at "
                            "least 3 tokens; use a smaller batch size.")
        lo, hi = host_rows(batch_size, process_index, process_count)
        self.streams = tokens[: batch_size * length].reshape(batch_size, length)[lo:hi]
        self.stream_length = length
        self.seq_len = bptt
        self.seed = seed
        self.short_prob, self.std, self.min_len = short_prob, std, min_len
        self.global_batch_size = batch_size
        self.local_batch_size = hi - lo
        self._cache: tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        self.num_batches = self.steps_in_epoch(0)  # also checks the settings

    def windows(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`drawn_windows` of epoch `epoch`: `(starts, drawn, lengths)` (the last epoch's
        are cached)."""
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, drawn_windows(
                self.stream_length, self.seq_len, self.seed, epoch,
                short_prob=self.short_prob, std=self.std, min_len=self.min_len))
        return self._cache[1]

    def steps_in_epoch(self, epoch: int) -> int:
        """The number of windows (batches) of epoch `epoch`."""
        return len(self.windows(epoch)[0])

    def get_batch(self, epoch: int, index: int) -> Batch:
        starts, drawn, lengths = self.windows(epoch)
        if not 0 <= index < len(lengths):
            raise IndexError(f"batch {index} not in [0, {len(lengths)}) of epoch {epoch}")
        s, t = int(starts[index]), int(lengths[index])
        rows = self.local_batch_size
        batch = {"inputs": self.streams[:, s:s + t].astype(np.int32),
                 "targets": self.streams[:, s + 1:s + t + 1].astype(np.int32),
                 "drawn_length": np.full(rows, drawn[index], np.int32)}
        if self.bucket == 1:
            return batch
        pad = -t % self.bucket
        weights = np.zeros((rows, t + pad), np.float32)
        weights[:, :t] = 1.0
        return dict(batch, inputs=np.pad(batch["inputs"], ((0, 0), (0, pad))),
                    targets=np.pad(batch["targets"], ((0, 0), (0, pad))),
                    weights=weights, lengths=np.full(rows, t, np.int32))

    def iterate(self, epoch: int = 0, start_batch: int = 0):
        """Yields batches `start_batch, ...` of epoch `epoch`, to its last window."""
        for index in range(start_batch, self.steps_in_epoch(epoch)):
            yield self.get_batch(epoch, index)

