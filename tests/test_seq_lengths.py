"""Variable-length batches (`seq_lengths`): a padded batch computes what its examples
compute unpadded.

What "padded == unpadded" means with noise. The masks of a window are drawn for its
whole `[B, T]` shape, as without lengths, so an example's masks depend on the batch it
is in; what does not depend on the padding is checked here:

* the results on valid steps (outputs, final carries, the loss and its gradients) do
  not depend on the padding's contents nor on how much padding follows (T = 6 or 9:
  per-step masks of step t are the t-th of `split(key, T)`, the same for every T, and
  tied masks have no time axis);
* they equal a reference that runs each example alone, unpadded (B = 1, T = L_b), on
  the masks the batch drew for it, sliced to its length: a tied mask stays the
  example's one mask over its whole length, a per-step mask is its first L_b steps;
* outputs past an example's length are zero, and the padding gets no gradient.

In evaluation mode (no noise) the reference is simply `rnn.unroll` of each example alone.
Everything in float64, for both backward passes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest

import rnnreg_jax as rj
from rnnreg_jax import batchnorm, cells, lengths, noise, rnn
from rnnreg_jax.models import LanguageModel, SequenceModel
from rnnreg_jax.nn import RecurrentLayer, StackedRNN
from rnnreg_jax.regularizers.base import LayerShape

CELLS = ("lstm", "gru", "rnn", "lstm_ln", "lstm_bn")
IMPLEMENTATIONS = ("fused", "autodiff")
LENGTHS = (6, 2, 4)  # batch B = 3; one full-length example, one of a single pair
STEPS, MORE_STEPS, FEATURES, HIDDEN = 6, 9, 3, 4


def _memory(cell):
    return cells.has_memory(cell)


REGS = {
    "none": lambda cell: rj.NONE,
    "zaremba": lambda cell: rj.zaremba(0.3),
    "variational": lambda cell: rj.variational(input=0.3, recurrent=0.3, output=0.3),
    "variational_per_gate": lambda cell: rj.variational(input=0.3, recurrent=0.3,
                                                        output=0.3, per_gate=True),
    "zoneout": lambda cell: rj.zoneout(0.3 if _memory(cell) else 0.0, 0.3),
    "recurrent_dropout": lambda cell: rj.recurrent_dropout(0.3, output_zoneout=_memory(cell)),
    "stochastic_depth": lambda cell: rj.stochastic_depth(0.3),
    "weight_drop": lambda cell: rj.weight_drop(0.3),
    "weight_noise": lambda cell: rj.weight_noise(0.1),
}


def _population(key, hidden, steps, dtype):
    """Running statistics of an lstm_bn layer that are not the identity."""
    pop = batchnorm.init_population(hidden, steps, dtype)
    keys = iter(jax.random.split(key, len(batchnorm.STAT_NAMES)))
    for name in batchnorm.STAT_NAMES:
        draw = jax.random.normal(next(keys), pop[name].shape, dtype) * 0.1
        pop[name] = jnp.exp(draw) if name.endswith("_var") else draw
    pop[batchnorm.WEIGHT] = jnp.ones_like(pop[batchnorm.WEIGHT])
    return pop


def _setup(cell, dtype=jnp.float64):
    """Two layers' parameters, inputs `[B, T, F]` and running statistics (float64: call
    inside `nm.x64()`)."""
    params = [cells.init_params(jax.random.key(i), cell, FEATURES if i == 0 else HIDDEN,
                                HIDDEN, dtype=dtype) for i in range(2)]
    x = jax.random.normal(jax.random.key(7), (len(LENGTHS), STEPS, FEATURES), dtype)
    pops = None
    if cell == "lstm_bn":
        pops = [_population(jax.random.key(20 + i), HIDDEN, MORE_STEPS, dtype)
                for i in range(2)]
    return params, x, pops


def _pad(x, steps, seed):
    """`x` cut to each example's length and padded to `steps` with random junk."""
    junk = 5.0 * jax.random.normal(jax.random.key(seed), (x.shape[0], steps, x.shape[2]),
                                   x.dtype)
    valid = lengths.valid_mask(jnp.asarray(LENGTHS), steps)[..., None]
    return jnp.where(valid, jnp.pad(x, ((0, 0), (0, steps - x.shape[1]), (0, 0))), junk)


