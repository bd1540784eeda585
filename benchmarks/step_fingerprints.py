"""Fingerprints of training steps for `experiments.bench`'s workloads and regularizers:
a sha256 of each step's lowered program (StableHLO, before any backend's compiler) and
of its optimized XLA program on this machine, source locations and metadata stripped.

A restructuring that leaves every fingerprint unchanged leaves the steps' speed
unchanged by construction (the same program runs), which timing two builds on a
shared machine can only approximate; the same lowered program means the same on any
backend. The steps are built from the public API alone
(the same model, loss and SGD step as `experiments.bench_models`), so this file runs
against any commit:

    python -m benchmarks.step_fingerprints > after.txt     # and at the other commit
    diff before.txt after.txt
"""

from __future__ import annotations

import hashlib
import re

import jax
import jax.numpy as jnp
import optax

import rnnreg_jax as rj
from experiments import bench_models as bm
from rnnreg_jax.models import LanguageModel, SequenceModel

REGULARIZERS = {
    "none": lambda: rj.NONE,
    "zaremba": lambda: rj.zaremba(0.5),
    "variational_per_gate": lambda: rj.variational(input=0.35, recurrent=0.2, output=0.35,
                                                   embedding=0.2, per_gate=True),
    "variational": lambda: rj.variational(input=0.35, recurrent=0.2, output=0.35,
                                          embedding=0.2),
    "zoneout": lambda: rj.zoneout(cells=0.5, hiddens=0.05),
    "recurrent_dropout": lambda: rj.recurrent_dropout(0.25, output_zoneout=True),
    "weight_drop_noise": lambda: rj.weight_drop(0.5) + rj.weight_noise(0.05),
}
IMPLEMENTATIONS = ("fused", "autodiff")


def lowered_step(spec: dict, reg, implementation: str):
    """`experiments.bench`'s training step for `spec`, lowered (before any backend's
    compiler: the same program goes to XLA on a CPU, a GPU or a TPU)."""
    lm = spec["kind"] == "lm"
    sizes = (spec["hidden"],) * spec["layers"]
    model: LanguageModel | SequenceModel
    if lm:
        model = LanguageModel(vocab_size=spec["vocab"], hidden_sizes=sizes, reg=reg,
                              init_scale=0.05, implementation=implementation)
    else:  # pixels: no word types for the contenders' embedding dropout to drop
        model = SequenceModel(num_outputs=spec["classes"], hidden_sizes=sizes,
                              reg=rj.regularizers.without(reg, rj.regularizers.EmbeddingDropout),
                              init_scale=0.05, implementation=implementation)
    x, y = (jnp.asarray(a) for a in bm._data(spec))  # noqa: SLF001 -- the bench's own data
    params = model.init(jax.random.key(0), x)["params"]
    tx = optax.sgd(0.1)

    def loss_fn(p, key):
        out = model.apply({"params": p}, x, deterministic=False, rngs={"dropout": key})
        logits = out[0] if lm else out
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(p, s, key):
        key, sub = jax.random.split(key)
        grads = jax.grad(loss_fn)(p, sub)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, key

    return jax.jit(step).lower(params, tx.init(params), jax.random.key(1))


_SOURCE_TABLES = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")


def lowered_fingerprint(lowered) -> str:
    """sha256 of the lowered StableHLO without source locations."""
    text = "\n".join(line for line in lowered.as_text().splitlines()
                     if not line.lstrip().startswith("#loc"))
    text = re.sub(r" loc\([^)]*\)", "", text)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(compiled) -> str:
    """sha256 of the optimized HLO without what names the Python source: each op's
    metadata and stack frame, and the module's tables of files, functions and lines."""
    text = re.sub(r", metadata=\{[^}]*\}|, stack_frame_id=\d+", "", compiled.as_text())
    lines = [line for line in text.splitlines()
             if line.strip() not in _SOURCE_TABLES and not re.match(r"\d+ ", line)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def main() -> None:
    for workload in ("ptb_small", "zoneout_word", "pmnist"):
        spec = dict(bm.WORKLOADS[workload])
        if workload == "pmnist":
            spec["steps"] = 28  # the same program as 784 steps but for the scan's length
        for name, make in REGULARIZERS.items():
            for implementation in IMPLEMENTATIONS:
                lowered = lowered_step(spec, make(), implementation)
                print(f"{workload:13} {name:21} {implementation:9} "
                      f"{lowered_fingerprint(lowered)} {fingerprint(lowered.compile())}",
                      flush=True)


if __name__ == "__main__":
    main()
