"""The library's observable behaviour, recorded so that a restructuring can show it
changed nothing: outputs, final states, penalties, batch statistics and gradients of
every cell x regularizer pair (through `nn.StackedRNN`, both backward passes) and of a
tiny model of every experiment preset, in float64 with fixed keys.

    XLA_FLAGS="--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false" \
        JAX_DEFAULT_MATMUL_PRECISION=highest \
        python -m tests.behaviour_freeze        # rewrite tests/fixtures/behaviour.npz
        python -m tests.behaviour_freeze CASE..  # re-record those cases, keep the rest

`tests/test_behaviour_freeze.py` recomputes everything and compares with the fixture.
Float64, because two x86-64 CPUs round float32 differently (tests/numerics.py); under
the suite's XLA settings (tests/conftest.py), because XLA's optimization level changes
float64 results at the 1e-7 level (its fast elementwise approximations).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import rnnreg_jax as rj
from rnnreg_jax import nn as rnn_nn

FIXTURE = Path(__file__).parent / "fixtures" / "behaviour.npz"
CELLS = ("lstm", "gru", "rnn", "lstm_ln", "lstm_bn")
LSTM_ONLY = {"cell_mask", "update_output_zoneout", "zoneout_cells", "zoneout_shared",
             "zoneout_sequence", "everything_lstm"}


def regularizers() -> dict[str, rj.Regularizer]:
    """One entry per family and option, plus a few combinations."""
    return {
        "none": rj.NONE,
        "zaremba": rj.zaremba(0.3),
        "variational": rj.variational(input=0.3, recurrent=0.2, output=0.25),
        "variational_per_gate": rj.variational(input=0.3, recurrent=0.2, per_gate=True),
        "naive_per_gate": rj.naive_dropout(input=0.2, recurrent=0.3, per_gate=True),
        "cell_mask": rj.dropout("cell", 0.2, tie="sequence"),
        "update": rj.recurrent_dropout(0.3),
        "update_output_zoneout": rj.recurrent_dropout(0.3, output_zoneout=True,
                                                      eval_scaling=True),
        "zoneout_hiddens": rj.zoneout(hiddens=0.3),
        "zoneout_cells": rj.zoneout(cells=0.4, hiddens=0.2),
        "zoneout_shared": rj.zoneout(cells=0.3, hiddens=0.3, shared=True),
        "zoneout_sequence": rj.zoneout(cells=0.3, hiddens=0.1, tie="sequence"),
        "stochastic_depth": rj.stochastic_depth(0.3),
        "weight_noise": rj.weight_noise(0.1),
        "weight_drop": rj.weight_drop(0.3),
        "hidden_dropout": rj.dropout("hidden", 0.3, tie="sequence") + rj.variational(input=0.2),
        "penalties": (rj.norm_stabilizer(0.5) + rj.activation_regularization(2.0)
                      + rj.temporal_activation_regularization(1.0) + rj.zaremba(0.2)),
        "everything_lstm": (rj.variational(input=0.2, recurrent=0.1, output=0.2, cell=0.1)
                            + rj.recurrent_dropout(0.2, output_zoneout=True)
                            + rj.zoneout(cells=0.2, hiddens=0.1) + rj.stochastic_depth(0.1)
                            + rj.weight_drop(0.2) + rj.weight_noise(0.05)),
    }


def _to64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _flat(prefix: str, tree) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {prefix + jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def stack_record(cell: str, reg: rj.Regularizer, implementation: str) -> dict:
    """A 2-layer stack in training (outputs, carry, penalties, batch statistics and the
    gradients of a fixed projection of all of them) and in evaluation (outputs)."""
    layer = rnn_nn.StackedRNN((5, 4), cell=cell, reg=reg, init_scale=0.3,
                              implementation=implementation)
    x = jax.random.normal(jax.random.key(1), (3, 6, 3), jnp.float64)
    variables = _to64(layer.init(jax.random.key(0), x.astype(jnp.float32)))
    carry = _to64(layer.initial_carry(3))
    carry = jax.tree.map(lambda c: c + 0.1, carry)  # a carried state, not zeros

    def train(params, x):
        (ys, out_carry), aux = layer.apply(
            {**variables, "params": params}, x, carry, deterministic=False,
            rngs={"dropout": jax.random.key(7)}, mutable=["penalties", "batch_stats"])
        penalties = sum(jnp.sum(v) for v in jax.tree.leaves(aux.get("penalties", {})))
        weights = jax.random.normal(jax.random.key(3), ys.shape, ys.dtype)
        loss = jnp.sum(ys * weights) + penalties + sum(
            jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(out_carry))
        return loss, (ys, out_carry, aux)

    @jax.jit
    def both(params, x):  # one compilation per case
        evaluated, _ = layer.apply({**variables, "params": params}, x, carry,
                                   deterministic=True)
        return jax.value_and_grad(train, argnums=(0, 1), has_aux=True)(params, x), evaluated

    ((loss, (ys, out_carry, aux)), (d_params, d_x)), eval_ys = both(variables["params"], x)
    out = {"loss": np.asarray(loss), "ys": np.asarray(ys), "eval_ys": np.asarray(eval_ys),
           "d_x": np.asarray(d_x)}
    out.update(_flat("carry", out_carry))
    out.update(_flat("aux", aux))
    out.update(_flat("d_params", d_params))
    return out


def preset_models() -> dict[str, tuple]:
    """(task, preset) -> (model, inputs) at tiny sizes, as `rnnreg_jax.tasks` builds them
    (float inputs in float64: call it under `jax.enable_x64`)."""
    from experiments.configs import common, pmnist, ptb, sentiment
    from rnnreg_jax.models import LanguageModel, SequenceModel
    from rnnreg_jax.tasks import recurrent_options

    out = {}
    for task, module in (("ptb", ptb), ("pmnist", pmnist), ("sentiment", sentiment)):
        for name, make in module.PRESETS.items():
            config = make()
            m = config.model
            reg = common.regularization(config.reg)
            sizes = (6,) * len(m.hidden_sizes)
            kwargs = recurrent_options(m, reg)
            if task == "ptb":  # the output layer's own inits too, as tasks.language_model
                model = LanguageModel(vocab_size=13, hidden_sizes=sizes, embed_size=6,
                                      tie_embeddings=m.get("tie_embeddings", False),
                                      embed_init_scale=m.get("embed_init_scale"),
                                      softmax_bias_init=m.get("softmax_bias_init", "uniform"),
                                      **kwargs)
                inputs = jax.random.randint(jax.random.key(2), (2, 5), 0, 13)
            elif task == "pmnist":
                model = SequenceModel(num_outputs=10, hidden_sizes=sizes, **kwargs)
                inputs = jax.random.normal(jax.random.key(2), (2, 7, 1), jnp.float64)
            else:
                vocab = 13 if config.data.get("vocab_size") else None
                model = SequenceModel(num_outputs=2, hidden_sizes=sizes, vocab_size=vocab,
                                      embed_size=6, **kwargs,
                                      head_init=m.get("head_init", "lecun_normal"))
                inputs = (jax.random.randint(jax.random.key(2), (2, 5), 0, 13) if vocab
                          else jax.random.normal(jax.random.key(2), (2, 5, 3), jnp.float64))
            out[f"{task}:{name}"] = (model, inputs)
    return out


def model_record(model, inputs) -> dict:
    """Training outputs, penalties and gradients, and evaluation outputs, of one model."""
    float_inputs = jnp.issubdtype(inputs.dtype, jnp.floating)
    variables = _to64(model.init(jax.random.key(0), inputs.astype(jnp.float32)
                                 if float_inputs else inputs))
    rngs = {"dropout": jax.random.key(5)}

    def train(params):
        out, aux = model.apply({**variables, "params": params}, inputs, deterministic=False,
                               rngs=rngs, mutable=["penalties", "batch_stats"])
        logits = out[0] if isinstance(out, tuple) else out
        penalties = sum(jnp.sum(v) for v in jax.tree.leaves(aux.get("penalties", {})))
        return jnp.sum(jnp.tanh(logits)) + penalties, logits

    @jax.jit
    def both(params):  # one compilation per case
        evaluated = model.apply({**variables, "params": params}, inputs, deterministic=True)
        return jax.value_and_grad(train, has_aux=True)(params), evaluated

    ((loss, logits), grads), evaluated = both(variables["params"])
    evaluated = evaluated[0] if isinstance(evaluated, tuple) else evaluated
    out = {"loss": np.asarray(loss), "logits": np.asarray(logits),
           "eval": np.asarray(evaluated)}
    out.update(_flat("d_params", grads))
    return out


def cases() -> list[str]:
    names = []
    for cell in CELLS:
        for reg in regularizers():
            if reg in LSTM_ONLY and cell not in ("lstm", "lstm_ln", "lstm_bn"):
                continue
            names += [f"stack:{cell}:{reg}:fused", f"stack:{cell}:{reg}:autodiff"]
    from experiments.configs import pmnist, ptb, sentiment

    return names + [f"model:{task}:{name}" for task, module in (
        ("ptb", ptb), ("pmnist", pmnist), ("sentiment", sentiment)) for name in module.PRESETS]


def record(case: str) -> dict[str, np.ndarray]:
    kind, rest = case.split(":", 1)
    if kind == "stack":
        cell, reg, implementation = rest.split(":")
        return stack_record(cell, regularizers()[reg], implementation)
    return model_record(*preset_models()[rest])


def record_all(selected: list[str] | None = None) -> dict[str, np.ndarray]:
    out = {}
    with jax.enable_x64(True):
        for case in selected or cases():
            out.update({f"{case}/{k}": v for k, v in record(case).items()})
    return out


if __name__ == "__main__":
    # Named cases replace their own arrays and keep every other case's.
    arrays = {}
    if sys.argv[1:] and FIXTURE.exists():
        with np.load(FIXTURE) as kept:
            arrays = {k: kept[k] for k in kept.files
                      if k.split("/", 1)[0] not in sys.argv[1:]}
    arrays.update(record_all(sys.argv[1:] or None))
    FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(FIXTURE, **arrays)
    print(f"wrote {len(arrays)} arrays to {FIXTURE}")