def _loss(ys, carry):
    """A loss of every output and state, nonlinear so gradients depend on the values."""
    state = sum(jnp.sum(jnp.sin(v) ** 2) for c in carry for v in c.values())
    return jnp.sum(jnp.sin(ys) * jnp.cos(ys)) + state


def _batch_run(cell, reg, impl, deterministic, key, pops):
    seq_lengths = jnp.asarray(LENGTHS)

    def run(params, x):
        ys, carry = rnn.unroll(cell, params, x, reg=reg, key=key, deterministic=deterministic,
                               implementation=impl, cell_stats=pops, seq_lengths=seq_lengths)
        return _loss(ys, carry), (ys, carry)

    return jax.jit(jax.value_and_grad(run, argnums=(0, 1), has_aux=True))


# ------------------------------------------------------------- the per-example reference


def _example(a, b, steps=None):
    """Example b's slice of a mask (batch axis -2, kept), its first `steps` steps when the
    mask has a leading time axis."""
    if a is None or jnp.ndim(a) < 2:  # off, or an evaluation-mode scalar
        return a
    a = a[..., b:b + 1, :]
    return a if steps is None else a[:steps]


def _layer_noise_of(ln: noise.LayerNoise, b, steps):
    """The layer's masks for example b alone over its `steps` valid steps."""
    per_step_input = ln.input is not None and ln.input.ndim == 3 + int(ln.input_per_gate)
    return noise.LayerNoise(
        input=_example(ln.input, b, steps if per_step_input else None),
        input_per_gate=ln.input_per_gate,
        tied=jax.tree.map(lambda a: _example(a, b), ln.tied),
        per_step=jax.tree.map(lambda a: _example(a, b, steps), ln.per_step))


def _reference_run(cell, reg, impl, deterministic, key, pops, b, batch_steps):
    """Example b alone, unpadded, through the layers with the masks the padded batch
    (`[B, batch_steps]`) drew for it: `rnn.unroll`'s loop without lengths."""
    steps = LENGTHS[b]
    batch = len(LENGTHS)

    def run(params, x):  # x: [1, L_b, F]
        h = jnp.swapaxes(x, 0, 1)
        carries = rnn.initial_carry(cell, params, 1, reg, x.dtype)
        out_carries = []
        for index, (p, c) in enumerate(zip(params, carries, strict=True)):
            ln = noise.layer_noise(reg, key, index, cell, batch, batch_steps, h.shape[-1],
                                   HIDDEN, deterministic, x.dtype)
            p = reg.weights(p, key, index, deterministic)
            h, c = rnn.scan_layer(cell, p, h, c, _layer_noise_of(ln, b, steps),
                                  implementation=impl,
                                  population=None if pops is None else pops[index])
            h = h[0] if cells.has_aux_output(cell) else h
            out_carries.append(c)
        shape = LayerShape(len(params) - 1, cell, batch, batch_steps, HIDDEN, HIDDEN, 1,
                           x.dtype)
        mask = reg.output_mask(key, shape, deterministic)
        if mask is not None:
            h = h * _example(mask, b, steps if mask.ndim == 3 else None)
        ys = jnp.swapaxes(h, 0, 1)
        return _loss(ys, out_carries), (ys, out_carries)

    return jax.jit(jax.value_and_grad(run, argnums=(0, 1), has_aux=True))


def _unroll_alone(cell, reg, impl, pops):
    """Evaluation mode: one example alone through `rnn.unroll`, no lengths."""
    def run(params, x):
        out = rnn.unroll(cell, params, x, reg=reg, deterministic=True, implementation=impl,
                         cell_stats=pops)
        return _loss(*out), out

    return jax.jit(jax.value_and_grad(run, argnums=(0, 1), has_aux=True))


