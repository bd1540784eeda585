"""Property tests of `rnnreg_jax.noise`: every mask drawn from explicit keys.

Masks are drawn directly (`dropout_mask`, `layer_noise`, `embedding_mask`, ...)
and counted: keep rates within 3 sigma, inverted scaling, tying, per-example
masks, same key same masks, site keys independent of each other.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnreg_jax import cells, noise, regularizers
from rnnreg_jax.regularizers import (
    NONE,
    MaskSpec,
    compose,
    dropout,
    embedding_dropout,
    naive_dropout,
    recurrent_dropout,
    stochastic_depth,
    variational,
    weight_noise,
    zaremba,
    zoneout,
)

KEY = jax.random.key(0)
B, T, F, H = 16, 6, 20, 12


def assert_rate(sample, p: float):
    """Fraction of ones in a {0, 1} sample within 4 sigma of p (binomial): with
    dozens of such checks on fixed keys, 3 sigma (0.27% each) failed on draws
    that are fine (checked over 500 keys)."""
    sample = np.asarray(sample)
    assert set(np.unique(sample)) <= {0.0, 1.0}
    n = sample.size
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(sample.mean() - p) <= 4 * sigma + 1e-12, (sample.mean(), p, sigma, n)


def assert_inverted(mask, rate: float):
    """Mask values are exactly 0 or 1/q, q = 1 - rate as drawn (quantized to
    2^-16); keep-rate ~ 1 - rate."""
    mask = np.asarray(mask)
    scale = np.float32(1.0) / np.float32(noise.quantize_probability(1.0 - rate))
    kept = mask != 0
    np.testing.assert_allclose(mask[kept], scale, rtol=1e-6)
    assert_rate(kept.astype(np.float32), 1.0 - rate)


def lnoise(reg, cell="lstm", key=KEY, layer=0, deterministic=False, batch=B, steps=T):
    return noise.layer_noise(reg, key, layer, cell, batch, steps, F, H, deterministic)


def distinct(x, axis):
    """The number of different slices along `axis`."""
    x = np.moveaxis(np.asarray(x), axis, 0).reshape(np.shape(x)[axis], -1)
    return len({row.tobytes() for row in x})


def all_different_rows(x, axis):
    """No two slices along `axis` are equal."""
    return distinct(x, axis) == np.shape(x)[axis]


# --------------------------------------------------------------------------- dropout_mask


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.8])
@pytest.mark.parametrize("tie", ["sequence", "step"])
@pytest.mark.parametrize("per_gate", [False, True])
def test_dropout_mask_shape_scaling_and_keep_rate(rate, tie, per_gate):
    spec = MaskSpec(rate, tie, per_gate)
    g = 4
    mask = noise.dropout_mask(KEY, spec, (64, 32), steps=T, num_gates=g)
    expected = {(False, "sequence"): (64, 32), (False, "step"): (T, 64, 32),
                (True, "sequence"): (g, 64, 32), (True, "step"): (T, g, 64, 32)}
    assert mask.shape == expected[(per_gate, tie)]
    assert mask.dtype == jnp.float32
    assert_inverted(mask, rate)


def test_dropout_mask_axes_differ():
    """Per-step masks differ over t; masks differ over examples and over gates."""
    step = noise.dropout_mask(KEY, MaskSpec(0.5, "step", True), (B, F), T, num_gates=4)
    assert all_different_rows(step, 0)  # gates
    assert all_different_rows(step, 1)  # steps
    assert all_different_rows(step, 2)  # examples
    tied = noise.dropout_mask(KEY, MaskSpec(0.5, "sequence"), (B, F), T)
    assert all_different_rows(tied, 0)


def test_dropout_mask_same_key_same_mask_other_key_other_mask():
    spec = MaskSpec(0.4, "step")
    a = noise.dropout_mask(KEY, spec, (B, F), T)
    np.testing.assert_array_equal(a, noise.dropout_mask(KEY, spec, (B, F), T))
    assert not np.array_equal(a, noise.dropout_mask(jax.random.key(1), spec, (B, F), T))


@pytest.mark.parametrize("p", [0.0, 0.2, 0.7, 1.0])
@pytest.mark.parametrize("tie", ["sequence", "step"])
def test_bernoulli_rate_and_shape(p, tie):
    d = noise.bernoulli(KEY, p, (64, 32), tie, steps=T)
    assert d.shape == ((64, 32) if tie == "sequence" else (T, 64, 32))
    assert_rate(d, p)


# --------------------------------------------------------------------------- site keys


def test_site_key_unknown_site_raises():
    with pytest.raises(ValueError, match="Unknown noise site 'foo'"):
        noise.site_key(KEY, "foo")


def test_site_keys_are_fold_in_and_distinct():
    k = noise.site_key(KEY, "recurrent", layer=2)
    ref = jax.random.fold_in(jax.random.fold_in(KEY, noise.LAYER_BASE + 2),
                             noise.SITE_IDS["recurrent"])
    np.testing.assert_array_equal(jax.random.key_data(k), jax.random.key_data(ref))
    datas = [jax.random.key_data(noise.site_key(KEY, s, layer)).tobytes()
             for s in noise.SITE_IDS for layer in (None, 0, 1)]
    assert len(set(datas)) == len(datas)


# --------------------------------------------------------------------------- layer_noise

# (regularizer, cell, field of LayerNoise, path inside it, expected shape, kind)
# kind: "drop" = inverted dropout mask of that rate, "mix" = {0, 1} with P(1) = rate.
LAYER_SITES = [
    ("zaremba input", zaremba(0.3), "lstm", ("input",), (T, B, F), "drop", 0.3),
    ("variational input", variational(input=0.3), "gru", ("input",), (B, F), "drop", 0.3),
    ("variational input per gate", variational(input=0.3, per_gate=True), "lstm", ("input",),
     (4, B, F), "drop", 0.3),
    ("naive input per gate", naive_dropout(input=0.3, per_gate=True), "gru", ("input",),
     (T, 3, B, F), "drop", 0.3),
    ("variational recurrent", variational(recurrent=0.4), "rnn", ("tied", "recurrent"),
     (B, H), "drop", 0.4),
    ("variational recurrent per gate", variational(recurrent=0.4, per_gate=True), "lstm",
     ("tied", "recurrent"), (4, B, H), "drop", 0.4),
    ("naive recurrent", naive_dropout(recurrent=0.4), "gru", ("per_step", "recurrent"),
     (T, B, H), "drop", 0.4),
    ("naive recurrent per gate", naive_dropout(recurrent=0.4, per_gate=True), "lstm",
     ("per_step", "recurrent"), (T, 4, B, H), "drop", 0.4),
    ("variational cell", variational(cell=0.25), "lstm", ("tied", "cell"), (B, H), "drop",
     0.25),
    ("naive cell", naive_dropout(cell=0.25), "lstm", ("per_step", "cell"), (T, B, H), "drop",
     0.25),
    ("semeniuta per step", recurrent_dropout(0.3), "lstm", ("per_step", "update"), (T, B, H),
     "drop", 0.3),
    ("semeniuta per sequence", recurrent_dropout(0.3, tie="sequence"), "gru",
     ("tied", "update"), (B, H), "drop", 0.3),
    ("semeniuta rnn", recurrent_dropout(0.3), "rnn", ("per_step", "update"), (T, B, H),
     "drop", 0.3),
    ("output zoneout", recurrent_dropout(0.3, output_zoneout=True), "lstm",
     ("per_step", "output_gate"), (T, B, H), "mix", 0.3),
    ("zoneout cells", zoneout(cells=0.4), "lstm", ("per_step", "zone_c"), (T, B, H), "mix",
     0.4),
    ("zoneout hiddens", zoneout(hiddens=0.2), "gru", ("per_step", "zone_h"), (T, B, H), "mix",
     0.2),
    ("zoneout hiddens rnn", zoneout(hiddens=0.2), "rnn", ("per_step", "zone_h"), (T, B, H),
     "mix", 0.2),
    ("zoneout tied", zoneout(cells=0.4, hiddens=0.2, tie="sequence"), "lstm", ("tied", "zone_h"),
     (B, H), "mix", 0.2),
    ("stochastic depth", stochastic_depth(0.3), "gru", ("per_step", "depth"), (T, B, 1), "mix",
     0.3),
]


def _get(ln, path):
    """A site's mask by path (a per-gate recurrent mask's array, `cells.PerGate.masks`)."""
    value = ln
    for name in path:
        value = getattr(value, name)
    return value.masks if isinstance(value, cells.PerGate) else value


@pytest.mark.parametrize("name,reg,cell,path,shape,kind,rate", LAYER_SITES,
                         ids=[c[0] for c in LAYER_SITES])
def test_layer_noise_sites(name, reg, cell, path, shape, kind, rate):
    ln = lnoise(reg, cell, batch=256 if shape[-1] == 1 else B)
    mask = np.asarray(_get(ln, path))
    if shape[-1] == 1:
        shape = (*shape[:-2], 256, 1)
    assert mask.shape == shape
    if kind == "drop":
        assert_inverted(mask, rate)
    else:
        assert_rate(mask, rate)
    # Per example: the batch axis is in the shape and examples get different masks.
    batch_axis = len(shape) - 2
    # Per example, not shared over the batch (a few equal rows of 12 bits are chance).
    assert distinct(mask, batch_axis) > (1 if shape[-1] == 1 else mask.shape[batch_axis] // 2)
    # Per-step masks differ across steps.
    if path[0] == "per_step" or (path == ("input",) and reg.input.tie == "step"):
        assert all_different_rows(mask, 0)  # every per-step mask is time first
    # Same key, same masks; another key, other masks.
    np.testing.assert_array_equal(mask, _get(lnoise(reg, cell, batch=mask.shape[batch_axis]),
                                             path))
    other = _get(lnoise(reg, cell, key=jax.random.key(7), batch=mask.shape[batch_axis]), path)
    assert not np.array_equal(mask, other)
    # Another layer of the stack, other masks.
    assert not np.array_equal(
        mask, _get(lnoise(reg, cell, layer=1, batch=mask.shape[batch_axis]), path))


def test_input_per_gate_flag():
    assert lnoise(variational(input=0.3, per_gate=True)).input_per_gate
    assert not lnoise(variational(input=0.3)).input_per_gate
    assert not lnoise(variational(recurrent=0.3, per_gate=True)).input_per_gate


def test_tied_masks_have_no_time_axis_and_sit_in_tied():
    """Tied masks are drawn once `[B, H]` and closed over by the scan (reused every step)."""
    ln = lnoise(variational(input=0.3, recurrent=0.3, cell=0.3)
                + recurrent_dropout(0.2, tie="sequence", output_zoneout=True))
    for name in ("recurrent", "cell", "update", "output_gate"):
        assert getattr(ln.tied, name).shape == (B, H), name
        assert getattr(ln.per_step, name) is None, name
    assert ln.input.shape == (B, F)


def test_output_gate_is_one_where_update_dropped():
    ln = lnoise(recurrent_dropout(0.3, output_zoneout=True))
    dropped = np.asarray(ln.per_step.update) == 0
    np.testing.assert_array_equal(np.asarray(ln.per_step.output_gate), dropped.astype(np.float32))


def test_zoneout_shared_uses_one_mask():
    ln = lnoise(zoneout(0.3, 0.3, shared=True))
    np.testing.assert_array_equal(ln.per_step.zone_c, ln.per_step.zone_h)
    ln = lnoise(zoneout(0.3, 0.3))
    assert not np.array_equal(ln.per_step.zone_c, ln.per_step.zone_h)


# Switching one site on never changes another's masks (fold_in per site).
INDEPENDENCE = [
    (variational(recurrent=0.3), variational(input=0.5), ("tied", "recurrent")),
    (variational(input=0.3), variational(recurrent=0.5, cell=0.2), ("input",)),
    (zaremba(0.3), zoneout(0.5, 0.1), ("input",)),
    (zoneout(0.5, 0.1), zaremba(0.3), ("per_step", "zone_c")),
    (zoneout(0.5, 0.1), zaremba(0.3) + stochastic_depth(0.2), ("per_step", "zone_h")),
    (recurrent_dropout(0.3), zoneout(0.5, 0.1), ("per_step", "update")),
    (stochastic_depth(0.3), recurrent_dropout(0.3), ("per_step", "depth")),
    (naive_dropout(recurrent=0.3), naive_dropout(input=0.3, cell=0.1),
     ("per_step", "recurrent")),
]


@pytest.mark.parametrize("base,extra,path", INDEPENDENCE)
def test_switching_a_site_on_keeps_other_masks(base, extra, path):
    np.testing.assert_array_equal(_get(lnoise(base), path), _get(lnoise(base + extra), path))


def test_switching_a_site_on_keeps_output_mask_and_weight_noise():
    w = jnp.zeros((H, 4 * H))
    for extra in (variational(recurrent=0.2), zoneout(0.2, 0.2)):
        a = noise.output_mask(zaremba(0.3), KEY, B, T, H, False)
        b = noise.output_mask(zaremba(0.3) + extra, KEY, B, T, H, False)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(
            noise.weight_noise(weight_noise(0.1), KEY, 0, w, False),
            noise.weight_noise(weight_noise(0.1) + extra, KEY, 0, w, False))


def test_deterministic_layer_noise_is_the_expectation():
    reg = (variational(input=0.3, recurrent=0.3, cell=0.2, per_gate=True)
           + zoneout(0.4, 0.1) + stochastic_depth(0.2)
           + recurrent_dropout(0.25, output_zoneout=True))
    ln = lnoise(reg, key=None, deterministic=True)
    assert ln.input is None
    for name in ("recurrent", "cell", "update"):
        assert getattr(ln.tied, name) is None and getattr(ln.per_step, name) is None
    q = noise.quantize_probability
    assert ln.tied.zone_c == q(0.4) and ln.tied.zone_h == q(0.1)
    assert ln.tied.depth == q(0.2) and ln.tied.output_gate == q(0.25)
    assert ln.per_step == cells.StepNoise()


def test_layer_noise_without_noise_is_empty_even_without_key():
    assert lnoise(NONE, key=None) == noise.LayerNoise()
    assert lnoise(regularizers.norm_stabilizer(1.0), key=None) == noise.LayerNoise()


@pytest.mark.parametrize("reg", [zaremba(0.1), zoneout(hiddens=0.1), stochastic_depth(0.1),
                                 recurrent_dropout(0.1), weight_noise(0.1)])
def test_layer_noise_needs_a_key_in_training(reg):
    with pytest.raises(ValueError, match="PRNG key is required"):
        lnoise(reg, key=None)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
@pytest.mark.parametrize("reg", [variational(cell=0.2), zoneout(cells=0.2),
                                 recurrent_dropout(0.2, output_zoneout=True),
                                 dropout("cell", 0.3)])
def test_layer_noise_rejects_lstm_only_sites(cell, reg):
    with pytest.raises(ValueError, match="needs an LSTM cell state"):
        lnoise(reg, cell)
    with pytest.raises(ValueError, match="needs an LSTM cell state"):
        lnoise(reg, cell, key=None, deterministic=True)


# --------------------------------------------------------------------------- output mask


@pytest.mark.parametrize("reg,shape", [(zaremba(0.4), (T, B, H)),
                                       (variational(output=0.4), (B, H))])
def test_output_mask(reg, shape):
    m = noise.output_mask(reg, KEY, B, T, H, deterministic=False)
    assert m.shape == shape
    assert_inverted(m, 0.4)
    assert all_different_rows(m, len(shape) - 2)
    assert noise.output_mask(reg, None, B, T, H, deterministic=True) is None
    assert noise.output_mask(variational(input=0.3), KEY, B, T, H, False) is None
    with pytest.raises(ValueError, match="PRNG key is required"):
        noise.output_mask(reg, None, B, T, H, deterministic=False)


# --------------------------------------------------------------------------- embedding


def test_embedding_mask_shares_word_masks_and_scales():
    p, vocab, batch, steps = 0.4, 7, 64, 40
    ids = jnp.asarray(np.random.default_rng(3).integers(0, vocab, (batch, steps)))
    m = noise.embedding_mask(embedding_dropout(p), KEY, ids, vocab, deterministic=False)
    assert m.shape == (batch, steps, 1)
    m, ids = np.asarray(m)[..., 0], np.asarray(ids)
    assert_inverted(m, p)
    per_type = np.full((batch, vocab), np.nan)
    for b in range(batch):
        for v in range(vocab):
            values = m[b][ids[b] == v]
            if values.size:
                # Every occurrence of a word in a sequence shares its mask.
                assert np.all(values == values[0]), (b, v, values)
                per_type[b, v] = values[0]
    # Per word type the keep rate is 1 - p (one draw per (row, type), not per token).
    seen = ~np.isnan(per_type)
    assert_rate((per_type[seen] != 0).astype(np.float32), 1 - p)
    # Different sequences (rows) get different masks over the vocabulary.
    assert len({row.tobytes() for row in per_type}) > batch // 2


def test_embedding_mask_same_ids_different_rows_and_keys():
    ids = jnp.tile(jnp.arange(50)[None], (8, 1))
    m = noise.embedding_mask(embedding_dropout(0.5), KEY, ids, 50, False)
    assert all_different_rows(m[..., 0], 0)
    np.testing.assert_array_equal(m, noise.embedding_mask(embedding_dropout(0.5), KEY, ids, 50,
                                                          False))
    assert not np.array_equal(m, noise.embedding_mask(embedding_dropout(0.5),
                                                      jax.random.key(1), ids, 50, False))


def test_embedding_mask_off_and_key_required():
    ids = jnp.zeros((2, 3), jnp.int32)
    assert noise.embedding_mask(embedding_dropout(0.3), None, ids, 5, deterministic=True) is None
    assert noise.embedding_mask(NONE, KEY, ids, 5, deterministic=False) is None
    with pytest.raises(ValueError, match="PRNG key is required"):
        noise.embedding_mask(embedding_dropout(0.3), None, ids, 5, deterministic=False)


def test_embedding_mask_independent_of_other_sites():
    ids = jnp.tile(jnp.arange(10)[None], (4, 1))
    a = noise.embedding_mask(embedding_dropout(0.3), KEY, ids, 10, False)
    b = noise.embedding_mask(variational(0.3, 0.3, 0.3, embedding=0.3), KEY, ids, 10, False)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- weight noise


def test_weight_noise_std_keys_layers_and_eval():
    sigma = 0.075
    w = jnp.asarray(np.random.default_rng(0).uniform(size=(64, 256)), jnp.float32)
    reg = weight_noise(sigma)
    noisy = noise.weight_noise(reg, KEY, 0, w, deterministic=False)
    eps = np.asarray(noisy - w)
    # Sample std of 16k normals: relative standard error ~ 1/sqrt(2n) ~ 0.55%.
    assert abs(eps.std() / sigma - 1) < 0.03
    assert abs(eps.mean()) < 3 * sigma / np.sqrt(eps.size)
    np.testing.assert_array_equal(noisy, noise.weight_noise(reg, KEY, 0, w, False))
    assert not np.allclose(noisy, noise.weight_noise(reg, jax.random.key(1), 0, w, False))
    assert not np.allclose(noisy, noise.weight_noise(reg, KEY, 1, w, False))
    # Deterministic mode and sigma = 0: exactly W.
    assert noise.weight_noise(reg, None, 0, w, deterministic=True) is w
    assert noise.weight_noise(NONE, KEY, 0, w, deterministic=False) is w
    with pytest.raises(ValueError, match="PRNG key is required"):
        noise.weight_noise(reg, None, 0, w, deterministic=False)


# --------------------------------------------------------------------------- MC keys


def test_mc_sample_keys_are_distinct_reproducible_and_give_independent_masks():
    keys = noise.mc_sample_keys(KEY, 0, 0, 5)
    assert keys.shape == (5,)
    np.testing.assert_array_equal(jax.random.key_data(keys),
                                  jax.random.key_data(noise.mc_sample_keys(KEY, 0, 0, 5)))
    datas = {jax.random.key_data(k).tobytes() for k in keys}
    assert len(datas) == 5
    masks = jax.vmap(lambda k: lnoise(variational(recurrent=0.5), key=k).tied.recurrent)(keys)
    assert masks.shape == (5, B, H)
    assert all_different_rows(masks, 0)
    np.testing.assert_array_equal(masks[2], lnoise(variational(recurrent=0.5),
                                                   key=keys[2]).tied.recurrent)


def test_compose_is_what_layer_noise_sees():
    """The composed spec draws exactly the union of the parts' masks."""
    reg = compose(variational(input=0.2, recurrent=0.2), zoneout(0.3, 0.1))
    ln = lnoise(reg)
    np.testing.assert_array_equal(ln.input, lnoise(variational(input=0.2)).input)
    np.testing.assert_array_equal(ln.per_step.zone_c, lnoise(zoneout(cells=0.3)).per_step.zone_c)


