"""Bidirectional stacks (`rnnreg_jax.bidirectional`, `nn.Bidirectional`): PyTorch golden
values, regularizers per direction, merges, both backward passes, variable lengths,
mixed precision, sharding metadata, the Pallas kernel and the one-sentence errors.

The golden fixtures come from `tests/make_golden_bidirectional.py` (PyTorch's
bidirectional `nn.LSTM`, `nn.GRU`, tanh `nn.RNN` in float64 from float32 weights and
inputs); these tests need no torch.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest

import rnnreg_jax as rj
from rnnreg_jax import bidirectional as bd
from rnnreg_jax import cells, noise, rnn, torch_port
from rnnreg_jax.nn import Bidirectional
from rnnreg_jax.regularizers import penalties as pen

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
DIRS = bd.DIRECTIONS
SUFFIX = {"forward": "", "backward": "_reverse"}
# float32 against PyTorch's float64: max error relative to max(1, the array's largest
# magnitude), as in test_torch_port (float32 rounding here is ~1e-6 of unit values).
TOL32 = 1e-5
B, T, F, H = 3, 6, 4, 3


# ---------------------------------------------------------------------------- golden

def load(cell: str, num_layers: int) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"golden_bidirectional_{cell}_{num_layers}layer.npz") as data:
        return {k: data[k] for k in data.files}


def state_dict(fx: dict) -> dict:
    return {k.removeprefix("sd/"): v for k, v in fx.items() if k.startswith("sd/")}


def fixture_carry(cell: str, fx: dict) -> list[dict]:
    """Per layer `{"forward", "backward"}` carries from PyTorch's `[2L, B, H]` state."""
    num_layers = fx["h0"].shape[0] // 2
    names = ("h", "c") if cell == "lstm" else ("h",)
    return [{d: {n: jnp.asarray(fx[f"{n}0"][2 * layer + i]) for n in names}
             for i, d in enumerate(DIRS)} for layer in range(num_layers)]


def golden_loss(cell: str, fx: dict, run: str, implementation: str = "auto"):
    """The fixture's loss of `(params, x, carry)` with its outputs as aux."""
    lengths = fx["lengths"] if run == "packed" else None

    def loss_fn(layers, x, carry):
        out, final = bd.unroll_bidirectional(cell, layers, x, carry, seq_lengths=lengths,
                                             implementation=implementation)
        aux = {"out": out}
        loss = jnp.sum(out * fx["r_out"])
        for n in ("h", "c") if cell == "lstm" else ("h",):
            aux[f"{n}n"] = jnp.stack([c[d][n] for c in final for d in DIRS])  # 2 l + d
            loss = loss + jnp.sum(aux[f"{n}n"] * fx[f"r_{n}"])
        return loss, aux

    return loss_fn


def check_against_golden(cell: str, fx: dict, run: str, dtype,
                         implementation: str = "auto") -> None:
    """Outputs, final states, loss and every gradient against the fixture's `run`."""
    def close(actual, name):
        expected = fx[f"{run}/{name}"]
        if dtype == jnp.float64:
            nm.assert_close_f64(actual, expected, err_msg=name)
            return
        actual = np.asarray(actual)
        assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
        err = float(np.max(np.abs(actual - expected)))
        tol = TOL32 * max(1.0, float(np.max(np.abs(expected))))
        assert err <= tol, f"{name}: max abs error {err:.3g} > {tol:.3g}"

    # float64 keeps both PyTorch biases (their float32 sum would round)
    layers = torch_port.from_torch_bidirectional(cell, state_dict(fx),
                                                 recurrent_bias=dtype == jnp.float64)
    args = (layers, jnp.asarray(fx["x"]), fixture_carry(cell, fx))
    args = nm.as_f64(args) if dtype == jnp.float64 else args
    grad_fn = jax.value_and_grad(golden_loss(cell, fx, run, implementation), argnums=(0, 1, 2),
                                 has_aux=True)
    (loss, aux), (g_layers, g_x, g_carry) = jax.jit(grad_fn)(*args)
    for name, value in aux.items():
        close(value, name)
    close(loss, "loss")
    close(g_x, "grad/x")
    for n in ("h", "c") if cell == "lstm" else ("h",):
        close(jnp.stack([c[d][n] for c in g_carry for d in DIRS]), f"grad/{n}0")
    for k, layer in enumerate(g_layers):
        for d in DIRS:
            g, s = layer[d], f"_l{k}{SUFFIX[d]}"
            close(g["w_x"].T, f"grad/weight_ih{s}")
            close(g["w_h"].T, f"grad/weight_hh{s}")
            close(g["b"], f"grad/bias_ih{s}")
            # one summed bias (float32 LSTM/RNN) gets the gradient of both
            close(g["b_h"] if "b_h" in g else g["b"], f"grad/bias_hh{s}")


GOLDEN = [(cell, layers) for cell in ("lstm", "gru", "rnn") for layers in (1, 2)]


