"""Recurrent batch normalization (`"lstm_bn"`, Cooijmans et al. 2016): formulas against a
numpy reference, per-step statistics, population statistics in Flax and in the engine."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest
import train_helpers as th

import rnnreg_jax as rj
from rnnreg_jax import batchnorm, cells, models, rnn, train
from rnnreg_jax.cells import lstm_bn
from rnnreg_jax.nn import StackedRNN
from rnnreg_jax.train import checkpoint as ckpt_lib
from rnnreg_jax.train import mesh as mesh_lib
from rnnreg_jax.train.evaluator import Evaluator
from rnnreg_jax.train.state import TrainState

th.enable_compilation_cache()

B, T, F, H = 5, 6, 3, 4
KEY = jax.random.key(0)
EPS = cells.LN_EPSILON


def rand(seed, *shape, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def bn_params(seed=0, in_size=F, hidden=H):
    """`init_params` with the gains and the cell shift moved off (0.1, 0), so they matter."""
    p = cells.init_params(jax.random.key(seed), "lstm_bn", in_size, hidden, 0.5)
    rng = np.random.default_rng(seed + 100)
    return {k: (v + jnp.asarray(rng.uniform(0.2, 0.8, v.shape), v.dtype)
                if k in batchnorm.PARAM_NAMES else v) for k, v in p.items()}


def random_population(seed, max_steps, hidden=H):
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in batchnorm.init_population(hidden, max_steps).items():
        if name == batchnorm.WEIGHT:  # every row seen: the accumulators are the statistics
            out[name] = jnp.ones_like(value)
            continue
        shift = rng.uniform(0.3, 2.0, value.shape) if name.endswith("var") else \
            rng.normal(0.0, 0.5, value.shape)
        out[name] = jnp.asarray(value * (1.0 if name.endswith("var") else 0.0) + shift,
                                jnp.float32)
    return out


# -- the numpy reference ---------------------------------------------------------------------
def _np_bn(v, gain, bias, mean, var):
    return (v - mean) / np.sqrt(var + EPS) * gain + bias


def reference(params, x, population=None):
    """Cooijmans et al.'s BN-LSTM written out step by step, batch-major x `[B, T, F]`.

    Returns `(ys [B, T, H], (h, c), stats {name: [T, ...]})`."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    steps = x.shape[1]
    h = np.zeros((x.shape[0], p["w_h"].shape[0]))
    c = np.zeros_like(h)
    ys, stats = [], {name: [] for name in batchnorm.STAT_NAMES}
    for t in range(steps):
        row = None if population is None else min(t, population["x_mean"].shape[0] - 1)

        def norm(v, site, gain, bias=0.0, row=row):
            if population is None:
                mean, var = v.mean(0), v.var(0)
            else:
                mean = np.asarray(population[f"{site}_mean"][row], np.float64)
                var = np.asarray(population[f"{site}_var"][row], np.float64)
            stats[f"{site}_mean"].append(mean)
            stats[f"{site}_var"].append(var)
            return _np_bn(v, gain, bias, mean, var)

        z = (norm(np.asarray(x[:, t], np.float64) @ p["w_x"], "x", p["bn_x_g"])
             + norm(h @ p["w_h"], "h", p["bn_h_g"]) + p["b"])
        zi, zf, zg, zo = np.split(z, 4, axis=-1)
        c = sig(zf) * c + sig(zi) * np.tanh(zg)
        h = sig(zo) * np.tanh(norm(c, "c", p["bn_c_g"], p["bn_c_b"]))
        ys.append(h)
    return np.stack(ys, 1), (h, c), {k: np.stack(v) for k, v in stats.items()}


@pytest.mark.parametrize("implementation", ["fused", "autodiff"])
def test_training_mode_matches_the_reference_with_per_step_batch_statistics(implementation):
    params = bn_params()
    x = jnp.asarray(rand(1, B, T, F, scale=2.0))
    ys, carry, stats = rnn.unroll("lstm_bn", params, x, return_cell_stats=True,
                                  implementation=implementation)
    ref_ys, (ref_h, ref_c), ref_stats = reference(params, np.asarray(x))
    nm.assert_close_f32(ys, ref_ys, rtol=1e-4)
    nm.assert_close_f32(carry["h"], ref_h, rtol=1e-4)
    nm.assert_close_f32(carry["c"], ref_c, rtol=1e-4)
    assert set(stats) == set(batchnorm.STAT_NAMES)
    for name in batchnorm.STAT_NAMES:
        nm.assert_close_f32(stats[name], ref_stats[name], rtol=1e-4, err_msg=name)
    # The statistics are per step: one batch normalization over all steps would differ.
    assert not np.allclose(ref_stats["h_mean"][1], ref_stats["h_mean"][-1], atol=1e-3)
    # The same function: in float64 the cell is the reference to rounding.
    with nm.x64():
        ys, carry, stats = rnn.unroll("lstm_bn", nm.as_f64(params), nm.as_f64(x),
                                      return_cell_stats=True, implementation=implementation)
        nm.assert_close_f64(ys, ref_ys)
        nm.assert_close_f64(carry["h"], ref_h)
        nm.assert_close_f64(carry["c"], ref_c)
        for name in batchnorm.STAT_NAMES:
            nm.assert_close_f64(stats[name], ref_stats[name], err_msg=name)


