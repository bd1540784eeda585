"""The authors' own learning curves, where they published one for a preset's exact
settings: one JSON record each in `results/reference/` (the repository, commit, file
and field it was read from), drawn beside our runs in the report's plots and quoted
by its notes.

A record: `label`, `dataset` (a report category), `preset` (the runs it is drawn
beside), `split` and `metric` (what `curve` holds), `source` (`repository`, `commit`,
`path`, ...) and `curve`, `[epoch, value]` pairs, epochs counted from 1.
"""

from __future__ import annotations

import dataclasses
import json
import os

REFERENCE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "results", "reference")
FIELDS = ("label", "dataset", "preset", "split", "metric", "source", "curve")


@dataclasses.dataclass(frozen=True)
class ReferenceCurve:
    label: str
    dataset: str
    preset: str
    split: str
    metric: str
    source: dict
    curve: tuple[tuple[int, float], ...]

    def at(self, epoch: int) -> float:
        """The value logged after `epoch`."""
        values = dict(self.curve)
        if epoch not in values:
            raise ValueError(f"{self.citation} logs epochs {self.curve[0][0]}-"
                             f"{self.curve[-1][0]}, not {epoch}.")
        return values[epoch]

    def lowest(self) -> tuple[int, float]:
        """`(epoch, value)` of the curve's lowest value (the first, on a tie)."""
        return min(self.curve, key=lambda point: point[1])

    def until(self, epoch: int) -> tuple[tuple[int, float], ...]:
        """The points up to `epoch`, to compare with a run that got that far."""
        return tuple(point for point in self.curve if point[0] <= epoch)

    @property
    def citation(self) -> str:
        s = self.source
        return f"{s['repository']} {s['path']} ({s['commit']})"


def read(path: str) -> ReferenceCurve:
    """The record at `path`, or a one-sentence ValueError saying what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"Reference curve {path} cannot be read: {err}.") from err
    missing = [field for field in FIELDS if field not in record] if isinstance(
        record, dict) else list(FIELDS)
    if missing:
        raise ValueError(f"Reference curve {path} lacks {missing}.")
    try:
        curve = tuple((int(epoch), float(value)) for epoch, value in record["curve"])
    except (TypeError, ValueError):
        raise ValueError(f"Reference curve {path}: its curve must be [epoch, value] pairs, "
                         f"got {str(record['curve'])[:60]}.") from None
    epochs = [epoch for epoch, _ in curve]
    if not curve or epochs != sorted(set(epochs)) or epochs[0] < 1:
        raise ValueError(f"Reference curve {path}: its epochs must rise from 1 or later, "
                         f"each once; got {epochs[:5]}...")
    return ReferenceCurve(**{field: record[field] for field in FIELDS if field != "curve"},
                          curve=curve)


def load(dataset: str | None = None, directory: str = REFERENCE_DIR) -> list[ReferenceCurve]:
    """Every record in `directory` (of `dataset`, if given), by file name."""
    if not os.path.isdir(directory):
        return []
    curves = [read(os.path.join(directory, name)) for name in sorted(os.listdir(directory))
              if name.endswith(".json")]
    return [c for c in curves if dataset is None or c.dataset == dataset]
