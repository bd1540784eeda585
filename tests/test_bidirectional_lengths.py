"""Variable lengths in bidirectional stacks: a padded batch computes each example as run
alone, more padding changes nothing, and `reverse_padded` reverses each example within
its length."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest
from bidirectional_helpers import F, H, T

import rnnreg_jax as rj
from rnnreg_jax import bidirectional as bd
from rnnreg_jax.nn import Bidirectional

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
# PyTorch packed-sequence test, tests/test_bidirectional_pytorch.py); the other halves
# with -m slow
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
