"""Tiny deterministic data sources and models for the training-engine tests, and the
experiment binaries' flags set for a run in the test process."""

from __future__ import annotations

import contextlib
import os

import numpy as np

from rnnreg_jax import models, regularizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# XLA:CPU aborts a run whose devices do not all reach a collective within 40 s, which a
# loaded 2-core machine can exceed (seen once, in a 368-step evaluation with 4 devices).
PATIENT = "--xla_cpu_collective_call_terminate_timeout_seconds=300"


def host_devices_env(devices: int) -> dict:
    """The environment of a subprocess on `devices` CPU devices, with this repository on
    its path and XLA patient with collectives (`PATIENT`)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (f"{env.get('XLA_FLAGS', '')} {PATIENT} "
                        f"--xla_force_host_platform_device_count={devices}")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


class LMSource:
    """B contiguous streams of a learnable token sequence, windows of T tokens.

    The stream is a noisy cycle (token t+1 = token t + 1 mod V most of the
    time), so a small LSTM's loss falls quickly. Every epoch sees the same
    windows, like PTB. `process_index/process_count` give a host its rows.
    """

    def __init__(self, vocab=12, batch=8, steps=5, num_windows=6, seed=0,
                 process_index=0, process_count=1):
        self.vocab, self.batch, self.steps = vocab, batch, steps
        self.steps_per_epoch = num_windows
        rng = np.random.default_rng(seed)
        n = batch * (num_windows * steps + 1)
        tokens = np.zeros(n, np.int32)
        for i in range(1, n):
            jump = rng.random() < 0.1
            tokens[i] = rng.integers(vocab) if jump else (tokens[i - 1] + 1) % vocab
        self.data = tokens.reshape(batch, -1)
        rows = batch // process_count
        self.rows = slice(process_index * rows, (process_index + 1) * rows)

    def iterate(self, epoch, start_batch=0):
        del epoch
        for w in range(start_batch, self.steps_per_epoch):
            s = w * self.steps
            yield {"inputs": self.data[self.rows, s:s + self.steps],
                   "targets": self.data[self.rows, s + 1:s + self.steps + 1]}


class SeqSource:
    """Float sequences `[B, T, F]`; label = sign of the mean of feature 0,
    regression target = that mean (scaled). `nan_at` poisons one batch."""

    def __init__(self, kind="classification", batch=8, steps=6, features=3, num_batches=5,
                 seed=0, nan_at=None):
        self.kind, self.steps_per_epoch, self.nan_at = kind, num_batches, nan_at
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(num_batches, batch, steps, features)).astype(np.float32)
        mean = self.x[..., 0].mean(-1)
        self.labels = (mean > 0).astype(np.int32)
        self.targets = (2.0 * mean).astype(np.float32)

    def iterate(self, epoch, start_batch=0):
        for b in range(start_batch, self.steps_per_epoch):
            x = self.x[b]
            if self.nan_at is not None and epoch * self.steps_per_epoch + b >= self.nan_at:
                x = np.full_like(x, np.nan)
            out = {"inputs": x}
            if self.kind == "classification":
                out["labels"] = self.labels[b]
            else:
                out["targets"] = self.targets[b]
            yield out


def tiny_lm(vocab=12, hidden=16, reg=None, layers=1):
    reg = regularizers.NONE if reg is None else reg
    return models.LanguageModel(vocab_size=vocab, hidden_sizes=(hidden,) * layers, reg=reg)


def tiny_seq(num_outputs=2, hidden=8, reg=None):
    reg = regularizers.NONE if reg is None else reg
    return models.SequenceModel(num_outputs=num_outputs, hidden_sizes=(hidden,), reg=reg)


def enable_compilation_cache() -> str:
    """Persistent XLA cache shared by the tests and their subprocesses
    (compiles dominate these tests' time on a small CPU)."""
    import os

    import jax
    path = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/rnnreg_jax_test_xla_cache")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


# The experiment binaries' own flags a test may set (`binary_argv` puts them back).
BINARY_FLAGS = ("workdir", "data_dir", "coordinator_address", "num_processes", "process_id")


@contextlib.contextmanager
def binary_argv(*argv: str):
    """`argv` parsed as the experiment binaries' flags (for `experiments.main.run`
    in-process), then restored: to their earlier values if the flags were parsed before,
    else unparsed."""
    from experiments import cli

    was_parsed = cli.FLAGS.is_parsed()
    saved = {k: cli.FLAGS[k].value for k in BINARY_FLAGS} if was_parsed else None
    cli.FLAGS(["test", *argv])
    try:
        yield
    finally:
        if saved is not None:
            for k, v in saved.items():
                cli.FLAGS[k].value = v
        else:
            cli.FLAGS.unparse_flags()


def binary_flags(workdir, data_dir):
    """`binary_argv` of `--workdir` and `--data_dir`."""
    return binary_argv(f"--workdir={workdir}", f"--data_dir={data_dir}")


def run_tiny_ptb(workdir, data_dir, hidden_sizes=None, **train) -> dict:
    """The ptb binary's `tiny` preset run in-process at batch 2, without MC dropout or
    TensorBoard, with these `train` fields (and `hidden_sizes`): its final metrics."""
    from experiments.configs import ptb as ptb_configs
    from experiments.main import run

    config = ptb_configs.tiny()
    with config.unlocked():
        config.preset = "tiny"
        config.data.batch_size = config.data.eval_batch_size = 2
        if hidden_sizes is not None:
            config.model.hidden_sizes = hidden_sizes
        config.train.update(mc_samples=0, tensorboard=False, **train)
    with binary_flags(workdir, data_dir):
        return run("ptb", config)