@pytest.mark.parametrize("cell,num_layers", GOLDEN)
def test_matches_pytorch_bidirectional(cell: str, num_layers: int) -> None:
    """Outputs, final states and gradients equal PyTorch's bidirectional module: to 1e-5
    in float32 and to 1e-10 (relative) in float64."""
    fx = load(cell, num_layers)
    assert fx["sizes"].tolist() == [3, 5, 4, 3, num_layers]
    assert fx["full/out"].shape == (3, 5, 6) and np.abs(fx["h0"]).min() > 0
    check_against_golden(cell, fx, "full", jnp.float32)
    with nm.x64():
        check_against_golden(cell, fx, "full", jnp.float64)


@pytest.mark.parametrize("implementation", ["fused", "autodiff"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_packed_sequences_match_pytorch(cell: str, implementation: str) -> None:
    """With `seq_lengths` the backward direction starts at each example's last valid step
    and outputs, final states and every gradient equal PyTorch's packed sequences
    (float64, 2 layers), through either backward pass; the module passes the lengths on."""
    fx = load(cell, 2)
    assert sorted(fx["lengths"].tolist()) == [2, 4, 5]
    assert np.all(fx["packed/out"][1, 2:] == 0)  # PyTorch pads with zeros
    with nm.x64():
        check_against_golden(cell, fx, "packed", jnp.float64, implementation)
    ported = torch_port.from_torch_bidirectional(cell, state_dict(fx))
    module = Bidirectional((3, 3), cell=cell, implementation=implementation)
    ys, _ = module.apply({"params": {f"layer_{i}": p for i, p in enumerate(ported)}},
                         jnp.asarray(fx["x"]), fixture_carry(cell, fx),
                         seq_lengths=fx["lengths"])
    assert float(np.abs(np.asarray(ys) - fx["packed/out"]).max()) <= TOL32


# ------------------------------------------------------------------ variable lengths

LENGTHS = (6, 2, 4)  # B = 3, T = 6: one full-length example, one of a single pair
MORE_STEPS = 9
PENALTIES = ("activation_reg", "temporal_activation_reg", "norm_stabilizer")


def padded(x: jax.Array, steps: int, seed: int) -> jax.Array:
    """`x` cut to each example's length and padded to `steps` with random junk."""
    junk = 5.0 * jax.random.normal(jax.random.key(seed), (x.shape[0], steps, x.shape[2]),
                                   x.dtype)
    valid = (jnp.arange(steps)[None, :] < jnp.asarray(LENGTHS)[:, None])[..., None]
    return jnp.where(valid, jnp.pad(x, ((0, 0), (0, steps - x.shape[1]), (0, 0))), junk)


def counts(length: int, width: int) -> dict[str, int]:
    """How many terms each penalty averages over for one example of `length` steps (the
    pooled mean over a batch is the count-weighted mean of its examples')."""
    return {"activation_reg": length * 2 * width, "temporal_activation_reg":
            (length - 1) * width, "norm_stabilizer": length - 1}


def lengths_loss(cell, reg, deterministic, key, implementation, seq_lengths=None):
    """A loss of the outputs, final states and each penalty times its number of terms (a
    sum over valid terms, so additive over examples), with the pieces as aux."""
    def loss(params, x):
        ys, carry, hiddens = bd.unroll_bidirectional(
            cell, params, x, reg=reg, key=key, deterministic=deterministic,
            implementation=implementation, seq_lengths=seq_lengths, return_hiddens=True)
        terms = bd.penalties(reg, params, hiddens, ys, 1, seq_lengths)
        n = {k: 0 for k in PENALTIES}
        for length in LENGTHS if seq_lengths is not None else (x.shape[1],) * x.shape[0]:
            n = {k: n[k] + v for k, v in counts(length, H).items()}
        states = sum(jnp.sum(jnp.sin(v) ** 2) for v in jax.tree.leaves(carry))
        total = jnp.sum(jnp.sin(ys) * jnp.cos(ys)) + states + sum(
            terms[k] * n[k] for k in PENALTIES)
        return total, (ys, carry, terms)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def lengths_setup():
    """A two-layer LSTM stack's float64 parameters and inputs `[B, T, F]` (call inside
    `nm.x64()`)."""
    params = nm.as_f64(bd.init_params(jax.random.key(0), "lstm", F, (H, H)))
    return params, jax.random.normal(jax.random.key(1), (len(LENGTHS), T, F), jnp.float64)


LENGTHS_PENALTIES = (rj.activation_regularization(2.0)
                     + rj.temporal_activation_regularization(1.0) + rj.norm_stabilizer(0.5))
# the default suite: each backward pass in one of the two tests (both are in the
# PyTorch packed-sequence test above); the other halves with -m slow
IMPLEMENTATIONS_FIRST = ["fused", pytest.param("autodiff", marks=pytest.mark.slow)]
IMPLEMENTATIONS_LAST = [pytest.param("fused", marks=pytest.mark.slow), "autodiff"]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS_FIRST)
def test_padded_batch_equals_each_example_alone(implementation: str) -> None:
    """A two-layer stack on a padded batch (float64, evaluation: zoneout's and stochastic
    depth's expectations) computes each example's outputs, final states, penalties (each
    the count-weighted mean of the examples' own), loss and gradients as run alone,
    unpadded; outputs past a length are zero and the padding gets no gradient."""
    cell = "lstm"
    expectation = rj.zoneout(0.3, 0.2) + rj.stochastic_depth(0.2) + LENGTHS_PENALTIES
    seq_lengths = jnp.asarray(LENGTHS)
    with nm.x64():
        params, x = lengths_setup()
        run = lengths_loss(cell, expectation, True, None, implementation, seq_lengths)
        (loss, (ys, carry, terms)), (d_params, d_x) = run(params, padded(x, T, 2))
        past = ~np.asarray(jnp.arange(T)[None, :] < seq_lengths[:, None])
        assert np.all(np.asarray(ys)[past] == 0.0) and np.all(np.asarray(d_x)[past] == 0.0)
        total_loss, total_grads = 0.0, jax.tree.map(jnp.zeros_like, params)
        weighted = {k: 0.0 for k in PENALTIES}
        for b, steps in enumerate(LENGTHS):
            alone = lengths_loss(cell, expectation, True, None, implementation)
            (loss_b, (ys_b, carry_b, terms_b)), (d_params_b, d_x_b) = alone(
                params, x[b:b + 1, :steps])
            name = f"example {b} (L={steps})"
            nm.assert_close_f64(ys[b:b + 1, :steps], ys_b, err_msg=f"{name} outputs")
            nm.assert_trees_close_f64(jax.tree.map(lambda a, b=b: a[b:b + 1], carry), carry_b,
                                      err_msg=f"{name} carry")
            nm.assert_close_f64(d_x[b:b + 1, :steps], d_x_b, err_msg=f"{name} input grads")
            total_loss += loss_b
            total_grads = jax.tree.map(jnp.add, total_grads, d_params_b)
            weighted = {k: weighted[k] + terms_b[k] * counts(steps, H)[k] for k in PENALTIES}
        n = {k: sum(counts(steps, H)[k] for steps in LENGTHS) for k in PENALTIES}
        for k in PENALTIES:
            nm.assert_close_f64(terms[k], weighted[k] / n[k], err_msg=k)
            assert float(terms[k]) > 0, k
        nm.assert_close_f64(loss, total_loss, err_msg="loss = sum of the examples'")
        nm.assert_trees_close_f64(d_params, total_grads, err_msg="grads = sum of the examples'")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS_LAST)
