"""Run logs: `workdir/metrics.jsonl`, TensorBoard (`workdir/tb`), console.

Only process 0 writes. Each JSON line is one event: `step`, `epoch`, `split`
("train", "valid", "test", "test_mc", ...), the metrics, and `wall_time`.
TensorBoard scalars are written with `tensorboardX` (no TensorFlow needed)
as `<split>/<metric>`.

A workdir may be a URL (`gs://bucket/run`, through `etils.epath`): object
stores cannot append, so metrics.jsonl is then rewritten whole at each event
(it stays small: one line per log step).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import TextIO

import jax
import numpy as np
from absl import logging as absl_logging
from etils import epath


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


def _json_value(value):
    """A metric as JSON holds it: integers stay integers (a step count logged as 82.0
    read as a float), booleans booleans, other numbers floats (NaN/inf as strings)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer) or (
            isinstance(value, np.ndarray | jax.Array) and value.ndim == 0
            and np.issubdtype(value.dtype, np.integer)):
        return int(value)
    return _clean(float(value)) if _is_number(value) else value


def _is_number(value) -> bool:
    """A real number, Python's or a numpy or JAX scalar (a user's metric as np.float32
    failed json.dumps after the whole training)."""
    return isinstance(value, (int, float, np.number)) or (
        isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0
        and np.issubdtype(value.dtype, np.number))


