"""The blocks every Penn Treebank preset is assembled from: the data block, the model
block (with every field a flag can set, so any preset can be switched to any setting) and
the whole config."""

from __future__ import annotations

import ml_collections


def data_block(dataset: str, batch_size: int, seq_len: int, batching: str,
               **kw) -> ml_collections.ConfigDict:
    """The data block: every field a flag can set, the given ones as the preset wants."""
    data = ml_collections.ConfigDict()
    data.dataset = dataset  # "ptb_word" or "ptb_char"
    data.batch_size = batch_size  # global batch B (split over devices and hosts)
    data.seq_len = seq_len  # window length T
    # "contiguous" (streams, state carried), "variable" (the same streams in windows of
    # lengths drawn around seq_len each epoch, AWD-LSTM's), "shuffled", "overlapping"
    data.batching = batching
    data.stride = kw.pop("stride", seq_len)  # window start spacing for "overlapping"
    data.eval_batch_size = kw.pop("eval_batch_size", batch_size)  # validation batch
    # The test pass of carried-state runs: streams of this batch with the state carried
    # (1: Zaremba's and Gal's protocol, one stream, the last window padded).
    data.test_batch_size = kw.pop("test_batch_size", 1)
    # The streams' last, shorter window in validation (and a test of several streams):
    # "drop" (Zaremba's and Gal's loops) or "pad" (zero-padded and masked, AWD-LSTM's).
    data.eval_tail = kw.pop("eval_tail", "drop")
    # window order of "shuffled" batching, the window lengths of "variable"
    data.shuffle_seed = kw.pop("shuffle_seed", 0)
    # batching="variable" (in every preset, so that any can be switched to it by flags):
    # each window seq_len, or seq_len / 2 with window_short_prob, plus N(0, window_std)
    # noise, truncated to an integer, at least window_min_len (AWD-LSTM's main.py)
    data.window_short_prob = 0.05
    data.window_std = 5.0
    data.window_min_len = 5
    # pad each window to a multiple of this many steps (masked): fewer compiled shapes
    # (12 instead of 92 over `awd`'s 500 epochs at 8) for up to 7 idle steps a window
    data.window_bucket = 1
    # "shuffled" / "overlapping": shift the training windows by a random offset in
    # [0, stride) every epoch, seeded by shuffle_seed (the zoneout authors' `augment`).
    data.augment = kw.pop("augment", False)
    data.verify_checksums = True  # check the files against their published sha256s
    assert not kw, kw
    return data


def model_block(hidden: int, layers: int, init_scale: float, cell: str = "lstm",
                recurrent_bias: bool = False, forget_bias: float = 0.0,
                orthogonal_init: bool = False) -> ml_collections.ConfigDict:
    """The model block of a `layers` x `hidden` language model, embedding as wide."""
    model = ml_collections.ConfigDict()
    model.cell = cell  # "lstm", "gru" or "rnn"
    model.recurrent_bias = recurrent_bias  # a second additive bias per layer (lstm, rnn)
    model.forget_bias = forget_bias  # constant on the forget gate's pre-activation (LSTMs)
    model.hidden_sizes = (hidden,) * layers  # widths, bottom first
    model.embed_size = hidden  # embedding width
    model.init_scale = init_scale  # every weight uniform in [-init_scale, init_scale]
    # the embedding's and softmax's own scale (None: init_scale) and the softmax bias's
    # draw ("uniform" as the weights, or "zeros")
    model.embed_init_scale = ml_collections.config_dict.placeholder(float)
    model.softmax_bias_init = "uniform"
    model.orthogonal_init = orthogonal_init  # instead: orthogonal weights, zero biases
    model.embed_to_gates = False  # embedding [V, G*H] straight into the first layer's gates
    model.tie_embeddings = False  # share embedding and softmax weights
    model.unroll = 1  # lax.scan unroll factor
    return model


def assemble(data, model, reg, train, paper) -> ml_collections.ConfigDict:
    """The whole config of a preset from its five blocks."""
    config = ml_collections.ConfigDict()
    config.data, config.model, config.reg, config.train, config.paper = (
        data, model, reg, train, paper)
    return config