def test_padded_training_ignores_the_padding(implementation: str) -> None:
    """In training (per-step and tied masks, float64) more padding and other junk change
    nothing on the valid steps: loss, outputs, final states and gradients."""
    noisy = rj.variational(0.3, 0.3, 0.3) + rj.zoneout(0.3, 0.2) + LENGTHS_PENALTIES
    with nm.x64():
        params, x = lengths_setup()
        run = lengths_loss("lstm", noisy, False, jax.random.key(5), implementation,
                           jnp.asarray(LENGTHS))
        (loss6, (ys6, carry6, _)), grads6 = run(params, padded(x, T, 3))
        (loss9, (ys9, carry9, _)), grads9 = run(params, padded(x, MORE_STEPS, 4))
        nm.assert_close_f64(loss9, loss6, err_msg="loss, more padding")
        nm.assert_close_f64(ys9[:, :T], ys6, err_msg="outputs, more padding")
        nm.assert_trees_close_f64((carry9, grads9[0]), (carry6, grads6[0]),
                                  err_msg="carry and grads, more padding")
        nm.assert_close_f64(grads9[1][:, :T], grads6[1], err_msg="input grads, more padding")


def test_module_sows_penalties_of_valid_steps() -> None:
    """The module passes `seq_lengths` to its penalties: the padding changes none."""
    reg = (rj.activation_regularization(2.0) + rj.temporal_activation_regularization(1.0)
           + rj.norm_stabilizer(0.5))
    module = Bidirectional((H, H), cell="gru", reg=reg)
    x = jax.random.normal(jax.random.key(1), (len(LENGTHS), T, F))
    variables = module.init(jax.random.key(0), x)
    apply = jax.jit(lambda x: module.apply(variables, x, deterministic=False,
                                           mutable=["penalties"],
                                           seq_lengths=jnp.asarray(LENGTHS))[1])
    sown = {}
    for steps, seed in ((T, 2), (MORE_STEPS, 3)):
        state = apply(padded(x, steps, seed))
        sown[steps] = {k: float(v[0]) for k, v in state["penalties"].items()}
    assert set(sown[T]) == set(PENALTIES) and all(v > 0 for v in sown[T].values())
    assert sown[T] == pytest.approx(sown[MORE_STEPS], rel=1e-5)


def test_torch_port_round_trip_and_errors() -> None:
    """to_torch_bidirectional(from_torch_bidirectional(sd)) gives PyTorch's keys back."""
    sd = state_dict(load("gru", 2))
    layers = torch_port.from_torch_bidirectional("gru", sd)
    assert len(layers) == 2 and set(layers[1]) == set(DIRS)
    assert layers[1]["backward"]["w_x"].shape == (6, 9)  # reads 2H, GRU's 3 gates
    np.testing.assert_array_equal(layers[0]["backward"]["w_h"], sd["weight_hh_l0_reverse"].T)
    back = torch_port.to_torch_bidirectional("gru", layers)
    assert set(back) == set(sd)
    for name, value in sd.items():
        np.testing.assert_array_equal(back[name], value)
    with pytest.raises(ValueError, match="weight_ih_l0_reverse"):
        torch_port.from_torch_bidirectional("lstm", {"weight_ih_l0": np.zeros((1, 1))})
    with pytest.raises(ValueError, match="no PyTorch counterpart"):
        torch_port.to_torch_bidirectional("lstm_ln", layers)


