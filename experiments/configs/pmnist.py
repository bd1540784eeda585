"""Permuted sequential MNIST presets (Krueger et al. 2016, Table 1).

Zoneout paper: 1x100 LSTM, RMSProp lr 0.001 with decay 0.5, gradient clipping
at 1, 150 epochs; test error of the unregularized LSTM 0.102, recurrent
dropout 0.15 0.075, zoneout 0.15 (cells and hiddens) 0.069.
"""

from __future__ import annotations

import ml_collections

from experiments.configs.common import paper_config, reg_config, train_config


def _config(row: str, test_error: float | None = None, **reg) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "classification"
    data = config.data = ml_collections.ConfigDict()
    data.dataset = "pmnist"
    data.permuted = True  # False: sequential MNIST in raster order
    data.permutation_seed = 0  # np.random.RandomState(seed).permutation(784)
    data.validation_size = 5000  # last 5,000 training images held out for validation
    data.batch_size = 100  # global batch
    data.eval_batch_size = 1000  # validation / test batch
    data.shuffle_seed = 0  # example order per epoch
    data.source = "files"  # "files" (idx files) or "tfds"
    model = config.model = ml_collections.ConfigDict()
    model.cell = "lstm"
    model.hidden_sizes = (100,)
    model.init_scale = 0.05  # uniform init range (None: PyTorch's 1/sqrt(H))
    model.unroll = 1
    config.reg = reg_config(**reg)
    config.train = train_config(
        num_epochs=150, optimizer="rmsprop", learning_rate=0.001, rmsprop_decay=0.5,
        clip_norm=1.0, lr_schedule="constant")
    config.paper = paper_config(f"Krueger et al. 2016, Table 1 (pMNIST): {row}",
                                test=test_error)
    return config


def baseline():
    return _config("unregularized LSTM", 0.102)


def recurrent_dropout():
    return _config("recurrent dropout 0.15", 0.075, update_dropout=0.15)


def zoneout():
    return _config("zoneout z_c = z_h = 0.15", 0.069, zoneout_cells=0.15, zoneout_hiddens=0.15)


def tiny():
    """Seconds: 16 units on 28-pixel windows is not pMNIST; this keeps 784 steps but few batches."""
    config = _config("smoke test", zoneout_cells=0.15, zoneout_hiddens=0.15)
    config.model.hidden_sizes = (8,)
    config.data.batch_size = 16
    config.data.eval_batch_size = 500
    config.train.num_epochs = 1
    config.train.max_steps = 5
    return config


PRESETS = {fn.__name__: fn for fn in (baseline, recurrent_dropout, zoneout, tiny)}
