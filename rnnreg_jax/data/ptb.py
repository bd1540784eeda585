"""Penn Treebank, word and character level (Mikolov's simple-examples split).

Word level as in Zaremba's `data.lua`: every line gets an `<eos>` token at its
end, and word ids are given in order of first appearance in the training text
(`vocab_order="first_appearance"`, the default; `"frequency"` sorts by
descending count, ties by word, as TensorFlow's PTB reader). On the real data
the vocabulary has exactly 10,000 words and the splits 929,589 / 73,760 /
82,430 tokens.

Character level: the files hold symbols separated by spaces, `_` marking word
boundaries; the end of each line becomes the symbol `<eol>`. Real data: 49
symbols + `<eol>` = 50.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from rnnreg_jax.data import arguments, batching
from rnnreg_jax.data.errors import DataError, corrupt, find_file, read_text
from rnnreg_jax.data.locate import dataset_dir
from rnnreg_jax.data.variable_windows import VariableLengthStreams
from rnnreg_jax.shown import shown

SPLITS = ("train", "valid", "test")
EOS = "<eos>"
EOL = "<eol>"
UNK = "<unk>"
VocabOrder = Literal["first_appearance", "frequency"]
Mode = Literal["contiguous", "variable", "shuffled", "eval"]
VOCAB_ORDERS: tuple[str, ...] = get_args(VocabOrder)
MODES: tuple[str, ...] = get_args(Mode)


@dataclasses.dataclass(frozen=True, eq=False)
class TextCorpus:
    """A tokenized corpus with a vocabulary built on its training split.

    Attributes:
        vocab: id -> symbol.
        train, valid, test: int32 `[N]` token ids.
        name: "ptb_word" or "ptb_char".
    """

    vocab: tuple[str, ...]
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    name: str = ""

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def symbol_to_id(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.vocab)}

    def split(self, name: str) -> np.ndarray:
        """Returns the int32 `[N]` ids of split `name` ("train", "valid" or "test")."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    def decode(self, ids: np.ndarray) -> list[str]:
        """Maps ids back to symbols."""
        return [self.vocab[i] for i in np.asarray(ids).ravel()]

    def batches(
        self,
        split: str,
        batch_size: int,
        seq_len: int,
        *,
        mode: Mode = "contiguous",
        stride: int | None = None,
        seed: int = 0,
        random_offset: bool = False,
        window_options: dict | None = None,
        pad_last: bool = False,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> batching.BatchSource:
        """Returns a batch iterator over `split`.

        Args:
            split: "train", "valid" or "test".
            batch_size: global batch size `B` (ignored for "eval": 1).
            seq_len: window length `T`.
            mode: "contiguous" (Zaremba streams, carry state), "variable" (the
                same streams in windows of lengths drawn around `T` each epoch,
                AWD-LSTM's, `VariableLengthStreams`), "shuffled" (independent
                windows of `T+1`, shuffled per epoch, see `stride`) or "eval" (one
                stream of batch 1, padded last window, `weights`).
            stride: window stride for "shuffled" (default `T`).
            seed: shuffling seed for "shuffled", the lengths' seed for "variable".
            random_offset: "shuffled" only: shift the window grid by a random
                offset in `[0, stride)` every epoch (`ShuffledWindows`).
            window_options: "variable" only: `short_prob`, `std`, `min_len` (default
                AWD-LSTM's) and `bucket` of `VariableLengthStreams`.
            pad_last: "contiguous" only: keep the streams' last, shorter window,
                zero-padded to `T`, with `weights` in every batch (AWD-LSTM's
                evaluation counts every target); by default it is dropped.
            process_index, process_count: host sharding (default from jax).

        Returns:
            A `BatchSource` yielding `{"inputs": int32[B/P, T], "targets": int32[B/P, T]}`.
        """
        tokens = self.split(split)
        arguments.check_choice(mode, "mode", MODES)
        if window_options and mode != "variable":
            raise ValueError(f"window_options applies to mode 'variable', not {mode!r}.")
        if pad_last and mode != "contiguous":
            raise ValueError(f"pad_last applies to mode 'contiguous', not {mode!r}.")
        if mode == "contiguous":
            return batching.ContiguousStreams(
                tokens,
                batch_size,
                seq_len,
                pad_last=pad_last,
                process_index=process_index,
                process_count=process_count,
            )
        if mode == "shuffled":
            return batching.ShuffledWindows(
                tokens,
                batch_size,
                seq_len,
                stride=stride,
                seed=seed,
                random_offset=random_offset,
                process_index=process_index,
                process_count=process_count,
            )
        if random_offset:
            raise ValueError(f"random_offset applies to mode 'shuffled', not {mode!r}.")
        if mode == "variable":
            return VariableLengthStreams(tokens, batch_size, seq_len, seed=seed,
                                         **(window_options or {}), process_index=process_index,
                                         process_count=process_count)
        return batching.eval_stream(tokens, seq_len)  # mode "eval"


def build_vocab(tokens: list[str], order: VocabOrder = "first_appearance") -> tuple[str, ...]:
    """Returns the distinct tokens in the given order (see module docstring)."""
    if order == "first_appearance":
        return tuple(dict.fromkeys(tokens))  # dicts keep insertion order
    if order == "frequency":
        counts = collections.Counter(tokens)
        return tuple(sorted(counts, key=lambda w: (-counts[w], w)))
    raise ValueError(f"vocab_order must be one of {VOCAB_ORDERS}, got "
                     f"{shown(order)}.")


def to_ids(tokens: list[str], symbol_to_id: dict[str, int], path: object, what: str) -> np.ndarray:
    """Maps tokens to int32 ids; unknown tokens map to `<unk>` if the vocab has it."""
    try:  # fast path: C-level dict lookups, no per-token Python frame
        return np.fromiter(map(symbol_to_id.__getitem__, tokens), np.int32, len(tokens))
    except KeyError as e:
        if UNK not in symbol_to_id:
            raise corrupt(
                what, path, f"has the token {e.args[0]!r} that is not in the training vocabulary"
            ) from None
    unk = symbol_to_id[UNK]
    get = symbol_to_id.get
    return np.fromiter((get(t, unk) for t in tokens), np.int32, len(tokens))


def _tokenize(path: Path, what: str, line_end: str) -> list[str]:
    text = read_text(path, what)
    if not text.split():
        raise corrupt(what, path, "has no tokens")
    tokens = text.replace("\n", f" {line_end} ").split()
    return tokens


def _load(
    folder_name: str,
    file_pattern: str,
    line_end: str,
    data_dir: str | os.PathLike | None,
    vocab_order: VocabOrder,
    verify: bool,
) -> TextCorpus:
    arguments.check_choice(vocab_order, "vocab_order", VOCAB_ORDERS)  # before any file is read
    folder = dataset_dir(folder_name, data_dir, verify=verify)
    what = "PTB file"
    toks = {}
    paths = {}
    for s in SPLITS:
        name = file_pattern.format(s)
        paths[s] = find_file(folder, [name, name + ".gz"], what)
        toks[s] = _tokenize(paths[s], what, line_end)
    vocab = build_vocab(toks["train"], vocab_order)
    s2i = {w: i for i, w in enumerate(vocab)}
    ids = {s: to_ids(toks[s], s2i, paths[s], what) for s in SPLITS}
    return TextCorpus(vocab=vocab, name=folder_name, **ids)


def load_ptb_word(
    data_dir: str | os.PathLike | None = None,
    vocab_order: VocabOrder = "first_appearance",
    *,
    verify: bool = True,
) -> TextCorpus:
    """Loads word-level PTB from `<data_dir>/ptb_word/ptb.{train,valid,test}.txt[.gz]`.

    Args:
        data_dir: data root (None: `$RNNREG_DATA_DIR`, else the download cache).
        vocab_order: "first_appearance" (Zaremba) or "frequency".
        verify: check the files against their published sha256s (data.checksums).

    Returns:
        A `TextCorpus` whose splits are int32 `[N]` arrays with `<eos>` at line ends.

    Raises:
        DataError: a file is missing, empty, corrupt, differs from the published
            one, or has out-of-vocabulary words.
    """
    return _load("ptb_word", "ptb.{}.txt", EOS, data_dir, vocab_order, verify)


def load_ptb_char(
    data_dir: str | os.PathLike | None = None,
    vocab_order: VocabOrder = "first_appearance",
    *,
    verify: bool = True,
) -> TextCorpus:
    """Loads char-level PTB from `<data_dir>/ptb_char/ptb.char.{train,valid,test}.txt[.gz]`.

    Line ends become the symbol `<eol>`; word boundaries stay `_`. Arguments as
    `load_ptb_word`.

    Raises:
        DataError: a file is missing, empty, corrupt, differs from the published
            one, or has unseen symbols.
    """
    corpus = _load("ptb_char", "ptb.char.{}.txt", EOL, data_dir, vocab_order, verify)
    long = [s for s in corpus.vocab if len(s) != 1 and s != EOL]
    if long:
        folder = dataset_dir("ptb_char", data_dir, download=False, verify=False)
        raise DataError(
            f"PTB char files in {folder} hold the "
            f"multi-character symbol {long[0]!r}; use the space-separated ptb.char.*.txt files."
        )
    return corpus
