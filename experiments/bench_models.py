"""The contenders of `experiments.bench`: one training step each, same sizes.

`build(contender, workload)` returns a zero-argument function that runs one
synchronous training step (forward, backward, SGD update) on fixed random
data of the workload's shape.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnreg_jax import precision
from rnnreg_jax.models import LanguageModel, SequenceModel
from rnnreg_jax.regularizers import EmbeddingDropout, without

WORKLOADS = {
    # PTB small / medium (Zaremba), zoneout word level, pMNIST (zoneout paper).
    "ptb_small": dict(kind="lm", vocab=10000, hidden=200, layers=2, batch=20, steps=20),
    "ptb_medium": dict(kind="lm", vocab=10000, hidden=650, layers=2, batch=20, steps=35),
    "zoneout_word": dict(kind="lm", vocab=10000, hidden=256, layers=1, batch=32, steps=35),
    "pmnist": dict(kind="seq", classes=10, features=1, hidden=100, layers=1, batch=100,
                   steps=784),
}


def flops_per_step(spec: dict) -> float:
    """Matmul FLOPs of one training step (forward x 3 for forward + backward).

    Per token and layer `2 (F + H) 4H` for the input and recurrent products,
    plus the output layer (`2 H V` per token for a language model, `2 H C` per
    sequence for a classifier); elementwise work is not counted, so a
    contender's FLOP rate over this count is a lower bound of its matmul rate.
    """
    h, layers, b, t = spec["hidden"], spec["layers"], spec["batch"], spec["steps"]
    first_in = h if spec["kind"] == "lm" else spec["features"]
    lstm = sum(2 * (first_in if i == 0 else h) * 4 * h + 2 * h * 4 * h
               for i in range(layers)) * b * t
    head = 2 * h * spec["vocab"] * b * t if spec["kind"] == "lm" else 2 * h * spec["classes"] * b
    return 3.0 * (lstm + head)


def _regs():
    import rnnreg_jax as rj

    return {
        "ours_none": rj.NONE,
        "ours_none_fused": rj.NONE,
        "ours_none_autodiff": rj.NONE,
        "ours_none_bf16": rj.NONE,
        "ours_zaremba": rj.zaremba(0.5),
        "ours_variational": rj.variational(input=0.35, recurrent=0.2, output=0.35,
                                           embedding=0.2, per_gate=True),
        "ours_variational_shared": rj.variational(input=0.35, recurrent=0.2, output=0.35,
                                                  embedding=0.2),
        "ours_zoneout": rj.zoneout(cells=0.5, hiddens=0.05),
    }


# ours_* run the models' default implementation ("auto"); the two ours_none_*
# variants force one of the two backward passes it chooses between; ours_none_bf16 is
# ours_none in mixed precision (bfloat16 compute, float32 parameters and state).
CONTENDERS = ("ours_none", "ours_none_fused", "ours_none_autodiff", "ours_none_bf16",
              "ours_zaremba", "ours_variational", "ours_variational_shared", "ours_zoneout",
              "flax", "torch_lstm", "torch_cell_variational")


def torch_version() -> str | None:
    try:
        import torch
    except (ImportError, OSError):  # absent, or a broken install
        return None
    return torch.__version__


def torch_device() -> str:
    """Where the PyTorch peers run: on the GPU when JAX runs on one and torch sees
    CUDA, else on the CPU (peers on different devices measure nothing useful). On the
    GPU this also sets PyTorch's float32 matmul precision to TF32, JAX's default."""
    import torch

    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        # JAX computes float32 dots in TF32 on recent GPUs by default, as cuDNN's LSTM
        # does; PyTorch's other matmuls default to full float32: same numerics for all
        torch.set_float32_matmul_precision("high")
        return "cuda"
    return "cpu"


def applies(contender: str, spec: dict) -> bool:
    """Whether a contender can run here (PyTorch ones need torch installed)."""
    del spec
    return not contender.startswith("torch") or torch_version() is not None


def _data(spec: dict, seed: int = 0):
    rng = np.random.RandomState(seed)
    b, t = spec["batch"], spec["steps"]
    if spec["kind"] == "lm":
        x = rng.randint(0, spec["vocab"], (b, t)).astype(np.int32)
        y = rng.randint(0, spec["vocab"], (b, t)).astype(np.int32)
    else:
        x = rng.rand(b, t, spec["features"]).astype(np.float32)
        y = rng.randint(0, spec["classes"], (b,)).astype(np.int32)
    return x, y


def build(contender: str, spec: dict) -> Callable[[], None]:
    if contender.startswith("ours"):
        impl = contender.rsplit("_", 1)[1]
        impl = impl if impl in ("fused", "autodiff") else "auto"
        dtype = jnp.bfloat16 if contender.endswith("_bf16") else None
        return _jax_step(spec, _regs()[contender], flax_peer=False, implementation=impl,
                         dtype=dtype)
    if contender == "flax":
        return _jax_step(spec, None, flax_peer=True)
    if contender == "torch_lstm":
        return _torch_step(spec, variational_cell=False)
    if contender == "torch_cell_variational":
        return _torch_step(spec, variational_cell=True)
    raise ValueError(f"Unknown contender {contender!r}; choose from {CONTENDERS}.")


def _jax_step(spec: dict, reg, flax_peer: bool, implementation: str = "auto",
              dtype=None) -> Callable[[], None]:
    lm = spec["kind"] == "lm"
    sizes = (spec["hidden"],) * spec["layers"]
    model: nn.Module
    if flax_peer:
        model = FlaxPeer(sizes, spec["vocab"] if lm else None,
                         spec["vocab"] if lm else spec["classes"])
    elif lm:
        model = LanguageModel(vocab_size=spec["vocab"], hidden_sizes=sizes, reg=reg,
                              init_scale=0.05, implementation=implementation, dtype=dtype)
    else:  # pixels: no word types for the contenders' embedding dropout to drop
        model = SequenceModel(num_outputs=spec["classes"], hidden_sizes=sizes,
                              reg=without(reg, EmbeddingDropout), init_scale=0.05,
                              implementation=implementation, dtype=dtype)
    x, y = (jnp.asarray(a) for a in _data(spec))
    params = model.init(jax.random.key(0), x)["params"]
    tx = optax.sgd(0.1)
    opt_state = tx.init(params)

    def loss_fn(p, key):
        out = model.apply({"params": p}, x, deterministic=False, rngs={"dropout": key})
        logits = out[0] if lm and not flax_peer else out
        logits = precision.cast(logits, jnp.float32)  # bfloat16: the logsumexp in float32
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, s, key):
        key, sub = jax.random.split(key)
        grads = jax.grad(loss_fn)(p, sub)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, key

    step = jax.jit(step, donate_argnums=(0, 1))
    state = [params, opt_state, jax.random.key(1)]

    def run():
        state[:] = step(*state)
        jax.block_until_ready(state[0])

    return run


class FlaxPeer(nn.Module):
    """Flax's own stack: nn.RNN(nn.OptimizedLSTMCell) layers, same sizes."""

    hidden_sizes: tuple
    vocab: int | None
    outputs: int

    @nn.compact
    def __call__(self, x, deterministic=True):
        del deterministic
        if self.vocab is not None:
            x = nn.Embed(self.vocab, self.hidden_sizes[0])(x)
        for h in self.hidden_sizes:
            x = nn.RNN(nn.OptimizedLSTMCell(h))(x)
        if self.vocab is None:
            x = x[:, -1]
        return nn.Dense(self.outputs)(x)


