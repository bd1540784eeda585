"""What the test_bidirectional_* files share: the sizes `B, T, F, H` of their windows and
stacks, the directions' names in their order, and bfloat16 (their low-precision dtype)."""

from __future__ import annotations

import jax.numpy as jnp

from rnnreg_jax import bidirectional as bd

DIRS = bd.DIRECTIONS
B, T, F, H = 3, 6, 4, 3
BF16 = jnp.bfloat16
