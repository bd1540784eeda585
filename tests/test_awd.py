"""AWD-LSTM's regularizers and optimizer (Merity et al. 2017), beyond the three papers.

Weight drop (DropConnect on W_h, one mask per minibatch), between-layer
dropout (`hidden`), AR and TAR penalties, NT-ASGD, and the `awd` presets.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import optax
import pytest

import rnnreg_jax as rj
from rnnreg_jax import cells, noise, rnn
from rnnreg_jax.nn import StackedRNN
from rnnreg_jax.regularizers import (
    ActivationRegularization,
    Dropout,
    EmbeddingDropout,
    MaskSpec,
    TemporalActivationRegularization,
    WeightDrop,
    compose,
)
from rnnreg_jax.train import default_train_config, ntasgd, optim

KEY = jax.random.key(0)
B, T, F, H = 3, 5, 4, 6


def make_params(cell="lstm", sizes=(F, H, H), seed=0):
    rng = np.random.default_rng(seed)
    g = cells.NUM_GATES[cell]
    return [{"w_x": jnp.asarray(rng.uniform(-0.5, 0.5, (i, g * o)), jnp.float32),
             "w_h": jnp.asarray(rng.uniform(-0.5, 0.5, (o, g * o)), jnp.float32),
             "b": jnp.asarray(rng.uniform(-0.5, 0.5, (g * o,)), jnp.float32)}
            for i, o in zip(sizes, sizes[1:], strict=False)]


X = jnp.asarray(np.random.default_rng(1).normal(size=(B, T, F)), jnp.float32)
run = jax.jit(rj.unroll, static_argnums=0,
              static_argnames=("reg", "deterministic", "return_hiddens", "implementation"))


# =========================================================================== specs

def test_constructors_set_only_their_fields_and_compose():
    assert rj.weight_drop(0.5) == WeightDrop(0.5)
    assert rj.activation_regularization(2.0) == ActivationRegularization(2.0)
    assert rj.temporal_activation_regularization(1.0) == TemporalActivationRegularization(1.0)
    assert rj.dropout("hidden", 0.3, tie="sequence") == Dropout(hidden=MaskSpec(0.3, "sequence"))
    reg = rj.awd_lstm()
    assert reg == compose(
        Dropout(input=MaskSpec(0.4), hidden=MaskSpec(0.3), output=MaskSpec(0.4)),
        EmbeddingDropout(0.1), WeightDrop(0.5), ActivationRegularization(2.0),
        TemporalActivationRegularization(1.0))
    assert reg.has_noise and reg.has_penalty
    assert rj.weight_drop(0.5).stack_noise
    assert not (rj.activation_regularization(1.0) + rj.temporal_activation_regularization(1.0)
                ).has_noise
    with pytest.raises(ValueError, match="WeightDrop.rate set twice"):
        rj.weight_drop(0.5) + rj.weight_drop(0.2)


@pytest.mark.parametrize("make, match", [
    (lambda: rj.weight_drop(1.0), r"Weight drop rate must be a probability in \[0, 1\), got 1.0"),
    (lambda: rj.weight_drop(-0.1), r"Weight drop rate .* got -0.1"),
    (lambda: rj.activation_regularization(-1.0),
     "activation_reg must be finite and non-negative, at most .* got -1.0"),
    (lambda: rj.temporal_activation_regularization(float("nan")),
     "temporal_activation_reg must be finite and non-negative, at most 3.403e"),
    (lambda: rj.weight_noise(1e39), r"weight_noise must be finite and non-negative, at "
                                    r"most 3.403e\+38 \(it is applied in float32\), got 1e\+39")])
def test_invalid_values_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_lstm_only_sites_accept_the_ln_lstm():
    reg = rj.zoneout(0.2, 0.1) + rj.variational(cell=0.2) + rj.recurrent_dropout(
        0.2, output_zoneout=True)
    reg.check_cell("lstm_ln")
    with pytest.raises(ValueError, match="needs an LSTM cell state; a gru has none"):
        reg.check_cell("gru")


# =========================================================================== weight drop

def test_weight_drop_rate_values_and_keys():
    p = 0.5
    w = jnp.ones((64, 256))
    reg = rj.weight_drop(p)
    dropped = np.asarray(noise.weight_drop(reg, KEY, 0, w, deterministic=False))
    assert set(np.unique(dropped)) <= {0.0, 1.0 / noise.quantize_probability(1 - p)}
    n = w.size
    keep = (dropped > 0).mean()
    assert abs(keep - (1 - p)) < 3 * np.sqrt(p * (1 - p) / n)
    # same key, same mask; other layer or key, other mask; evaluation is the identity
    again = noise.weight_drop(reg, KEY, 0, w, deterministic=False)
    np.testing.assert_array_equal(again, dropped)
    assert not np.array_equal(noise.weight_drop(reg, KEY, 1, w, False), dropped)
    assert not np.array_equal(noise.weight_drop(reg, jax.random.key(7), 0, w, False), dropped)
    assert noise.weight_drop(reg, None, 0, w, deterministic=True) is w
    with pytest.raises(ValueError, match="key"):
        noise.weight_drop(reg, None, 0, w, deterministic=False)
    # its own site: switching weight noise on beside it does not change the mask
    both = reg + rj.weight_noise(0.1)
    np.testing.assert_array_equal(noise.weight_drop(both, KEY, 0, w, False), dropped)


def test_weight_drop_is_one_mask_per_minibatch():
    """Training == deterministic unroll with W_h * m: the same mask at every step and
    for every example (identical examples give identical outputs)."""
    params = make_params()
    reg = rj.weight_drop(0.5)
    x = X.at[1].set(X[0])  # examples 0 and 1 identical
    ys, _ = run("lstm", params, x, reg=reg, key=KEY, deterministic=False)
    masked = [dict(p, w_h=noise.weight_drop(reg, KEY, i, p["w_h"], False))
              for i, p in enumerate(params)]
    ref, _ = run("lstm", masked, x)
    np.testing.assert_allclose(ys, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ys[0], ys[1])
    plain, _ = run("lstm", params, x)
    assert not np.allclose(ys, plain)
    det, _ = run("lstm", params, x, reg=reg, deterministic=True)
    np.testing.assert_array_equal(det, plain)


def test_weight_drop_fused_gradients_equal_autodiff():
    params = make_params()
    reg = rj.weight_drop(0.5) + rj.dropout("hidden", 0.3, tie="sequence") + rj.variational(
        input=0.2, recurrent=0.2)

    def loss(impl, x):
        def f(params):
            ys, _ = rnn.unroll("lstm", params, x, reg=reg, key=KEY, deterministic=False,
                               implementation=impl)
            return jnp.sum(jnp.sin(ys))
        return jax.jit(jax.value_and_grad(f))

    with nm.x64():  # the same function: to rounding in float64 ...
        params64, x64 = nm.as_f64(params), nm.as_f64(X)
        nm.assert_trees_close_f64(loss("fused", x64)(params64), loss("autodiff", x64)(params64))
    # ... and in float32 to its rounding
    nm.assert_trees_close_f32(loss("fused", X)(params), loss("autodiff", X)(params))


# =========================================================================== hidden site

def test_hidden_dropout_masks_between_layers_only():
    p_in, p_hid = 0.2, 0.6
    shape = dict(cell="lstm", batch=400, steps=1, input_size=50, hidden_size=50,
                 deterministic=False)
    only_input = rj.variational(input=p_in)
    awd = only_input + rj.dropout("hidden", p_hid, tie="sequence")
    first = noise.layer_noise(awd, KEY, 0, **shape).input
    second = noise.layer_noise(awd, KEY, 1, **shape).input
    # layer 0 keeps the `input` mask, bit for bit (switching `hidden` on changes nothing there)
    np.testing.assert_array_equal(first, noise.layer_noise(only_input, KEY, 0, **shape).input)
    # layer 1: the `hidden` rate, tied per sequence ([B, F]), its own site key
    assert second.shape == (400, 50)
    assert set(np.unique(np.asarray(second))) == {
        0.0, np.float32(1 / noise.quantize_probability(1 - p_hid))}
    n = second.size
    assert abs((np.asarray(second) > 0).mean() - (1 - p_hid)) < 3 * np.sqrt(
        p_hid * (1 - p_hid) / n)
    # without `hidden`, `input` masks every layer (the papers' semantics)
    everywhere = noise.layer_noise(only_input, KEY, 1, **shape).input
    assert abs((np.asarray(everywhere) > 0).mean() - (1 - p_in)) < 3 * np.sqrt(
        p_in * (1 - p_in) / n)


# =========================================================================== AR / TAR

def test_penalties_on_hand_computed_inputs():
    h = jnp.asarray([[[1.0, 2.0], [3.0, 0.0], [3.0, 4.0]]])  # [B=1, T=3, H=2]
    # AR: alpha * mean(h^2) = 2 * (1 + 4 + 9 + 0 + 9 + 16) / 6
    np.testing.assert_allclose(rj.activation_penalty(h, 2.0), 2.0 * 39 / 6, rtol=1e-6)
    # TAR: beta * mean of squared differences: (2, -2) and (0, 4) -> (4 + 4 + 0 + 16) / 4
    np.testing.assert_allclose(rj.temporal_activation_penalty(h, 0.5), 0.5 * 24 / 4, rtol=1e-6)
    tm = jnp.swapaxes(h, 0, 1)
    np.testing.assert_allclose(rj.temporal_activation_penalty(tm, 0.5, time_axis=0),
                               0.5 * 24 / 4, rtol=1e-6)


def test_stacked_rnn_sows_ar_on_dropped_and_tar_on_undropped_outputs():
    alpha, beta = 2.0, 1.5
    pen = rj.activation_regularization(alpha) + rj.temporal_activation_regularization(beta)
    layer = StackedRNN((H, H), reg=pen + rj.variational(output=0.5))
    variables = layer.init(KEY, X)
    rngs = {"dropout": jax.random.key(3)}
    (ys, _), state = layer.apply(variables, X, deterministic=False, rngs=rngs,
                                 mutable=["penalties"])
    sown = state["penalties"]
    # against float64: a float32 mean of 90 squares rounds to within sqrt(90) to 90 ulps
    # depending on the summation order (tests/numerics.py), beyond a bare rtol of 1e-6
    nm.assert_close_f32(sown["activation_reg"][0],
                        alpha * np.mean(np.square(np.asarray(ys, np.float64))))
    # TAR sees the undropped output: the deterministic outputs (dropout is the only noise)
    clean, _ = layer.apply(variables, X, deterministic=True)
    np.testing.assert_allclose(sown["temporal_activation_reg"][0],
                               beta * jnp.mean(jnp.diff(clean, axis=1) ** 2), rtol=1e-5)
    assert not np.allclose(ys, clean)
    # evaluation: no penalties
    _, state = layer.apply(variables, X, deterministic=True, mutable=["penalties"])
    assert not state.get("penalties")


# =========================================================================== NT-ASGD

TARGET = {"a": jnp.asarray([1.0, -2.0]), "b": jnp.asarray(3.0)}


def _grads(params):  # quadratic bowl around TARGET
    return jax.tree.map(lambda p, t: p - t, params, TARGET)


def test_ntasgd_is_sgd_then_averages_the_iterates_after_the_trigger():
    lr = 0.3
    tx = ntasgd.ntasgd(lr)
    sgd = optax.sgd(lr)
    params = {"a": jnp.zeros(2), "b": jnp.asarray(0.0)}
    state, sgd_state = tx.init(params), sgd.init(params)
    ref = params
    for _ in range(3):  # before the trigger: exactly SGD, average not used
        updates, state = tx.update(_grads(params), state, params)
        params = optax.apply_updates(params, updates)
        u, sgd_state = sgd.update(_grads(ref), sgd_state, ref)
        ref = optax.apply_updates(ref, u)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    assert not bool(ntasgd.is_averaging(state))
    assert ntasgd.averaged_params(state, params) is not params
    for a, b in zip(jax.tree.leaves(ntasgd.averaged_params(state, params)),
                    jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    state = ntasgd.start_averaging(state)
    assert bool(ntasgd.is_averaging(state))
    iterates = []
    update = jax.jit(tx.update)
    for _ in range(5):
        updates, state = update(_grads(params), state, params)
        params = optax.apply_updates(params, updates)
        iterates.append(params)
    assert int(state.count) == 5
    mean = jax.tree.map(lambda *xs: sum(xs) / len(xs), *iterates)
    avg = ntasgd.averaged_params(state, params)
    # a running average against the mean of the iterates: float32 rounding of either order
    nm.assert_trees_close_f32(avg, mean, rtol=1e-6, ulps=8)
    with pytest.raises(ValueError, match="params"):
        tx.update(_grads(params), state)


def test_ntasgd_inside_make_optimizer_chain():
    config = default_train_config()
    config.optimizer, config.learning_rate, config.clip_norm = "ntasgd", 0.1, 0.25
    config.weight_decay = 1e-3
    tx = optim.make_optimizer(config)
    params = {"a": jnp.zeros(2), "b": jnp.asarray(0.0)}
    state = tx.init(params)
    assert not bool(ntasgd.is_averaging(state))
    state = ntasgd.start_averaging(state)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.1)
    iterates = []
    for _ in range(3):
        updates, state = tx.update(_grads(params), state, params)
        params = optax.apply_updates(params, updates)
        iterates.append(params)
    mean = jax.tree.map(lambda *xs: sum(xs) / len(xs), *iterates)
    nm.assert_trees_close_f32(ntasgd.averaged_params(state, params), mean, rtol=1e-6, ulps=8)


def test_nonmono_trigger_is_awds_criterion():
    # len(history) > n and value > min(history[:-n])
    assert not ntasgd.nonmono_trigger([5.0, 4.0], 6.0, 2)  # too short
    assert ntasgd.nonmono_trigger([5.0, 4.0, 3.0], 6.0, 2)  # worse than 5 (older than 2)
    assert not ntasgd.nonmono_trigger([5.0, 4.0, 3.0], 4.5, 2)  # better than 5
    assert not ntasgd.nonmono_trigger([5.0, 9.0, 9.0], 5.0, 2)  # equal is not worse
    with pytest.raises(ValueError, match="nonmono must be a whole number >= 1, got 0"):
        ntasgd.nonmono_trigger([], 1.0, 0)
    # a fraction or a string was a TypeError from the slice or the comparison
    for nonmono in (2.5, "5", True):
        with pytest.raises(ValueError, match="nonmono must be a whole number >= 1"):
            ntasgd.nonmono_trigger([5.0, 4.0, 3.0], 6.0, nonmono)
    assert ntasgd.nonmono_trigger([5.0, 4.0, 3.0], 6.0, np.int64(2))


def test_ntasgd_refuses_a_learning_rate_that_is_not_a_rate():
    """A negative, infinite or NaN rate (ascent, or NaN parameters after one step) and a
    string (a TypeError at the first update) are refused at construction."""
    for lr in (-0.1, float("inf"), float("nan"), "30", None):
        with pytest.raises(ValueError, match="ntasgd's learning_rate must be a finite number"):
            ntasgd.ntasgd(lr)
    ntasgd.ntasgd(jnp.asarray(30.0))  # an array (injected hyperparameter) is not checked


@pytest.mark.slow
def test_loop_switches_to_averaging_and_evaluates_the_average(tmp_path, monkeypatch):
    import train_helpers as th

    from rnnreg_jax import train
    from rnnreg_jax.train.logging import read_metrics

    calls = []

    def trigger(history, value, n):  # trigger after the second validation
        calls.append(list(history))
        return len(history) == 1

    switched = []
    start = ntasgd.start_averaging
    monkeypatch.setattr(ntasgd, "nonmono_trigger", trigger)
    monkeypatch.setattr(ntasgd, "start_averaging", lambda s: switched.append(1) or start(s))
    task = train.Task(model=th.tiny_lm(hidden=8, reg=rj.awd_lstm()), kind="lm",
                      train=th.LMSource(batch=4, steps=5, num_windows=3),
                      evals={"valid": th.LMSource(batch=4, steps=5, num_windows=2, seed=1)},
                      carry_state=True)
    c = default_train_config()
    c.optimizer, c.learning_rate, c.clip_norm, c.num_epochs = "ntasgd", 1.0, 0.25, 3
    c.tensorboard = False
    final = train.train_and_evaluate(task, c, str(tmp_path))
    valid = [e["loss"] for e in read_metrics(str(tmp_path))
             if e["split"] == "valid" and e.get("phase") == "epoch_end"]
    assert len(valid) == 3
    assert calls == [[], [valid[0]]]  # asked with the history until it fired, never again
    assert switched == [1]
    assert np.isfinite(final["valid/loss"])


# =========================================================================== presets

def test_awd_presets_describe_the_paper_setting():
    from experiments.configs import common, ptb

    config = ptb.awd()
    assert tuple(config.model.hidden_sizes) == (1150, 1150, 400)
    assert config.model.embed_size == 400 and config.model.tie_embeddings
    assert common.regularization(config.reg) == rj.awd_lstm(embedding_tie="batch")
    t = config.train
    assert (t.optimizer, t.learning_rate, t.clip_norm, t.weight_decay) == (
        "ntasgd", 30.0, 0.25, 1.2e-6)
    assert t.ntasgd_nonmono == 5 and not t.loss_sum_over_time and t.carry_state
    # 500 epochs (the README at the code release), Table 4's row without fine-tuning
    assert config.data.seq_len == 70 and t.num_epochs == 500
    assert (config.paper.valid, config.paper.test) == (60.7, 58.8)
    small = ptb.awd_small()
    assert tuple(small.model.hidden_sizes) == (400, 400)
    assert common.regularization(small.reg) == rj.awd_lstm(embedding_tie="batch")
    assert {"awd", "awd_small"} <= set(ptb.PRESETS)
