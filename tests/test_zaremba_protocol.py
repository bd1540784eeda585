"""Zaremba et al.'s `main.lua` protocol (docs/FIDELITY.md, "Zaremba word level"): the
training state carried from window to window and zeroed at each epoch's start, and
every parameter drawn uniformly in [-init, init]."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_helpers as th

from experiments.configs import ptb
from experiments.configs.common import regularization
from rnnreg_jax import tasks, train
from rnnreg_jax.train import checkpoint as ckpt_lib
from rnnreg_jax.train import losses
from rnnreg_jax.train.logging import read_metrics


def test_training_carries_the_state_across_windows_and_zeroes_it_each_epoch(tmp_path):
    """With the learning rate 0 (the weights stay as drawn) and no noise, each logged
    training loss equals that window's loss with the state carried from the windows
    before it in the epoch, from zero at the epoch's start (`fp` and `reset_state`,
    main.lua lines 141-170; main.lua itself starts each epoch's first window from the last
    validation pass's state, a deviation docs/FIDELITY.md gives): every epoch logs the
    same losses, and they differ from windows each started from zero."""
    source = th.LMSource(batch=4, steps=5, num_windows=4)
    model = th.tiny_lm(hidden=8)
    task = train.Task(model=model, kind="lm", train=source, evals={}, carry_state=True)
    config = train.default_train_config()
    config.num_epochs, config.learning_rate, config.log_every_steps = 2, 0.0, 1
    train.train_and_evaluate(task, config, str(tmp_path))
    logged = [e["loss"] for e in read_metrics(str(tmp_path))
              if e["split"] == "train" and "phase" not in e]
    assert len(logged) == 2 * source.steps_per_epoch
    assert logged[:4] == logged[4:]  # the state restarts from zero each epoch

    params = {"params": ckpt_lib.restore_state(str(tmp_path / "checkpoints"), None)["params"]}
    carried, fresh, carry = [], [], None
    for batch in source.iterate(0):
        logits, carry = model.apply(params, batch["inputs"], carry)
        zero_logits, _ = model.apply(params, batch["inputs"])
        for out, losses_of in ((logits, carried), (zero_logits, fresh)):
            objective, _ = losses.objective_and_stats("lm", out, batch)
            losses_of.append(float(objective))
    np.testing.assert_allclose(logged[:4], carried, rtol=1e-5)
    assert logged[0] == pytest.approx(fresh[0], rel=1e-5)  # the first window starts at zero
    assert all(abs(a - b) > 1e-4 for a, b in zip(carried[1:], fresh[1:], strict=True))


@pytest.mark.parametrize("name", ["zaremba_small", "zaremba_medium", "zaremba_large"])
def test_every_parameter_is_uniform_in_init_weight(name):
    """`module:getParameters():uniform(-init_weight, init_weight)` (main.lua line 114):
    embedding, both LSTM biases, the softmax's weights and bias, all of them drawn in
    [-s, s], none left at zero (the model at width 64, not the preset's)."""
    config = ptb.PRESETS[name]()
    scale = config.model.init_scale
    config.model.hidden_sizes = (64, 64)
    config.model.embed_size = 64
    model = tasks.language_model(config.model, regularization(config.reg), vocab_size=300)
    params = model.init(jax.random.key(0), jnp.zeros((2, 3), jnp.int32))["params"]
    leaves = jax.tree_util.tree_leaves_with_path(params)
    names = {jax.tree_util.keystr(path) for path, _ in leaves}
    assert any("b_h" in n for n in names) and any("bias" in n for n in names)
    for path, leaf in leaves:
        values = np.asarray(leaf).ravel()
        where = jax.tree_util.keystr(path)
        assert np.abs(values).max() <= scale, where
        # uniform in [-s, s]: the largest of >= 64 draws is near s, the spread s / sqrt(3)
        assert np.abs(values).max() > 0.9 * scale, where
        assert np.std(values) == pytest.approx(scale / np.sqrt(3), rel=0.25), where


@pytest.mark.parametrize("name,rate", [("zaremba_small", 0.0), ("zaremba_medium", 0.5),
                                       ("zaremba_large", 0.65)])
def test_dropout_on_each_layers_input_and_the_output_a_fresh_mask_per_step(name, rate):
    """`nn.Dropout` on every layer's input and on the last output, inside each time
    step's clone (main.lua lines 102, 109): a new mask per step, none on h_{t-1} or
    the word types; the carried-state test pass on one stream, validation on 20."""
    config = ptb.PRESETS[name]()
    variational = config.reg.variational
    assert (variational.input, variational.output, variational.tie) == (rate, rate, "step")
    assert variational.recurrent == 0.0 and variational.embedding == 0.0
    assert (config.data.batch_size, config.data.eval_batch_size) == (20, 20)
    assert config.data.test_batch_size == 1 and config.train.carry_state
    assert config.train.loss_sum_over_time and not config.train.report_best
