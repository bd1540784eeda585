"""The training steps' metrics on their way to the logs: held on the device as the steps
return them and fetched together at log steps and before a save (no wait on the device
per step), then checked for a non-finite loss, summarized with the throughput since the
last fetch, written as a `train` event and shown as a progress line."""

from __future__ import annotations

import math
import time

import jax

from rnnreg_jax.train import losses
from rnnreg_jax.train.logging import MetricsLogger, progress_line
from rnnreg_jax.train.task import Task


class StepMetrics:
    """The pending metrics of the steps since the last fetch.

    Args:
      task: the run's task (its kind names the metrics and the throughput's unit).
      logger: the run's logger.
      total_steps: the steps of the whole run, for the progress line's ETA.
      step: the step the run starts at.

    `last`: the summary most recently logged (the final metrics' `train/...` values); a
    resumed run's starts as the last one its log holds up to `step` (`last_logged`).
    """

    def __init__(self, task: Task, logger: MetricsLogger, total_steps: int, step: int):
        self.task, self.logger, self.total_steps = task, logger, total_steps
        self.pending: list = []
        self.last: dict = {}
        self.t_last, self.step_last = time.time(), step

    @staticmethod
    def last_logged(events: list[dict], step: int) -> dict:
        """The metrics of the last training log in `events` at or before `step`: what a
        run resumed there reports as its last one until it logs again (killed during the
        final evaluation, it runs no step before reporting)."""
        last: dict = {}
        for e in events:
            if (e.get("split") == "train" and "error_message" not in e
                    and int(e.get("step", step + 1)) <= step):
                last = {k: v for k, v in e.items()
                        if k not in ("step", "epoch", "split", "wall_time")}
        return last

    def add(self, metrics) -> None:
        """A step's metrics, as its jitted step returned them (not fetched)."""
        self.pending.append(metrics)

    def flush(self, step: int, epoch: int, lr: float) -> tuple[float, int] | None:
        """Fetch the pending metrics (the last of them step `step`'s) and log them; the
        first non-finite loss instead, as (value, its step), with nothing logged."""
        if not self.pending:
            return None
        fetched = jax.device_get(self.pending)
        self.pending = []
        first_step = step - len(fetched) + 1
        for i, m in enumerate(fetched):
            value = float(m["objective"])
            if not math.isfinite(value):
                return value, first_step + i
        metrics = losses.summarize_steps(self.task.kind, fetched, self.task.target_scale)
        metrics["lr"] = lr
        now = time.time()
        dt = max(now - self.t_last, 1e-9)
        unit = "tokens" if self.task.kind == "lm" else "examples"
        rate = metrics.pop("count") / dt
        steps_per_s = (step - self.step_last) / dt
        metrics[f"{unit}_per_sec"] = rate
        metrics["steps_per_sec"] = steps_per_s
        self.t_last, self.step_last = now, step
        self.last = metrics
        self.logger.write("train", step, epoch, metrics)
        eta = (self.total_steps - step) / steps_per_s if steps_per_s > 0 else math.inf
        self.logger.console(progress_line(epoch, step, self.total_steps, metrics,
                                          rate, unit, eta))
        return None
