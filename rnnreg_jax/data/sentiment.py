"""Sentiment data: shared word ids and containers, and Pang & Lee's Cornell scale data.

Both use the Keras-style special ids `PAD = 0`, `START = 1`, `OOV = 2`; word
`k` of the vocabulary (most frequent first, ties by first appearance) has id
`k + 3`, so a vocabulary of `V` words needs `V + 3` embedding rows
(`num_ids`).

Cornell, as Gal's BayesianRNN `Sentiment_analysis_code` prepares it: the 4
authors in sorted order, one review per line of `subj.<author>`, its rating in
`rating.<author>`; lowercase whitespace tokens; the most frequent words; the reviews
shuffled with a fixed seed, `START` put before each, every review cut into chunks of
200 ids (a shorter last chunk, or a short review, left-padded with 0), each chunk with
its review's rating, and the chunk list, in the shuffled reviews' order, split 80/20
(`split="shuffled_reviews"`: only the review at the cut has chunks on both sides);
targets normalized with the training chunks' mean and std. `split="chunks"` shuffles
the chunks themselves before the cut, so most test chunks share their review (and its
rating) with training chunks; `split="by_document"` splits the reviews 80/20 first
(vocabulary from the training reviews).

IMDB lives in `imdb.py` and shares the ids and `SentimentData` defined here.

Padding (`PADDINGS`): the loaders left-pad, as the authors' Keras code does (the LSTM
reads the zeros first, nothing masked); `batches(..., padding="lengths")` moves each
sequence to the front instead (padding after it) and adds its length to the batch
(`"lengths": int32[B]`) for the model's `seq_lengths`, so the recurrence reads only the
sequence itself. Either way a sequence keeps the same ids (the same truncation).
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Literal

import numpy as np

from rnnreg_jax.data import arguments, batching
from rnnreg_jax.data.checksums import CORNELL_CRITICS
from rnnreg_jax.data.errors import corrupt, missing, read_text
from rnnreg_jax.data.locate import dataset_dir

PAD, START, OOV = 0, 1, 2
FIRST_WORD_ID = 3
CORNELL_FOLDER = "cornell_scale_v1.0"
PADDINGS = ("left", "lengths")  # the authors' left padding; sequence first with lengths
# How the Cornell reviews split into train and test (`load_cornell`).
CORNELL_SPLITS = ("shuffled_reviews", "chunks", "by_document")


def top_words(counts: collections.Counter, vocab_size: int) -> tuple[str, ...]:
    """The `vocab_size` most frequent words; ties keep first-appearance order."""
    return tuple(w for w, _ in counts.most_common(vocab_size))  # most_common is stable


def encode(tokens: list[str], word_to_id: dict[str, int]) -> list[int]:
    """Maps words to ids, unknown words to `OOV`."""
    get = word_to_id.get
    return [get(t, OOV) for t in tokens]


def word_ids(vocab: tuple[str, ...]) -> dict[str, int]:
    return {w: i + FIRST_WORD_ID for i, w in enumerate(vocab)}


def pad_left(seqs: list[list[int]], length: int) -> np.ndarray:
    """Left-pads (and keeps the last `length` ids of) each sequence: int32 `[N, length]`."""
    out = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        s = s[-length:]
        if s:
            out[i, length - len(s) :] = s
    return out


def sequence_lengths(inputs: np.ndarray) -> np.ndarray:
    """The number of ids after the left padding of each row of `inputs: [N, L]` (PAD
    only ever pads: word ids start at 3), at least 1: int32 `[N]`. A row of padding only
    (an empty review) counts one step, one PAD read, as `seq_lengths` needs."""
    inputs = np.asarray(inputs)
    first = np.where(inputs != PAD, np.arange(inputs.shape[1]), inputs.shape[1]).min(axis=1)
    return np.maximum(inputs.shape[1] - first, 1).astype(np.int32)


def to_right_padding(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded rows `[N, L]` as `(rows with the sequence first and PAD after it,
    their lengths int32 [N])` (`sequence_lengths`)."""
    inputs = np.asarray(inputs)
    lengths = sequence_lengths(inputs)
    width = inputs.shape[1]
    source = np.arange(width)[None, :] + (width - lengths)[:, None]  # step t reads this column
    moved = np.take_along_axis(inputs, np.minimum(source, width - 1), axis=1)
    return np.where(source < width, moved, PAD).astype(inputs.dtype), lengths


def check_padding(padding: str) -> str:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}.")
    return padding


