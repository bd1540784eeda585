"""What `Cell.projected_gates` saves the Keras GRU: its training step against the same
cell computing all three recurrent blocks and discarding n (as it did before the
option), measured alternately in one process.

Usage: python -m benchmarks.keras_gru_projection [--batch 128] [--steps 200]
       [--hidden 128] [--rounds 15]

Both cells compute the same function (the script checks the gradients agree); the
peer is a `cells.Cell` whose update takes the full `[B, 3H]` product, drops its n block
and multiplies `r * h` by `U_n` again. Printed: the median ms of a layer's forward and
backward pass (variational dropout, per-gate and shared masks, both backward passes)
and the peer / ours ratio. Only ratios within one run mean anything.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import rnnreg_jax as rj
from rnnreg_jax import cells
from rnnreg_jax.cells.keras import hard_sigmoid


def _discarding_update(params, carry, xw_t, rec_t, noise):
    """The Keras GRU given the full product `(h * m) W_h`: its n block unused, the
    candidate's product taken again from `W_h`'s last block."""
    h_prev = carry["h"]
    xr, xz, xn = jnp.split(xw_t, 3, axis=-1)
    ar, az, _ = jnp.split(rec_t, 3, axis=-1)
    r, z = hard_sigmoid(xr + ar), hard_sigmoid(xz + az)
    w_h = params["w_h"]
    u_n = w_h[2] if isinstance(w_h, tuple) or w_h.ndim == 3 else w_h[:, 2 * w_h.shape[0]:]
    mask = noise.recurrent.masks[2] if cells.is_per_gate(noise.recurrent) else noise.recurrent
    an = cells.recurrent_projection(r * h_prev, u_n, mask)
    n = jax.nn.sigmoid(xn + an)
    h_t = z * h_prev + (1.0 - z) * n
    return {"h": h_t}, h_t


DISCARDING = cells.Cell(name="keras_gru_discarding", num_gates=3, update=_discarding_update,
                        update_params=("w_h",))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    for flag in ("batch", "steps", "hidden", "rounds"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    x = jax.random.normal(jax.random.key(0), (args.batch, args.steps, args.hidden))
    params = [cells.init_params(jax.random.key(1), "keras_gru", args.hidden, args.hidden)]
    print(f"{jax.devices()[0].device_kind}: B {args.batch}, T {args.steps}, "
          f"H {args.hidden}; median of {args.rounds} alternating rounds")
    for per_gate in (True, False):
        reg = rj.variational(input=0.25, recurrent=0.25, output=0.25, per_gate=per_gate)
        for implementation in ("autodiff", "fused"):
            def grad_of(cell, implementation=implementation, reg=reg):
                def loss(p, key):
                    ys, _ = rj.unroll(cell, p, x, reg=reg, key=key, deterministic=False,
                                      implementation=implementation)
                    return jnp.sum(ys ** 2)
                return jax.jit(jax.grad(loss))

            contenders = {"ours": grad_of("keras_gru"), "peer": grad_of(DISCARDING)}
            grads = {k: f(params, jax.random.key(2)) for k, f in contenders.items()}
            np.testing.assert_allclose(grads["ours"][0]["w_h"], grads["peer"][0]["w_h"],
                                       rtol=1e-4, atol=1e-6)
            times: dict[str, list[float]] = {k: [] for k in contenders}
            for r in range(args.rounds):
                for name, f in contenders.items():
                    start = time.perf_counter()
                    jax.block_until_ready(f(params, jax.random.key(r)))
                    times[name].append(time.perf_counter() - start)
            ours, peer = (1e3 * statistics.median(times[k]) for k in ("ours", "peer"))
            masks = "per-gate" if per_gate else "shared"
            print(f"{masks:8s} {implementation:8s} ours {ours:7.1f} ms  peer {peer:7.1f} ms  "
                  f"peer/ours {peer / ours:.2f}x")


if __name__ == "__main__":
    main()
