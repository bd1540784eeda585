"""Classic dropout (`eval_scaling=True`: the {0, 1} keep mask in training, the keep
probability q in evaluation) on the dropout sites and embedding dropout.

The identity checked throughout: classic dropout with weights W equals inverted dropout
with the weights that follow the dropped quantity multiplied by q, in training (the
same key gives the same keep bits) and in evaluation. The cell site (c~ feeds tanh and
the carry, no weight follows it) is checked against the LSTM written out instead.
Everything runs in float64 (`numerics.x64`), compared to 1e-12.
"""

import jax
import jax.numpy as jnp
import numerics as nm
import numpy as np
import pytest

import rnnreg_jax as rj
from rnnreg_jax import cells, models, noise, rnn
from rnnreg_jax.bidirectional import unroll_bidirectional
from rnnreg_jax.regularizers.embedding import EmbeddingScale, embedding_at_evaluation
from rnnreg_jax.train.evaluator import without_embedding_dropout

B, T, F, H, V = 3, 5, 4, 5, 7
RATE = 0.3
Q = noise.quantize_probability(1.0 - RATE)
KEY = jax.random.key(11)
TOL = 1e-12


def close(actual, desired):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), rtol=TOL, atol=TOL)


def stack_params(cell, layers=1):
    keys = jax.random.split(jax.random.key(1), layers)
    return [nm.as_f64(cells.init_params(k, cell, F if i == 0 else H, H, init_scale=0.6))
            for i, k in enumerate(keys)]


def inputs():
    return nm.as_f64(jax.random.normal(jax.random.key(2), (B, T, F)))


def scaled(params, layer, name):
    """`params` with layer `layer`'s `name` multiplied by q (a new list)."""
    out = [dict(p) for p in params]
    out[layer][name] = out[layer][name] * Q
    return out


# site -> (the classic regularizer, the inverted one, cell, layers, the weights to scale)
UNROLL_SITES = {
    "input": (rj.dropout("input", RATE, eval_scaling=True), rj.dropout("input", RATE),
              "lstm", 1, [(0, "w_x")]),
    "input_per_gate": (rj.variational(input=RATE, per_gate=True, eval_scaling=True),
                       rj.variational(input=RATE, per_gate=True), "lstm", 1, [(0, "w_x")]),
    "input_two_layers": (rj.naive_dropout(input=RATE, eval_scaling=True),
                         rj.naive_dropout(input=RATE), "lstm", 2, [(0, "w_x"), (1, "w_x")]),
    "recurrent": (rj.variational(recurrent=RATE, eval_scaling=True),
                  rj.variational(recurrent=RATE), "gru", 1, [(0, "w_h")]),
    "recurrent_per_gate": (rj.naive_dropout(recurrent=RATE, per_gate=True, eval_scaling=True),
                           rj.naive_dropout(recurrent=RATE, per_gate=True), "lstm", 1,
                           [(0, "w_h")]),
    "hidden": (rj.dropout("hidden", RATE, tie="sequence", eval_scaling=True),
               rj.dropout("hidden", RATE, tie="sequence"), "lstm", 2, [(1, "w_x")]),
}


# The default suite runs every case with autodiff and half of them with the fused pass;
# these fused ones are slow.
SLOW_FUSED_SITES = {("hidden", "eval"), ("hidden", "train"), ("input", "train"),
                    ("input_per_gate", "train"), ("input_two_layers", "train"),
                    ("recurrent", "eval")}


@pytest.mark.parametrize("site,deterministic,implementation", [
    pytest.param(site, deterministic, implementation, id=f"{site}-{mode}-{implementation}",
                 marks=pytest.mark.slow if implementation == "fused"
                 and (site, mode) in SLOW_FUSED_SITES else ())
    for site in sorted(UNROLL_SITES) for deterministic, mode in ((True, "eval"), (False, "train"))
    for implementation in ("fused", "autodiff")])
