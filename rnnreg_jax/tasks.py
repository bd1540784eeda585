"""From an experiment config to a `Task`: data sources plus the model.

Shared by the experiment binaries and notebooks:

    from experiments.configs import ptb
    from experiments.configs.common import regularization
    config = ptb.zaremba_small()
    task = build_task(config, regularization(config.reg), data_dir="../shared/data")
    train_and_evaluate(task, config.train, workdir)

Evaluation protocols (docs/TRAINING.md, docs/FIDELITY.md):
  * LM with carried state (Zaremba, Gal): validation on `eval_batch_size`
    contiguous streams with carried state; test is one pass over the test
    stream with batch `test_batch_size` (1: the papers' protocol, the last
    window zero-padded and masked by `weights`) and carried state.
  * LM trained without state carry but evaluated with it (`eval_carry_state`,
    the zoneout authors' word-level code): validation and test on
    `eval_batch_size` contiguous streams with carried state.
  * LM without state carry (the zoneout authors' character-level code):
    validation and test on non-overlapping windows with the state reset per
    window; the incomplete last batch of windows is dropped.
"""

from __future__ import annotations

import ml_collections

from rnnreg_jax import data as rdata
from rnnreg_jax.data.sentiment import PADDINGS
from rnnreg_jax.models import LanguageModel, SequenceModel
from rnnreg_jax.nn import OPTION_FIELDS
from rnnreg_jax.regularizers import Regularizer
from rnnreg_jax.train import Task

# data.batching of the language models: streams carried in fixed or AWD-LSTM's drawn
# windows (docs/DATA.md), or independent windows, shuffled or overlapping
LM_BATCHINGS = ("contiguous", "variable", "shuffled", "overlapping")
# data.eval_tail: the last, shorter window of multi-stream evaluation ("drop": Zaremba's
# and Gal's loops stop at the last whole window; "pad": AWD-LSTM's evaluate() reads it)
EVAL_TAILS = ("drop", "pad")
_LM_FIELDS = ("embed_to_gates", "tie_embeddings", "embed_init_scale", "softmax_bias_init")


def recurrent_options(model_config, reg: Regularizer) -> dict:
    """The model block's `nn.RecurrentOptions`, passed straight on (a field the block
    does not set keeps the model's default), with the regularizer built from the reg
    block."""
    options = {k: model_config[k] for k in OPTION_FIELDS if k != "reg" and k in model_config}
    return {**options, "reg": reg}


def build_task(config: ml_collections.ConfigDict, reg: Regularizer,
               data_dir: str | None = None) -> Task:
    """The `Task` of a config: its data set decides the kind (language model,
    classification or regression)."""
    dataset = config.data.dataset
    if dataset in ("ptb_word", "ptb_char"):
        return _language_model(config, reg, data_dir)
    if dataset == "pmnist":
        return _pmnist(config, reg, data_dir)
    if dataset in ("cornell", "imdb"):
        return _sentiment(config, reg, data_dir)
    raise ValueError(f"Unknown dataset {dataset!r}; expected ptb_word, ptb_char, pmnist, "
                     "cornell or imdb.")


# config.data.dataset -> its folder in the data dir
_DATA_FOLDERS = {"ptb_word": "ptb_word", "ptb_char": "ptb_char", "pmnist": "mnist",
                 "cornell": "cornell_scale_v1.0", "imdb": "imdb"}


def check_data(config: ml_collections.ConfigDict, data_dir: str | None = None) -> None:
    """Checks the config's local data files against their published sha256s.

    The binaries call it before a run touches its workdir; `build_task` checks
    again, which costs nothing once the verdict is cached (data.checksums).

    Raises:
        DataError: a file differs from the published one.
    """
    d = config.data
    if _verify(d) and d.get("source", "files") == "files" and d.dataset in _DATA_FOLDERS:
        rdata.dataset_dir(_DATA_FOLDERS[d.dataset], data_dir, download=False)


def _verify(data_config) -> bool:
    """Whether the data files are checked against their published sha256s; records
    written before the field existed were always checked."""
    return bool(data_config.get("verify_checksums", True))


