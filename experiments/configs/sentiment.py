"""Sentiment presets: Gal & Ghahramani 2016 (Cornell scale data regression) and IMDB.

Gal's BayesianRNN scripts (Keras; Sentiment_analysis_code/sentiment_lstm_regression.py
and its _naive twin), their default arguments: embedding 128, one LSTM (or GRU) of
128, dropout 0.5 on the inputs (p_W), the recurrent connections (p_U, one mask per
gate, Keras' implementation), the dense layer and the embedding (word types), L2
weight decay 1e-6 on every weight, Adam, batch 128, 200-word chunks (of the shuffled
reviews, START first, the chunk list cut 80/20), 250 epochs
(the GRU and naive-dropout scripts: 1250); test RMSE with the dropout approximation and with
MC dropout (T = 50 samples). The model is Keras 0.x's, as his fork of Keras defines it
(docs/FIDELITY.md): hard-sigmoid gates, the GRU's reset before the product and a
sigmoid candidate, Glorot / orthogonal x 1.1 init, classic dropout.
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import paper_config, pick_preset, reg_config, train_config

GAL_RATE = 0.5  # p_W = p_U = p_dense = p_emb: the scripts' defaults
GAL_WEIGHT_DECAY = 2e-6  # Keras l2(1e-6) adds 1e-6 * sum(W^2) to the loss, 2e-6 * W to the
#                          gradient; ours adds weight_decay * W to the gradient
GAL_EPOCHS = 250


def _config(*, dataset: str, cell: str, row: str, **reg) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    data = config.data = ml_collections.ConfigDict()
    data.dataset = dataset  # "cornell" (regression) or "imdb" (classification)
    # most frequent words kept (ids 0 pad, 1 start, 2 OOV); Gal's nb_words = 20000 keeps
    # Keras' ids below 20,000, which start at 4: 19,996 words
    data.vocab_size = 19996 if dataset == "cornell" else 20000
    data.seq_len = 200  # Cornell: chunk length; IMDB: reviews cut to the last 200 ids
    if dataset == "cornell":  # IMDB has its own train and test reviews, START first
        # "shuffled_reviews" (Gal's code: the reviews shuffled, then chunked, the chunk
        # list cut 80/20), "chunks" (the chunks shuffled: test chunks share reviews with
        # training) or "by_document" (docs/DATA.md)
        data.split = "shuffled_reviews"
        data.split_seed = 0  # the shuffle before the 80/20 split
        data.start_token = True  # START before each review, as Gal's start_char
    data.batch_size = 128
    data.eval_batch_size = 512
    data.shuffle_seed = 0
    data.source = "files"  # IMDB: "files" or "tfds"
    # "left": zeros before the review, read by the LSTM (Gal's Keras code, unmasked);
    # "lengths": the review first, the model stops at its length (docs/FIDELITY.md)
    data.padding = "left"
    data.verify_checksums = True  # check the files against their published sha256s
    model = config.model = ml_collections.ConfigDict()
    # Keras 0.x's DropoutLSTM / DropoutGRU (cells.keras: hard-sigmoid gates, the GRU's
    # reset before the product and sigmoid candidate, Glorot W, orthogonal x 1.1 U, forget
    # bias 1); "lstm" / "gru" for the PyTorch-style cells
    model.cell = f"keras_{cell}"
    model.hidden_sizes = (128,)
    model.embed_size = 128
    model.init_scale = None  # the embedding's uniform 0.05 (Keras' Embedding default)
    model.head_init = "glorot_uniform"  # Keras' Dense default ("lecun_normal": Flax's)
    model.unroll = 1
    config.reg = reg_config(**reg)
    config.train = train_config(
        num_epochs=GAL_EPOCHS, optimizer="adam", learning_rate=0.001, clip_norm=0.0,
        weight_decay=GAL_WEIGHT_DECAY, lr_schedule="constant", mc_samples=50,
        mc_chunk=5)  # 5 samples x 512 reviews per pass keeps MC under ~2 GB
    config.paper = paper_config(
        f"Gal & Ghahramani 2016, sentiment (cornell): {row}" if dataset == "cornell" else
        f"Gal & Ghahramani 2016's sentiment model on IMDB classification: {row} (no "
        "published number)")
    return config


def _variational(tie="sequence"):
    # eval_scaling: Keras 0.x's classic dropout, {0, 1} masks in training, times the keep
    # probability at evaluation, on every site (docs/FIDELITY.md)
    return dict(variational=dict(input=GAL_RATE, recurrent=GAL_RATE, output=GAL_RATE,
                                 embedding=GAL_RATE, per_gate=True, tie=tie,
                                 eval_scaling=True))


def variational_lstm():
    return _config(dataset="cornell", cell="lstm", row="variational LSTM", **_variational())


def variational_gru():
    config = _config(dataset="cornell", cell="gru", row="variational GRU", **_variational())
    config.train.num_epochs = 1250  # sentiment_gru_regression.py (the LSTM script: 250)
    return config


def naive_dropout():
    # Gal's Figure 1: naive dropout uses a fresh mask per step on inputs and
    # outputs and none on the recurrent connections or the word types (his naive
    # script also drops U per step and the word types; the figure defines the row).
    reg = dict(variational=dict(input=GAL_RATE, output=GAL_RATE, tie="step",
                                eval_scaling=True))
    config = _config(dataset="cornell", cell="lstm", row="naive dropout LSTM", **reg)
    config.train.num_epochs = 1250  # sentiment_lstm_regression_naive.py
    return config


def _without_mc(config):
    # no noise to sample: MC dropout would repeat the deterministic pass 50 times
    config.train.mc_samples = 0
    return config


def no_dropout():
    return _without_mc(_config(dataset="cornell", cell="lstm", row="LSTM without dropout"))


def imdb_variational():
    return _config(dataset="imdb", cell="lstm", row="variational LSTM", **_variational())


def imdb_baseline():
    return _without_mc(_config(dataset="imdb", cell="lstm", row="LSTM without dropout"))


def tiny():
    config = variational_lstm()
    config.model.hidden_sizes = (8,)
    config.model.embed_size = 8
    config.data.vocab_size = 500
    config.data.seq_len = 20
    config.data.batch_size = 16
    config.train.num_epochs = 1
    config.train.max_steps = 5
    config.train.mc_samples = 4
    return config


PRESETS = {fn.__name__: fn for fn in (variational_lstm, variational_gru, naive_dropout,
                                      no_dropout, imdb_variational, imdb_baseline, tiny)}


def get_config(name: str) -> ml_collections.ConfigDict:
    """The preset `name`, for `--config=experiments/configs/sentiment.py:NAME` (the
    `ml_collections` config-file convention of Flax's examples and big_vision)."""
    return pick_preset(PRESETS, name, " in experiments/configs/sentiment.py")