@pytest.mark.parametrize("implementation", ["fused", "autodiff"])
def test_eval_mode_uses_the_given_population_and_steps_past_t_max_reuse_the_last_row(
        implementation):
    params = bn_params(1)
    x = jnp.asarray(rand(2, B, T, F))
    t_max = 3
    population = random_population(3, t_max)
    ys, carry, used = rnn.unroll("lstm_bn", params, x, cell_stats=population,
                                 return_cell_stats=True, implementation=implementation)
    ref_ys, (_, ref_c), _ = reference(params, np.asarray(x), population)
    nm.assert_close_f32(ys, ref_ys, rtol=1e-4)
    nm.assert_close_f32(carry["c"], ref_c, rtol=1e-4)
    with nm.x64():
        ys64, carry64 = rnn.unroll("lstm_bn", nm.as_f64(params), nm.as_f64(x),
                                   cell_stats=nm.as_f64(population),
                                   implementation=implementation)
        nm.assert_close_f64(ys64, ref_ys)
        nm.assert_close_f64(carry64["c"], ref_c)
    for t in range(T):  # the statistics used at step t: row min(t, T_max - 1)
        np.testing.assert_array_equal(used["h_var"][t], population["h_var"][min(t, t_max - 1)])
    # The same as a population of T rows whose rows T_max.. repeat row T_max - 1 ...
    padded = {k: jnp.concatenate([v, jnp.repeat(v[-1:], T - t_max, 0)])
              for k, v in population.items()}
    ys_padded, _ = rnn.unroll("lstm_bn", params, x, cell_stats=padded,
                              implementation=implementation)
    # Another program (a population of another shape): equal to float32 rounding
    # (`nm.assert_close_f32`); a late step reading another row moves them by far more.
    nm.assert_close_f32(ys, ys_padded)
    # ... and not the same when those rows differ (so the late steps do read row T_max - 1).
    changed = dict(padded, c_mean=padded["c_mean"].at[t_max:].add(1.0))
    ys_changed, _ = rnn.unroll("lstm_bn", params, x, cell_stats=changed,
                               implementation=implementation)
    nm.assert_close_f32(ys_changed[:, :t_max], ys[:, :t_max])
    assert not np.allclose(ys_changed[:, t_max:], ys[:, t_max:], atol=1e-4)


@pytest.mark.parametrize("reg", [  # zoneout and weight drop are slow
    rj.NONE, rj.variational(0.3, 0.3, 0.3, per_gate=True),
    pytest.param(rj.zoneout(0.3, 0.2), marks=pytest.mark.slow),
    pytest.param(rj.weight_drop(0.4), marks=pytest.mark.slow)],
    ids=["none", "variational_per_gate", "zoneout", "weight_drop"])
def test_fused_gradients_equal_autodiff(reg):
    params = [bn_params(0, F, H), bn_params(1, H, H)]
    x = jnp.asarray(rand(4, B, T, F))
    # a state that varies over the batch (a constant one has no batch variance to normalize)
    carry = [{k: jnp.asarray(0.5 * rand(30 + 2 * i + j, B, H)) for j, k in enumerate(c)}
             for i, c in enumerate(rnn.initial_carry("lstm_bn", params, B, reg))]

    def loss(implementation):
        def f(params, x, carry):
            ys, carry, stats = rnn.unroll("lstm_bn", params, x, carry, reg=reg, key=KEY,
                                          deterministic=False, implementation=implementation,
                                          return_cell_stats=True)
            state = sum(jnp.sum(v**3) for c in carry for v in c.values())
            # the returned batch statistics are differentiable outputs as well
            moments = sum(jnp.sum(jnp.sin(v)) for s in stats for v in s.values())
            return jnp.sum(jnp.sin(ys)) + state + 0.1 * moments
        return f

    # float64 to rounding (~1e-14); float32 through per-step normalizations of 5 rows
    # that amplify rounding (up to ~350 ulps of a gradient's largest element, AVX-512),
    # to F32_NORM_ULPS.
    out = nm.assert_fused_matches_autodiff(loss, params, x, carry, rtol=1e-4,
                                           ulps=nm.F32_NORM_ULPS)
    assert float(jnp.abs(out["fused"][1][0][1]["bn_h_g"]).sum()) > 0  # the update's vjp


