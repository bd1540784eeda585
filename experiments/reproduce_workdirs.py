"""What a run's workdir says, as `experiments.reproduce` reads it while it plans, runs
and bundles a batch: its newest checkpoint's step, its training events and their pace,
the final passes it has recorded and the tail of its console.log."""

from __future__ import annotations

import itertools
from pathlib import Path

from experiments import reproduce_plan as plan_lib

CONSOLE_LINES = 5  # the lines of a failed run's console.log the driver repeats


def console_tail(workdir: Path, lines: int = CONSOLE_LINES) -> list[str]:
    """The last `lines` non-empty lines of a run's console.log (its stderr): why it failed."""
    try:
        text = (workdir / "console.log").read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def done_steps(workdir: Path) -> int:
    steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps, default=0)


def read_events(workdir: Path) -> list[dict]:
    from rnnreg_jax.train.logging import read_metrics  # skips a line being written

    return read_metrics(str(workdir))


def train_events(workdir: Path) -> list[dict]:
    return [e for e in read_events(workdir)
            if e.get("split") == "train" and "wall_time" in e and "phase" not in e]


def recorded_passes(events: list[dict], work: plan_lib.Work, done: int) -> set[str]:
    """The final passes a run that finished training has recorded (in its metrics.jsonl
    `events`) for its last step with today's settings: the engine runs only the others
    (docs/TRAINING.md, Evaluation)."""
    from rnnreg_jax.train.evaluation import recorded_passes as recorded

    if done < work.total_steps:
        return set()
    return set(recorded(events, list(work.final_passes), done))


def validation_pending(events: list[dict], done: int) -> bool:
    """Whether the checkpoint of step `done` ends an epoch saved before its validation
    (SIGTERM in it; a `stopped` event among `events` says so): every resume from it
    validates that epoch first."""
    return any(e.get("split") == "stopped" and e.get("step") == done
               and e.get("during") == "validation" for e in events)


def measured_step_s(workdir: Path) -> float | None:
    """Median seconds per step between consecutive training events (epoch-end
    evaluations fall in at most a few intervals; the median skips them)."""
    events = train_events(workdir)
    rates = sorted((b["wall_time"] - a["wall_time"]) / (b["step"] - a["step"])
                   for a, b in itertools.pairwise(events) if b["step"] > a["step"])
    return rates[len(rates) // 2] if rates else None
