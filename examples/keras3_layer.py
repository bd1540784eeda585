"""A regularized LSTM as a Keras 3 layer on the JAX backend, wrapping rnnreg_jax's core.

    python examples/keras3_layer.py              # fits a delayed-copy task, prints losses
    python examples/keras3_layer.py --epochs=2

`RegularizedLSTM` is a `keras.layers.Layer` with Keras' LSTM weights (`kernel [F, 4H]`,
`recurrent_kernel [H, 4H]`, `bias [4H]`) whose `call` is `rnnreg_jax.unroll`. Its noise
is on when Keras calls it with `training=True` (`fit`, `train_on_batch`) and replaced by
its expectation otherwise (`predict`, `evaluate`); the PRNG key comes from the layer's
`keras.random.SeedGenerator`, whose state Keras threads through its jitted steps.

Options (rates are drop or zoneout probabilities):

* `dropout`, `recurrent_dropout`: Keras' meaning, Gal & Ghahramani's variational
  dropout: one mask per sequence on the input and on `h_{t-1}` into the recurrent
  kernel, with a separate mask per gate whenever `recurrent_dropout > 0`, as
  `keras.layers.LSTM` draws them (`per_gate` overrides that). Beware the name: the
  library's own `rnnreg_jax.recurrent_dropout` is Semeniuta et al.'s dropout on the
  cell update, a different regularizer; this layer's `recurrent_dropout` is
  `rnnreg_jax.variational(recurrent=...)`.
* `zoneout_cells`, `zoneout_hiddens`: Krueger et al.'s zoneout.
* `weight_drop`: AWD-LSTM's DropConnect on the recurrent kernel, one mask per batch.
* `reg`: any `rnnreg_jax` regularizer instead of the options above (not serializable
  by `get_config`).

`keras.layers.LSTM`'s own `recurrent_dropout` switches its cell to `implementation=1`
(the input and the state multiplied by each gate's block separately at every step); here
the masks go into the library's scan (docs/FRAMEWORKS.md).

`port_keras_lstm` moves a trained `keras.layers.LSTM`'s weights over 1:1 (the gate order
is the same; see `KERAS_GATES`), and `from_keras_lstm` builds this layer from one.

Keras must run on its JAX backend: this file sets KERAS_BACKEND=jax unless keras is
imported already (then it checks the backend).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Sequence

if "keras" not in sys.modules:  # the backend is chosen once, at keras' import
    os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

if keras.backend.backend() != "jax":
    raise ImportError(f"keras3_layer needs Keras' JAX backend, but keras runs on "
                      f"{keras.backend.backend()!r}; set KERAS_BACKEND=jax before importing "
                      f"keras.")

# Run from a checkout (`python examples/keras3_layer.py`), the checkout's rnnreg_jax is the
# one to use, as `python -m experiments...` from the repository root does.
_CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
if (_CHECKOUT / "rnnreg_jax").is_dir() and str(_CHECKOUT) not in sys.path:
    sys.path.insert(0, str(_CHECKOUT))

import rnnreg_jax as rj  # noqa: E402

# Gate blocks along the 4H axis. Keras' LSTMCell splits its pre-activation into i, f, c, o
# (c: the candidate), the library's LSTM into i, f, g, o (g: the candidate; PyTorch's
# order, rnnreg_jax/cells/lstm.py): the same order, so the port permutes nothing.
KERAS_GATES = ("i", "f", "c", "o")
RNNREG_GATES = ("i", "f", "g", "o")
_SAME_GATE = {"c": "g"}


def _keras_to_rnnreg_order() -> list[int]:
    """For each of the library's gate blocks, the index of Keras' block that holds it."""
    keras_names = [_SAME_GATE.get(g, g) for g in KERAS_GATES]
    return [keras_names.index(g) for g in RNNREG_GATES]


def _reorder_gates(w: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """`w [..., 4H]` with its gate blocks in `order`."""
    blocks = np.split(w, len(order), axis=-1)
    return np.concatenate([blocks[i] for i in order], axis=-1)


def _regularizer(dropout: float, recurrent_dropout: float, zoneout_cells: float,
                 zoneout_hiddens: float, weight_drop: float,
                 per_gate: bool | None) -> rj.Regularizer:
    if per_gate is None:  # keras.layers.LSTM: per-gate masks iff recurrent_dropout > 0
        per_gate = recurrent_dropout > 0
    return (rj.variational(input=dropout, recurrent=recurrent_dropout, per_gate=per_gate)
            + rj.zoneout(cells=zoneout_cells, hiddens=zoneout_hiddens)
            + rj.weight_drop(weight_drop))


def _forget_bias_one(shape, dtype=None):
    """Keras' `unit_forget_bias=True` initialisation: zeros, ones on the forget block."""
    units = shape[0] // 4
    return keras.ops.concatenate([keras.ops.zeros((units,), dtype),
                                  keras.ops.ones((units,), dtype),
                                  keras.ops.zeros((2 * units,), dtype)])


