"""How the Pallas recurrence lays a layer out on a GPU, and when "auto" would pick it.

Every block the kernels load is a power of two (Triton's tensors must be): the hidden
size is padded per gate to `padded_hidden` (H = 100 -> 128), the batch to a multiple
of `BATCH_BLOCK`, and the kernels work on `[batch block, column block]` tiles.

On-chip budget. One program owns a batch block and runs every step; `W_h` is read as
`G * C * C` tiles of `[column block, column block]` (C = padded H / column block). It
is *resident* (loaded once before the time loop and kept in registers / shared memory
across the steps) when its on-chip copy takes at most `ON_CHIP_WEIGHT_BYTES`, else
*streamed* (its tiles re-read every step from global memory, where they stay in L2:
1 MiB for PTB small against the H100/H200's 50-60 MB). An SM has 256 KiB of registers
and at most 227 KiB of shared memory per block; Triton stages dot operands through
shared memory, and the program also holds the state, gates and masks, so half of
either is the budget. In float32 that keeps the LSTM resident up to H = 64
(4 x 64 x 64 x 4 B = 64 KiB); pMNIST's H = 100 (padded 128: 256 KiB) is streamed,
or resident as a bfloat16 copy (`weight_dtype`, 128 KiB; float32 accumulation, but
the recurrent product rounds its inputs to bfloat16, so results leave the scan's by
bfloat16 rounding). PTB small's H = 200 (padded 256) is streamed either way. Which
of the two wins at pMNIST's shape is for a GPU run to say (scripts/gpu_pallas_check.sh).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from rnnreg_jax import cells

# The cells the kernels implement (their gate-level updates: `pallas.gates`).
KERNEL_CELLS = ("lstm", "gru", "rnn")
BATCH_BLOCK = 16  # rows of the batch one program owns (Triton's dots want M >= 16)
COLUMN_BLOCK = 128  # hidden units per tile: W_h tiles are [128, 128] at most
MIN_BLOCK = 16  # Triton's dots want every dimension >= 16
# Padded hidden sizes above this are refused: the kernels unroll G * C * C tile dots a
# step (64 for an LSTM at 512), and compile time grows with them.
MAX_PADDED_HIDDEN = 512
ON_CHIP_WEIGHT_BYTES = 128 * 1024
# The dtype of W_h's on-chip copy: None keeps the layer's dtype (the scan's numbers);
# jnp.bfloat16 halves the footprint (see the module docstring).
DEFAULT_WEIGHT_DTYPE: Any = None

# "auto" picks the Pallas kernel on a GPU for layers of at least this many steps (a
# persistent kernel pays where the per-step launches of the scan dominate: pMNIST's 784
# steps) and at most AUTO_PALLAS_MAX_HIDDEN units (None: any the kernels take; few
# programs stream a large W_h). None: never. No GPU run has measured the crossover yet,
# so it stays off; measured values (benchmarks/pallas_sweep.py's suggested rule) go
# here with their BENCHMARKS.md entry.
AUTO_PALLAS_MIN_STEPS: int | None = None
AUTO_PALLAS_MAX_HIDDEN: int | None = None


def next_power_of_two(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class Plan:
    """The static layout of one layer's kernels.

    Attributes:
      cell: the cell's name (one of `KERNEL_CELLS`).
      hidden: H; `padded_hidden` its per-gate padding, `column_block` the tile width.
      batch: B; `padded_batch` a multiple of `batch_block`.
      weight_dtype: the dtype of W_h's on-chip copy; `resident` whether it is loaded
        once before the time loop (else re-read every step).
    """

    cell: str
    hidden: int
    padded_hidden: int
    column_block: int
    batch: int
    padded_batch: int
    batch_block: int
    weight_dtype: Any
    resident: bool

    @property
    def num_gates(self) -> int:
        return cells.num_gates(self.cell)

    @property
    def weight_bytes(self) -> int:
        """Bytes of W_h's on-chip copy (padded, in `weight_dtype`)."""
        return _weight_bytes(self.num_gates, self.padded_hidden, self.weight_dtype)

    @property
    def chunks(self) -> int:
        return self.padded_hidden // self.column_block

    @property
    def num_warps(self) -> int:
        return 4 if self.padded_hidden <= 64 else 8