def is_remote(path: str) -> bool:
    """Whether `path` is a URL such as gs://... rather than a local path."""
    return "://" in str(path)


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without PyTorch.

    tensorboardX imports torch only for `isinstance` checks; a broken or slow
    torch install must not break (or slow down) our logs, so torch is masked
    during the import unless it is already loaded.
    """
    masked = "torch" not in sys.modules
    if masked:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    except Exception as err:  # noqa: BLE001
        absl_logging.warning("TensorBoard logs disabled: tensorboardX failed to import (%s).", err)
        return None
    finally:
        if masked:
            del sys.modules["torch"]


class ScalarEvents:
    """TensorBoard scalars of one run, written to their event file in the calling thread.

    tensorboardX's SummaryWriter hands events to a worker thread through a queue, and
    its `flush()` does not wait for the queue: a run killed after a log step lost that
    step's points (the last one before a kill never reached TensorBoard, though
    metrics.jsonl had it). Writing the record here and flushing it makes each log step
    durable where metrics.jsonl's is. Built on tensorboardX's own event file writer
    (local paths and the URLs it opens); None from `open` where tensorboardX is missing.
    """

    def __init__(self, writer, event_pb2, scalar):
        self._writer, self._event_pb2, self._scalar = writer, event_pb2, scalar

    @classmethod
    def open(cls, logdir: str) -> ScalarEvents | None:
        if _summary_writer_class() is None:  # tensorboardX missing or broken: warned
            return None
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto import event_pb2
        from tensorboardX.record_writer import directory_check
        from tensorboardX.summary import scalar

        directory_check(logdir)
        return cls(EventsWriter(os.path.join(logdir, "events")), event_pb2, scalar)

    def add(self, tag: str, value: float, step: int) -> None:
        event = self._event_pb2.Event(wall_time=time.time(), step=step,
                                      summary=self._scalar(tag, value))
        self._writer.write_event(event)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MetricsLogger:
    """Writes events to metrics.jsonl, TensorBoard and the console."""

    def __init__(self, workdir: str, enabled: bool | None = None, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = epath.Path(workdir) / "metrics.jsonl"
        self.remote = is_remote(workdir)
        self._file: TextIO | None = None
        self._lines: list[str] = []
        self._tb: ScalarEvents | None = None
        if self.enabled:
            epath.Path(workdir).mkdir(parents=True, exist_ok=True)
            if self.remote:
                self._lines = self.path.read_text().splitlines(True) if self.path.exists() else []
                if self._lines and not self._lines[-1].endswith("\n"):
                    self._lines[-1] += "\n"
            else:
                self._file = open(self.path, "a", encoding="utf-8")
                if not _ends_a_line(self.path):
                    self._file.write("\n")  # a torn last event stays alone on its line
            if tensorboard:
                try:
                    self._tb = ScalarEvents.open(str(epath.Path(workdir) / "tb"))
                except Exception as err:  # noqa: BLE001 - e.g. no GCS support installed
                    absl_logging.warning("TensorBoard logs disabled for %s: %s", workdir, err)

    def write(self, split: str, step: int, epoch: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "epoch": int(epoch), "split": split,
                  **{k: _json_value(v) for k, v in metrics.items()},
                  "wall_time": time.time()}
        line = json.dumps(record) + "\n"
        if self.remote:
            self._lines.append(line)
            self.path.write_text("".join(self._lines))
        else:
            assert self._file is not None, "MetricsLogger.write after close()"  # local: opened
            self._file.write(line)
            self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if _is_number(v) and math.isfinite(float(v)):
                    self._tb.add(f"{split}/{k}", float(v), int(step))
            self._tb.flush()

    def console(self, message: str) -> None:
        if self.enabled:
            absl_logging.info(message)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def write_hparams(workdir: str, hparams: dict, metrics: list[str]) -> bool:
    """Record a run's settings in TensorBoard's HParams view (`workdir/tb`).

    `hparams`: flat name -> bool, int, float or str (other values are written as
    strings); `metrics`: the scalar tags (e.g. "valid/ppl") HParams shows beside them.
    Written once, by process 0; False when TensorBoard logs are unavailable.
    """
    if jax.process_index() != 0:
        return False
    writer_cls = _summary_writer_class()
    if writer_cls is None:
        return False
    from tensorboardX.summary import hparams as hparams_summaries

    values = {k: v if isinstance(v, bool | int | float | str) else str(v)
              for k, v in hparams.items()}
    try:
        # Its own file: event file names are second-resolution, and the metrics
        # writer opened in the same second would otherwise replace this one.
        writer = writer_cls(str(epath.Path(workdir) / "tb"), filename_suffix=".hparams")
    except Exception as err:  # noqa: BLE001 - e.g. no GCS support installed
        absl_logging.warning("TensorBoard hparams not written for %s: %s", workdir, err)
        return False
    try:
        for summary in hparams_summaries(values, {m: 0.0 for m in metrics}):
            writer.file_writer.add_summary(summary)
    finally:
        writer.close()
    return True


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class PassProgress:
    """Console lines during one long evaluation pass: at most one every `every_s` seconds,
    the batches done of the pass's `total` (None: unknown) and an ETA, so a final MC
    evaluation of many minutes is not silent. A pass shorter than `every_s` says nothing.
    `sync`, where given, is blocked on before a line, so the count is of finished work
    rather than of dispatched work."""

    def __init__(self, report, what: str, total: int | None, every_s: float = 60.0):
        self.report, self.what, self.total, self.every_s = report, what, total, every_s
        self.start = self.last = time.monotonic()

    def __call__(self, done: int, sync=None) -> None:
        if time.monotonic() - self.last < self.every_s:
            return
        if sync is not None:
            jax.block_until_ready(sync)
        now = time.monotonic()
        self.last, elapsed = now, now - self.start
        where = f"{done}/{self.total}" if self.total else str(done)
        eta = (f", ETA {format_eta(elapsed * (self.total - done) / done)}"
               if self.total and done else "")
        self.report(f"{self.what}: {where} batches in {format_eta(elapsed)}{eta}")


def progress_line(epoch: int, step: int, total_steps: int, metrics: dict, rate: float,
                  unit: str, eta_s: float) -> str:
    """One console line: position, loss and task metric, lr, throughput, ETA."""
    shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                     if k in ("loss", "ppl", "bpc", "error", "rmse", "lr"))
    return (f"epoch {epoch + 1} step {step}/{total_steps} {shown} "
            f"{rate:,.0f} {unit}/s ETA {format_eta(eta_s)}")


def _ends_a_line(path: epath.Path) -> bool:
    """Whether the local file is empty or ends with a newline."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read_metrics(workdir: str) -> list[dict]:
    """All events of a run's metrics.jsonl, less any line a killed run left torn (the
    loop reads them on resume: NT-ASGD's history, the final passes already run)."""
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:  # torn, or empty
            continue
    return events