class RegularizedLSTM(keras.layers.Layer):
    """An LSTM layer (Keras' weights and initialisers) run by `rnnreg_jax.unroll`.

    Args:
      units: the hidden size H.
      dropout, recurrent_dropout, zoneout_cells, zoneout_hiddens, weight_drop, per_gate:
        the regularizer (see the module docstring).
      reg: an `rnnreg_jax` regularizer to use instead of the rate options.
      return_sequences: return every step's output `[B, T, H]` (else the last `[B, H]`).
      return_state: also return the final `h` and `c`, as `keras.layers.LSTM` does.
      seed: the seed of the layer's noise.
    """

    def __init__(self, units: int, *, dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 zoneout_cells: float = 0.0, zoneout_hiddens: float = 0.0,
                 weight_drop: float = 0.0, per_gate: bool | None = None,
                 reg: rj.Regularizer | None = None, return_sequences: bool = True,
                 return_state: bool = False, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(units, int) and units > 0):
            raise ValueError(f"units must be a positive integer, got {units!r}.")
        rates = dict(dropout=dropout, recurrent_dropout=recurrent_dropout,
                     zoneout_cells=zoneout_cells, zoneout_hiddens=zoneout_hiddens,
                     weight_drop=weight_drop)
        if reg is not None and (any(rates.values()) or per_gate is not None):
            raise ValueError("Pass either reg or the rate options (dropout, ...), not both.")
        self.units = units
        self.rates, self.per_gate = rates, per_gate
        self.custom_reg = reg is not None
        self.reg = reg if reg is not None else _regularizer(**rates, per_gate=per_gate)
        self.return_sequences, self.return_state = return_sequences, return_state
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        features = input_shape[-1]
        if features is None:
            raise ValueError("RegularizedLSTM needs the input's feature size at build time.")
        width = 4 * self.units
        self.kernel = self.add_weight(shape=(features, width), initializer="glorot_uniform",
                                      name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, width),
                                                initializer="orthogonal",
                                                name="recurrent_kernel")
        self.bias = self.add_weight(shape=(width,), initializer=_forget_bias_one, name="bias")

    def params(self) -> dict[str, jax.Array]:
        """The library's parameter dict of this layer (`w_x`, `w_h`, `b`)."""
        return {"w_x": self.kernel.value, "w_h": self.recurrent_kernel.value,
                "b": self.bias.value}

    def call(self, inputs, initial_state=None, training=None):
        if len(inputs.shape) != 3:
            raise ValueError(f"RegularizedLSTM takes inputs [B, T, F], got shape "
                             f"{tuple(inputs.shape)}.")
        carry = None
        if initial_state is not None:
            h0, c0 = initial_state
            carry = {"h": jnp.asarray(h0, inputs.dtype), "c": jnp.asarray(c0, inputs.dtype)}
        training = bool(training)
        key = None
        if training and self.reg.stack_noise:
            # The generator's state is a raw threefry key; Keras updates it every call.
            key = jax.random.wrap_key_data(
                jnp.asarray(self.seed_generator.next(), jnp.uint32))
        ys, carry = rj.unroll("lstm", self.params(), inputs, carry, reg=self.reg, key=key,
                              deterministic=not training)
        out = ys if self.return_sequences else ys[:, -1]
        return (out, carry["h"], carry["c"]) if self.return_state else out

    def compute_output_shape(self, inputs_shape, initial_state_shape=None):
        batch, steps = inputs_shape[0], inputs_shape[1]
        out = (batch, steps, self.units) if self.return_sequences else (batch, self.units)
        state = (batch, self.units)
        return (out, state, state) if self.return_state else out

    def get_config(self):
        if self.custom_reg:
            raise ValueError("A RegularizedLSTM built with reg= cannot be serialized; use "
                             "the rate options.")
        return {**super().get_config(), "units": self.units, **self.rates,
                "per_gate": self.per_gate, "return_sequences": self.return_sequences,
                "return_state": self.return_state, "seed": self.seed}


