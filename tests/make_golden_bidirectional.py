"""Make the PyTorch golden fixtures of `tests/test_bidirectional_pytorch.py`.

They pin `rnnreg_jax.bidirectional` to PyTorch's `nn.LSTM`, `nn.GRU` and
`nn.RNN(nonlinearity="tanh")` with `bidirectional=True`: outputs, final states and the
gradients of a scalar loss with respect to every weight, the input and the initial
state. Weights and inputs are float32 values and PyTorch computes in float64, so one
fixture checks our float32 results (to float32 rounding) and our float64 ones (to
float64 rounding) alike. A second run packs sequences of different lengths
(`pack_padded_sequence`), for the variable-length tests. The tests read the
`.npz` files only, so they need no torch.

Regenerate (deterministic: fixed seeds, CPU) from the repository root with a separate
venv, so the project's venv stays torch-free:

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchvenv/bin/python tests/make_golden_bidirectional.py

This writes `tests/fixtures/golden_bidirectional_{lstm,gru,rnn}_{1,2}layer.npz`, each
holding (B = batch, T = steps, F = input size, H = hidden size, L = layers; state index
2 l + d, d = 0 forward and 1 backward, PyTorch's):

    sizes                     int [B, T, F, H, L]
    lengths                   int [B], the packed run's lengths (max = T)
    sd/<name>                 the state dict, e.g. sd/weight_ih_l0_reverse [G*H, F]
    x                         input [B, T, F] (batch_first=True)
    h0, c0                    nonzero initial state [2L, B, H] (c0 for the LSTM only)
    r_out, r_h, r_c           fixed random weights of the loss
    <run>/out, <run>/hn, <run>/cn   outputs [B, T, 2H], final state [2L, B, H]
    <run>/loss                sum(out * r_out) + sum(hn * r_h) (+ sum(cn * r_c))
    <run>/grad/<name>         d loss / d weight, for every state-dict entry
    <run>/grad/x, <run>/grad/h0, <run>/grad/c0   d loss / d input and initial state

for the runs `full` (all steps) and `packed` (`lengths`: outputs past an example's
length are 0 and its final states are those at its last step), all float64.
"""

from __future__ import annotations

import numpy as np
import torch
from make_golden import CELLS, uniform_draws, write_fixtures  # the sibling script

BATCH, STEPS, INPUT, HIDDEN = 3, 5, 4, 3
LENGTHS = (5, 2, 4)
LAYERS = (1, 2)
SEED = 20260412


def run(module, inputs: dict, weights: dict, lengths=None) -> dict[str, np.ndarray]:
    """One forward and backward pass of `module` in float64; the run's arrays."""
    dtype = torch.float64
    module = module.to(dtype)
    module.zero_grad()
    leaves = {k: v.detach().to(dtype).requires_grad_() for k, v in inputs.items()}
    x = leaves["x"]
    if lengths is not None:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), batch_first=True,
                                                    enforce_sorted=False)
    state = (leaves["h0"], leaves["c0"]) if "c0" in leaves else leaves["h0"]
    out, final = module(x, state)
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                        total_length=STEPS)
    hn, cn = final if "c0" in leaves else (final, None)
    loss = (out * weights["r_out"].to(dtype)).sum() + (hn * weights["r_h"].to(dtype)).sum()
    arrays = {"out": out, "hn": hn}
    if cn is not None:
        loss = loss + (cn * weights["r_c"].to(dtype)).sum()
        arrays["cn"] = cn
    loss.backward()
    arrays["loss"] = loss
    for name, param in module.named_parameters():
        arrays[f"grad/{name}"] = param.grad
    for name, leaf in leaves.items():
        arrays[f"grad/{name}"] = leaf.grad
    return {k: v.detach().numpy() for k, v in arrays.items()}


def make(cell: str, num_layers: int, seed: int) -> dict[str, np.ndarray]:
    """The fixture arrays of one module."""
    torch.manual_seed(seed)
    kwargs = {"nonlinearity": "tanh"} if cell == "rnn" else {}
    module = CELLS[cell](INPUT, HIDDEN, num_layers=num_layers, batch_first=True,
                         bidirectional=True, **kwargs).float()
    rand = uniform_draws(seed + 1)
    states = 2 * num_layers
    inputs = {"x": rand(BATCH, STEPS, INPUT), "h0": 0.5 * rand(states, BATCH, HIDDEN)}
    weights = {"r_out": rand(BATCH, STEPS, 2 * HIDDEN), "r_h": rand(states, BATCH, HIDDEN)}
    if cell == "lstm":
        inputs["c0"] = 0.5 * rand(states, BATCH, HIDDEN)
        weights["r_c"] = rand(states, BATCH, HIDDEN)
    arrays = {k: v.numpy() for k, v in {**inputs, **weights}.items()}
    arrays.update({f"sd/{k}": v.detach().numpy().copy() for k, v in module.state_dict().items()})
    for name, lengths in (("full", None), ("packed", LENGTHS)):
        out = run(module, inputs, weights, lengths)
        arrays.update({f"{name}/{k}": v for k, v in out.items()})
    arrays["sizes"] = np.array([BATCH, STEPS, INPUT, HIDDEN, num_layers], np.int32)
    arrays["lengths"] = np.array(LENGTHS, np.int32)
    return arrays


def main() -> None:
    write_fixtures(make, LAYERS, SEED, "golden_bidirectional_{cell}_{layers}layer.npz",
                   "full/loss")


if __name__ == "__main__":
    main()
