"""What to train: a model, its kind, and its data sources.

A data source is any object with

    steps_per_epoch: int                 # batches per epoch (this host)
    iterate(epoch, start_batch=0)        # -> Iterator[dict[str, np.ndarray]]

yielding THIS HOST's share of each global batch (numpy, batch axis first),
deterministic given `(epoch, start_batch)` so that a resumed run sees exactly
the batches an uninterrupted run would. A source whose epochs differ in length
(AWD-LSTM's variable-length windows) also has `steps_in_epoch(epoch) -> int`,
and `steps_per_epoch` is then a nominal count. Batch dicts:

    lm:             {"inputs": int32[B, T], "targets": int32[B, T]}
    classification: {"inputs": [B, T] or [B, T, F], "labels": int32[B]}
    regression:     {"inputs": [B, T] or [B, T, F], "targets": float32[B]}

An optional `"weights"` entry (float32 `[B, T]` for LM, `[B]` otherwise)
masks padded positions out of losses and metrics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

KINDS = ("lm", "classification", "regression")


@runtime_checkable
class DataSource(Protocol):
    """The data-source interface (see the module docstring)."""

    @property
    def steps_per_epoch(self) -> int:  # read only: the sources compute it
        ...

    def iterate(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, np.ndarray]]:
        ...


def _is_source(source) -> bool:
    return callable(getattr(source, "iterate", None)) and hasattr(source, "steps_per_epoch")


def steps_in_epoch(source: DataSource, epoch: int) -> int:
    """The batches of epoch `epoch`: the source's `steps_in_epoch(epoch)` where it has
    one, else `steps_per_epoch`."""
    count = getattr(source, "steps_in_epoch", None)
    return int(count(epoch)) if callable(count) else int(source.steps_per_epoch)


def total_steps(task: Task, config) -> int:
    """The steps a run of `task` makes in all under the train `config` (`num_epochs`,
    capped by `max_steps`)."""
    total = sum(steps_in_epoch(task.train, e) for e in range(config.num_epochs))
    if config.max_steps:
        total = min(total, config.max_steps)
    return total


@dataclasses.dataclass
class Task:
    """A training task.

    Attributes:
      model: a Flax module. LM models are called
        `model.apply(vars, inputs, carry, deterministic=..., rngs=...) -> (logits, carry)`;
        sequence models `model.apply(vars, inputs, deterministic=...) -> [B, num_outputs]`.
        A model with a `batch_stats` collection (`cell="lstm_bn"`) also takes
        `use_running_average=True` (MC evaluation: noise sampled, population
        statistics used).
      kind: "lm", "classification" or "regression".
      train: the training source.
      evals: named evaluation sources; "valid" drives the LR rules and the
        best checkpoint (the first one if there is no "valid").
      carry_state: LM only: carry the hidden state from window to window
        (gradient stopped), reset at each epoch start and each eval pass.
      eval_carry_state: LM only: carry the state across the windows of an
        evaluation pass; None: as `carry_state`. True with `carry_state=False`
        trains on windows that start from zero but evaluates the streams as the
        zoneout authors' code does, without a cold start every T tokens.
      target_scale: regression only: RMSE is reported on the original scale,
        `rmse_normalized * target_scale`.
      test_protocol: PTB test protocol. `True`: the "test" source yields
        `[1, T]` windows and is evaluated once at the end with batch 1 and
        carried state, deterministically and (if `config.mc_samples`) with MC
        dropout. A callable `f(params, evaluator) -> dict[str, float]` runs a
        custom protocol instead (see `rnnreg_jax.train.evaluator.Evaluator`).
    """

    model: Any
    kind: str
    train: DataSource
    evals: Mapping[str, DataSource] = dataclasses.field(default_factory=dict)
    carry_state: bool = False
    target_scale: float = 1.0
    test_protocol: bool | Callable[..., dict[str, float]] = False
    eval_carry_state: bool | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Task.kind must be one of {KINDS}, got {self.kind!r}.")
        if (self.carry_state or self.eval_carry_state) and self.kind != "lm":
            raise ValueError("carry_state and eval_carry_state apply to language models "
                             "(kind='lm') only: a classifier's sequences are independent.")
        # A source is duck-typed (the module docstring); one without `iterate` failed at
        # the first batch with an AttributeError, a list of evals at its first name.
        if not _is_source(self.train):
            raise ValueError(f"Task.train must be a data source (with iterate(epoch, "
                             f"start_batch) and steps_per_epoch), got {self.train!r}.")
        if not isinstance(self.evals, Mapping):
            raise ValueError(f"Task.evals must map split names to data sources, got "
                             f"{type(self.evals).__name__}.")
        for name, source in self.evals.items():  # (the count is optional here: progress)
            if not callable(getattr(source, "iterate", None)):
                raise ValueError(f"Task.evals[{name!r}] must be a data source (with "
                                 f"iterate(epoch, start_batch)), got {source!r}.")
        if self.test_protocol is True and "test" not in self.evals:  # was skipped quietly
            raise ValueError("Task.test_protocol=True evaluates the 'test' source, and "
                             f"Task.evals has none (it has {sorted(self.evals)}).")

    @property
    def evaluation_carries_state(self) -> bool:
        """Whether evaluation passes carry the LM state from window to window."""
        if self.eval_carry_state is None:
            return self.kind == "lm" and self.carry_state
        return self.kind == "lm" and self.eval_carry_state

    @property
    def validation_split(self) -> str | None:
        """The split whose metric drives LR rules and the best checkpoint."""
        if "valid" in self.evals:
            return "valid"
        return next(iter(self.evals), None)


def first_training_batch(task: Task) -> dict:
    """The first batch of epoch 0, or a one-sentence ValueError where the training source
    yields none (a bare StopIteration), or an evaluation source none (a TypeError after
    the first epoch's training, which was lost with it)."""
    sample = next(iter(task.train.iterate(0)), None)
    if sample is None:
        raise ValueError("The training source yields no batch (epoch 0).")
    for name, source in task.evals.items():
        if next(iter(source.iterate(0)), None) is None:
            raise ValueError(f"The evaluation source {name!r} yields no batch.")
    return sample


def check_shared_eval_batches(task: Task, num_devices: int) -> None:
    """With several processes, an evaluation source whose processes each hold a share of
    the batch (its `global_batch_size` above its `local_batch_size`) must divide over the
    devices: `mesh.global_batch` replicates a batch that does not, taking one process's
    share for the whole batch, and every metric of that split came out silently wrong.
    A source every process reads whole (the batch-1 test streams) is replicated rightly."""
    import jax

    if jax.process_count() == 1:
        return
    for name, source in task.evals.items():
        whole = getattr(source, "global_batch_size", None)
        share = getattr(source, "local_batch_size", None)
        if whole is not None and share is not None and whole != share and whole % num_devices:
            raise ValueError(f"The evaluation source {name!r}'s global batch ({whole}, "
                             f"{share} rows a process) must divide over the {num_devices} "
                             "devices of the data mesh (a batch that cannot is replicated, "
                             "which needs every process to read it whole).")


def check_divides(batch: dict, num_devices: int, what: str) -> None:
    """The train step shards the global batch (every process's rows) over the data
    mesh's devices: a one-sentence ValueError where they do not divide (`what` names the
    batch; a smaller last batch failed part-way through an epoch in the sharding)."""
    import jax

    global_b = batch["inputs"].shape[0] * jax.process_count()
    if global_b % num_devices:
        raise ValueError(f"{what} ({global_b}) must divide over the {num_devices} devices "
                         "of the data mesh.")
