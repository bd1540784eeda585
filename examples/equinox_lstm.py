"""A regularized LSTM as an Equinox module: rnnreg_jax's pure core in `eqx.Module`s.

    python examples/equinox_lstm.py              # trains a delayed-copy task, prints losses
    python examples/equinox_lstm.py --steps=50   # fewer steps

`RegularizedLSTM` holds a stack's parameters (the `rnnreg_jax.cells.init_params` dicts)
and a regularizer, and its `__call__(x, carry=None, *, key=None, deterministic=True)` is
`rnnreg_jax.unroll` on them: the same numbers for the same parameters and key. The
regularizer is a static field (a frozen, hashable record), so `eqx.filter_jit` compiles
one program per regularizer and `eqx.filter_value_and_grad` differentiates only the
arrays. Any of the library's regularizers composes here; the demo uses zoneout (Krueger
et al. 2016) plus AWD-LSTM's weight drop (DropConnect on `W_h`, Merity et al. 2017).

Why the module takes the whole batch `[B, T, F]` instead of one example:

Equinox's idiom is a per-example `__call__` that users `jax.vmap` over the batch. That
is right for a deterministic layer, but a regularizer's noise is defined per batch:

* Weight drop draws ONE mask of `W_h`'s shape per layer and minibatch, shared by every
  example and step. Vmapped with a key per example (`jax.vmap(f)(xs, keys)`), each
  example would draw its own `W_h` mask: per-example DropConnect, a different
  regularizer from AWD-LSTM's, with B masked copies of `W_h` (B times the memory of
  the weights, `[B, H, 4H]`, and a batched matmul per step instead of one product).
* Variational (tied) dropout draws one `[B, H]` mask per sequence, a different row for
  each example, from one key. Vmapped per example, each call draws a `[1, H]` mask: fine
  if the key is split per example (then each example gets an independent mask, the same
  distribution), but with one shared key (`in_axes=None`) every example gets the SAME
  mask, so the whole batch drops the same units: correlated noise that averages over
  nothing across the batch.
* So a composition such as `variational(...) + weight_drop(...)` cannot be vmapped
  correctly with either choice of key: the shared key breaks the dropout masks and split
  keys break weight drop. Taking the batch keeps both right (`test_examples.py` checks
  each claim).

Per-example code stays possible: call the module on a batch of one inside your own
`jax.vmap`, with split keys, when the regularizer has no batch-wide noise (no weight
drop or weight noise).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

# Run from a checkout (`python examples/equinox_lstm.py`), the checkout's rnnreg_jax is the
# one to use, as `python -m experiments...` from the repository root does.
_CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
if (_CHECKOUT / "rnnreg_jax").is_dir() and str(_CHECKOUT) not in sys.path:
    sys.path.insert(0, str(_CHECKOUT))

import rnnreg_jax as rj  # noqa: E402
from rnnreg_jax import cells  # noqa: E402

Array = jax.Array


class RegularizedLSTM(eqx.Module):
    """A stack of LSTM layers regularized by an `rnnreg_jax` regularizer; batch-native.

    Attributes:
      layers: each layer's parameters, bottom first (`cells.init_params` dicts:
        `w_x: [F, 4H]`, `w_h: [H, 4H]`, `b: [4H]`, gate order i, f, g, o).
      reg: the regularizer (static: part of the compiled program, not a leaf).
      cell: the cell type ("lstm", or any of `rnnreg_jax.cells`' types).
    """

    layers: list[dict[str, Array]]
    reg: rj.Regularizer = eqx.field(static=True)
    cell: str = eqx.field(static=True)

    def __init__(self, input_size: int, hidden_sizes: Sequence[int],
                 reg: rj.Regularizer = rj.NONE, *, key: Array, cell: str = "lstm"):
        if not hidden_sizes:
            raise ValueError("hidden_sizes must name at least one layer.")
        if input_size <= 0 or any(h <= 0 for h in hidden_sizes):
            raise ValueError(f"Sizes must be positive, got input_size={input_size}, "
                             f"hidden_sizes={tuple(hidden_sizes)}.")
        keys = jax.random.split(key, len(hidden_sizes))
        widths = [input_size, *hidden_sizes]
        self.layers = [cells.init_params(k, cell, f, h)
                       for k, f, h in zip(keys, widths[:-1], widths[1:], strict=True)]
        self.reg = reg
        self.cell = cell

    def __call__(self, x: Array, carry=None, *, key: Array | None = None,
                 deterministic: bool = True):
        """Run the stack over a batch.

        Args:
          x: `[B, T, F]`, the whole batch (not one example: see the module docstring).
          carry: each layer's state (a list of `{"h", "c"}` dicts of `[B, H]`), or None
            for zeros.
          key: this window's PRNG key; required when `deterministic=False` and the
            regularizer draws noise.
          deterministic: evaluation mode (every noise replaced by its expectation).

        Returns:
          `(outputs [B, T, H_last], carry)`, as `rnnreg_jax.unroll` returns them.
        """
        if x.ndim != 3:
            raise ValueError(f"RegularizedLSTM takes a batch [B, T, F], got shape {x.shape}; "
                             "a single example is x[None].")
        return rj.unroll(self.cell, self.layers, x, carry, reg=self.reg, key=key,
                         deterministic=deterministic)


class SequenceRegressor(eqx.Module):
    """`RegularizedLSTM` plus a linear read-out at every step."""

    rnn: RegularizedLSTM
    head: eqx.nn.Linear

    def __init__(self, input_size: int, hidden_sizes: Sequence[int], output_size: int,
                 reg: rj.Regularizer = rj.NONE, *, key: Array):
        rnn_key, head_key = jax.random.split(key)
        self.rnn = RegularizedLSTM(input_size, hidden_sizes, reg, key=rnn_key)
        self.head = eqx.nn.Linear(hidden_sizes[-1], output_size, key=head_key)

    def __call__(self, x: Array, *, key: Array | None = None, deterministic: bool = True):
        ys, _ = self.rnn(x, key=key, deterministic=deterministic)
        # The head is deterministic, so Equinox's per-example idiom fits it: vmap over B, T.
        return jax.vmap(jax.vmap(self.head))(ys)


def delayed_copy_batch(key: Array, batch: int, steps: int, delay: int) -> tuple[Array, Array]:
    """Inputs `[B, T, 1]` ~ N(0, 1) and targets `y_t = x_{t - delay}` (0 before `delay`):
    a task the network can only solve by remembering."""
    if not 0 < delay < steps:
        raise ValueError(f"delay must be in (0, steps), got delay={delay}, steps={steps}.")
    x = jax.random.normal(key, (batch, steps, 1))
    y = jnp.pad(x, ((0, 0), (delay, 0), (0, 0)))[:, :steps]
    return x, y


def mse(model: SequenceRegressor, x: Array, y: Array, key: Array | None,
        deterministic: bool) -> Array:
    return jnp.mean((model(x, key=key, deterministic=deterministic) - y) ** 2)


def train(steps: int = 300, batch: int = 32, seq_len: int = 12, delay: int = 2,
          hidden: int = 32, learning_rate: float = 1e-2,
          reg: rj.Regularizer | None = None, seed: int = 0):
    """Train `SequenceRegressor` on the delayed-copy task.

    Returns:
      `(model, history)`: the trained model and a list of `(step, training loss,
      evaluation loss)` with the evaluation loss (deterministic, on a fixed held-out
      batch) measured before the first step and after every step.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    if reg is None:
        reg = rj.zoneout(cells=0.15, hiddens=0.05) + rj.weight_drop(0.2)
    key = jax.random.key(seed)
    init_key, eval_key, key = jax.random.split(key, 3)
    model = SequenceRegressor(1, (hidden,), 1, reg, key=init_key)
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    x_eval, y_eval = delayed_copy_batch(eval_key, batch, seq_len, delay)

    @eqx.filter_jit
    def step(model, opt_state, key):
        data_key, noise_key = jax.random.split(key)
        x, y = delayed_copy_batch(data_key, batch, seq_len, delay)
        loss, grads = eqx.filter_value_and_grad(mse)(model, x, y, noise_key, False)
        updates, opt_state = optimizer.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state, loss

    evaluate = eqx.filter_jit(lambda m: mse(m, x_eval, y_eval, None, True))
    history = [(0, float("nan"), float(evaluate(model)))]
    for i in range(1, steps + 1):
        key, step_key = jax.random.split(key)
        model, opt_state, loss = step(model, opt_state, step_key)
        history.append((i, float(loss), float(evaluate(model))))
    return model, history


def _positive(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> list[tuple[int, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=_positive, default=300)
    parser.add_argument("--hidden", type=_positive, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    _, history = train(steps=args.steps, hidden=args.hidden, seed=args.seed)
    shown = history[:: max(1, len(history) // 10)]
    for i, loss, eval_loss in shown + ([history[-1]] if shown[-1] != history[-1] else []):
        train_loss = "     -" if i == 0 else f"{loss:.4f}"
        print(f"step {i:4d}  train {train_loss}  eval {eval_loss:.4f}")
    first, last = history[0][2], history[-1][2]
    print(f"evaluation loss {first:.4f} -> {last:.4f}")
    return history


if __name__ == "__main__":
    main()