def _torch_step(spec: dict, variational_cell: bool) -> Callable[[], None]:
    import torch
    from torch import nn

    torch.manual_seed(0)
    device = torch_device()
    lm = spec["kind"] == "lm"
    h, layers = spec["hidden"], spec["layers"]
    x_np, y_np = _data(spec)
    x, y = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).long().to(device)
    if lm:
        x = x.long()
    in_size = h if lm else spec["features"]
    embed = nn.Embedding(spec["vocab"], h) if lm else None
    head = nn.Linear(h, spec["vocab"] if lm else spec["classes"])
    if variational_cell:
        rnn_cells = nn.ModuleList(nn.LSTMCell(in_size if i == 0 else h, h) for i in range(layers))
        modules = [rnn_cells, head] + ([embed] if embed is not None else [])
    else:
        lstm = nn.LSTM(in_size, h, num_layers=layers, batch_first=True)
        modules = [lstm, head] + ([embed] if embed is not None else [])
    for m in modules:
        m.to(device)
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    b, t = spec["batch"], spec["steps"]

    def forward():
        inp = embed(x) if lm else x
        if not variational_cell:
            out, _ = lstm(inp)
        else:
            # Gal's variational LSTM the way PyTorch users write it: LSTMCell
            # unrolled in Python, one mask per sequence on x and h of each layer.
            for cell in rnn_cells:
                f = inp.shape[-1]
                mx = torch.bernoulli(torch.full((b, f), 0.65, device=device)) / 0.65
                mh = torch.bernoulli(torch.full((b, h), 0.8, device=device)) / 0.8
                hs, state = [], (torch.zeros(b, h, device=device),
                                 torch.zeros(b, h, device=device))
                for step in range(t):
                    state = cell(inp[:, step] * mx, (state[0] * mh, state[1]))
                    hs.append(state[0])
                inp = torch.stack(hs, 1)
            out = inp
        if lm:
            return head(out).reshape(b * t, -1), y.reshape(-1)
        return head(out[:, -1]), y

    def run():
        opt.zero_grad(set_to_none=True)
        logits, target = forward()
        loss_fn(logits, target).backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()  # the step is timed to its end, as jax's

    return run