def test_classic_site_equals_inverted_with_the_following_weights_scaled(
        site, deterministic, implementation):
    classic, inverted, cell, layers, to_scale = UNROLL_SITES[site]
    with nm.x64():
        params, x = stack_params(cell, layers), inputs()
        other = params
        for layer, name in to_scale:
            other = scaled(other, layer, name)

        def run(reg, p):
            return rnn.unroll(cell, p, x, reg=reg, key=KEY, deterministic=deterministic,
                              implementation=implementation)

        ys, carry = run(classic, params)
        ys_ref, carry_ref = run(inverted, other)
        close(ys, ys_ref)
        jax.tree.map(close, carry, carry_ref)
        if deterministic:  # and the evaluation is not the inverted one's identity
            assert not np.allclose(ys, run(inverted, params)[0])


@pytest.mark.parametrize("deterministic", [True, False], ids=["eval", "train"])
def test_output_site_of_unroll_and_of_the_bidirectional_stack(deterministic):
    """A weight after the output is a linear map: the classic output is q times the
    inverted one; each direction's input weights scaled likewise."""
    classic = rj.variational(input=RATE, output=RATE, eval_scaling=True)
    inverted = rj.variational(input=RATE, output=RATE)
    with nm.x64():
        params, x = stack_params("lstm"), inputs()
        ys = rnn.unroll("lstm", params, x, reg=classic, key=KEY, deterministic=deterministic)[0]
        ref = rnn.unroll("lstm", scaled(params, 0, "w_x"), x, reg=inverted, key=KEY,
                         deterministic=deterministic)[0]
        close(ys, Q * ref)
        backward = nm.as_f64(cells.init_params(jax.random.key(7), "lstm", F, H, init_scale=0.6))
        bi = [{"forward": params[0], "backward": backward}]
        bi_scaled = [{d: dict(p, w_x=p["w_x"] * Q) for d, p in bi[0].items()}]
        lengths = jnp.array([5, 3, 4])
        ys = unroll_bidirectional("lstm", bi, x, reg=classic, key=KEY,
                                  deterministic=deterministic, seq_lengths=lengths)[0]
        ref = unroll_bidirectional("lstm", bi_scaled, x, reg=inverted, key=KEY,
                                   deterministic=deterministic, seq_lengths=lengths)[0]
        close(ys, Q * ref)


def _lstm_with_cell_mask(params, x, keep):
    """The LSTM written out with c~ multiplied by `keep` ([B, H] or a scalar)."""
    h = c = jnp.zeros((B, H), x.dtype)
    ys = []
    for t in range(T):
        z = x[:, t] @ params["w_x"] + params["b"] + h @ params["w_h"]
        zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
        c = (jax.nn.sigmoid(zf) * c + jax.nn.sigmoid(zi) * jnp.tanh(zg)) * keep
        h = jax.nn.sigmoid(zo) * jnp.tanh(c)
        ys.append(h)
    return jnp.stack(ys, axis=1), {"c": c, "h": h}


@pytest.mark.parametrize("implementation", ["fused", "autodiff"])
@pytest.mark.parametrize("deterministic", [True, False], ids=["eval", "train"])
def test_cell_site_equals_the_lstm_written_out(deterministic, implementation):
    """c~ feeds tanh and the carry, so no weight absorbs q: the classic cell mask is c~
    times the keep bits of the cell's site key in training and times q in evaluation."""
    with nm.x64():
        params, x = stack_params("lstm")[0], inputs()
        ys, carry = rnn.unroll("lstm", params, x, reg=rj.variational(cell=RATE,
                                                                      eval_scaling=True),
                               key=KEY, deterministic=deterministic,
                               implementation=implementation)
        keep = Q if deterministic else noise.bernoulli(
            noise.site_key(KEY, "cell", 0), 1.0 - RATE, (B, H), "sequence", T, jnp.float64)
        ys_ref, carry_ref = _lstm_with_cell_mask(params, x, keep)
        close(ys, ys_ref)
        jax.tree.map(close, carry, carry_ref)


