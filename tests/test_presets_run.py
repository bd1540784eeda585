"""Every preset trains 2 steps and evaluates, shrunk but with its structure, so none rots.

Each preset of experiments/configs/{ptb,pmnist,sentiment}.py is built, shrunk
(8 units per layer, embeddings 8, batch 4, windows of 6, at most 2 MC samples)
keeping its cell, layer count, regularizers, optimizer and LR rule, loss
convention, batching mode and state carry, and run through
`experiments.main.run` on tiny generated data in the real layout. The cost is
XLA compile time, so the default suite runs one preset per distinct structure
(task, regularizer family, batching), all but two of them (DEFAULT says which); the
rest are `slow` (`pytest -m slow`).
pMNIST keeps its 784 pixel steps (the data fixes the length); only the image
count shrinks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments import cli
from experiments.configs import pmnist as pmnist_configs
from experiments.configs import ptb as ptb_configs
from experiments.configs import sentiment as sentiment_configs
from tests import data_fixtures as fx
from tests.config_reads import leaf_paths, record_reads
from tests.train_helpers import binary_flags

PRESETS = {"ptb": ptb_configs.PRESETS, "pmnist": pmnist_configs.PRESETS,
           "sentiment": sentiment_configs.PRESETS}

# One per distinct (task, regularizer family, batching) structure, except two left to the
# slow pass for time: ptb's variational_medium_untied (Gal's per-gate masks, MC, batch-1
# test) and pmnist's batchnorm_zoneout (lstm_bn). The rest are slow.
DEFAULT = {
    ("ptb", "zaremba_medium"),  # contiguous + carry, Zaremba's dropout and LR rule, no MC
    ("ptb", "recurrent_dropout_output_zoneout"),  # shuffled windows, Semeniuta, momentum/plateau
    ("ptb", "norm_stabilizer"),  # shuffled windows, loss penalty on the hidden norms
    ("ptb", "zoneout_char_overlapping"),  # char level, overlapping windows, zoneout, Adam
    ("ptb", "awd_small"),  # variable-length windows, weight drop, AR/TAR, NT-ASGD
    ("pmnist", "zoneout"),  # 784 steps, RMSProp
    ("sentiment", "variational_gru"),  # Cornell regression, GRU, per-gate masks, MC
    ("sentiment", "imdb_baseline"),  # IMDB classification
}

HIDDEN = 8
BATCH = 4
SEQ_LEN = 6


def _cases():
    for task, presets in PRESETS.items():
        for name in presets:
            marks = () if (task, name) in DEFAULT else (pytest.mark.slow,)
            yield pytest.param(task, name, id=f"{task}-{name}", marks=marks)


def test_default_subset_names_exist():
    for task, name in DEFAULT:
        assert name in PRESETS[task], (task, name)


def _word_text(rng: np.random.RandomState, lines: int, vocab: list[str]) -> str:
    out = []
    for _ in range(lines):
        n = rng.randint(4, 12)
        out.append(" " + " ".join(vocab[i] for i in rng.randint(0, len(vocab), n)) + " \n")
    return "".join(out)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """ptb_word, ptb_char, mnist, Cornell and IMDB in the real layout, big enough for
    batch 4 x windows of 6 (and batch-1 test streams) to have a few batches."""
    root = tmp_path_factory.mktemp("preset_data")
    rng = np.random.RandomState(0)
    vocab = [f"w{i}" for i in range(30)]
    texts = {"train": " " + " ".join(vocab) + " \n" + _word_text(rng, 60, vocab),
             "valid": _word_text(rng, 15, vocab), "test": _word_text(rng, 15, vocab)}
    fx.write_ptb_word(root, texts)
    # Characters: the words' letters, so every valid/test symbol is in the train vocabulary.
    char_texts = {s: " ".join(t.split(" ")[:80]) + " \n" for s, t in texts.items()}
    for split, text in char_texts.items():
        fx.write(root / "ptb_char" / f"ptb.char.{split}.txt", fx.char_text(text))
    fx.write_mnist(root, n_train=24, n_test=8)
    fx.write_cornell(root)
    fx.write_imdb(root)
    return str(root)


def shrink(config):
    """The preset's structure at toy size (every structural field left alone)."""
    d, m, t = config.data, config.model, config.train
    with config.unlocked():
        m.hidden_sizes = (HIDDEN,) * len(m.hidden_sizes)
        if "embed_size" in m:
            m.embed_size = HIDDEN
        d.batch_size = BATCH
        d.eval_batch_size = BATCH
        if "stride" in d:  # keep the window overlap ratio ("overlapping": stride T/2)
            d.stride = max(1, round(d.stride * SEQ_LEN / d.seq_len))
        if "seq_len" in d:
            d.seq_len = SEQ_LEN
        if "vocab_size" in d:
            d.vocab_size = 100
        if "validation_size" in d:
            d.validation_size = 8
        t.max_steps = 2
        t.mc_samples = min(int(t.mc_samples), 2)
        t.log_every_steps = 1
        t.tensorboard = False
        t.keep_checkpoints = 1
    return config


