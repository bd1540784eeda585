"""Penn Treebank word-level presets of Zaremba et al. 2014 (Table 1 and their main.lua)
and Gal & Ghahramani 2016 (Table 1, word level, and their code extending Zaremba's)."""

from __future__ import annotations

from experiments.configs.common import paper_config, reg_config, train_config
from experiments.configs.ptb_blocks import assemble, data_block, model_block

# --- Zaremba et al. 2014 -------------------------------------------------------

def zaremba_config(*, hidden, init_scale, dropout, epochs, decay_after, decay, clip, seq_len,
                   paper, reg=None):
    """Zaremba's recipe at a size (also the base of Gal's)."""
    # main.lua: lr 1, SGD, loss summed over the window and averaged over the batch,
    # state carried between windows, batch 20. Its LSTM sums two nn.Linear
    # (i2h, h2h), each with a bias: two biases, both uniform in [-init, init].
    return assemble(
        data_block("ptb_word", 20, seq_len, "contiguous"),
        model_block(hidden, 2, init_scale, recurrent_bias=True),
        reg or reg_config(variational=dict(input=dropout, output=dropout, tie="step")),
        train_config(num_epochs=epochs, optimizer="sgd", learning_rate=1.0,
                     lr_schedule="zaremba", decay_after=decay_after, decay_factor=decay,
                     clip_norm=clip, loss_sum_over_time=True, carry_state=True),
        paper)


def zaremba_small():
    # Zaremba "small": 2x200, no dropout, 13 epochs, /2 after 4, T 20, clip 5, init 0.1.
    return zaremba_config(hidden=200, init_scale=0.1, dropout=0.0, epochs=13,
                          decay_after=4, decay=2.0, clip=5.0, seq_len=20,
                          paper=paper_config("Zaremba et al. 2014, Table 1 (small)",
                                             valid=120.7, test=114.5))


def zaremba_medium():
    # Zaremba "medium": 2x650, dropout 0.5, 39 epochs, /1.2 after 6, T 35, clip 5, init 0.05.
    return zaremba_config(hidden=650, init_scale=0.05, dropout=0.5, epochs=39,
                          decay_after=6, decay=1.2, clip=5.0, seq_len=35,
                          paper=paper_config("Zaremba et al. 2014, Table 1 (medium)",
                                             valid=86.2, test=82.7))


def zaremba_large():
    # Zaremba "large": 2x1500, dropout 0.65, 55 epochs, /1.15 after 14, T 35, clip 10, init 0.04.
    return zaremba_config(hidden=1500, init_scale=0.04, dropout=0.65, epochs=55,
                          decay_after=14, decay=1.15, clip=10.0, seq_len=35,
                          paper=paper_config("Zaremba et al. 2014, Table 1 (large)",
                                             valid=82.2, test=78.4))


# --- Gal & Ghahramani 2016 ------------------------------------------------------

def gal_config(*, size: str, tie: str, per_gate: bool, paper):
    """Gal's variational recipe on Zaremba's medium or large LSTM."""
    if size == "medium":
        # Zaremba medium with variational dropout: embedding and recurrent 0.2,
        # input and output 0.35 (Gal's medium model).
        reg = reg_config(variational=dict(input=0.35, output=0.35, recurrent=0.2,
                                          embedding=0.2, tie=tie, per_gate=per_gate))
        config = zaremba_config(hidden=650, init_scale=0.05, dropout=0.0, epochs=39,
                                decay_after=6, decay=1.2, clip=5.0, seq_len=35,
                                paper=paper, reg=reg)
    else:
        # Gal's large: embedding and recurrent 0.3, input and output 0.5, weight decay
        # 1e-7, lr /1.15 after epoch 10, 55 epochs, clip 10, init 0.04
        # (main_new_dropout_SOTA_v3.lua's params). Its decay takes 1e-7 of every weight
        # each step after the SGD step, whatever the learning rate (docs/FIDELITY.md).
        reg = reg_config(variational=dict(input=0.5, output=0.5, recurrent=0.3,
                                          embedding=0.3, tie=tie, per_gate=per_gate))
        config = zaremba_config(hidden=1500, init_scale=0.04, dropout=0.0, epochs=55,
                                decay_after=10, decay=1.15, clip=10.0, seq_len=35,
                                paper=paper, reg=reg)
        config.train.weight_decay = 1e-7
        config.train.weight_decay_mode = "step"
    # MC dropout with 1000 samples (his v3 script: 2000 mask sets a token; docs/FIDELITY.md)
    config.train.mc_samples = 1000 if tie == "sequence" else 0
    # His MC test pass (main_new_dropout_SOTA_v3.lua, run_MC_test): word-type dropout off,
    # every other mask drawn once per sample for the whole test stream.
    config.train.mc_embedding_dropout = False
    config.train.mc_masks = "pass"
    return config


# Gal & Ghahramani 2016, Table 1 (arXiv 1512.05287), rows "Variational (tied weights)",
# "(tied weights, MC)", "(untied weights)" and "(untied weights, MC)"; the MC rows have no
# validation number. "Untied" is one mask per gate, as in main_new_dropout_SOTA_v3.lua
# (lines 82-97), the script behind 77.9 / 75.2 / 73.4 (its lines 13-14; README, Update 3).

def variational_medium():
    return gal_config(size="medium", tie="sequence", per_gate=False, paper=paper_config(
        "Gal & Ghahramani 2016, Table 1 (medium, tied weights)",
        valid=81.8, test=79.7,  # "Variational (tied weights)"
        test_mc=79.0))  # "Variational (tied weights, MC)"


def variational_medium_untied():
    return gal_config(size="medium", tie="sequence", per_gate=True, paper=paper_config(
        "Gal & Ghahramani 2016, Table 1 (medium, untied weights: per-gate masks)",
        valid=81.9, test=79.7,  # "Variational (untied weights)"
        test_mc=78.6))  # "Variational (untied weights, MC)"


def variational_large():
    return gal_config(size="large", tie="sequence", per_gate=False, paper=paper_config(
        "Gal & Ghahramani 2016, Table 1 (large, tied weights)",
        valid=77.3, test=75.0,  # "Variational (tied weights)"
        test_mc=74.1))  # "Variational (tied weights, MC)"


def variational_large_untied():
    # The README's Update 4 reran this row with the word-type masks fixed (77.457 / 75.112 /
    # 73.319); the paper's numbers are kept.
    return gal_config(size="large", tie="sequence", per_gate=True, paper=paper_config(
        "Gal & Ghahramani 2016, Table 1 (large, untied weights: per-gate masks)",
        valid=77.9, test=75.2,  # "Variational (untied weights)"; v3 script lines 13-14
        test_mc=73.4))  # "Variational (untied weights, MC)"; v3 script line 13


def naive_dropout_medium():
    return gal_config(size="medium", tie="step", per_gate=False, paper=paper_config(
        "Gal & Ghahramani 2016: naive dropout baseline (medium), masks per step"))


def naive_dropout_large():
    return gal_config(size="large", tie="step", per_gate=False, paper=paper_config(
        "Gal & Ghahramani 2016: naive dropout baseline (large), masks per step"))

