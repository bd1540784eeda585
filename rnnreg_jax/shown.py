"""How a one-sentence error message echoes a bad value: short enough for one line.

numpy only (the data package, which imports no JAX, uses it too).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def shown(value: Any, limit: int = 60) -> str:
    """`value`'s repr where it is one line of at most `limit` characters; else an array
    by its shape and anything else by its type (a carry bound to a flag printed every
    state over many lines)."""
    text = repr(value)
    if len(text) <= limit and "\n" not in text:
        return text
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, np.generic):
        return f"an array of shape {tuple(shape)}"
    return f"a {type(value).__name__}"