def _language_model(config, reg, data_dir) -> Task:
    d, m = config.data, config.model
    corpus = text_corpus(d, data_dir)
    carry = bool(config.train.carry_state)
    eval_carry = config.train.get("eval_carry_state")
    eval_carry = carry if eval_carry is None else bool(eval_carry)
    # The zoneout authors' per-epoch random shift of the training windows (docs/DATA.md);
    # records written before the field existed had none.
    augment = bool(d.get("augment", False))
    if d.batching in ("contiguous", "variable"):
        if augment:
            raise ValueError("data.augment shifts shuffled or overlapping windows; set it "
                             f"False with data.batching={d.batching}.")
        draws = _window_options(d) if d.batching == "variable" else None
        train = corpus.batches("train", d.batch_size, d.seq_len, mode=d.batching,
                               seed=d.shuffle_seed, window_options=draws)
    elif d.batching in ("shuffled", "overlapping"):
        if carry:  # each window follows no other: the carried state would be another's
            raise ValueError(f"train.carry_state carries the state from a window to the "
                             f"next of its stream, but data.batching={d.batching} draws "
                             f"windows in random order; use contiguous or variable "
                             f"batching, or set train.carry_state=False.")
        train = corpus.batches("train", d.batch_size, d.seq_len, mode="shuffled",
                               stride=d.stride, seed=d.shuffle_seed, random_offset=augment)
    else:
        raise ValueError(f"Unknown batching {d.batching!r}; expected one of "
                         f"{', '.join(LM_BATCHINGS)}.")
    pad = _pads_eval_tail(d)
    if carry:
        evals = {"valid": corpus.batches("valid", d.eval_batch_size, d.seq_len,
                                         mode="contiguous", pad_last=pad),
                 "test": _test_stream(corpus, d, pad)}
    elif eval_carry:  # trained from zero states, evaluated on streams (zoneout authors)
        evals = {split: corpus.batches(split, d.eval_batch_size, d.seq_len, mode="contiguous",
                                       pad_last=pad)
                 for split in ("valid", "test")}
    elif pad:
        raise ValueError("data.eval_tail='pad' pads the last window of evaluation streams, "
                         "but with train.carry_state and train.eval_carry_state off the "
                         "evaluation reads shuffled windows; set it 'drop'.")
    else:
        evals = {split: corpus.batches(split, d.eval_batch_size, d.seq_len, mode="shuffled",
                                       seed=0)
                 for split in ("valid", "test")}
    return Task(model=language_model(m, reg, corpus.vocab_size), kind="lm", train=train,
                evals=evals, carry_state=carry, test_protocol=carry,
                eval_carry_state=eval_carry)


# data block field -> `window_lengths` argument, for data.batching=variable; a block
# without one takes AWD-LSTM's value.
_WINDOW_FIELDS = {"window_short_prob": "short_prob", "window_std": "std",
                  "window_min_len": "min_len", "window_bucket": "bucket"}


def _window_options(data_config) -> dict:
    return {arg: data_config[field] for field, arg in _WINDOW_FIELDS.items()
            if field in data_config}


def text_corpus(data_config, data_dir: str | None = None) -> rdata.TextCorpus:
    """The PTB corpus (`ptb_word` or `ptb_char`) a config's data block names, checked as
    its record says."""
    load = rdata.load_ptb_word if data_config.dataset == "ptb_word" else rdata.load_ptb_char
    return load(data_dir, verify=_verify(data_config))


def language_model(model_config, reg: Regularizer, vocab_size: int) -> LanguageModel:
    """The `LanguageModel` a config's model block describes over a vocabulary of
    `vocab_size` (what `build_task` builds, without reading any data)."""
    m = model_config
    return LanguageModel(
        vocab_size=vocab_size, hidden_sizes=tuple(m.hidden_sizes), embed_size=m.embed_size,
        **{k: m[k] for k in _LM_FIELDS if k in m}, **recurrent_options(m, reg))