def _model_params(variables, factors):
    """The variables with the parameter at each path ("rnn/layer_0/w_x") of `factors`
    multiplied by its factor."""
    params = jax.tree.map(lambda a: a, variables["params"])  # a copy of the dicts
    for path, factor in factors.items():
        *blocks, name = path.split("/")
        block = params
        for part in blocks:
            block = block[part]
        block[name] = block[name] * factor
    return {"params": params}


@pytest.mark.parametrize("deterministic", [True, False], ids=["eval", "train"])
def test_sequence_model_every_variational_site_with_lengths(deterministic):
    """Embedding, per-gate input and recurrent, and output (Gal's sentiment model):
    the embedding table, every W_x and W_h and the head's kernel scaled by q."""
    kwargs = dict(input=RATE, recurrent=0.2, output=0.4, embedding=0.25, per_gate=True)
    make = lambda reg: models.SequenceModel(2, (H, H), vocab_size=V, embed_size=F, reg=reg)  # noqa: E731
    ids = jax.random.randint(jax.random.key(3), (B, T), 0, V)
    lengths = jnp.array([5, 2, 4])
    with nm.x64():
        classic = make(rj.variational(**kwargs, eval_scaling=True))
        inverted = make(rj.variational(**kwargs))
        variables = nm.as_f64(classic.init(jax.random.key(0), ids))
        q = {site: noise.quantize_probability(1.0 - kwargs[site])
             for site in ("input", "recurrent", "output", "embedding")}
        other = _model_params(variables, {
            "embed/embedding": q["embedding"], "head/kernel": q["output"],
            **{f"rnn/layer_{i}/w_x": q["input"] for i in (0, 1)},
            **{f"rnn/layer_{i}/w_h": q["recurrent"] for i in (0, 1)}})
        rngs = {"dropout": KEY}
        out = classic.apply(variables, ids, deterministic, seq_lengths=lengths, rngs=rngs)
        ref = inverted.apply(other, ids, deterministic, seq_lengths=lengths, rngs=rngs)
        close(out, ref)


@pytest.mark.parametrize("deterministic", [True, False], ids=["eval", "train"])
def test_language_model_embedding_and_output(deterministic):
    make = lambda reg: models.LanguageModel(V, (H,), embed_size=F, reg=reg)  # noqa: E731
    ids = jax.random.randint(jax.random.key(3), (B, T), 0, V)
    with nm.x64():
        classic = make(rj.variational(embedding=RATE, output=RATE, eval_scaling=True))
        inverted = make(rj.variational(embedding=RATE, output=RATE))
        variables = nm.as_f64(classic.init(jax.random.key(0), ids))
        other = _model_params(variables, {"embed/embedding": Q, "softmax/kernel": Q})
        rngs = {"dropout": KEY}
        out = classic.apply(variables, ids, deterministic=deterministic, rngs=rngs)
        ref = inverted.apply(other, ids, deterministic=deterministic, rngs=rngs)
        jax.tree.map(close, out, ref)


def test_nnx_models_evaluate_the_classic_sites_as_linen():
    from rnnreg_jax import nnx as rnx

    reg = rj.variational(input=RATE, recurrent=0.2, output=0.4, embedding=0.25,
                         eval_scaling=True)
    ids = jax.random.randint(jax.random.key(3), (B, T), 0, V)
    with nm.x64():
        linen = models.LanguageModel(V, (H,), embed_size=F, reg=reg)
        variables = nm.as_f64(linen.init(jax.random.key(0), ids))
        model = rnx.LanguageModel.from_linen(linen, variables)
        jax.tree.map(close, model(ids, deterministic=True),
                     linen.apply(variables, ids, deterministic=True))