def test_draws_are_16_bit_halves_of_threefry_words():
    """Element 2i is the low half of word i, 2i + 1 its high half, kept below
    round(p 2^16); a shaped draw is the flat draw reshaped."""
    words = np.asarray(jax.random.bits(KEY, (3,), jnp.uint32)).astype(np.int64)
    halves = np.stack([words & 0xFFFF, words >> 16], axis=-1).reshape(-1)[:5]
    threshold = round(0.3 * 65536)
    expected = (halves < threshold).astype(np.float32).reshape(5, 1)
    np.testing.assert_array_equal(noise.bernoulli(KEY, 0.3, (5, 1), "sequence", T), expected)
    np.testing.assert_array_equal(noise.bernoulli_draw(KEY, 0.3, (5,)), expected[:, 0] > 0)


@pytest.mark.parametrize("p", [0.0, 1e-6, 0.05, 0.1, 0.25, 1 / 3, 0.5, 0.65, 0.999, 1.0])
def test_quantized_probability_is_within_2_to_the_minus_17(p):
    q = noise.quantize_probability(p)
    assert abs(q - p) <= 2.0 ** -17
    assert q * 65536 == int(q * 65536)
    assert noise.quantize_probability(1.0 - p) == pytest.approx(1.0 - q, abs=1e-12)


def test_always_and_never_are_exact():
    assert bool(jnp.all(noise.bernoulli_draw(KEY, 1.0, (4096,))))
    assert not bool(jnp.any(noise.bernoulli_draw(KEY, 0.0, (4096,))))


def test_evaluation_uses_the_rates_as_drawn():
    """Deterministic mixing coefficients are the quantized rates the training draws use."""
    ln = lnoise(zoneout(cells=0.1, hiddens=1 / 3), deterministic=True)
    assert ln.tied.zone_c == noise.quantize_probability(0.1) != 0.1
    assert ln.tied.zone_h == noise.quantize_probability(1 / 3)