# ---------------------------------------------------------------------- reverse_padded

def reverse_reference(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Batch-major reference: each example's first length steps reversed."""
    out = x.copy()
    for b, n in enumerate(lengths):
        out[b, :n] = x[b, :n][::-1]
    return out


def test_reverse_padded_matches_numpy() -> None:
    """Per example within its length, padding in place, its own inverse, both layouts,
    traced lengths under jit (out of range: as if clipped to [0, T]), None reverses all
    steps."""
    x = np.random.default_rng(0).standard_normal((4, 5, 2, 3)).astype(np.float32)
    lengths = np.array([5, 2, 3, 1])
    expected = reverse_reference(x, lengths)
    np.testing.assert_array_equal(bd.reverse_padded(x, lengths, 1), expected)
    np.testing.assert_array_equal(
        bd.reverse_padded(np.swapaxes(x, 0, 1), lengths, 0), np.swapaxes(expected, 0, 1))
    traced = jax.jit(bd.reverse_padded, static_argnums=2)
    np.testing.assert_array_equal(traced(x, jnp.asarray(lengths), 1), expected)
    np.testing.assert_array_equal(traced(x, jnp.asarray([9, 0, -2, 1]), 1),
                                  reverse_reference(x, np.array([5, 0, 0, 1])))
    np.testing.assert_array_equal(bd.reverse_padded(expected, lengths, 1), x)
    np.testing.assert_array_equal(bd.reverse_padded(x[..., 0, 0], None, 1), x[:, ::-1, 0, 0])
    assert rj.reverse_padded is bd.reverse_padded


@pytest.mark.parametrize("lengths,match", [
    (np.array([1, 2]), r"shape \[B\] = \(4,\)"),
    (np.array([1, 2, 6, 1]), r"in \[1, T\] = \[1, 5\]"),
    (np.array([1, 2, 0, 1]), r"in \[1, T\] = \[1, 5\]"),
    (np.array([1.0, 2, 3, 4]), "integers")])
def test_bad_lengths_are_one_sentence(lengths, match) -> None:
    """`lengths.check`'s validation and wording, as `rnn.unroll`'s."""
    with pytest.raises(ValueError, match=match):
        bd.reverse_padded(np.zeros((4, 5)), lengths, 1)
    with pytest.raises(ValueError, match="time_axis must be 0 or 1"):
        bd.reverse_padded(np.zeros((4, 5)), np.array([1, 2, 3, 4]), 2)


# ------------------------------------------------------------------------ regularizers

def run_directions(cell, params, x, reg, key, deterministic=False, **kwargs):
    """The stack's outputs and each layer's per-direction hiddens."""
    ys, carry, hiddens = bd.unroll_bidirectional(cell, params, x, reg=reg, key=key,
                                                 deterministic=deterministic,
                                                 return_hiddens=True, **kwargs)
    return ys, carry, hiddens


FAMILIES = {
    "variational": lambda cell: rj.variational(0.4, 0.3, per_gate=True),
    "naive": lambda cell: rj.naive_dropout(input=0.3, recurrent=0.3),
    "zaremba_hidden": lambda cell: rj.dropout("hidden", 0.4, tie="sequence"),
    "zoneout": lambda cell: rj.zoneout(0.3 if cell == "lstm" else 0.0, 0.3),
    "recurrent_dropout": lambda cell: rj.recurrent_dropout(0.4, output_zoneout=cell == "lstm"),
    "stochastic_depth": lambda cell: rj.stochastic_depth(0.3),
    "weight_drop": lambda cell: rj.weight_drop(0.5),
    "weight_noise": lambda cell: rj.weight_noise(0.3),
    "cell": lambda cell: rj.variational(cell=0.4),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_acts_on_both_directions_with_their_own_draws(family: str) -> None:
    """Both directions with the same parameters on a sequence constant in time compute the
    same hiddens, unless their noise differs: each regularizer family changes both
    directions' hiddens in training and draws different noise for the two."""
    cell = "lstm"
    reg = FAMILIES[family](cell)
    layer = cells.init_params(jax.random.key(0), cell, F, H, init_scale=0.5)
    upper = cells.init_params(jax.random.key(1), cell, H, H, init_scale=0.5)
    params = [{d: layer for d in DIRS}, {d: upper for d in DIRS}]
    x = jnp.broadcast_to(jax.random.normal(jax.random.key(2), (B, 1, F)), (B, T, F))
    # summed, layer 0's outputs read the same both ways in time, so layer 1's do too
    run = lambda reg, key, deterministic: run_directions(cell, params, x, reg, key,
                                                         deterministic, merge="sum")
    _, _, clean = run(rj.NONE, None, True)
    _, _, noisy = jax.jit(lambda k: run(reg, k, False))(jax.random.key(3))
    top = 1 if family == "zaremba_hidden" else 0  # "hidden" masks layer 1's input only
    for h in (clean[top], noisy[top]):
        assert h["forward"].shape == h["backward"].shape == (B, T, H)
    np.testing.assert_allclose(clean[top]["forward"], clean[top]["backward"][:, ::-1],
                               atol=1e-6)
    for d in DIRS:
        assert not np.allclose(noisy[top][d], clean[top][d], atol=1e-4), (family, d)
    assert not np.allclose(noisy[top]["forward"], noisy[top]["backward"][:, ::-1], atol=1e-4)


@pytest.mark.parametrize("tie", ["sequence", "step"])
def test_input_masks_tied_per_direction(tie: str) -> None:
    """The input masks read off a tanh RNN with `w_x = I`, `w_h = 0`, `b = 0` (so
    `h_t = tanh(x_t * m_t)`): tied masks are constant over time within each direction,
    per-step ones are not, and the two directions' masks differ."""
    eye = {"w_x": jnp.eye(H), "w_h": jnp.zeros((H, H)), "b": jnp.zeros(H)}
    params = [{d: eye for d in DIRS}]
    x = jnp.broadcast_to(jnp.linspace(0.2, 0.8, B * H).reshape(B, 1, H), (B, T, H))
    reg = rj.dropout("input", 0.5, tie=tie)
    _, _, hiddens = run_directions("rnn", params, x, reg, jax.random.key(7))
    masks = {d: np.arctanh(np.asarray(hiddens[0][d], np.float64)) / np.asarray(x)
             for d in DIRS}
    for d in DIRS:
        assert set(np.round(masks[d], 4).ravel()) <= {0.0, 2.0}, d
        constant = np.allclose(masks[d], masks[d][:, :1], atol=1e-4)
        assert constant == (tie == "sequence"), (d, tie)
    assert not np.allclose(masks["forward"], masks["backward"], atol=1e-4)


def test_directions_are_unidirectional_layers_with_direction_keys() -> None:
    """A one-layer stack's directions are `rnn.unroll` of each direction's parameters
    (the backward one on the reversed window) under `direction_key`, in training with
    every noise site on, and the output mask (network level) is the window key's."""
    cell = "lstm"
    params = bd.init_params(jax.random.key(0), cell, F, H)
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    carry = jax.tree.map(lambda a: a + 0.2, bd.initial_carry(cell, params, B))
    reg = (rj.variational(0.3, 0.2, per_gate=True) + rj.zoneout(0.2, 0.1)
           + rj.weight_drop(0.3) + rj.stochastic_depth(0.1))
    key = jax.random.key(4)

    @jax.jit
    def both(params, x, carry):
        ys, final = bd.unroll_bidirectional(cell, params, x, carry, reg=reg, key=key,
                                            deterministic=False)
        f, cf = rnn.unroll(cell, params[0]["forward"], x, carry[0]["forward"], reg=reg,
                           key=bd.direction_key(key, "forward"), deterministic=False)
        b, cb = rnn.unroll(cell, params[0]["backward"], x[:, ::-1], carry[0]["backward"],
                           reg=reg, key=bd.direction_key(key, "backward"),
                           deterministic=False)
        return ys, final, jnp.concatenate([f, b[:, ::-1]], -1), [{"forward": cf,
                                                                  "backward": cb}]

    ys, final, expected, expected_final = both(params, x, carry)
    nm.assert_trees_close_f32((ys, final), (expected, expected_final))

    out_reg = reg + rj.variational(output=0.5)
    dropped = bd.unroll_bidirectional(cell, params, x, carry, reg=out_reg, key=key,
                                      deterministic=False)[0]
    mask = noise.output_mask(out_reg, key, B, T, 2 * H, False)  # [B, 2H], tied
    nm.assert_close_f32(dropped, ys * mask[:, None, :])


def test_deterministic_mode_is_noise_free_and_needs_no_key() -> None:
    """Evaluation: dropout and weight noise are the identity (== no regularizer), and a
    regularizer whose expectation is not (zoneout) needs no key and repeats."""
    cell = "gru"
    params = bd.init_params(jax.random.key(0), cell, F, (H, H))
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    dropout_only = (rj.variational(0.3, 0.3, 0.3) + rj.dropout("hidden", 0.2)
                    + rj.weight_drop(0.4) + rj.weight_noise(0.2))
    clean = bd.unroll_bidirectional(cell, params, x)
    evaluated = bd.unroll_bidirectional(cell, params, x, reg=dropout_only, key=None)
    nm.assert_trees_close_f32(evaluated, clean)
    expectation = rj.zoneout(hiddens=0.3)
    first = bd.unroll_bidirectional(cell, params, x, reg=expectation)[0]
    again = bd.unroll_bidirectional(cell, params, x, reg=expectation,
                                    key=jax.random.key(9))[0]
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, clean[0], atol=1e-4)


def test_penalties_are_means_over_directions() -> None:
    """AR on the merged output, TAR and the norm stabilizer the mean over the two
    directions of their unidirectional values: as the module sows them in training."""
    cell = "lstm"
    reg = (rj.activation_regularization(2.0) + rj.temporal_activation_regularization(1.0)
           + rj.norm_stabilizer(3.0))
    module = Bidirectional((H, 2), cell=cell, reg=reg)
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    variables = module.init(jax.random.key(0), x)
    (ys, _), state = module.apply(variables, x, deterministic=False, mutable=["penalties"])
    sown = {name: value[0] for name, value in state["penalties"].items()}
    params = [variables["params"][f"layer_{i}"] for i in range(2)]
    ys_pure, _, hiddens = bd.unroll_bidirectional(cell, params, x, return_hiddens=True)
    nm.assert_close_f32(ys, ys_pure)
    top = hiddens[-1]
    expected = {
        "activation_reg": pen.activation_penalty(ys_pure, 2.0),
        "temporal_activation_reg": (pen.temporal_activation_penalty(top["forward"], 1.0)
                                    + pen.temporal_activation_penalty(top["backward"], 1.0)) / 2,
        "norm_stabilizer": sum(pen.norm_stabilizer_penalty(h[d], 3.0)
                               for h in hiddens for d in DIRS) / 2,
    }
    assert set(sown) == set(expected)
    for name, value in expected.items():
        nm.assert_close_f32(sown[name], value, err_msg=name)
        assert float(value) > 0, name
    nm.assert_trees_close_f32(bd.penalties(reg, params, hiddens, ys_pure, 1), expected)
    assert "penalties" not in module.apply(variables, x, mutable=["penalties"])[1]


# ------------------------------------------------------------------- merges and passes

def test_sum_merge_and_stacking() -> None:
    """`merge="sum"` adds the directions' outputs (the concat halves); a two-layer stack
    is two one-layer stacks chained, under either merge."""
    cell = "rnn"
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    for merge, width in (("concat", 2 * H), ("sum", H)):
        params = bd.init_params(jax.random.key(0), cell, F, (H, H), merge=merge)
        assert params[1]["forward"]["w_x"].shape == (width, H)
        ys, carry = bd.unroll_bidirectional(cell, params, x, merge=merge)
        assert ys.shape == (B, T, width)
        first, c0 = bd.unroll_bidirectional(cell, params[:1], x, merge=merge)
        single = bd.unroll_bidirectional(cell, params[0], x, c0[0], merge=merge)
        assert set(single[1]) == set(DIRS)  # a single layer's dict in, its carry dict out
        second, c1 = bd.unroll_bidirectional(cell, params[1:], first, merge=merge)
        nm.assert_trees_close_f32((ys, carry), (second, c0 + c1))
        concat = bd.unroll_bidirectional(cell, params[:1], x)[0]
        if merge == "sum":
            nm.assert_close_f32(first, concat[..., :H] + concat[..., H:])
    time_major = bd.unroll_bidirectional(cell, params, jnp.swapaxes(x, 0, 1), merge="sum",
                                         time_major=True)[0]
    nm.assert_close_f32(jnp.swapaxes(time_major, 0, 1), ys)


def all_sites(cell: str):
    return (rj.variational(0.3, 0.2, 0.4, per_gate=True) + rj.recurrent_dropout(0.3)
            + rj.zoneout(0.2 if cell == "lstm" else 0.0, 0.2) + rj.stochastic_depth(0.1)
            + rj.weight_noise(0.05))


@pytest.mark.parametrize("cell,sizes", [
    ("lstm", (H,)), pytest.param("gru", (H, 2), marks=pytest.mark.slow),
    pytest.param("lstm", (H, 2), marks=pytest.mark.slow)])
def test_fused_equals_autodiff_jit_and_grad(cell: str, sizes) -> None:
    """Both backward passes give the same value and gradients (float64 to rounding,
    float32 to its tolerance) through a stack with every noise site on; the jitted
    gradients reach both directions of every layer."""
    reg = all_sites(cell)
    params = bd.init_params(jax.random.key(0), cell, F, sizes)
    x = jax.random.normal(jax.random.key(9), (B, T, F))
    carry = jax.tree.map(lambda a: a + 0.1, bd.initial_carry(cell, params, B, reg))
    key = jax.random.key(3)

    def loss_of(implementation):
        def loss(params, x, carry):
            ys, final = bd.unroll_bidirectional(cell, params, x, carry, reg=reg, key=key,
                                                deterministic=False,
                                                implementation=implementation)
            return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(v ** 3) for v in jax.tree.leaves(final))
        return loss

    out = nm.assert_fused_matches_autodiff(loss_of, params, x, carry)
    g_params = out["fused"][1][0]
    for layer in g_params:
        for d in DIRS:
            assert float(jnp.abs(layer[d]["w_h"]).max()) > 0, d


