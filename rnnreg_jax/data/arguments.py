"""The data package's argument checks: one sentence naming the argument (a float batch
size failed in slicing, a word for a switch counted as True). Once per constructor or
loader call, never per batch; numpy only, as the package imports no JAX."""

from __future__ import annotations

import numbers

import numpy as np

from rnnreg_jax.shown import shown

SEED_LIMIT = 2**32  # numpy's RandomState takes seeds in [0, 2**32)


def check_whole(value: object, name: str, least: int | None = None,
                below: int | None = None) -> int:
    """`value` as an int, or a one-sentence ValueError naming `name` unless it is a whole
    number (a Python or numpy integer; not a bool, a float such as 2.0, None or a
    string) in `[least, below)`."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
        if (least is None or number >= least) and (below is None or number < below):
            return number
    if least is not None and below is not None:
        where = f" in [{least}, {'2**32' if below == SEED_LIMIT else below})"
    else:
        where = f" >= {least}" if least is not None else ""
    raise ValueError(f"{name} must be a whole number{where}, got {shown(value)}.")


def check_switch(value: object, name: str) -> bool:
    """`value` as a bool, or a one-sentence ValueError naming `name` unless it is True or
    False (numpy's too): the string "no" from a config counted as True."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False, got {shown(value)}.")
    return bool(value)


def check_choice(value: object, name: str, choices: tuple) -> None:
    """A one-sentence ValueError naming `name` and listing `choices` unless `value` is one."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {shown(value)}.")


def check_tokens(tokens: object) -> np.ndarray:
    """`tokens` as a numpy array, or a one-sentence ValueError unless it is 1-D (a 2-D
    array failed in a reshape that named no argument)."""
    array = np.asarray(tokens)
    if array.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array of token ids, got an array of shape "
                         f"{array.shape}.")
    return array