@dataclasses.dataclass(frozen=True, eq=False)
class SentimentData:
    """Padded id sequences and targets per split.

    Attributes:
        inputs: split -> int32 `[N, L]` left-padded ids.
        targets: split -> float32 `[N]` normalized ratings (Cornell) or int32
            `[N]` labels, 1 = positive (IMDB).
        vocab: the words; word `vocab[k]` has id `k + 3`.
        target_mean, target_std: normalization of Cornell ratings (0, 1 for IMDB).
        doc_ids: split -> int32 `[N]` review each chunk came from (Cornell).
        target_key: batch key of the targets: "targets" (Cornell) or "labels" (IMDB).
    """

    inputs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    vocab: tuple[str, ...]
    target_mean: float = 0.0
    target_std: float = 1.0
    doc_ids: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    target_key: str = "targets"

    @property
    def num_ids(self) -> int:
        """Embedding rows needed: `len(vocab) + 3`."""
        return len(self.vocab) + FIRST_WORD_ID

    def num_examples(self, split: str) -> int:
        return len(batching.of_split(self.targets, split))

    def denormalize(self, y: np.ndarray) -> np.ndarray:
        """Maps normalized predictions back to the rating scale (for RMSE)."""
        return np.asarray(y) * self.target_std + self.target_mean

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
        padding: str = "left",
    ) -> batching.ArrayBatches:
        """Returns batches `{"inputs": int32[B/P, L], <target_key>: [B/P]}`.

        `shuffle` and `drop_remainder` default to True for "train", else False.
        `padding="left"`: the inputs as loaded (left-padded, the authors' protocol);
        `"lengths"`: each sequence first, PAD after it, and `"lengths": int32[B/P]`
        (`to_right_padding`) for the model's `seq_lengths`.
        """
        arrays = {"inputs": batching.of_split(self.inputs, split)}
        if check_padding(padding) == "lengths":
            arrays["inputs"], arrays["lengths"] = to_right_padding(arrays["inputs"])
        return batching.ArrayBatches.for_split(
            split,
            {**arrays, self.target_key: self.targets[split]},
            batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_remainder=drop_remainder,
            process_index=process_index,
            process_count=process_count,
        )


# ----------------------------------------------------------------------------- Cornell