def test_training_masks_are_the_inverted_masks_bits_unscaled():
    """Read back from `layer_noise` and from the output of a linear map (the output
    site): only 0 and 1, exactly where the inverted masks keep."""
    classic = rj.naive_dropout(input=RATE, recurrent=RATE, cell=RATE, per_gate=True,
                               eval_scaling=True)
    inverted = rj.naive_dropout(input=RATE, recurrent=RATE, cell=RATE, per_gate=True)
    draw = lambda reg: noise.layer_noise(reg, KEY, 0, "lstm", B, T, F, H, False)  # noqa: E731
    got, ref = draw(classic), draw(inverted)
    for mask, inv in [(got.input, ref.input), (got.per_step.recurrent.masks,
                                                ref.per_step.recurrent.masks),
                      (got.per_step.cell, ref.per_step.cell)]:
        assert set(np.unique(mask)) == {0.0, 1.0}
        np.testing.assert_array_equal(mask, (inv > 0).astype(mask.dtype))
    ids = jax.random.randint(jax.random.key(3), (B, T), 0, V)
    emb = rj.embedding_dropout(RATE, eval_scaling=True).embedding_mask(KEY, ids, V, False,
                                                                        jnp.float32)
    emb_inv = rj.embedding_dropout(RATE).embedding_mask(KEY, ids, V, False, jnp.float32)
    np.testing.assert_array_equal(emb, (emb_inv > 0).astype(emb.dtype))
    with nm.x64():
        params, x = stack_params("rnn"), inputs()
        plain = rnn.unroll("rnn", params, x)[0]
        dropped = rnn.unroll("rnn", params, x, reg=rj.dropout("output", RATE,
                                                              eval_scaling=True),
                             key=KEY, deterministic=False)[0]
        ratio = np.asarray(dropped / plain)
        assert set(np.unique(ratio)) == {0.0, 1.0}


def test_evaluation_is_the_average_of_training_outputs_only_approximately():
    """The output site is followed by nothing nonlinear: the mean over many keys tends
    to the evaluation (q h); with the input site too it is close but not equal."""
    with nm.x64():
        params, x = stack_params("lstm"), inputs()

        def mean_and_eval(reg):
            keys = jax.random.split(jax.random.key(5), 3000)
            train = jax.vmap(lambda k: rnn.unroll("lstm", params, x, reg=reg, key=k,
                                                  deterministic=False)[0])(keys)
            return train.mean(0), rnn.unroll("lstm", params, x, reg=reg)[0]

        mean, evaluation = mean_and_eval(rj.dropout("output", RATE, eval_scaling=True))
        scale = float(np.abs(evaluation).max())
        assert np.abs(mean - evaluation).max() < 0.03 * scale
        mean, evaluation = mean_and_eval(rj.variational(input=RATE, output=RATE,
                                                        eval_scaling=True))
        gap = np.abs(mean - evaluation).max()
        assert 1e-3 * scale < gap < 0.3 * scale


def test_fused_gradients_equal_autodiff_with_the_evaluation_scalars():
    reg = rj.variational(input=RATE, recurrent=0.2, cell=0.1, output=0.4, per_gate=True,
                         eval_scaling=True)
    with nm.x64():
        params, x = stack_params("lstm", 2), inputs()

        def loss(implementation, deterministic):
            def f(p, x):
                ys = rnn.unroll("lstm", p, x, reg=reg, key=KEY, deterministic=deterministic,
                                implementation=implementation)[0]
                return jnp.sum(jnp.sin(ys))
            return jax.grad(f, argnums=(0, 1))(params, x)

        for deterministic in (True, False):
            jax.tree.map(close, loss("fused", deterministic), loss("autodiff", deterministic))


def test_pallas_equals_the_scan_with_the_classic_sites():
    reg = rj.variational(input=RATE, recurrent=0.2, cell=0.1, output=0.4, eval_scaling=True)
    with nm.x64():
        params, x = stack_params("lstm"), inputs()
        for deterministic in (True, False):
            out = {impl: rnn.unroll("lstm", params, x, reg=reg, key=KEY,
                                    deterministic=deterministic, implementation=impl)
                   for impl in ("pallas", "autodiff")}
            jax.tree.map(close, out["pallas"], out["autodiff"])