def test_lstm_ln_and_a_users_cell_fall_out() -> None:
    """The layer-normalized LSTM runs bidirectionally; cells with running statistics are
    refused."""
    params = bd.init_params(jax.random.key(0), "lstm_ln", F, H)
    ys, carry = bd.unroll_bidirectional("lstm_ln", params, jnp.ones((B, T, F)),
                                        reg=rj.zoneout(0.1, 0.1), key=jax.random.key(1),
                                        deterministic=False)
    assert ys.shape == (B, T, 2 * H) and np.all(np.isfinite(ys))
    assert set(carry[0]["backward"]) == {"h", "c"}
    with pytest.raises(ValueError, match="without running statistics"):
        bd.unroll_bidirectional("lstm_bn", params, jnp.ones((B, T, F)))


# ------------------------------------------------------------------------------ module

def test_module_params_port_from_pytorch() -> None:
    """`layer_<l>: {forward, backward}` as PyTorch's state dict ports it; apply with
    PyTorch's weights and state reproduces its outputs; initial_carry's layout."""
    fx = load("lstm", 2)
    module = Bidirectional((3, 3), cell="lstm")
    x = jnp.asarray(fx["x"])
    variables = module.init(jax.random.key(0), x)
    ported = torch_port.from_torch_bidirectional("lstm", state_dict(fx))
    params = variables["params"]
    assert set(params) == {"layer_0", "layer_1"}
    assert jax.tree.map(jnp.shape, params["layer_1"]) == jax.tree.map(jnp.shape, ported[1])
    assert params["layer_1"]["forward"]["w_x"].shape == (6, 12)
    assert not np.allclose(params["layer_0"]["forward"]["w_h"],
                           params["layer_0"]["backward"]["w_h"])
    ys, final = module.apply({"params": {"layer_0": ported[0], "layer_1": ported[1]}}, x,
                             fixture_carry("lstm", fx))
    err = float(np.abs(np.asarray(ys) - fx["full/out"]).max())
    assert err <= TOL32, err
    zero = module.initial_carry(2)
    assert jax.tree.map(jnp.shape, zero) == [{d: {"h": (2, 3), "c": (2, 3)} for d in DIRS}] * 2
    assert jax.tree.structure(final) == jax.tree.structure(fixture_carry("lstm", fx))