def _weight_bytes(num_gates: int, padded_hidden: int, weight_dtype: Any) -> int:
    return num_gates * padded_hidden ** 2 * jnp.dtype(weight_dtype).itemsize


def check_cell(cell: Any) -> None:
    """Raise a one-sentence ValueError for a cell the kernels do not implement."""
    if cells.record_of(cell) is not cells.BUILTINS.get(cells.cell_name(cell)) or (
            cells.cell_name(cell) not in KERNEL_CELLS):
        raise ValueError(f"implementation='pallas' covers the {', '.join(KERNEL_CELLS)} "
                         f"cells, not {cells.cell_name(cell)!r}; use 'fused' or 'autodiff'.")


def dtype_refusal(reference: str, dtype: Any, arrays: Mapping[str, Any]) -> str | None:
    """The one sentence refusing the first floating array of `arrays` (named by its key)
    whose dtype is not `dtype` (that of `reference`), or None."""
    for name, a in arrays.items():
        own = getattr(a, "dtype", None)
        if own is not None and jnp.issubdtype(own, jnp.floating) and (
                jnp.dtype(own) != jnp.dtype(dtype)):
            return (f"implementation='pallas' runs a layer in one dtype, but {name} is "
                    f"{jnp.dtype(own)} and {reference} {jnp.dtype(dtype)}; cast the "
                    "carry and params alike, or use 'fused' or 'autodiff'.")
    return None


def make_plan(cell: str, hidden: int, batch: int, dtype: Any,
              weight_dtype: Any = None) -> Plan:
    """The layout of a `cell` layer of `hidden` units over `batch` rows in `dtype`
    (`weight_dtype`: W_h's on-chip dtype, None for `DEFAULT_WEIGHT_DTYPE` or `dtype`)."""
    check_cell(cell)
    padded_hidden = max(MIN_BLOCK, next_power_of_two(hidden))
    if padded_hidden > MAX_PADDED_HIDDEN:
        raise ValueError(f"implementation='pallas' takes hidden sizes up to "
                         f"{MAX_PADDED_HIDDEN}; got {hidden}.")
    weight_dtype = jnp.dtype(weight_dtype or DEFAULT_WEIGHT_DTYPE or dtype)
    column_block = min(padded_hidden, COLUMN_BLOCK)
    padded_batch = -(-batch // BATCH_BLOCK) * BATCH_BLOCK
    weight_bytes = _weight_bytes(cells.num_gates(cell), padded_hidden, weight_dtype)
    return Plan(cell=cells.cell_name(cell), hidden=hidden, padded_hidden=padded_hidden,
                column_block=column_block, batch=batch, padded_batch=padded_batch,
                batch_block=BATCH_BLOCK, weight_dtype=weight_dtype,
                resident=weight_bytes <= ON_CHIP_WEIGHT_BYTES)


def auto_prefers_pallas(cell: Any, hidden: int, steps: int, backend: str,
                        min_steps: int | None = None, max_hidden: int | None = None) -> bool:
    """Whether `implementation="auto"` runs a layer through the Pallas kernels: on a GPU,
    for a cell they cover, a hidden size they take, at least `min_steps` steps (default
    `AUTO_PALLAS_MIN_STEPS`; None, the default until measured, is never) and at most
    `max_hidden` units (default `AUTO_PALLAS_MAX_HIDDEN`; None: no bound of its own)."""
    min_steps = AUTO_PALLAS_MIN_STEPS if min_steps is None else min_steps
    max_hidden = AUTO_PALLAS_MAX_HIDDEN if max_hidden is None else max_hidden
    if min_steps is None or backend != "gpu" or steps < min_steps:
        return False
    if max_hidden is not None and hidden > max_hidden:
        return False
    name = cells.cell_name(cell)
    return (name in KERNEL_CELLS and cells.record_of(cell) is cells.BUILTINS.get(name)
            and max(MIN_BLOCK, next_power_of_two(hidden)) <= MAX_PADDED_HIDDEN)
