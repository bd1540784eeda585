"""Make the PyTorch golden fixtures of `tests/test_torch_port.py`.

The fixtures pin our LSTM, GRU and tanh RNN to PyTorch's `nn.LSTM`, `nn.GRU`
and `nn.RNN(nonlinearity="tanh")`: forward outputs, final states and the
gradients of a scalar loss with respect to every weight, the input and the
initial state. The tests read the `.npz` files only, so they need no torch.

Regenerate (deterministic: fixed seeds, CPU, float32) from the repository root
with a separate venv, so the project's venv stays torch-free:

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchvenv/bin/python tests/make_golden.py

This writes `tests/fixtures/golden_{lstm,gru,rnn}_{1,2,3}layer.npz`, each
holding (B = batch, T = steps, F = input size, H = hidden size, L = layers):

    sizes                  int [B, T, F, H, L]
    sd/<name>              the module's state dict, e.g. sd/weight_ih_l0 [G*H, F]
    x                      input [B, T, F] (batch_first=True)
    h0, c0                 nonzero initial state [L, B, H] (c0 for the LSTM only)
    r_out, r_h, r_c        fixed random weights of the loss
    out, hn, cn            outputs [B, T, H] and final state [L, B, H]
    loss                   sum(out * r_out) + sum(hn * r_h) (+ sum(cn * r_c))
    grad/<name>            d loss / d weight, for every state-dict entry
    grad/x, grad/h0, grad/c0   d loss / d input and initial state
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

BATCH, STEPS, INPUT, HIDDEN = 3, 9, 7, 13
LAYERS = (1, 2, 3)
CELLS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
SEED = 20240611
OUT_DIR = pathlib.Path(__file__).resolve().parent / "fixtures"


def make(cell: str, num_layers: int, seed: int) -> dict[str, np.ndarray]:
    """Run one module forward and backward; return the fixture arrays."""
    torch.manual_seed(seed)
    kwargs = {"nonlinearity": "tanh"} if cell == "rnn" else {}
    module = CELLS[cell](INPUT, HIDDEN, num_layers=num_layers, batch_first=True, **kwargs)
    module = module.float()
    rand = uniform_draws(seed + 1)
    x = rand(BATCH, STEPS, INPUT).requires_grad_()
    h0 = (0.5 * rand(num_layers, BATCH, HIDDEN)).requires_grad_()
    r_out, r_h = rand(BATCH, STEPS, HIDDEN), rand(num_layers, BATCH, HIDDEN)
    arrays: dict[str, np.ndarray] = {}
    if cell == "lstm":
        c0 = (0.5 * rand(num_layers, BATCH, HIDDEN)).requires_grad_()
        r_c = rand(num_layers, BATCH, HIDDEN)
        out, (hn, cn) = module(x, (h0, c0))
        loss = (out * r_out).sum() + (hn * r_h).sum() + (cn * r_c).sum()
        inputs = {"x": x, "h0": h0, "c0": c0}
        arrays.update(r_c=r_c, cn=cn)
    else:
        out, hn = module(x, h0)
        loss = (out * r_out).sum() + (hn * r_h).sum()
        inputs = {"x": x, "h0": h0}
    loss.backward()
    arrays.update(inputs)
    arrays.update(r_out=r_out, r_h=r_h, out=out, hn=hn, loss=loss)
    for name, param in module.named_parameters():
        arrays[f"sd/{name}"] = param
        arrays[f"grad/{name}"] = param.grad
    for name, tensor in inputs.items():
        arrays[f"grad/{name}"] = tensor.grad
    result = {k: v.detach().numpy().astype(np.float32) for k, v in arrays.items()}
    result["sizes"] = np.array([BATCH, STEPS, INPUT, HIDDEN, num_layers], np.int32)
    return result


def uniform_draws(seed: int):
    """`rand(*shape)`: float32 tensors uniform in [-1, 1], drawn in call order from one
    generator seeded with `seed`."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen) * 2.0 - 1.0

    return rand


def write_fixtures(make, layers, seed: int, file_name: str, loss_key: str) -> None:
    """Save `make(cell, num_layers, seed)` for every cell of `CELLS` and layer count of
    `layers` (each its own seed) as `fixtures/<file_name>` (`{cell}`, `{layers}`
    filled in), deterministically on one CPU thread."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for index, cell in enumerate(CELLS):
        for num_layers in layers:
            arrays = make(cell, num_layers, seed + 10 * index + num_layers)
            path = OUT_DIR / file_name.format(cell=cell, layers=num_layers)
            np.savez_compressed(path, **arrays)
            print(f"{path.name}: {path.stat().st_size} bytes, "
                  f"loss {float(arrays[loss_key]):.6f} (torch {torch.__version__})")


def main() -> None:
    write_fixtures(make, LAYERS, SEED, "golden_{cell}_{layers}layer.npz", "loss")


if __name__ == "__main__":
    main()