def test_mc_without_embedding_dropout_holds_the_classic_one_at_q():
    """MC evaluation without word-type dropout (`mc_embedding_dropout=False`): the
    inverted form leaves it out (the identity), the classic form keeps q, keyless."""
    rest = rj.variational(input=RATE, eval_scaling=True)
    classic = rest + rj.embedding_dropout(RATE, eval_scaling=True)
    held = embedding_at_evaluation(classic)
    assert held == rj.compose(rest, EmbeddingScale(Q))
    assert not held.embedding_noise
    ids = jnp.zeros((B, T), jnp.int32)
    for deterministic in (True, False):
        assert float(held.embedding_mask(None, ids, V, deterministic, jnp.float32)) == Q
    inverted = rj.variational(input=RATE, embedding=RATE)
    assert embedding_at_evaluation(inverted) == rj.variational(input=RATE)
    assert embedding_at_evaluation(rest) == rest
    # the evaluator's MC model: with only the classic embedding dropout, its training-mode
    # pass is the evaluation
    model = models.LanguageModel(V, (H,), embed_size=F,
                                 reg=rj.embedding_dropout(RATE, eval_scaling=True))
    mc_model = without_embedding_dropout(model)
    with nm.x64():
        ids = jax.random.randint(jax.random.key(3), (B, T), 0, V)
        variables = nm.as_f64(model.init(jax.random.key(0), ids))
        close(mc_model.apply(variables, ids, deterministic=False)[0],
              model.apply(variables, ids, deterministic=True)[0])


def test_zero_rates_ignore_the_option_and_conflicts_are_refused():
    assert rj.variational(eval_scaling=True) == rj.NONE
    assert rj.dropout("output", 0.0, eval_scaling=True) == rj.NONE
    assert rj.embedding_dropout(0.0, eval_scaling=True) == rj.NONE
    assert rj.variational(input=RATE, eval_scaling=True) == rj.variational(
        input=RATE, recurrent=0.0, embedding=0.0, eval_scaling=True)
    assert rj.dropout("update", RATE, eval_scaling=True) == rj.recurrent_dropout(
        RATE, eval_scaling=True)
    with nm.x64():  # a MaskSpec at rate 0 is off: evaluation stays the identity
        params, x = stack_params("lstm"), inputs()
        reg = rj.regularizers.Dropout(input=rj.MaskSpec(0.0, eval_scaling=True))
        close(rnn.unroll("lstm", params, x, reg=reg)[0], rnn.unroll("lstm", params, x)[0])
    with pytest.raises(ValueError, match="set twice"):
        rj.dropout("input", RATE, eval_scaling=True) + rj.dropout("input", RATE)
    # a family's fields merge, one at its default being unset (`compose`)
    assert (rj.embedding_dropout(RATE, eval_scaling=True) + rj.embedding_dropout(RATE)
            == rj.embedding_dropout(RATE, eval_scaling=True))
    with pytest.raises(ValueError, match="set twice"):
        rj.embedding_dropout(RATE, eval_scaling=True) + rj.embedding_dropout(0.2)


def test_the_config_field_appears_and_runs_recorded_without_it_rebuild_unchanged():
    import json

    from experiments import report
    from experiments.configs import common, ptb

    reg = common.reg_config(variational=dict(input=RATE, embedding=0.2, eval_scaling=True))
    assert reg.dropout.eval_scaling is False
    assert common.regularization(reg) == rj.variational(input=RATE, embedding=0.2,
                                                        eval_scaling=True)
    config = json.loads(json.dumps(ptb.variational_medium().to_dict()))
    config["preset"] = "variational_medium"
    for name in ("variational", "dropout"):  # a run recorded before the field existed
        del config["reg"][name]["eval_scaling"]
    assert (common.regularization(config["reg"])
            == common.regularization(ptb.variational_medium().reg))
    run = report.Run(workdir="w", task="ptb", command="ptb.py --config=variational_medium",
                     config=config, events=[])
    assert report.flags_since_changed(run) == []
    config["reg"]["variational"]["eval_scaling"] = True  # a run with it on
    assert report.flags_since_changed(run) == ["--config.reg.variational.eval_scaling=True"]