def check_sizes(**sizes) -> None:
    """A one-sentence ValueError unless each of `sizes` is a whole number >= 1 (a zero or
    negative vocabulary made every word unknown; a zero or fractional length failed in
    numpy or range() without naming the argument)."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}.")


def read_cornell(
    data_dir: str | os.PathLike | None = None, verify: bool = True
) -> tuple[list[str], np.ndarray]:
    """Returns the reviews (authors sorted, file order) and their float32 ratings `[D]`."""
    root = dataset_dir(CORNELL_FOLDER, data_dir, verify=verify) / "scaledata"
    if not root.is_dir():
        raise missing("Cornell folder", root)
    # Exactly the published critics: without one the checksums (of files present) passed
    # and a third of the reviews went missing unseen; another folder was read in too.
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    absent = [a for a in CORNELL_CRITICS if a not in found]
    if absent:
        raise missing("Cornell critic folder", root / absent[0])
    extra = [a for a in found if a not in CORNELL_CRITICS]
    if extra:
        raise corrupt("Cornell folder", root, f"holds {extra} besides the data set's critics "
                      f"{list(CORNELL_CRITICS)}")
    authors = list(CORNELL_CRITICS)
    docs: list[str] = []
    ratings: list[float] = []
    for a in authors:
        subj, rating = root / a / f"subj.{a}", root / a / f"rating.{a}"
        for p in (subj, rating):
            if not p.is_file():
                raise missing("Cornell file", p)
        lines = read_text(subj, "Cornell file").splitlines()
        values = read_text(rating, "Cornell file").split()
        if len(lines) != len(values):
            raise corrupt(
                "Cornell file",
                rating,
                f"has {len(values)} ratings for {len(lines)} reviews in {subj.name}",
            )
        try:
            ratings.extend(float(v) for v in values)
        except ValueError as e:
            raise corrupt(
                "Cornell file", rating, f"has a value that is not a number ({e})"
            ) from None
        docs.extend(lines)
    return docs, np.asarray(ratings, np.float32)


def chunk(ids: list[int], chunk_len: int) -> list[list[int]]:
    """Cuts a review into `chunk_len`-word pieces (the last may be shorter; at least one)."""
    return [ids[i : i + chunk_len] for i in range(0, max(len(ids), 1), chunk_len)]


def _chunks(docs_ids: list[list[int]], ratings: np.ndarray, doc_index: np.ndarray, n: int,
            start_token: bool = False):
    """The chunks of the reviews `doc_index`, in that order: left-padded ids `[N, n]`, their
    reviews' ratings and the reviews' indices (`START` before each review's first word
    with `start_token`, so it counts in the 200 ids of its first chunk)."""
    pieces, ys, owners = [], [], []
    for d in doc_index:
        for c in chunk([START] * start_token + docs_ids[d], n):
            pieces.append(c)
            ys.append(ratings[d])
            owners.append(d)
    return pad_left(pieces, n), np.asarray(ys, np.float32), np.asarray(owners, np.int32)


def load_cornell(
    data_dir: str | os.PathLike | None = None,
    *,
    vocab_size: int = 20000,
    chunk_len: int = 200,
    test_fraction: float = 0.2,
    seed: int = 0,
    split: Literal["shuffled_reviews", "chunks", "by_document"] = "shuffled_reviews",
    start_token: bool = True,
    verify: bool = True,
) -> SentimentData:
    """Loads the Cornell scale data as 200-word chunks with normalized ratings.

    Args:
        data_dir: data root holding `cornell_scale_v1.0/scaledata/<author>/`.
        vocab_size: number of words kept (ids 3 .. vocab_size + 2); Gal's code keeps
            the ids below 20,000 of Keras' numbering, 19,996 words.
        chunk_len: ids per chunk `L`.
        test_fraction: share of chunks (or reviews, with "by_document") in "test".
        seed: `np.random.RandomState(seed)` shuffles the reviews (or the chunks, with
            "chunks"); seed 0 and "shuffled_reviews" give Gal's order of the reviews.
        split: "shuffled_reviews" (Gal's code: reviews shuffled, then chunked, the chunk
            list cut at `1 - test_fraction`), "chunks" (the chunks shuffled before the
            cut: most test chunks have a sibling of their review in training), or
            "by_document" (reviews split first; vocabulary from train reviews).
        start_token: put `START` before every review before chunking (Gal's code).
        verify: check the files against their published sha256s (data.checksums).

    Returns:
        `SentimentData` with splits "train" and "test": inputs int32 `[N, L]`,
        targets float32 `[N]` normalized by the training mean/std, `doc_ids`.
    """
    check_sizes(vocab_size=vocab_size, chunk_len=chunk_len)
    if not 0 < test_fraction < 1:  # NaN too; 1.5 split 50/50 and 1.0 made the mean NaN
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
    if split not in CORNELL_SPLITS:
        raise ValueError(f"split must be one of {CORNELL_SPLITS}, got {split!r}.")
    if not isinstance(start_token, bool | np.bool_):  # "False" from a config is truthy
        raise ValueError(f"start_token must be True or False, got {start_token!r}.")
    # RandomState's own error named no argument
    arguments.check_whole(seed, "seed", 0, arguments.SEED_LIMIT)
    docs, ratings = read_cornell(data_dir, verify)
    tokens = [d.lower().split() for d in docs]
    rng = np.random.RandomState(seed)
    # Gal's code shuffles the reviews after np.random.seed(seed): the order
    # RandomState(seed).permutation gives. "chunks" keeps the file order here.
    reviews = np.arange(len(docs)) if split == "chunks" else rng.permutation(len(docs))
    if split == "by_document":
        n_train = int(len(docs) * (1 - test_fraction))
        parts = {"train": reviews[:n_train], "test": reviews[n_train:]}
        counts = collections.Counter(t for d in parts["train"] for t in tokens[d])
    else:
        parts = {"all": reviews}
        counts = collections.Counter(t for doc in tokens for t in doc)
    w2i = word_ids(vocab := top_words(counts, vocab_size))
    ids = [encode(t, w2i) for t in tokens]
    chunks = {k: _chunks(ids, ratings, v, chunk_len, start_token) for k, v in parts.items()}
    if split != "by_document":  # the chunk list, in its reviews' order, cut in two
        x, y, owner = chunks.pop("all")
        order = rng.permutation(len(x)) if split == "chunks" else np.arange(len(x))
        n_train = int(len(x) * (1 - test_fraction))  # floor, as X[:int(0.8 * N)]
        for k, v in (("train", order[:n_train]), ("test", order[n_train:])):
            chunks[k] = x[v], y[v], owner[v]
    inputs, targets, owners = ({k: c[i] for k, c in chunks.items()} for i in range(3))
    mean, std = float(targets["train"].mean()), float(targets["train"].std())
    std = std if std > 0 else 1.0
    targets = {k: ((v - mean) / std).astype(np.float32) for k, v in targets.items()}
    return SentimentData(inputs, targets, vocab, mean, std, owners, "targets")
