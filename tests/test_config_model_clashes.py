"""Model settings that clash with the cell (or the reg block with it), refused by the
binaries' config check in one sentence naming the config fields, before anything is
written; the model refused them only when it was first built, after the run's record
was written, in its own argument names (`recurrent_bias applies to cells ('lstm',
'rnn'), not 'gru'.`). Each has a legal neighbour that passes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
import train_helpers as th

from experiments import cli
from experiments.configs import pmnist, ptb, sentiment
from experiments.configs.common import check_config, regularization
from rnnreg_jax import tasks
from rnnreg_jax.models import SequenceModel

LSTMS = "lstm, lstm_ln, lstm_bn, keras_lstm"

# (binary, preset, overrides that clash, those of a legal neighbour, fields added as a
# config file of one's own may have them, the config check's sentence)
CASES = {
    "recurrent_bias on a gru": (
        "ptb", "zaremba_small", ["--config.model.cell=gru"], ["--config.model.cell=rnn"], {},
        "config.model.recurrent_bias adds a second bias to every layer, which "
        "config.model.cell='gru' does not take; set recurrent_bias=False or "
        "config.model.cell to one of lstm, rnn."),
    "recurrent_bias on a keras_lstm": (
        "ptb", "tiny", ["--config.model.cell=keras_lstm"],
        ["--config.model.cell=keras_lstm", "--config.model.recurrent_bias=False"], {},
        "config.model.recurrent_bias adds a second bias to every layer, which "
        "config.model.cell='keras_lstm' does not take; set recurrent_bias=False or "
        "config.model.cell to one of lstm, rnn."),
    "orthogonal_init on a keras_lstm": (
        "pmnist", "baseline", ["--config.model.cell=keras_lstm"],
        ["--config.model.cell=keras_lstm", "--config.model.orthogonal_init=False"], {},
        "config.model.orthogonal_init draws the weights orthogonal, but "
        "config.model.cell='keras_lstm' draws its own; set orthogonal_init=False or "
        "config.model.cell to one of lstm, gru, rnn, lstm_ln, lstm_bn."),
    "forget_bias on a gru": (
        "pmnist", "baseline", ["--config.model.cell=gru"],
        ["--config.model.cell=gru", "--config.model.forget_bias=0.0"], {},
        "config.model.forget_bias offsets an LSTM's forget gate, which "
        f"config.model.cell='gru' does not have; set forget_bias=0.0 or config.model.cell "
        f"to one of {LSTMS}."),
    "embed_to_gates on an lstm_ln": (
        "ptb", "zoneout", ["--config.model.cell=lstm_ln"],
        ["--config.model.cell=lstm_ln", "--config.model.embed_to_gates=False"], {},
        "config.model.embed_to_gates feeds the embedding straight into the first layer's "
        "gates, which config.model.cell='lstm_ln' does not take; set embed_to_gates=False "
        "or config.model.cell to one of lstm, gru, rnn."),
    "head_init beside orthogonal_init": (
        "sentiment", "tiny", ["--config.model.cell=lstm"],
        ["--config.model.cell=lstm", "--config.model.head_init=lecun_normal"],
        {"orthogonal_init": True},
        "config.model.orthogonal_init draws the head orthogonal, and "
        "config.model.head_init='glorot_uniform' draws it otherwise; set "
        "head_init='lecun_normal' (the default) or orthogonal_init=False."),
    "bn_momentum of 1": (
        "pmnist", "batchnorm", ["--config.model.bn_momentum=1.0"],
        ["--config.model.bn_momentum=0.5"], {},
        "config.model: bn_momentum must be in [0, 1), got 1.0."),
    "bn_max_steps of 0": (
        "pmnist", "batchnorm_zoneout", ["--config.model.bn_max_steps=0"],
        ["--config.model.bn_max_steps=1"], {},
        "config.model: bn_max_steps (T_max) must be a positive number of steps, got 0."),
    "zoneout on the cells of a gru": (
        "ptb", "zoneout_cells", ["--config.model.cell=gru"],
        ["--config.model.cell=gru", "--config.reg.zoneout.cells=0.0",
         "--config.reg.zoneout.hiddens=0.5"], {},
        "config.reg.zoneout.cells zones out units of the cell state, which "
        "config.model.cell='gru' does not have; set config.reg.zoneout.cells=0.0 or "
        f"config.model.cell to one of {LSTMS}."),
    "output zoneout on a gru": (
        "ptb", "recurrent_dropout_output_zoneout", ["--config.model.cell=gru"],
        ["--config.model.cell=gru", "--config.reg.recurrent_dropout.output_zoneout=False"],
        {},
        "config.reg.recurrent_dropout.output_zoneout zones out an LSTM's output gate, which "
        "config.model.cell='gru' does not have; set output_zoneout=False or "
        f"config.model.cell to one of {LSTMS}."),
    "variational dropout on the cells of a keras_gru": (
        "sentiment", "tiny", ["--config.model.cell=keras_gru",
                              "--config.reg.variational.cell=0.5"],
        ["--config.model.cell=keras_lstm", "--config.reg.variational.cell=0.5"], {},
        "config.reg.variational.cell drops units of the cell state, which "
        "config.model.cell='keras_gru' does not have; set config.reg.variational.cell=0.0 "
        f"or config.model.cell to one of {LSTMS}."),
    "dropout on the cells of an rnn": (
        "ptb", "tiny", ["--config.model.cell=rnn", "--config.reg.dropout.site=cell",
                        "--config.reg.dropout.rate=0.3"],
        ["--config.model.cell=rnn", "--config.reg.dropout.site=hidden",
         "--config.reg.dropout.rate=0.3"], {},
        "config.reg.dropout.site='cell' drops units of the cell state, which "
        "config.model.cell='rnn' does not have; set config.reg.dropout.rate=0.0 (or another "
        f"site) or config.model.cell to one of {LSTMS}."),
    "embedding dropout on pMNIST's pixels": (
        "pmnist", "zoneout", ["--config.reg.variational.embedding=0.3"],
        ["--config.reg.variational.embedding=0.0"], {},
        "config.reg.variational drops word types (its embedding dropout), but this model "
        "reads features, not words (config.model has no embedding); turn "
        "config.reg.variational's embedding dropout off (e.g. "
        "--config.reg.variational.embedding=0.0)."),
}
# The model's own refusal of each clash, in its argument names.
MODEL_REFUSALS = {
    "recurrent_bias on a gru": "recurrent_bias applies to cells",
    "recurrent_bias on a keras_lstm": "recurrent_bias and orthogonal apply to the default",
    "orthogonal_init on a keras_lstm": "recurrent_bias and orthogonal apply to the default",
    "forget_bias on a gru": "forget_bias applies to LSTM cells",
    "embed_to_gates on an lstm_ln": "project_first_input=False applies to",
    "head_init beside orthogonal_init": "orthogonal_init already makes the head",
    "bn_momentum of 1": "bn_momentum must be in",
    "bn_max_steps of 0": r"bn_max_steps \(T_max\) must be",
    "zoneout on the cells of a gru": "zoneout_cells needs an LSTM cell state",
    "output zoneout on a gru": "output_zoneout needs an LSTM cell state",
    "variational dropout on the cells of a keras_gru": "cell needs an LSTM cell state",
    "dropout on the cells of an rnn": "cell needs an LSTM cell state",
    "embedding dropout on pMNIST's pixels": "reg drops word types",
}
PRESETS = {"ptb": ptb.PRESETS, "pmnist": pmnist.PRESETS, "sentiment": sentiment.PRESETS}


def _config(task: str, preset: str, overrides: list[str], added: dict):
    config = cli.split_config_args(["prog", f"--config={preset}", *overrides],
                                   PRESETS[task])[0]
    with config.unlocked():
        config.model.update(added)
    return config


def _clash_and_neighbour(case: str):
    task, preset, clash, neighbour, added, _ = CASES[case]
    return _config(task, preset, clash, added), _config(task, preset, neighbour, added)


@pytest.mark.parametrize("case", CASES)
def test_the_binary_refuses_the_clash_before_writing_and_takes_its_neighbour(
        case, tmp_path, capsys):
    from experiments.main import run

    task, *_, sentence = CASES[case]
    config, neighbour = _clash_and_neighbour(case)
    workdir = tmp_path / "w"
    with th.binary_argv(f"--workdir={workdir}", f"--data_dir={tmp_path / 'none'}"), \
            pytest.raises(SystemExit) as done:
        run(task, config)
    assert done.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {sentence}"]
    assert not workdir.exists()
    check_config(neighbour)


def _built(config):
    """The model the binary builds from `config`, initialized abstractly (its checks
    run, nothing is computed)."""
    model, reg = config.model, regularization(config.reg)
    if "tie_embeddings" in model:
        net, inputs = tasks.language_model(model, reg, 11), jnp.zeros((2, 3), jnp.int32)
    elif "embed_size" in model:  # sentiment's ids
        net = SequenceModel(num_outputs=1, hidden_sizes=tuple(model.hidden_sizes),
                            vocab_size=11, embed_size=model.embed_size,
                            head_init=model.head_init, **tasks.recurrent_options(model, reg))
        inputs = jnp.zeros((2, 3), jnp.int32)
    else:  # pMNIST's pixels
        net = SequenceModel(num_outputs=10, hidden_sizes=tuple(model.hidden_sizes),
                            **tasks.recurrent_options(model, reg))
        inputs = jnp.zeros((2, 3, 1))
    return jax.eval_shape(lambda: net.init(jax.random.key(0), inputs))


@pytest.mark.parametrize("case", CASES)
def test_the_model_refuses_the_clash_too_and_builds_the_neighbour(case):
    """Each clash is one the model refuses in its own words, and each neighbour one it
    builds: the check refuses no setting the model takes."""
    config, neighbour = _clash_and_neighbour(case)
    with pytest.raises(ValueError, match=f"^{MODEL_REFUSALS[case]}"):
        _built(config)
    _built(neighbour)



def test_the_nnx_sequence_model_refuses_embedding_dropout_without_an_embedding():
    """As the linen model does (above): float inputs have no word types to drop."""
    from flax import nnx

    import rnnreg_jax as rj
    from rnnreg_jax.nnx import SequenceModel as NnxSequenceModel

    reg = rj.variational(0.1, 0.1, 0.1, embedding=0.2)
    with pytest.raises(ValueError, match="^reg drops word types"):
        NnxSequenceModel(10, (4,), input_size=1, reg=reg, rngs=nnx.Rngs(0))
    NnxSequenceModel(10, (4,), vocab_size=7, embed_size=3, reg=reg, rngs=nnx.Rngs(0))


def test_running_statistics_settings_under_a_cell_without_them_are_refused(tmp_path, capsys):
    """The stacks take `bn_*` with every cell and ignore them without running statistics,
    so the config check alone refuses them: a batchnorm preset with its cell switched
    would train a plain LSTM beside settings that do nothing."""
    from experiments.main import run

    workdir = tmp_path / "w"
    clash = _config("pmnist", "batchnorm", ["--config.model.cell=lstm"], {})
    with th.binary_argv(f"--workdir={workdir}", f"--data_dir={tmp_path / 'none'}"), \
            pytest.raises(SystemExit) as done:
        run("pmnist", clash)
    assert done.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: config.model.bn_max_steps and bn_momentum set the running statistics that "
        "config.model.cell='lstm_bn' keeps, and config.model.cell='lstm' keeps none; set "
        "config.model.cell='lstm_bn' or start from a preset without them (e.g. "
        "--config=baseline)."]
    assert not workdir.exists()
    one = _config("pmnist", "baseline", ["--config.model.cell=lstm_ln"], {"bn_momentum": 0.5})
    with pytest.raises(ValueError, match=r"^config.model.bn_momentum set the running"):
        check_config(one)
    check_config(_config("pmnist", "batchnorm", ["--config.model.bn_momentum=0.5"], {}))
    check_config(_config("pmnist", "baseline", ["--config.model.cell=lstm_ln"], {}))