def port_keras_lstm(lstm: keras.layers.LSTM) -> dict[str, np.ndarray]:
    """The library's LSTM parameters (`w_x [F, 4H]`, `w_h [H, 4H]`, `b [4H]`) of a
    built `keras.layers.LSTM`, for `rnnreg_jax.unroll("lstm", ...)` or this layer."""
    if not isinstance(lstm, keras.layers.LSTM):
        raise ValueError(f"port_keras_lstm takes a keras.layers.LSTM, got {type(lstm).__name__}.")
    if not lstm.built:
        raise ValueError("The keras.layers.LSTM is not built yet; call it on an input first.")
    cell = lstm.cell
    if (keras.activations.serialize(cell.activation) != "tanh"
            or keras.activations.serialize(cell.recurrent_activation) != "sigmoid"):
        raise ValueError("Only the standard LSTM ports (activation='tanh', "
                         "recurrent_activation='sigmoid').")
    if lstm.go_backwards:
        raise ValueError("A go_backwards LSTM does not port; reverse the inputs instead.")
    order = _keras_to_rnnreg_order()
    # `.value` (a jax array), not `.numpy()`: Keras' numpy() warns under numpy 2.
    kernel = np.asarray(cell.kernel.value)
    bias = (np.asarray(cell.bias.value) if cell.use_bias
            else np.zeros(kernel.shape[-1], kernel.dtype))
    return {"w_x": _reorder_gates(kernel, order),
            "w_h": _reorder_gates(np.asarray(cell.recurrent_kernel.value), order),
            "b": _reorder_gates(bias, order)}


def from_keras_lstm(lstm: keras.layers.LSTM, **options) -> RegularizedLSTM:
    """A `RegularizedLSTM` with `lstm`'s weights and output options; `options` (rates,
    `reg`, `seed`, ...) go to its constructor."""
    params = port_keras_lstm(lstm)
    options.setdefault("return_sequences", lstm.return_sequences)
    options.setdefault("return_state", lstm.return_state)
    layer = RegularizedLSTM(lstm.units, **options)
    layer.build((None, None, params["w_x"].shape[0]))
    layer.kernel.assign(params["w_x"])
    layer.recurrent_kernel.assign(params["w_h"])
    layer.bias.assign(params["b"])
    return layer


def delayed_copy(num: int, steps: int = 12, delay: int = 2, seed: int = 0):
    """Inputs `[N, T, 1]` ~ N(0, 1) and targets `y_t = x_{t - delay}` (0 before `delay`)."""
    if not 0 < delay < steps:
        raise ValueError(f"delay must be in (0, steps), got delay={delay}, steps={steps}.")
    x = np.random.default_rng(seed).standard_normal((num, steps, 1)).astype(np.float32)
    y = np.zeros_like(x)
    y[:, delay:] = x[:, :-delay]
    return x, y


def build_model(units: int = 32, seed: int = 0, **options) -> keras.Model:
    """Input -> RegularizedLSTM -> Dense at every step, compiled with Adam and MSE."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, 1))
    hidden = RegularizedLSTM(units, seed=seed, **options)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def _positive(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=_positive, default=10)
    parser.add_argument("--units", type=_positive, default=32)
    args = parser.parse_args(argv)
    model = build_model(args.units, recurrent_dropout=0.1, zoneout_cells=0.15)
    x, y = delayed_copy(1024)
    x_val, y_val = delayed_copy(256, seed=1)
    before = model.evaluate(x_val, y_val, verbose=0)
    history = model.fit(x, y, batch_size=32, epochs=args.epochs, verbose=0,
                        validation_data=(x_val, y_val))
    for epoch, (loss, val) in enumerate(zip(history.history["loss"],
                                            history.history["val_loss"], strict=True), 1):
        print(f"epoch {epoch:3d}  train {loss:.4f}  validation {val:.4f}")
    print(f"validation loss {before:.4f} -> {history.history['val_loss'][-1]:.4f}")
    return [before, *history.history["val_loss"]]


if __name__ == "__main__":
    main()
