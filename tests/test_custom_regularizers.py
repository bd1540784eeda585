"""docs/CUSTOM_REGULARIZERS.md runs as written, and its regularizers and cell do what it
says: composed with the built-ins, under jit and grad, with both backward passes."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest

import rnnreg_jax as rj
from rnnreg_jax import cells, rnn

PAGE = Path(__file__).resolve().parents[1] / "docs" / "CUSTOM_REGULARIZERS.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


@pytest.fixture(scope="module")
def page():
    namespace: dict = {}
    for block in BLOCKS:
        exec(compile(block, str(PAGE), "exec"), namespace)  # noqa: S102 -- our own docs
    yield namespace
    cells.REGISTRY.pop("peephole_lstm", None)


def test_each_example_is_short():
    # DropConnect, the step noise, the Bayesian weights and the peephole cell, each in
    # ~40 lines of code
    sizes = [sum(1 for line in b.splitlines() if line.strip() and not line.startswith(
        ("import", "from", "    \"\"\""))) for b in BLOCKS[:4]]
    assert len(BLOCKS) == 5 and all(size <= 40 for size in sizes), sizes


def _params(cell, rng, sizes=(3, 6, 5)):
    layers = []
    for f, h in zip(sizes, sizes[1:], strict=False):
        p = cells.init_params(jax.random.key(rng), cell, f, h, 0.4)
        layers.append(p)
    return layers


def _grads(cell, params, x, reg, implementation):
    def loss(params):
        ys, carry = rnn.unroll(cell, params, x, reg=reg, key=jax.random.key(4),
                               deterministic=False, implementation=implementation)
        return jnp.sum(ys * jnp.cos(ys)) + sum(jnp.sum(c["h"]) for c in carry)

    return jax.jit(jax.value_and_grad(loss))(params)


def test_dropconnect_masks_w_x_only_in_training_and_composes(page):
    reg = page["reg"]
    assert hash(reg) == hash(rj.zoneout(cells=0.5, hiddens=0.05) + page["InputDropConnect"](0.3))
    params = _params("lstm", 0)
    used = reg.weights(params[0], jax.random.key(1), 0, deterministic=False)
    dropped = np.mean(np.asarray(used["w_x"]) == 0)
    assert 0.2 < dropped < 0.4, dropped  # 72 weights at rate 0.3
    np.testing.assert_array_equal(used["w_h"], params[0]["w_h"])
    assert reg.weights(params[0], None, 0, deterministic=True) is params[0]
    x = jax.random.normal(jax.random.key(2), (4, 7, 3))
    zoneout_only = rj.zoneout(cells=0.5, hiddens=0.05)
    ev = rnn.unroll("lstm", params, x, reg=reg)[0]
    np.testing.assert_array_equal(ev, rnn.unroll("lstm", params, x, reg=zoneout_only)[0])
    train = lambda r: rnn.unroll("lstm", params, x, reg=r, key=jax.random.key(3),  # noqa: E731
                                 deterministic=False)[0]
    assert not np.allclose(train(reg), train(zoneout_only))


def test_gaussian_step_noise_is_one_draw_a_sequence_and_composes(page):
    noisy, gaussian = page["noisy"], page["GaussianRecurrentNoise"]
    zoneout_only = rj.zoneout(cells=0.5, hiddens=0.05)
    params = _params("lstm", 0)
    x = jax.random.normal(jax.random.key(2), (4, 7, 3))

    def run(reg, deterministic=False):
        return rnn.unroll("lstm", params, x, reg=reg, key=jax.random.key(3),
                          deterministic=deterministic)[0]

    np.testing.assert_array_equal(run(noisy, True), run(zoneout_only, True))
    assert not np.allclose(run(noisy), run(zoneout_only))
    # it draws from its own key: at sigma 0 zoneout's masks are what they were alone
    np.testing.assert_array_equal(run(zoneout_only + gaussian(0.0)), run(zoneout_only))
    shape = rj.regularizers.LayerShape(0, "lstm", 4, 7, 3, 6, 4, jnp.float32)
    tied, per_step = gaussian(0.5).step_noise(jax.random.key(1), shape, False)
    assert per_step == {} and tied["recurrent"].shape == (4, 6)
    assert abs(float(jnp.std(tied["recurrent"])) - 0.5) < 0.25  # 24 draws of 1 + 0.5 eps
    with pytest.raises(ValueError, match="site 'recurrent' is written by both"):
        gaussian() + rj.variational(recurrent=0.2)


@pytest.mark.parametrize("cell", ["lstm", pytest.param("gru", marks=pytest.mark.slow),
                                  pytest.param("peephole_lstm", marks=pytest.mark.slow)])
def test_both_backward_passes_agree_with_every_example(page, cell):
    zoneout = rj.zoneout(hiddens=0.1) if cell == "gru" else rj.zoneout(cells=0.3, hiddens=0.1)
    reg = (page["InputDropConnect"](0.3) + zoneout + page["BayesianRecurrentWeights"]()
           + rj.recurrent_dropout(0.2) + page["GaussianRecurrentNoise"](0.3))
    with nm.x64():
        x = jax.random.normal(jax.random.key(2), (4, 7, 3), jnp.float64)
        params = [dict(p, w_h_log_std=jnp.full_like(p["w_h"], -3.0))
                  for p in jax.tree.map(lambda a: a.astype(jnp.float64), _params(cell, 5))]
        fused = _grads(cell, params, x, reg, "fused")
        autodiff = _grads(cell, params, x, reg, "autodiff")
    jax.tree.map(nm.assert_close_f64, fused, autodiff)
    d_log_std = np.asarray(fused[1][0]["w_h_log_std"])  # float64, read outside x64
    assert np.all(np.isfinite(d_log_std)) and np.any(d_log_std != 0)


def test_bayesian_weights_add_a_learned_scale_and_their_kl(page):
    layer, x, variables = page["layer"], page["x"], page["variables"]
    assert {"w_h_log_std", "p_i", "p_f", "p_o"} <= set(variables["params"]["layer_0"])
    np.testing.assert_array_equal(variables["params"]["layer_1"]["w_h_log_std"], -4.0)
    _, aux = layer.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(3)},
                         mutable=["penalties"])
    kl = aux["penalties"]["bayes_kl"][0]
    std, prior = np.exp(-4.0), 0.1
    w = [np.asarray(variables["params"][f"layer_{i}"]["w_h"]) for i in range(2)]
    expected = 1e-4 * sum(np.sum(np.log(prior / std) + (std ** 2 + v ** 2) / (2 * prior ** 2)
                                 - 0.5) for v in w)
    np.testing.assert_allclose(kl, expected, rtol=1e-5)
    grads = page["grads"]
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert np.any(grads["layer_0"]["w_h_log_std"] != 0)  # the scale learns
    assert np.any(grads["layer_0"]["p_o"] != 0)  # and so do the peepholes


def test_peephole_lstm_with_zero_peepholes_is_the_lstm(page):
    peephole = page["peephole"]
    params = _params(peephole, 7)
    x = jax.random.normal(jax.random.key(2), (4, 7, 3))
    reg = rj.variational(input=0.2, recurrent=0.2) + rj.zoneout(cells=0.3, hiddens=0.1)
    for deterministic in (True, False):
        ours = rnn.unroll("peephole_lstm", params, x, reg=reg, key=jax.random.key(3),
                          deterministic=deterministic)
        lstm = rnn.unroll("lstm", [{k: p[k] for k in ("w_x", "w_h", "b")} for p in params], x,
                          reg=reg, key=jax.random.key(3), deterministic=deterministic)
        nm.assert_close_f32(ours[0], lstm[0])
    with pytest.raises(ValueError, match="output-gate zoneout"):
        rnn.unroll(peephole, params, x, reg=rj.recurrent_dropout(0.2, output_zoneout=True),
                   key=jax.random.key(3), deterministic=False)


def test_two_writers_of_one_site_are_refused_in_one_line(page):
    twin = page["BayesianRecurrentWeights"](prior_std=0.2)
    with pytest.raises(ValueError, match="site 'bayes_kl' is written by both"):
        page["BayesianRecurrentWeights"]() + twin
    with pytest.raises(ValueError, match="built-in noise site"):
        rj.noise.named_site_key(jax.random.key(0), "recurrent")