def test_normalized_pre_activations_have_batch_mean_zero_and_variance_gain_squared(
        monkeypatch):
    """Every normalization the cell applies in training, recorded step by step (the step
    function run eagerly in a Python loop): per unit, batch mean 0 and variance gain^2."""
    params = bn_params(2)
    x = jnp.asarray(rand(5, 32, T, F, scale=3.0))
    records = []
    original = lstm_bn.batch_norm

    def recording(v, gain, bias=None, mean=None, var=None, axis=0):
        out = original(v, gain, bias, mean, var, axis)
        records.append((np.asarray(v), np.asarray(out[0]), np.asarray(gain),
                        0.0 if bias is None else np.asarray(bias), axis, mean is None))
        return out

    monkeypatch.setattr(lstm_bn, "batch_norm", recording)  # where the cell looks it up
    xw = batchnorm.project(params, jnp.swapaxes(x, 0, 1))
    # a random state: from h = 0 the first recurrent projection has no variance at all
    carry = {"h": jnp.asarray(np.tanh(rand(6, 32, H))), "c": jnp.asarray(rand(7, 32, H))}
    for t in range(T):
        xw_t = jax.tree.map(lambda a, t=t: a[t], xw)
        carry, _ = batchnorm.lstm_bn_step(params, carry, xw_t)
    assert len(records) == 1 + 2 * T and all(r[5] for r in records)  # x once; h, c per step
    for v, out, gain, bias, axis, _ in records:
        centred = out - bias
        np.testing.assert_allclose(centred.mean(axis), 0.0, atol=1e-5)
        var = v.astype(np.float64).var(axis)
        assert np.all(var > 1e-4)  # not degenerate
        # gain^2, shrunk by var / (var + eps) (eps is LN_EPSILON)
        np.testing.assert_allclose(centred.var(axis), gain**2 * var / (var + EPS), rtol=1e-3)


def _bn_stack(t_max, momentum=0.7):
    return StackedRNN((H, H), cell="lstm_bn", bn_max_steps=t_max, bn_momentum=momentum)


def test_population_statistics_are_the_running_average_of_the_batch_statistics():
    t_max, momentum = 4, 0.7  # T = 6 > T_max: steps 4, 5 are not kept
    layer = _bn_stack(t_max, momentum)
    xs = [jnp.asarray(rand(10 + i, B, T, F)) for i in range(3)]
    variables = layer.init(KEY, xs[0])
    params = [variables["params"][f"layer_{i}"] for i in range(2)]
    expected = [batchnorm.init_population(H, t_max) for _ in range(2)]
    unseen = batchnorm.statistics(variables["batch_stats"]["layer_1"])
    np.testing.assert_array_equal(unseen["h_var"], 1.0)
    np.testing.assert_array_equal(unseen["h_mean"], 0.0)
    state = variables["batch_stats"]
    for x in xs:
        _, mutated = layer.apply({"params": variables["params"], "batch_stats": state}, x,
                                 deterministic=False, mutable=["batch_stats"])
        state = mutated["batch_stats"]
        _, _, batch = rnn.unroll("lstm_bn", params, x, return_cell_stats=True)
        for layer_index in range(2):
            for name in batchnorm.STAT_NAMES:
                old = np.array(expected[layer_index][name])
                old[:t_max] = momentum * old[:t_max] + (1 - momentum) * np.asarray(
                    batch[layer_index][name])[:t_max]
                expected[layer_index][name] = old
    weight = 1 - momentum**3  # three updates of rows 0..T_max-1, none of the others
    for layer_index in range(2):
        stats = batchnorm.statistics(state[f"layer_{layer_index}"])
        np.testing.assert_allclose(state[f"layer_{layer_index}"][batchnorm.WEIGHT],
                                   [weight] * t_max, rtol=1e-6)
        for name in batchnorm.STAT_NAMES:
            np.testing.assert_allclose(state[f"layer_{layer_index}"][name],
                                       expected[layer_index][name], rtol=1e-5, atol=1e-6,
                                       err_msg=f"layer {layer_index} {name}")
            np.testing.assert_allclose(stats[name], expected[layer_index][name] / weight,
                                       rtol=1e-5, atol=1e-6, err_msg=f"{layer_index} {name}")
    # Evaluation reads them and changes nothing, nor does sampling noise with
    # use_running_average=True (MC evaluation).
    frozen = {"params": variables["params"], "batch_stats": state}
    for kwargs in ({"deterministic": True}, {"deterministic": False, "use_running_average": True}):
        _, again = layer.apply(frozen, xs[0], mutable=["batch_stats"], **kwargs)
        jax.tree.map(np.testing.assert_array_equal, again["batch_stats"], state)
    ys_eval, _ = layer.apply(frozen, xs[0])
    ys_pure, _ = rnn.unroll("lstm_bn", params, xs[0],
                            cell_stats=[state["layer_0"], state["layer_1"]])
    # the module and the pure function are two programs: equal to float32 rounding
    nm.assert_close_f32(ys_eval, ys_pure)