def test_module_training_needs_dropout_rng_and_merges() -> None:
    module = Bidirectional(H, cell="gru", reg=rj.variational(0.3, 0.3), merge="sum")
    x = jnp.ones((B, T, F))
    variables = module.init(jax.random.key(0), x)
    ys, _ = module.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert ys.shape == (B, T, H)
    assert not np.allclose(ys, module.apply(variables, x)[0])
    with pytest.raises(ValueError, match="dropout PRNG key"):
        module.apply(variables, x, deterministic=False)
    with pytest.raises(ValueError, match="merge must be one of"):
        Bidirectional(H, merge="mean").init(jax.random.key(0), x)


# ------------------------------------------------- mixed precision, sharding, kernels

BF16 = jnp.bfloat16


def dtypes(tree) -> set[str]:
    return {str(a.dtype) for a in jax.tree.leaves(tree)}


@pytest.mark.parametrize("implementation", ["fused", "autodiff"])
def test_bf16_outputs_float32_carry_and_param_dtypes(implementation: str) -> None:
    """`dtype`: outputs in bfloat16, each direction's carry and the penalties in float32,
    gradients in the parameters' storage dtype (`param_dtype`); each direction is
    `rnn.unroll(dtype=...)` of its parameters under its key, to bfloat16's rounding."""
    cell = "lstm"
    reg = rj.variational(0.2, 0.2, 0.2) + rj.zoneout(0.1, 0.05) + rj.norm_stabilizer(0.5)
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    module = Bidirectional((H, H), cell=cell, reg=reg, implementation=implementation,
                           dtype=BF16, param_dtype=BF16)
    variables = module.init(jax.random.key(0), x)
    assert dtypes(variables) == {"bfloat16"}

    @jax.jit
    def loss(params):
        (ys, carry), pen = module.apply({"params": params}, x, deterministic=False,
                                        rngs={"dropout": jax.random.key(2)},
                                        mutable=["penalties"])
        return jnp.sum(jnp.square(ys.astype(jnp.float32))), (ys, carry, pen)

    (value, (ys, carry, pen)), grads = jax.value_and_grad(loss, has_aux=True)(
        variables["params"])
    assert ys.dtype == BF16 and ys.shape == (B, T, 2 * H) and np.isfinite(float(value))
    assert dtypes(carry) == {"float32"} and set(carry[1]["backward"]) == {"h", "c"}
    assert dtypes(pen) == {"float32"} and len(jax.tree.leaves(pen)) == 1
    assert dtypes(grads) == {"bfloat16"}
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))
    # float32 storage (the default) draws the values it always drew, bfloat16 compute on them
    stored32 = module.clone(param_dtype=jnp.float32).init(jax.random.key(0), x)
    assert dtypes(stored32) == {"float32"}
    jax.tree.map(np.testing.assert_array_equal, stored32,
                 Bidirectional((H, H), cell=cell, reg=reg).init(jax.random.key(0), x))
    params = stored32["params"]["layer_0"]
    key = jax.random.key(3)

    @jax.jit
    def both():
        ys = bd.unroll_bidirectional(cell, params, x, reg=reg, key=key, deterministic=False,
                                     dtype=BF16, implementation=implementation)[0]
        run = lambda d, xs: rnn.unroll(cell, params[d], xs, reg=reg, deterministic=False,
                                       key=bd.direction_key(key, d), dtype=BF16,
                                       implementation=implementation, return_hiddens=True)[2]
        f, b = run("forward", x)[0], run("backward", x[:, ::-1])[0][:, ::-1]
        return ys, jnp.concatenate([f, b], -1)  # the hiddens, before the output mask

    ys, expected = both()
    assert ys.dtype == BF16
    mask = noise.output_mask(reg, key, B, T, 2 * H, False)
    np.testing.assert_allclose(np.asarray(ys, np.float32),
                               np.asarray(expected * mask[:, None, :], np.float32),
                               rtol=2 ** -7, atol=2 ** -7)