# (task, preset) -> (the config's field paths, the paths the run read), for
# test_every_preset_field_is_read at the end of this file.
FIELD_READS: dict[tuple[str, str], tuple[set[str], set[str]]] = {}


def _run(task: str, config, workdir: str, data_dir: str) -> dict:
    from experiments.main import run

    with binary_flags(workdir, data_dir), record_reads(config) as reads:
        out = run(task, config)
    FIELD_READS[(task, config.preset)] = (leaf_paths(config), reads)
    return out


@pytest.mark.parametrize("task,name", list(_cases()))
def test_preset_runs_two_steps(task, name, data_dir, tmp_path):
    config = PRESETS[task][name]()
    with config.unlocked():
        config.preset = name
    reference = PRESETS[task][name]()
    config = shrink(config)
    # The shrink kept the structure.
    assert config.model.cell == reference.model.cell
    assert len(config.model.hidden_sizes) == len(reference.model.hidden_sizes)
    assert config.reg.to_dict() == reference.reg.to_dict()
    for key in ("optimizer", "lr_schedule", "loss_sum_over_time", "carry_state", "weight_decay"):
        assert config.train[key] == reference.train[key], key
    assert config.data.get("batching") == reference.data.get("batching")

    final = _run(task, config, str(tmp_path / "wd"), data_dir)

    assert final["step"] == 2
    numbers = {k: v for k, v in final.items()
               if "/" in k and isinstance(v, int | float) and not k.startswith("train/")}
    assert "test/loss" in numbers, sorted(final)
    bad = {k: v for k, v in numbers.items() if not math.isfinite(v)}
    assert not bad, bad
    assert math.isfinite(final["train/loss"])
    if reference.train.mc_samples:
        assert math.isfinite(final["test_mc/loss"])
    train_events = [e for e in _events(tmp_path / "wd") if e["split"] == "train"]
    assert [e["step"] for e in train_events] == [1, 2]


def _events(workdir):
    from rnnreg_jax.train.logging import read_metrics

    return read_metrics(str(workdir))


@pytest.mark.slow
def test_full_size_awd_preset_runs_two_steps(tmp_path):
    """`awd` at its published size (3 layers 1150/1150/400, batch 40, windows drawn
    around 70, tied embeddings, NT-ASGD): only the data is toy, a 30-word text whose 40
    streams of 130 tokens make an epoch of two windows (69 and 60 long), so the two
    steps end an epoch and its NT-ASGD check runs."""
    rng = np.random.RandomState(1)
    vocab = [f"w{i}" for i in range(30)]
    texts = {"train": " " + " ".join(vocab) + " \n" + _word_text(rng, 600, vocab),
             "valid": _word_text(rng, 200, vocab), "test": _word_text(rng, 15, vocab)}
    fx.write_ptb_word(tmp_path / "data", texts)
    config = ptb_configs.awd()
    reference = ptb_configs.awd()
    with config.unlocked():
        config.preset = "awd"
        config.train.max_steps = 2
        config.train.log_every_steps = 1
        config.train.tensorboard = False
        config.train.keep_checkpoints = 1
    assert config.model.to_dict() == reference.model.to_dict()
    assert config.data.to_dict() == reference.data.to_dict()

    final = _run("ptb", config, str(tmp_path / "wd"), str(tmp_path / "data"))

    assert final["step"] == 2 and final["epoch"] == 1
    assert all(math.isfinite(final[k]) for k in ("train/loss", "valid/loss", "test/loss"))
    train_events = [e for e in _events(tmp_path / "wd") if e["split"] == "train"]
    assert [e["step"] for e in train_events] == [1, 2]