def test_training_without_a_mutable_batch_stats_collection_is_an_error():
    layer = _bn_stack(8)
    x = jnp.asarray(rand(20, B, T, F))
    variables = layer.init(KEY, x)
    with pytest.raises(ValueError, match=r"mutable=\['batch_stats'\]"):
        layer.apply(variables, x, deterministic=False)


@pytest.mark.parametrize("t_max", [0, -3])
def test_a_bad_t_max_is_a_one_sentence_value_error(t_max):
    message = f"bn_max_steps (T_max) must be a positive number of steps, got {t_max}."
    with pytest.raises(ValueError) as raised:
        _bn_stack(t_max).init(KEY, jnp.zeros((2, 3, F)))
    assert str(raised.value).splitlines()[0] == message  # JAX may append a traceback note
    with pytest.raises(ValueError) as raised:
        batchnorm.init_population(H, t_max)
    assert str(raised.value) == message


def test_population_statistics_are_for_lstm_bn_only():
    params = cells.init_params(KEY, "lstm", F, H)
    with pytest.raises(ValueError, match="lstm_bn"):
        rnn.unroll("lstm", params, jnp.zeros((2, 3, F)),
                   cell_stats=batchnorm.init_population(H, 4))
    # and the other cells return no statistics
    _, _, stats = rnn.unroll("lstm", params, jnp.zeros((2, 3, F)), return_cell_stats=True)
    assert stats == {}


def test_every_lstm_site_composes_and_the_language_model_takes_lstm_bn():
    """Under jit, all LSTM noise sites at once in a language model whose state is carried
    from window to window (the time index of the statistics restarts every window)."""
    reg = (rj.variational(0.3, 0.2, 0.4, cell=0.2, per_gate=True)
           + rj.recurrent_dropout(0.3, output_zoneout=True) + rj.zoneout(0.2, 0.1)
           + rj.stochastic_depth(0.1) + rj.weight_noise(0.05) + rj.weight_drop(0.3)
           + rj.activation_regularization(2.0) + rj.temporal_activation_regularization(1.0))
    model = models.LanguageModel(vocab_size=11, hidden_sizes=(H, H), embed_size=H,
                                 cell="lstm_bn", reg=reg, bn_max_steps=3)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 11, (4, 5)), jnp.int32)
    variables = model.init(KEY, ids)

    @jax.jit
    def train_window(params, batch_stats, carry):
        def loss(p):
            (logits, new_carry), mutated = model.apply(
                {"params": p, "batch_stats": batch_stats}, ids, carry, deterministic=False,
                rngs={"dropout": KEY}, mutable=["batch_stats", "penalties"])
            return jnp.mean(logits**2), (new_carry, mutated)
        return jax.value_and_grad(loss, has_aux=True)(params)

    (value, (carry, mutated)), grads = train_window(variables["params"],
                                                    variables["batch_stats"], None)
    (value2, _), _ = train_window(variables["params"], mutated["batch_stats"], carry)
    assert np.isfinite(value) and np.isfinite(value2)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert set(mutated["penalties"]["rnn"]) == {"activation_reg", "temporal_activation_reg"}
    stats = mutated["batch_stats"]["rnn"]["layer_1"]
    assert stats["c_mean"].shape == (3, H)
    assert not np.allclose(stats["x_mean"], 0.0)
    logits, _ = model.apply({"params": variables["params"],
                             "batch_stats": mutated["batch_stats"]}, ids, carry)
    assert np.all(np.isfinite(logits))