def test_float32_compute_dtype_is_the_default_computation() -> None:
    """`dtype=jnp.float32` on float32 inputs casts nothing: bit for bit `dtype=None`."""
    module = Bidirectional((H, 2), cell="gru", reg=rj.variational(0.3, 0.3, 0.3))
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    variables = module.init(jax.random.key(0), x)
    kwargs = dict(deterministic=False, rngs={"dropout": jax.random.key(1)})
    jax.tree.map(np.testing.assert_array_equal, module.apply(variables, x, **kwargs),
                 module.clone(dtype=jnp.float32).apply(variables, x, **kwargs))


def test_param_axes_box_each_directions_arrays_and_carry_first() -> None:
    """`param_axes` boxes each direction's named arrays: a partition spec per array, the
    tree's paths and values those of the unboxed module; an unknown name is refused.
    `carry_first` swaps the returned pair."""
    from flax import linen as nn
    from jax.sharding import PartitionSpec

    axes = {"w_x": ("embed", "gates"), "w_h": ("hidden", "gates"), "b": ("gates",)}
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    plain = Bidirectional((H, 2), cell="gru")
    boxed = plain.clone(param_axes=tuple(axes.items()), carry_first=True)
    variables = boxed.init(jax.random.key(0), x)
    specs = nn.get_partition_spec(variables)["params"]
    for layer in ("layer_0", "layer_1"):
        for d in DIRS:
            assert specs[layer][d]["w_h"] == PartitionSpec("hidden", "gates")
            assert specs[layer][d]["w_x"] == PartitionSpec("embed", "gates")
            assert specs[layer][d]["b"] == PartitionSpec("gates")
            assert specs[layer][d]["b_h"] == PartitionSpec()  # unnamed: replicated
    unboxed = nn.unbox(variables)
    jax.tree.map(np.testing.assert_array_equal, unboxed, plain.init(jax.random.key(0), x))
    carry, ys = boxed.apply(variables, x)
    expected_ys, expected_carry = plain.apply(unboxed, x)
    nm.assert_trees_close_f32((ys, carry), (expected_ys, expected_carry))
    with pytest.raises(ValueError, match="param_axes names 'w_q'"):
        plain.clone(param_axes={"w_q": ("a", "b")}).init(jax.random.key(0), x)