def _check_against_references(cell, reg, impl, deterministic):
    key = jax.random.key(11)
    with nm.x64():
        params, x, pops = _setup(cell)
        results = {}
        for steps, seed in ((STEPS, 1), (MORE_STEPS, 2)):
            results[steps] = _batch_run(cell, reg, impl, deterministic, key, pops)(
                params, _pad(x, steps, seed))
        (loss, (ys, carry)), (d_params, d_x) = results[STEPS]

        # outputs past the length are zero; the padding gets no gradient
        past = ~lengths.valid_mask(jnp.asarray(LENGTHS), STEPS)
        assert np.all(np.asarray(ys)[np.asarray(past)] == 0.0)
        assert np.all(np.asarray(d_x)[np.asarray(past)] == 0.0)

        # more padding, other junk: the same results on the valid steps
        (loss9, (ys9, carry9)), (d_params9, d_x9) = results[MORE_STEPS]
        nm.assert_close_f64(loss9, loss, err_msg="loss, more padding")
        nm.assert_trees_close_f64(carry9, carry, err_msg="carry, more padding")
        nm.assert_trees_close_f64(d_params9, d_params, err_msg="grads, more padding")
        nm.assert_close_f64(ys9[:, :STEPS], ys, err_msg="outputs, more padding")
        nm.assert_close_f64(d_x9[:, :STEPS], d_x, err_msg="input grads, more padding")

        # each example alone on its own masks: the same outputs, states and gradients
        total_loss, total_grads = 0.0, jax.tree.map(jnp.zeros_like, params)
        for b, steps in enumerate(LENGTHS):
            ref = (_unroll_alone(cell, reg, impl, pops) if deterministic
                   else _reference_run(cell, reg, impl, deterministic, key, pops, b, STEPS))
            (loss_b, (ys_b, carry_b)), (d_params_b, d_x_b) = ref(params, x[b:b + 1, :steps])
            name = f"example {b} (L={steps})"
            nm.assert_close_f64(ys[b:b + 1, :steps], ys_b, err_msg=f"{name} outputs")
            nm.assert_trees_close_f64([{k: v[b:b + 1] for k, v in c.items()} for c in carry],
                                      carry_b, err_msg=f"{name} carry")
            nm.assert_close_f64(d_x[b:b + 1, :steps], d_x_b, err_msg=f"{name} input grads")
            total_loss += loss_b
            total_grads = jax.tree.map(jnp.add, total_grads, d_params_b)
        nm.assert_close_f64(loss, total_loss, err_msg="loss = sum of the examples'")
        nm.assert_trees_close_f64(d_params, total_grads, err_msg="grads = sum of the examples'")


# The default suite: a composition that touches every step site, on the LSTM's fused pass;
# every cell x regularizer x pass with -m slow.
def _all_sites(cell):
    return (rj.variational(input=0.3, recurrent=0.3, output=0.3, per_gate=True)
            + rj.recurrent_dropout(0.3) + rj.zoneout(0.3 if _memory(cell) else 0.0, 0.3)
            + rj.stochastic_depth(0.2) + rj.weight_noise(0.05))


REGS["all"] = _all_sites
DEFAULT_CASES = [("lstm", "all", "fused")]
SLOW_CASES = [pytest.param(c, r, i, marks=pytest.mark.slow)
              for c in CELLS for r in REGS for i in IMPLEMENTATIONS
              if (c, r, i) not in DEFAULT_CASES]


@pytest.mark.parametrize("cell,reg_name,impl", DEFAULT_CASES + SLOW_CASES)
def test_padded_training_equals_each_example_on_its_masks(cell, reg_name, impl):
    _check_against_references(cell, REGS[reg_name](cell), impl, deterministic=False)


@pytest.mark.parametrize("cell,impl", [("lstm", "fused")] + [  # the others are slow
    pytest.param(c, i, marks=pytest.mark.slow) for c in CELLS for i in IMPLEMENTATIONS
    if (c, i) != ("lstm", "fused")])