# -- the engine --------------------------------------------------------------------------------
def _bn_task():
    model = models.SequenceModel(num_outputs=2, hidden_sizes=(8,), cell="lstm_bn",
                                 reg=rj.zoneout(0.1, 0.1), bn_max_steps=10)
    return train.Task(model=model, kind="classification", train=th.SeqSource(num_batches=4),
                      evals={"valid": th.SeqSource(num_batches=2, seed=1),
                             "test": th.SeqSource(num_batches=1, seed=2)})


def test_engine_trains_checkpoints_and_evaluates_with_the_population_statistics(tmp_path):
    task = _bn_task()
    c = train.default_train_config()
    c.num_epochs, c.optimizer, c.learning_rate = 1, "adam", 1e-2
    c.log_every_steps, c.mc_samples = 2, 2
    final = train.train_and_evaluate(task, c, str(tmp_path))
    assert final["step"] == 4 and np.isfinite(final["test_mc/loss"])

    restored = ckpt_lib.restore_state(str(tmp_path / "checkpoints"), None)
    stats = restored["model_state"]["batch_stats"]["rnn"]["layer_0"]
    # 4 train steps moved the averages of the 6 steps the windows have, and no others
    initial = batchnorm.init_population(8, 10)
    for name in batchnorm.STAT_NAMES:
        assert not np.allclose(stats[name][:6], initial[name][:6]), name
        np.testing.assert_array_equal(stats[name][6:], initial[name][6:])

    # Evaluation uses them: the reported metric is reproduced with the checkpointed
    # statistics and differs with the initial ones.
    evaluator = Evaluator(task, mesh_lib.make_mesh())
    params, model_state = restored["params"], restored["model_state"]
    again = evaluator.evaluate(params, task.evals["valid"], model_state=model_state)
    assert again["loss"] == pytest.approx(final["valid/loss"], rel=1e-6)
    moved = {name: value + 1.0 if name.endswith("mean") else value * 4.0
             for name, value in stats.items()}
    other = evaluator.evaluate(params, task.evals["valid"],
                               model_state={"batch_stats": {"rnn": {"layer_0": moved}}})
    assert abs(other["loss"] - final["valid/loss"]) > 1e-3

    # A finished run restarted on its workdir restores them and re-evaluates the same.
    resumed = train.train_and_evaluate(task, c, str(tmp_path))
    assert resumed["step"] == 4
    assert resumed["valid/loss"] == pytest.approx(final["valid/loss"], rel=1e-6)


def test_checkpoints_from_before_model_state_restore_with_an_empty_one(tmp_path):
    class OldState(flax.struct.PyTreeNode):  # TrainState's fields before model_state
        step: jax.Array
        epoch: jax.Array
        batch_in_epoch: jax.Array
        params: dict
        opt_state: dict
        key: jax.Array
        carry: dict
        best_metric: jax.Array
        bad_epochs: jax.Array

    fields = dict(step=jnp.asarray(7), epoch=jnp.asarray(1), batch_in_epoch=jnp.asarray(2),
                  params={"w": jnp.arange(3.0)}, opt_state={"m": jnp.ones(3)},
                  key=jnp.zeros(2, jnp.uint32), carry={}, best_metric=jnp.asarray(0.5),
                  bad_epochs=jnp.asarray(0))
    checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
    checkpointer.save(OldState(**fields), 7)
    target = TrainState(**dict(fields, step=jnp.asarray(0), params={"w": jnp.zeros(3)}))
    restored = checkpointer.restore_latest(target)
    checkpointer.close()
    assert restored is not None and int(restored.step) == 7 and restored.model_state == {}
    np.testing.assert_array_equal(restored.params["w"], [0.0, 1.0, 2.0])


def test_population_of_identical_batches_is_their_statistics_without_residue():
    """Debiased averages: after n updates with the same batch statistics s, the
    population reads s exactly, whatever n and the momentum (the averages started at
    (0, 1) kept momentum^n of the initial variance, which wrecked pMNIST evaluation)."""
    population = batchnorm.init_population(3, 5)
    rng = np.random.default_rng(0)
    batch = {name: jnp.asarray(rng.uniform(1e-4, 1e-3, (5, 12 if name[0] != "c" else 3)),
                               jnp.float32) for name in batchnorm.STAT_NAMES}
    for _ in range(7):
        population = batchnorm.update_population(population, batch, momentum=0.99)
    stats = batchnorm.statistics(population)
    for name in batchnorm.STAT_NAMES:
        np.testing.assert_allclose(stats[name], batch[name], rtol=1e-4, err_msg=name)