def test_pallas_directions_equal_the_scan_or_refuse_in_one_sentence() -> None:
    """`implementation="pallas"` (interpreted on CPU) runs both directions as the fused
    scan does, with noise; variable lengths and a compute dtype it refuses."""
    cell = "lstm"
    reg = rj.variational(0.3, 0.2, 0.3, per_gate=True) + rj.zoneout(0.2, 0.1)
    params = bd.init_params(jax.random.key(0), cell, F, H)
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    run = lambda implementation, **kw: bd.unroll_bidirectional(
        cell, params, x, reg=reg, key=jax.random.key(2), deterministic=False,
        implementation=implementation, **kw)
    nm.assert_trees_close_f32(jax.jit(lambda: run("pallas"))(), jax.jit(lambda: run("fused"))())
    with pytest.raises(ValueError, match="seq_lengths.*not supported by implementation='pallas'"):
        run("pallas", seq_lengths=np.array([6, 2, 3]))
    with pytest.raises(ValueError, match="dtype.*not supported by implementation='pallas'"):
        run("pallas", dtype=BF16)


# ------------------------------------------------------------------------------ errors

def test_bad_inputs_are_one_sentence_errors() -> None:
    cell = "lstm"
    params = bd.init_params(jax.random.key(0), cell, F, (H, H))
    x = jnp.ones((B, T, F))
    carry = bd.initial_carry(cell, params, B)
    cases = [
        (dict(merge="mean"), "merge must be one of"),
        (dict(carry=carry[:1]), "Got 1 carries for 2 bidirectional layers"),
        (dict(carry=[c["forward"] for c in carry]), "carry must be a dict with keys"),
        (dict(params=[p["forward"] for p in params]), "params must be a dict with keys"),
        (dict(params=[]), "at least one layer"),
        (dict(merge="sum"), "Layer 1's forward w_x reads 6 features, but its input has 3"),
        (dict(x=jnp.ones((B, T, F + 1))), "Layer 0's forward w_x reads 4 features"),
        (dict(reg=rj.variational(0.3), deterministic=False), "PRNG key is required"),
        (dict(seq_lengths=np.array([1, 2])), r"shape \[B\] = \(3,\)"),
        (dict(seq_lengths=np.array([1, 2, 0])), r"in \[1, T\] = \[1, 6\]"),
        (dict(cell="transformer"), "transformer"),
    ]
    for overrides, match in cases:
        kwargs = dict(cell=cell, params=params, x=x, carry=None) | overrides
        with pytest.raises(ValueError, match=match):
            bd.unroll_bidirectional(kwargs.pop("cell"), kwargs.pop("params"), kwargs.pop("x"),
                                    kwargs.pop("carry"), **kwargs)
    unequal = bd.init_params(jax.random.key(0), cell, F, H)
    unequal[0]["backward"] = cells.init_params(jax.random.key(1), cell, F, H + 1)
    with pytest.raises(ValueError, match="merge='sum' needs both directions"):
        bd.unroll_bidirectional(cell, unequal, x, merge="sum")