def test_padded_evaluation_equals_unrolling_each_example_alone(cell, impl):
    # evaluation mode of a noisy regularizer: every rate's expectation, per example
    reg = rj.zoneout(0.3 if _memory(cell) else 0.0, 0.3) + rj.stochastic_depth(0.2)
    _check_against_references(cell, reg, impl, deterministic=True)


# ------------------------------------------------------------------------- checks


def test_lengths_are_checked():
    params, x, _ = _setup("lstm", jnp.float32)
    for bad, match in (([6.0, 2.0, 4.0], "integers"), ([6, 2], r"shape \[B\]"),
                       ([[6, 2, 4]], r"shape \[B\]"), ([6, 0, 4], r"in \[1, T\]"),
                       ([7, 2, 4], r"in \[1, T\]"), ([True, True, True], "integers")):
        with pytest.raises(ValueError, match=match):
            rnn.unroll("lstm", params, x, seq_lengths=jnp.asarray(bad))


def test_under_jit_out_of_range_lengths_act_as_clipped():
    params, x, _ = _setup("lstm", jnp.float32)
    run = jax.jit(lambda n: rnn.unroll("lstm", params, x, seq_lengths=n))
    ys, carry = run(jnp.asarray([9, 0, 4]))  # not checked under jit
    full, full_carry = jax.jit(lambda: rnn.unroll("lstm", params, x))()
    nm.assert_close_f32(ys[0], full[0])  # above T: every step
    nm.assert_close_f32(carry[1]["h"][0], full_carry[1]["h"][0])
    assert not np.any(ys[1]) and not np.any(carry[1]["h"][1])  # 0: the initial state


def test_batch_statistics_refuse_lengths():
    params, x, _ = _setup("lstm_bn", jnp.float32)
    with pytest.raises(ValueError, match="batch statistics"):
        rnn.unroll("lstm_bn", params, x, seq_lengths=jnp.asarray(LENGTHS))
    stack = StackedRNN((HIDDEN,), cell="lstm_bn")
    variables = stack.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="batch statistics"):
        stack.apply(variables, x, deterministic=False, mutable=["batch_stats"],
                    seq_lengths=jnp.asarray(LENGTHS))
    # its running statistics are per step, not per batch: accepted
    stack.apply(variables, x, deterministic=True, seq_lengths=jnp.asarray(LENGTHS))


def test_prefix_masks_become_lengths():
    mask = np.arange(5)[None, :] < np.array([[5], [1], [3]])
    np.testing.assert_array_equal(lengths.from_mask(mask), [5, 1, 3])
    np.testing.assert_array_equal(lengths.from_mask(mask.T, time_axis=0), [5, 1, 3])
    with pytest.raises(ValueError, match="prefix"):
        lengths.from_mask(mask[:, ::-1])  # left padding
    with pytest.raises(ValueError, match="boolean"):
        lengths.from_mask(mask.astype(np.int32))


def test_last_valid_reads_each_examples_last_step():
    ys = jnp.arange(3 * 6 * 2).reshape(3, 6, 2)
    np.testing.assert_array_equal(lengths.last_valid(ys, jnp.asarray(LENGTHS)),
                                  np.stack([ys[0, 5], ys[1, 1], ys[2, 3]]))
    np.testing.assert_array_equal(lengths.last_valid(jnp.swapaxes(ys, 0, 1),
                                                     jnp.asarray(LENGTHS), time_axis=0),
                                  np.stack([ys[0, 5], ys[1, 1], ys[2, 3]]))
    np.testing.assert_array_equal(lengths.last_valid(ys, None), ys[:, -1])


# ----------------------------------------------------------------------- penalties