def test_reevaluating_a_run_reproduces_it_and_can_change_the_protocol(data_dir, tmp_path,
                                                                       capsys):
    """experiments.evaluate: the run's own config gives the run's final numbers; the
    zoneout word preset evaluated from zero states every window gives others."""
    from experiments import evaluate

    config = shrink(ptb_configs.baseline())
    with config.unlocked():
        config.preset = "baseline"
    final = _run("ptb", config, str(tmp_path), data_dir)
    again = evaluate.evaluate_workdir(str(tmp_path), checkpoint="latest", data_dir=data_dir)
    assert again["checkpoint"] == {"name": "latest", "epoch": 0, "step": 2}
    # By default the checkpoint the run's final evaluation read: best/ under early
    # stopping, which no epoch end of these 2 steps wrote, so the latest, as that one.
    own = evaluate.evaluate_workdir(str(tmp_path), data_dir=data_dir)
    assert own["checkpoint"]["name"] == "latest"
    assert own["valid"]["loss"] == pytest.approx(final["valid/loss"], rel=1e-6)
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        evaluate.evaluate_workdir(str(tmp_path), checkpoint="best", data_dir=data_dir)
    for split in ("valid", "test"):
        assert again[split]["loss"] == pytest.approx(final[f"{split}/loss"], rel=1e-6)
    reset = evaluate.evaluate_workdir(str(tmp_path), ["train.eval_carry_state=False"],
                                      checkpoint="latest", data_dir=data_dir)
    assert abs(reset["valid"]["loss"] - again["valid"]["loss"]) > 1e-6
    for override in (["--config.model.forget_bias=1"], ["--config.model.forget_bias", "1"],
                     ["--set", "model.forget_bias=1"]):  # --set: the older spelling
        assert evaluate.main([f"--workdir={tmp_path}", "--checkpoint=latest",
                              f"--data_dir={data_dir}", *override]) == 2
        assert "Only train.* fields" in capsys.readouterr().err
    assert evaluate.main([f"--workdir={tmp_path}", "--checkpoint=latest",
                          f"--data_dir={data_dir}", "--config.train.eval_carry_state=False"]) == 0
    shown = capsys.readouterr().out
    assert "with --config.train.eval_carry_state=False" in shown.splitlines()[0]
    assert f"valid: loss {reset['valid']['loss']:.4g}" in shown
    wider = evaluate.evaluate_workdir(str(tmp_path), ["data.eval_batch_size=2"],
                                      checkpoint="latest", data_dir=data_dir)
    assert math.isfinite(wider["valid"]["loss"])
    # Blocks' perplexity, the mean over batches of each batch's: above exp(mean loss)
    # (equal batches), by the spread of the batch losses.
    blocks = evaluate.evaluate_workdir(str(tmp_path), checkpoint="latest", data_dir=data_dir,
                                       batch_mean_ppl=True)
    for split in ("valid", "test"):
        assert blocks[split]["ppl_batch_mean"] > blocks[split]["ppl"] * (1 + 1e-6)
        assert blocks[split]["ppl"] == pytest.approx(again[split]["ppl"], rel=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sentiment_with_lengths_runs_two_steps(data_dir, tmp_path, cell):
    """`data.padding=lengths`: the batches carry each review's length, the model reads
    it as seq_lengths in training, evaluation and MC evaluation."""
    config = shrink(sentiment_configs.tiny())
    with config.unlocked():
        config.preset = "tiny"
    cli.apply_override(config, "data.padding", "lengths")
    cli.apply_override(config, "model.cell", cell)
    final = _run("sentiment", config, str(tmp_path), data_dir)
    assert final["step"] == 2
    for key in ("train/loss", "test/loss", "test_mc/loss"):
        assert math.isfinite(final[key]), key


def test_batch_mean_perplexity_of_a_regression_run_is_a_one_line_error(data_dir, tmp_path,
                                                                       capsys):
    from experiments import evaluate

    config = shrink(sentiment_configs.tiny())
    with config.unlocked():
        config.preset = "tiny"
    _run("sentiment", config, str(tmp_path), data_dir)
    assert evaluate.main([f"--workdir={tmp_path}", "--checkpoint=latest",
                          f"--data_dir={data_dir}", "--batch_mean_ppl"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith("holds a regression run.")
    assert errors[0].startswith("error: --batch_mean_ppl applies to language models")
    # overrides out of range, checked as the training binaries check them (a negative
    # sample count ran, a zero batch was a traceback)
    for override, message in (("--config.train.mc_samples=-3", "config.train.mc_samples"),
                              ("--config.data.eval_batch_size=0",
                               "config.data.eval_batch_size")):
        assert evaluate.main([f"--workdir={tmp_path}", f"--data_dir={data_dir}",
                              override]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {message} must be"), err


@pytest.mark.parametrize("embed_to_gates", [True, False])
def test_zoneout_word_preset_uses_the_authors_input_map(data_dir, tmp_path, embed_to_gates):
    """The zoneout word presets feed the one-hot input straight into the gates (no W_x in
    layer 0, an embedding G*H wide); `--config.model.embed_to_gates=False` restores W_x."""
    from rnnreg_jax.train import checkpoint as ckpt_lib

    config = shrink(ptb_configs.zoneout())
    assert config.model.embed_to_gates
    with config.unlocked():
        config.preset = "zoneout"
    cli.apply_override(config, "model.embed_to_gates", str(embed_to_gates))
    final = _run("ptb", config, str(tmp_path), data_dir)
    assert math.isfinite(final["valid/loss"])
    state = ckpt_lib.restore_state(str(tmp_path / "checkpoints"), None)
    layer = state["params"]["rnn"]["layer_0"]
    width = state["params"]["embed"]["embedding"].shape[1]
    if embed_to_gates:
        assert "w_x" not in layer and width == 4 * HIDDEN
    else:
        assert layer["w_x"].shape == (width, 4 * HIDDEN)


def _assert_every_field_is_read(ran) -> None:
    """Every field of the presets `ran` (keys of FIELD_READS) is read by the code in at
    least one of their runs (a knob nothing reads is silently ignored when overridden),
    except the fields `experiments.configs.common.INFORMATIONAL_FIELDS` documents as
    records."""
    from experiments.configs.common import INFORMATIONAL_FIELDS

    assert ran, "no preset of this file ran in this process: run the file, not this test"
    fields = set().union(*(FIELD_READS[key][0] for key in ran))
    reads = set().union(*(FIELD_READS[key][1] for key in ran))
    informational = {f for f in fields
                     if any(f == i or f.startswith(i + ".") for i in INFORMATIONAL_FIELDS)}
    unread = sorted(fields - reads - informational)
    assert not unread, f"config fields no code reads in {sorted(ran)}: {unread}"


# Last in the file, so that it sees every run above: the default suite's presets, and in
# the slow pass (which deselects the default tests) the slow ones, awd's among them. Each
# pass needs its own presets to have run (a -k selection of a few would flag the fields
# only the others read); CI runs the whole file in both.
@pytest.mark.parametrize("suite", ["default", pytest.param("slow", marks=pytest.mark.slow)])
def test_every_preset_field_is_read(suite):
    ran = set(FIELD_READS)
    needed = set(DEFAULT) if suite == "default" else {("ptb", "awd")}
    if not needed <= ran:
        pytest.skip(f"needs this pass's presets run in this process; missing "
                    f"{sorted(needed - ran)}")
    _assert_every_field_is_read(ran)
