"""The library computes what it computed when tests/fixtures/behaviour.npz was recorded
(`python -m tests.behaviour_freeze`): outputs, final states, penalties, batch statistics
and gradients of every cell x regularizer pair with both backward passes, and of a tiny
model of every preset, in float64 with fixed keys. A few cases run by default, every
case with `-m slow`."""

from __future__ import annotations

import numpy as np
import pytest

from tests import behaviour_freeze as freeze

# Float64 results move with the CPU's instruction set: XLA's elementwise approximations
# (tanh, exp) differ in their last float32-level bits between vector widths, 4.4e-9
# relative at most over the default cases under --xla_cpu_max_isa=SSE4_2 against the
# fixture's AVX-512 machine. 1e-7 leaves room for that and still sees any real change
# (another mask, key or formula moves results by far more).
FREEZE_RTOL = 1e-7

DEFAULT = [
    "stack:lstm:everything_lstm:fused", "stack:lstm:variational_per_gate:fused",
    "stack:lstm:hidden_dropout:fused", "stack:rnn:update:autodiff",
    "model:ptb:zaremba_small", "model:ptb:variational_medium_untied", "model:ptb:zoneout",
]


@pytest.fixture(scope="module")
def recorded():
    with np.load(freeze.FIXTURE) as data:
        return {k: data[k] for k in data.files}


def _check(case: str, recorded: dict) -> None:
    now = freeze.record_all([case])
    before = {k: v for k, v in recorded.items() if k.startswith(case + "/")}
    assert sorted(now) == sorted(before), case
    for name, value in now.items():
        expected = before[name]
        assert value.dtype == expected.dtype and value.shape == expected.shape, name
        scale = np.max(np.abs(expected)) if expected.size else 0.0
        np.testing.assert_allclose(value, expected, rtol=FREEZE_RTOL,
                                   atol=FREEZE_RTOL * scale, err_msg=name)


def test_every_case_is_recorded(recorded):
    assert {k.split("/", 1)[0] for k in recorded} == set(freeze.cases())
    assert set(DEFAULT) <= set(freeze.cases())


@pytest.mark.parametrize("case", DEFAULT)
def test_default_cases_unchanged(case, recorded):
    _check(case, recorded)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in freeze.cases() if c not in DEFAULT])
def test_every_case_unchanged(case, recorded):
    _check(case, recorded)
