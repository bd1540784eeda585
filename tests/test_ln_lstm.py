"""The layer-normalized LSTM (`"lstm_ln"`, Ba et al. 2016): golden-free properties."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest

import rnnreg_jax as rj
from rnnreg_jax import cells, rnn

B, T, F, H = 3, 6, 5, 4
KEY = jax.random.key(0)


def rand(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def ln_params(seed=0, in_size=F, hidden=H, perturb=True):
    """`init_params` with gains/biases moved off (1, 0), so they matter in the tests."""
    p = cells.init_params(jax.random.key(seed), "lstm_ln", in_size, hidden, 0.5)
    if perturb:
        rng = np.random.default_rng(seed + 100)
        p = {k: (v + jnp.asarray(rng.uniform(-0.3, 0.3, v.shape), v.dtype)
                 if k.startswith("ln_") else v) for k, v in p.items()}
    return p


def test_layer_norm_statistics_per_gate_block():
    x = jnp.asarray(rand(0, 7, 4 * H) * 3 + 2)
    ones, zeros = jnp.ones(4 * H), jnp.zeros(4 * H)
    y = np.asarray(cells.layer_norm(x, ones, zeros, groups=4)).reshape(7, 4, H)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(-1), 1.0, rtol=1e-3)
    # gains and biases act unit by unit after the normalization
    g, b = jnp.asarray(rand(1, 4 * H)), jnp.asarray(rand(2, 4 * H))
    np.testing.assert_allclose(cells.layer_norm(x, g, b, 4),
                               y.reshape(7, -1) * np.asarray(g) + np.asarray(b), rtol=1e-5,
                               atol=1e-5)


def test_init_params_shares_the_lstm_draws_and_starts_at_identity_normalization():
    p = cells.init_params(KEY, "lstm_ln", F, H)
    lstm = cells.init_params(KEY, "lstm", F, H)
    for name in ("w_x", "w_h", "b"):
        np.testing.assert_array_equal(p[name], lstm[name])
    assert {k: v.shape for k, v in p.items() if k.startswith("ln_")} == {
        "ln_x_g": (4 * H,), "ln_x_b": (4 * H,), "ln_h_g": (4 * H,), "ln_h_b": (4 * H,),
        "ln_c_g": (H,), "ln_c_b": (H,)}
    for k, v in p.items():
        if k.startswith("ln_"):
            np.testing.assert_array_equal(v, 1.0 if k.endswith("_g") else 0.0)
    carry = cells.init_carry("lstm_ln", B, H, output_gate=True)
    assert set(carry) == {"h", "c", "o"}
    assert cells.NUM_GATES["lstm_ln"] == 4
    assert cells.get_step("lstm_ln") is cells.lstm_ln_step
    assert cells.get_update("lstm_ln") is cells.lstm_ln_update


def _np_ln(v, g, b, groups):
    blocks = v.reshape(*v.shape[:-1], groups, -1)
    mu = blocks.mean(-1, keepdims=True)
    var = blocks.var(-1, keepdims=True)
    return ((blocks - mu) / np.sqrt(var + cells.LN_EPSILON)).reshape(v.shape) * g + b


def test_one_step_matches_ba_et_al_written_out():
    params = ln_params()
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x, h, c = rand(3, B, F), rand(4, B, H), rand(5, B, H)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    x64, h64, c64 = (v.astype(np.float64) for v in (x, h, c))
    z = (_np_ln(x64 @ p["w_x"], p["ln_x_g"], p["ln_x_b"], 4)
         + _np_ln(h64 @ p["w_h"], p["ln_h_g"], p["ln_h_b"], 4) + p["b"])
    zi, zf, zg, zo = np.split(z, 4, axis=-1)
    c_new = sig(zf) * c64 + sig(zi) * np.tanh(zg)
    h_new = sig(zo) * np.tanh(_np_ln(c_new, p["ln_c_g"], p["ln_c_b"], 1))
    ys, carry = rnn.unroll("lstm_ln", params, jnp.asarray(x[:, None]),
                           {"h": jnp.asarray(h), "c": jnp.asarray(c)})
    nm.assert_close_f32(ys[:, 0], h_new)
    nm.assert_close_f32(carry["c"], c_new)
    with nm.x64():  # the same function: to rounding in float64
        ys, carry = rnn.unroll("lstm_ln", nm.as_f64(params), nm.as_f64(x[:, None]),
                               nm.as_f64({"h": h, "c": c}))
        nm.assert_close_f64(ys[:, 0], h_new)
        nm.assert_close_f64(carry["c"], c_new)


def test_invariant_to_rescaling_the_weight_matrices():
    """LN removes the scale of x W_x and h W_h: the defining property of Ba et al.'s cell.

    Exact up to `LN_EPSILON` (relative to a gate block's variance, which is small
    for blocks of H = 4 units); the recurrence amplifies that over time, so two
    steps are compared."""
    p = ln_params()
    carry = {"h": jnp.asarray(rand(6, B, H)), "c": jnp.asarray(rand(7, B, H))}
    x = jnp.asarray(rand(8, B, 2, F))
    ys, _ = rnn.unroll("lstm_ln", p, x, carry)
    scaled = dict(p, w_x=p["w_x"] * 3.0, w_h=p["w_h"] * 0.5)
    ys2, _ = rnn.unroll("lstm_ln", scaled, x, carry)
    np.testing.assert_allclose(ys, ys2, rtol=1e-3, atol=1e-3)
    # the plain LSTM is not invariant
    plain = {k: p[k] for k in ("w_x", "w_h", "b")}
    a, _ = rnn.unroll("lstm", plain, x, carry)
    b, _ = rnn.unroll("lstm", dict(plain, w_x=plain["w_x"] * 3.0), x, carry)
    assert not np.allclose(a, b, atol=1e-3)


ALL_SITES = (rj.variational(0.3, 0.2, 0.4, cell=0.2, per_gate=True)
             + rj.recurrent_dropout(0.3, output_zoneout=True) + rj.zoneout(0.2, 0.1)
             + rj.stochastic_depth(0.1) + rj.weight_noise(0.05) + rj.weight_drop(0.3))


def _loss(reg, deterministic, implementation):
    def loss(params, x, carry):
        ys, carry = rnn.unroll("lstm_ln", params, x, carry, reg=reg, key=KEY,
                               deterministic=deterministic, implementation=implementation)
        state = sum(jnp.sum(v**3) for c in carry for v in c.values())
        return jnp.sum(jnp.sin(ys)) + state
    return loss


@pytest.mark.parametrize("deterministic", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_fused_gradients_equal_autodiff_with_every_lstm_site(deterministic):
    params = [ln_params(0, F, H), ln_params(1, H, H)]
    x = jnp.asarray(rand(9, B, T, F))
    carry = jax.tree.map(lambda a: a + 0.1, rnn.initial_carry("lstm_ln", params, B, ALL_SITES))

    # float64 to rounding, float32 each leaf to F32_ULPS of its largest element: the
    # cubed state makes gradients of hundreds to thousands, whose rounding a bare 1e-5
    # could not absorb on every instruction set.
    out = nm.assert_fused_matches_autodiff(
        lambda impl: _loss(ALL_SITES, deterministic, impl), params, x, carry)
    # the normalization gains get gradients (through the fused backward's update vjp)
    assert float(jnp.abs(out["fused"][1][0][0]["ln_h_g"]).sum()) > 0


def test_compose_zoneout_and_variational_from_the_zero_state():
    """Under jit, from the zero state (LN of a zero vector), 40 steps: finite
    values and gradients; zoneout 1 keeps the state; deterministic dropout is exact."""
    params = [ln_params(0, F, H, perturb=False)]
    x = jnp.asarray(rand(10, 2, 40, F))
    reg = rj.zoneout(0.3, 0.1) + rj.variational(0.3, 0.3, 0.3)

    @jax.jit
    def f(params):
        def loss(p):
            ys, _ = rj.unroll("lstm_ln", p, x, reg=reg, key=KEY, deterministic=False)
            return jnp.mean(ys**2)
        value, grad = jax.value_and_grad(loss)(params)
        frozen, carry = rj.unroll("lstm_ln", params, x, reg=rj.zoneout(1.0, 1.0), key=KEY,
                                  deterministic=False)
        det, _ = rj.unroll("lstm_ln", params, x, reg=rj.variational(0.3, 0.3, 0.3, cell=0.3),
                           deterministic=True)
        plain, _ = rj.unroll("lstm_ln", params, x)
        return value, grad, frozen, carry, det, plain

    value, grad, frozen, carry, det, plain = f(params)
    assert np.isfinite(value)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))
    np.testing.assert_array_equal(frozen, 0.0)
    np.testing.assert_array_equal(carry[0]["c"], 0.0)
    np.testing.assert_array_equal(det, plain)


def test_language_model_with_ln_lstm():
    from rnnreg_jax.models import LanguageModel

    model = LanguageModel(vocab_size=11, hidden_sizes=(H, H), embed_size=H, cell="lstm_ln",
                          reg=rj.awd_lstm(), tie_embeddings=True)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 11, (2, 5)), jnp.int32)
    variables = model.init(KEY, ids)
    assert "ln_c_g" in variables["params"]["rnn"]["layer_1"]
    (logits, _), pens = model.apply(variables, ids, deterministic=False,
                                    rngs={"dropout": KEY}, mutable=["penalties"])
    assert logits.shape == (2, 5, 11) and np.all(np.isfinite(logits))
    assert set(pens["penalties"]["rnn"]) == {"activation_reg", "temporal_activation_reg"}


def test_unknown_cells_are_still_rejected():
    with pytest.raises(ValueError, match="lstm_ln"):
        cells.check_cell_type("lnlstm")
