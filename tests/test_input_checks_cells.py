"""The cells', `rnn`'s and `bidirectional`'s one-sentence errors for inputs that used to
run silently wrong (a dropped weight column, a NaN forget bias, a truthy string switch, a
batch of 1 broadcast against another) or fail deep inside Python or JAX (a ZeroDivision,
a KeyError, an AttributeError, a dtype or dot_general error)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnreg_jax import bidirectional, cells, noise, rnn

B, T, F, H = 2, 3, 3, 4


def _p(cell="lstm", width=F):
    return cells.init_params(jax.random.key(0), cell, width, H)


def _x():
    return jnp.ones((B, T, F), jnp.float32)


def _one_sentence(err) -> None:
    message = str(err.value)
    assert "\n" not in message and message.endswith("."), message


# 1. gate_blocks, default_init_scale, layer_norm
@pytest.mark.parametrize("call, message", [
    (lambda: cells.gate_blocks(jnp.ones((4, 16)), 3),
     r"w's 16 columns must split into num_gates=3 equal gate blocks"),
    (lambda: cells.gate_blocks(jnp.ones((4, 16)), 0), "num_gates must be a whole number >= 1"),
    (lambda: cells.gate_major(jnp.ones((4, 16)), 3), "w's 16 columns must split into"),
    (lambda: cells.default_init_scale(-4), "hidden_size must be a whole number >= 1, got -4"),
    (lambda: cells.default_init_scale(0), "hidden_size must be a whole number >= 1, got 0"),
    (lambda: cells.layer_norm(jnp.ones((2, 16)), jnp.ones(16), jnp.zeros(16), groups=0),
     "groups must be a whole number >= 1, got 0"),
    (lambda: cells.layer_norm(jnp.ones((2, 16)), jnp.ones(16), jnp.zeros(16), groups=3),
     r"layer_norm's groups=3 must divide x's last axis \(16 wide; x has shape \(2, 16\)\)"),
])
def test_gate_sizes_that_do_not_divide_are_named(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call()
    _one_sentence(err)


# 2. with_forget_bias
@pytest.mark.parametrize("bias, message", [
    (float("nan"), "forget_bias must be finite, got nan"),
    ("one", "forget_bias must be a number, got 'one'"),
])
def test_with_forget_bias_checks_the_bias_as_unroll_does(bias, message):
    with pytest.raises(ValueError, match=message) as err:
        cells.with_forget_bias("lstm", _p(), bias)
    _one_sentence(err)


# 3. boolean switches
@pytest.mark.parametrize("call, message", [
    (lambda: cells.init_params(jax.random.key(0), "lstm", F, H, recurrent_bias="y"),
     "recurrent_bias must be True or False, got 'y'"),
    (lambda: cells.init_params(jax.random.key(0), "lstm", F, H, orthogonal="y"),
     "orthogonal must be True or False, got 'y'"),
    (lambda: cells.init_carry("lstm", B, H, output_gate="x"),
     "output_gate must be True or False, got 'x'"),
    (lambda: bidirectional.unroll_bidirectional(
        "lstm", bidirectional.init_params(jax.random.key(0), "lstm", F, H), _x(),
        return_hiddens="x"),
     "return_hiddens must be True or False, got 'x'"),
])
def test_switches_must_be_bools(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call()
    _one_sentence(err)


# 4. the steps: trace-time checks of the carry, params, xw_t and noise
@pytest.mark.parametrize("call, message", [
    (lambda: cells.lstm_step(_p(), cells.init_carry("lstm", 1, H), jnp.ones((2, 4 * H))),
     r"xw_t has shape \(2, 16\), but the carry's h has shape \(1, 4\)"),
    (lambda: cells.lstm_step(_p(), cells.init_carry("lstm", 2, H), jnp.ones((1, 4 * H))),
     r"xw_t has shape \(1, 16\), but the carry's h has shape \(2, 4\)"),
    (lambda: cells.lstm_step(_p(), cells.init_carry("lstm", 2, H), jnp.ones((2, 3 * H))),
     r"xw_t has shape \(2, 12\), but the carry's h has shape \(2, 4\): lstm_step takes "
     r"\(2, 16\) \(4 gate blocks of 4 units\)"),
    (lambda: cells.gru_step(_p("gru"), cells.init_carry("gru", 2, H), jnp.ones((2, 4 * H))),
     r"gru_step takes \(2, 12\)"),
    (lambda: cells.lstm_step(_p(), cells.init_carry("gru", 2, H), jnp.ones((2, 4 * H))),
     r"carry lacks \['c'\], which lstm_step reads \(it holds \['h'\]\)"),
    (lambda: cells.gru_step(_p(), cells.init_carry("gru", 2, H), jnp.ones((2, 3 * H))),
     r"params lack \['b_h'\], which gru_step reads"),
    (lambda: cells.lstm_step(_p(), cells.init_carry("lstm", 2, H), jnp.ones((2, 4 * H)), "x"),
     "noise must be a cells.StepNoise, got a str"),
    (lambda: cells.rnn_step(_p("rnn"), cells.init_carry("rnn", 2, H), jnp.ones((2, H)), None),
     "noise must be a cells.StepNoise, got a NoneType"),
    (lambda: cells.lstm_ln_step(_p("lstm_ln"), cells.init_carry("lstm_ln", 2, H),
                                jnp.ones((1, 4 * H))),
     r"xw_t has shape \(1, 16\), but the carry's h has shape \(2, 4\)"),
    (lambda: cells.keras_gru_step(_p("keras_gru"), cells.init_carry("keras_gru", 1, H),
                                  jnp.ones((2, 3 * H))),
     r"xw_t has shape \(2, 12\), but the carry's h has shape \(1, 4\)"),
    (lambda: cells.lstm_bn_step(_p("lstm_bn"), cells.init_carry("lstm_bn", 2, H),
                                jnp.ones((2, 4 * H))),
     r"xw_t must be the dict \{'x', 'stats'\} cells.project makes for lstm_bn"),
])
def test_steps_refuse_mismatched_carries_params_and_projections(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call()
    _one_sentence(err)


def test_step_checks_leave_valid_steps_as_they_were():
    """The checks are Python on static shapes: a step traces to the same program as the
    unchecked composition of its product and update."""
    carry, xw = cells.init_carry("lstm", B, H), jnp.ones((B, 4 * H))

    def unchecked(params, carry, xw_t):
        rec_t = cells.recurrent_projection(carry["h"], params["w_h"], None)
        return cells.lstm_update(params, carry, xw_t, rec_t, cells.StepNoise())

    assert (str(jax.make_jaxpr(cells.lstm_step)(_p(), carry, xw))
            == str(jax.make_jaxpr(unchecked)(_p(), carry, xw)))


# 5. scan_layer: one layer's params, a LayerNoise
@pytest.mark.parametrize("kwargs, message", [
    (dict(params=[_p()]), r"scan_layer takes one layer's params \(a dict\), got a list"),
    (dict(layer_noise=None), r"layer_noise must be a noise.LayerNoise .*got a NoneType; "
                             r"noise.LayerNoise\(\) is no noise"),
])
def test_scan_layer_takes_one_layers_dict_and_a_layer_noise(kwargs, message):
    args = dict(params=_p(), layer_noise=noise.LayerNoise())
    args.update(kwargs)
    xs = jnp.ones((T, B, F))
    with pytest.raises(ValueError, match=message) as err:
        rnn.scan_layer("lstm", args["params"], xs, cells.init_carry("lstm", B, H),
                       args["layer_noise"])
    _one_sentence(err)


def test_unroll_names_a_layer_that_is_not_a_dict():
    """A stack's layer given as a list (with a carry) reached scan_layer: an
    AttributeError in explicit_sharding."""
    with pytest.raises(ValueError, match=r"Layer 0's params must be a dict of arrays \(as "
                                         r"cells.init_params makes\), got a list") as err:
        rnn.unroll("lstm", [[_p()]], _x(), [cells.init_carry("lstm", B, H)])
    _one_sentence(err)


# 6. running statistics
@pytest.mark.parametrize("call, message", [
    (lambda: rnn.unroll("lstm_bn", [_p("lstm_bn")], _x(),
                        cell_stats=[{"x_mean": jnp.zeros((5, 4 * H))}]),
     r"Layer 0's cell_stats must also hold \['x_var', 'h_mean', 'h_var', 'c_mean', 'c_var'\], "
     r"which lstm_bn normalizes with \(given only \['x_mean'\]\)"),
    (lambda: rnn.unroll("lstm_bn", [_p("lstm_bn")], _x(), cell_stats="x"),
     "cell_stats must be a list of 1 layers' running statistics .*got a str"),
    (lambda: rnn.unroll("lstm_bn", _p("lstm_bn"), _x(), cell_stats="x"),
     "Layer 0's cell_stats must be a dict of lstm_bn's running statistics .*got a str"),
    (lambda: rnn.unroll("lstm_bn", [_p("lstm_bn")], _x(),
                        cell_stats=dict(cells.lstm_bn.init_population(H, 5))),
     "A stack of 1 layers takes a list of cell_stats, one per layer, got one dict"),
    (lambda: rnn.unroll("lstm_bn", _p("lstm_bn"), _x(),
                        cell_stats=cells.lstm_bn.init_population(H + 1, 5)),
     r"Layer 0's cell_stats\['x_mean'\] must be \[T_max, 16\] for 4 units, got shape "
     r"\(5, 20\)"),
    (lambda: rnn.scan_layer("lstm_bn", _p("lstm_bn"), jnp.ones((T, B, F)),
                            cells.init_carry("lstm_bn", B, H), population="x"),
     "population must be a dict of lstm_bn's running statistics .*got a str"),
])
def test_running_statistics_are_named(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call()
    _one_sentence(err)


def test_valid_running_statistics_still_run():
    population = cells.lstm_bn.init_population(H, 5)
    ys = rnn.unroll("lstm_bn", _p("lstm_bn"), _x(), cell_stats=population)[0]
    stats = {k: v for k, v in cells.lstm_bn.statistics(population).items()}  # no weight
    np.testing.assert_array_equal(rnn.unroll("lstm_bn", [_p("lstm_bn")], _x(),
                                             cell_stats=[stats])[0], ys)


# 7. inputs and carries that are no arrays
@pytest.mark.parametrize("call, message", [
    (lambda: rnn.unroll("lstm", [_p()], [[[1.0, 1.0, 1.0]]]),
     r"The inputs of unroll must be an array \(jax or numpy\) \[B, T, F\], got a list"),
    (lambda: rnn.unroll("lstm", [_p()], None), "must be an array .*got a NoneType"),
    (lambda: rnn.unroll("lstm", [_p()], "x"), "must be an array .*got a str"),
    (lambda: rnn.unroll("lstm", _p(), jnp.ones((1, T, F)),
                        {"h": [[0.0] * H], "c": [[0.0] * H]}),
     r"Layer 0's carry\['h'\] must be an array \[B, H\] \(jax or numpy\), got a list"),
    (lambda: rnn.scan_layer("lstm", _p(), [[[1.0, 1.0, 1.0]]], cells.init_carry("lstm", 1, H)),
     r"The inputs of scan_layer must be an array \(jax or numpy\) \[T, B, F\], got a list"),
    (lambda: bidirectional.unroll_bidirectional(
        "lstm", bidirectional.init_params(jax.random.key(0), "lstm", F, H), None),
     r"The inputs of unroll_bidirectional must be an array"),
])
def test_inputs_and_carries_must_be_arrays(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call()
    _one_sentence(err)


# 8. init_params' key
@pytest.mark.parametrize("key, got", [
    (None, "None"),
    (0, "0"),
    (jax.random.split(jax.random.key(0)), r"an array of shape \(2,\)"),
])
def test_init_params_needs_one_prng_key(key, got):
    with pytest.raises(ValueError, match=rf"key must be one PRNG key .*got {got}") as err:
        cells.init_params(key, "lstm", F, H)
    _one_sentence(err)
    with pytest.raises(ValueError, match=rf"key must be one PRNG key .*got {got}"):
        bidirectional.init_params(key, "lstm", F, H)


def test_bidirectional_init_params_refuses_a_cell_no_bidirectional_stack_runs():
    """"lstm_bn" parameters were drawn, then refused by every stack at its first call."""
    with pytest.raises(ValueError, match="Bidirectional stacks take cells without running "
                                         "statistics or auxiliary outputs, not 'lstm_bn'") as err:
        bidirectional.init_params(jax.random.key(0), "lstm_bn", F, H)
    _one_sentence(err)


# 9. project: input width, input mask
@pytest.mark.parametrize("kwargs, message", [
    (dict(x=jnp.ones((T, B, F + 2))),
     r"x has 5 features \(shape \(3, 2, 5\)\), but w_x reads 3"),
    (dict(input_mask=jnp.ones((B + 1, F))),
     r"input_mask has shape \(3, 3\); x of shape \(3, 2, 3\) needs one that broadcasts to it"),
    (dict(input_mask=jnp.ones((4, T, B, F))),
     r"input_mask has shape \(4, 3, 2, 3\); x of shape \(3, 2, 3\) needs one that broadcasts"),
    (dict(input_mask=jnp.ones((3, B, F)), per_gate=True),
     r"input_mask has shape \(3, 2, 3\); x of shape \(3, 2, 3\) needs 4 gate slices"),
    (dict(input_mask=jnp.ones((4, B, F + 1)), per_gate=True),
     r"needs 4 gate slices"),
])
def test_project_names_the_input_width_and_mask_shape(kwargs, message):
    args = dict(x=jnp.ones((T, B, F)), input_mask=None, per_gate=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message) as err:
        cells.project("lstm", _p(), args["x"], args["input_mask"], args["per_gate"])
    _one_sentence(err)


def test_project_takes_every_valid_mask_layout():
    x = jnp.ones((T, B, F))
    for mask, per_gate in ((jnp.ones((B, F)), False), (jnp.ones((T, B, F)), False),
                           (jnp.ones((F,)), False), (0.5, False), (jnp.ones((4, B, F)), True),
                           (jnp.ones((T, 4, B, F)), True)):
        assert cells.project("lstm", _p(), x, mask, per_gate).shape == (T, B, 4 * H)


# 10. unroll_bidirectional's params
@pytest.mark.parametrize("params, message", [
    (None, r"params must be one layer's \(a dict\) or a list of them, bottom first, got "
           r"NoneType"),
    (3, "a list of them, bottom first, got int"),
    ("lstm", "a list of them, bottom first, got str"),
])
def test_unroll_bidirectional_names_params_of_the_wrong_type(params, message):
    with pytest.raises(ValueError, match=message) as err:
        bidirectional.unroll_bidirectional("lstm", params, _x())
    _one_sentence(err)


def test_reverse_padded_takes_an_array():
    """A nested list failed inside jnp.flip with a TypeError."""
    with pytest.raises(ValueError, match=r"^x must be an array \(jax or numpy\), got a list\.$"):
        bidirectional.reverse_padded([[1.0, 2.0]], None)
