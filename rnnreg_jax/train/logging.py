"""Run logs: `workdir/metrics.jsonl`, TensorBoard (`workdir/tb`), console.

Only process 0 writes. Each JSON line is one event: `step`, `epoch`, `split`
("train", "valid", "test", "test_mc", ...), the metrics, and `wall_time`.
TensorBoard scalars are written with `tensorboardX` (no TensorFlow needed)
as `<split>/<metric>`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
from absl import logging as absl_logging


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


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


class MetricsLogger:
    """Writes events to metrics.jsonl, TensorBoard and the console."""

    def __init__(self, workdir: str, enabled: bool | None = None, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = None
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
            if tensorboard:
                writer_cls = _summary_writer_class()
                if writer_cls is not None:
                    self._tb = writer_cls(os.path.join(workdir, "tb"))

    def write(self, split: str, step: int, epoch: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "epoch": int(epoch), "split": split,
                  **{k: _clean(float(v)) if isinstance(v, (int, float)) else v
                     for k, v in metrics.items()},
                  "wall_time": time.time()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(float(v)):
                    self._tb.add_scalar(f"{split}/{k}", float(v), int(step))
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


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def progress_line(epoch: int, step: int, total_steps: int, metrics: dict, rate: float,
                  unit: str, eta_s: float) -> str:
    """One console line: position, loss and task metric, lr, throughput, ETA."""
    shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                     if k in ("loss", "ppl", "bpc", "error", "rmse", "lr"))
    return (f"epoch {epoch + 1} step {step}/{total_steps} {shown} "
            f"{rate:,.0f} {unit}/s ETA {format_eta(eta_s)}")


def read_metrics(workdir: str) -> list[dict]:
    """All events of a run's metrics.jsonl (for notebooks and tests)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