def test_penalties_count_valid_steps_only():
    """AR, TAR and the norm stabilizer of a padded batch: the valid steps' terms pooled,
    whatever the padding holds."""
    h = jax.random.normal(jax.random.key(3), (3, 6, 4))
    seq_lengths = jnp.asarray(LENGTHS)
    junk = jnp.where(lengths.valid_mask(seq_lengths, 6)[..., None], h, 7.0)
    # the reference in float64; the float32 penalties are means of 36 to 48 terms, which
    # round to within sqrt(n) to n ulps depending on the summation order (beyond a bare
    # rtol of 1e-6 on some instruction set): numerics' float32 tolerance
    pieces = [np.asarray(h[b, :n], np.float64) for b, n in enumerate(LENGTHS)]
    ar = np.mean(np.concatenate([np.square(p).ravel() for p in pieces]))
    tar = np.mean(np.concatenate([np.square(np.diff(p, axis=0)).ravel() for p in pieces]))
    norms = [np.linalg.norm(p, axis=-1) for p in pieces]
    ns = np.mean(np.concatenate([np.square(np.diff(n)) for n in norms]))
    for time_axis, data in ((1, junk), (0, jnp.swapaxes(junk, 0, 1))):
        nm.assert_close_f32(rj.activation_penalty(data, 2.0, time_axis, seq_lengths), 2.0 * ar)
        nm.assert_close_f32(rj.temporal_activation_penalty(data, 3.0, time_axis, seq_lengths),
                            3.0 * tar)
        nm.assert_close_f32(rj.norm_stabilizer_penalty(data, 0.5, time_axis, seq_lengths),
                            0.5 * ns)
    # one step each: no pair of steps, no temporal term
    one = jnp.ones(3, jnp.int32)
    assert float(rj.temporal_activation_penalty(junk, 1.0, 1, one)) == 0.0


def test_stack_sows_penalties_of_valid_steps():
    reg = (rj.activation_regularization(2.0) + rj.temporal_activation_regularization(1.0)
           + rj.norm_stabilizer(0.5))
    params, x, _ = _setup("lstm", jnp.float32)
    stack = StackedRNN((HIDDEN, HIDDEN), reg=reg)
    variables = stack.init(jax.random.key(0), x)
    seq_lengths = jnp.asarray(LENGTHS)
    pens = {}
    for steps, seed in ((STEPS, 1), (MORE_STEPS, 2)):
        _, state = stack.apply(variables, _pad(x, steps, seed).astype(jnp.float32),
                               deterministic=False, mutable=["penalties"],
                               seq_lengths=seq_lengths)
        pens[steps] = {k: float(v[0]) for k, v in state["penalties"].items()}
    assert set(pens[STEPS]) == {"activation_reg", "temporal_activation_reg", "norm_stabilizer"}
    assert pens[STEPS] == pytest.approx(pens[MORE_STEPS], rel=1e-5)
    assert all(v > 0 for v in pens[STEPS].values())


def test_a_penalty_hook_without_lengths_is_refused_with_lengths():
    class OldPenalty(rj.Regularizer):
        def penalties(self, params, hiddens, outputs, time_axis):
            return {"old": jnp.sum(outputs)}

    params, x, _ = _setup("lstm", jnp.float32)
    stack = StackedRNN((HIDDEN,), reg=OldPenalty())
    variables = stack.init(jax.random.key(0), x)
    x = x.astype(jnp.float32)
    _, state = stack.apply(variables, x, deterministic=False, mutable=["penalties"])
    assert "old" in state["penalties"]  # without lengths as before
    with pytest.raises(ValueError, match="takes no seq_lengths"):
        stack.apply(variables, x, deterministic=False, mutable=["penalties"],
                    seq_lengths=jnp.asarray(LENGTHS))


# ------------------------------------------------------------------------- modules

# The default suite runs the models' autodiff pass; the fused one runs with -m slow.
IMPLEMENTATIONS_FUSED_SLOW = [pytest.param("fused", marks=pytest.mark.slow), "autodiff"]


def _model_reg():
    return (rj.embedding_dropout(0.3) + rj.variational(input=0.3, recurrent=0.3, output=0.3)
            + rj.weight_drop(0.2))


def _ids(steps, seed, vocab=11):
    """Token ids `[B, steps]`: the same valid ids, random padding ids after them."""
    valid = jax.random.randint(jax.random.key(5), (3, STEPS), 1, vocab)
    junk = jax.random.randint(jax.random.key(seed), (3, steps), 0, vocab)
    padded = jnp.pad(valid, ((0, 0), (0, steps - STEPS)))
    return jnp.where(lengths.valid_mask(jnp.asarray(LENGTHS), steps), padded, junk)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS_FUSED_SLOW)