def _pads_eval_tail(data_config) -> bool:
    """Whether multi-stream evaluation keeps its last, shorter window (`data.eval_tail`;
    records from before the field dropped it)."""
    tail = data_config.get("eval_tail", "drop")
    if tail not in EVAL_TAILS:
        raise ValueError(f"data.eval_tail must be one of {', '.join(EVAL_TAILS)}; got "
                         f"{tail!r}.")
    return tail == "pad"


def _test_stream(corpus, d, pad_tail: bool):
    """The carried-state test pass: batch 1 is one stream with the last window padded
    (the papers' protocol); a larger `test_batch_size` splits the test tokens into that
    many contiguous streams (faster, e.g. for many MC samples), whose tail that does not
    fill a window is padded with `pad_tail` (`data.eval_tail`), else dropped."""
    batch = int(d.get("test_batch_size", 1))
    if batch < 1:
        raise ValueError(f"data.test_batch_size must be at least 1, got {batch}.")
    if batch == 1:
        return corpus.batches("test", 1, d.seq_len, mode="eval")
    return corpus.batches("test", batch, d.seq_len, mode="contiguous", pad_last=pad_tail)


def _pmnist(config, reg, data_dir) -> Task:
    d, m = config.data, config.model
    mnist = rdata.load_mnist(data_dir, permuted=d.permuted, permutation_seed=d.permutation_seed,
                             validation_size=d.validation_size, source=d.source,
                             verify=_verify(d))
    train = mnist.batches("train", d.batch_size, seed=d.shuffle_seed)
    evals = {split: mnist.batches(split, d.eval_batch_size) for split in ("valid", "test")
             if mnist.num_examples(split) > 0}
    model = SequenceModel(num_outputs=10, hidden_sizes=tuple(m.hidden_sizes),
                          **recurrent_options(m, reg))
    return Task(model=model, kind="classification", train=train, evals=evals,
                **_stateful(config))


def _sentiment(config, reg, data_dir) -> Task:
    d, m = config.data, config.model
    if d.dataset == "cornell":
        if d.get("source", "files") != "files":  # it was ignored: TFDS has no Cornell data
            raise ValueError(f"data.source={d.source} applies to IMDB; the Cornell scale "
                             "data is read from files (data.source=files).")
        # Records written before start_token existed put no START.
        data = rdata.load_cornell(data_dir, vocab_size=d.vocab_size, chunk_len=d.seq_len,
                                  seed=d.split_seed, split=d.split,
                                  start_token=d.get("start_token", False), verify=_verify(d))
        kind, outputs = "regression", 1
    else:
        data = rdata.load_imdb(data_dir, vocab_size=d.vocab_size, max_len=d.seq_len,
                               source=d.source, verify=_verify(d))
        kind, outputs = "classification", 2
    # "left": the authors' left padding, read by the recurrence; "lengths": each review
    # first and its length in the batch, for the model's seq_lengths (docs/FIDELITY.md).
    # Records written before the field existed were left-padded.
    padding = d.get("padding", "left")
    if padding not in PADDINGS:
        raise ValueError(f"data.padding must be one of {PADDINGS}, got {padding!r}.")
    train = data.batches("train", d.batch_size, seed=d.shuffle_seed, padding=padding)
    evals = {"test": data.batches("test", d.eval_batch_size, padding=padding)}
    model = SequenceModel(num_outputs=outputs, hidden_sizes=tuple(m.hidden_sizes),
                          vocab_size=data.num_ids, embed_size=m.embed_size,
                          head_init=m.get("head_init", "lecun_normal"), **recurrent_options(m, reg))
    return Task(model=model, kind=kind, train=train, evals=evals,
                target_scale=data.target_std if kind == "regression" else 1.0,
                **_stateful(config))


def _stateful(config) -> dict:
    """The carry settings a classifier's config asks for, for `Task` to refuse (they
    were recorded and ignored)."""
    return dict(carry_state=bool(config.train.get("carry_state", False)),
                eval_carry_state=config.train.get("eval_carry_state"))