def test_sequence_model_reads_each_examples_last_step(impl):
    model = SequenceModel(num_outputs=2, hidden_sizes=(HIDDEN, HIDDEN), vocab_size=11,
                          embed_size=5, reg=_model_reg(), implementation=impl)
    seq_lengths = jnp.asarray(LENGTHS)
    with nm.x64():
        variables = nm.as_f64(model.init(jax.random.key(0), _ids(STEPS, 1)))
        apply = jax.jit(lambda v, ids, n, det, key: model.apply(
            v, ids, det, seq_lengths=n, rngs={"dropout": key}), static_argnums=3)
        key = jax.random.key(4)
        # evaluation: each example alone, unpadded
        out = apply(variables, _ids(STEPS, 1), seq_lengths, True, key)
        for b, n in enumerate(LENGTHS):
            alone = model.apply(variables, _ids(STEPS, 1)[b:b + 1, :n])
            nm.assert_close_f64(out[b:b + 1], alone, err_msg=f"example {b}")
        # training, word types, inputs, W_h and the head's input dropped: the padding's
        # ids and length change nothing
        train = {steps: apply(variables, _ids(steps, seed), seq_lengths, False, key)
                 for steps, seed in ((STEPS, 1), (MORE_STEPS, 2))}
        nm.assert_close_f64(train[MORE_STEPS], train[STEPS], err_msg="more padding")
        assert not np.allclose(train[STEPS], out)  # the noise is on


@pytest.mark.parametrize("impl", IMPLEMENTATIONS_FUSED_SLOW)
def test_language_model_carries_each_examples_last_valid_state(impl):
    model = LanguageModel(vocab_size=11, hidden_sizes=(HIDDEN, HIDDEN), reg=_model_reg(),
                          implementation=impl)
    seq_lengths = jnp.asarray(LENGTHS)
    with nm.x64():
        variables = nm.as_f64(model.init(jax.random.key(0), _ids(STEPS, 1)))
        logits, carry = model.apply(variables, _ids(STEPS, 1), seq_lengths=seq_lengths)
        for b, n in enumerate(LENGTHS):
            alone, alone_carry = model.apply(variables, _ids(STEPS, 1)[b:b + 1, :n])
            nm.assert_close_f64(logits[b:b + 1, :n], alone, err_msg=f"example {b}")
            nm.assert_trees_close_f64([{k: v[b:b + 1] for k, v in c.items()} for c in carry],
                                      alone_carry, err_msg=f"example {b} carry")
        key = {"dropout": jax.random.key(4)}
        train = {steps: model.apply(variables, _ids(steps, seed), deterministic=False,
                                    seq_lengths=seq_lengths, rngs=key)
                 for steps, seed in ((STEPS, 1), (MORE_STEPS, 2))}
        nm.assert_trees_close_f64(train[MORE_STEPS][1], train[STEPS][1], err_msg="carry")
        valid = np.asarray(lengths.valid_mask(seq_lengths, STEPS))
        nm.assert_close_f64(np.asarray(train[MORE_STEPS][0])[:, :STEPS][valid],
                            np.asarray(train[STEPS][0])[valid], err_msg="logits")


def test_recurrent_layer_takes_lengths():
    params, x, _ = _setup("gru", jnp.float32)
    layer = RecurrentLayer(HIDDEN, cell="gru")
    x = x.astype(jnp.float32)
    variables = layer.init(jax.random.key(0), x)
    ys, carry = layer.apply(variables, x, seq_lengths=jnp.asarray(LENGTHS))
    alone, alone_carry = layer.apply(variables, x[1:2, :2])
    nm.assert_close_f32(ys[1:2, :2], alone)
    nm.assert_close_f32(carry["h"][1:2], alone_carry["h"])
    assert not np.any(ys[1, 2:])
