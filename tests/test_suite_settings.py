"""The suite's XLA settings (tests/conftest.py): its compile-time flags reach every
process, and a flag this jaxlib's XLA does not know is left out rather than aborting
the run (XLA retires flags between releases)."""

import os
import subprocess
import sys

from tests import conftest


def test_xla_parses_tells_a_known_flag_from_an_unknown_one():
    assert conftest._xla_parses("--xla_backend_optimization_level=0")
    assert not conftest._xla_parses("--xla_cpu_no_such_flag_in_any_release=1")


def test_the_suite_flags_are_set_where_xla_knows_them():
    flags = os.environ["XLA_FLAGS"].split()
    assert "--xla_backend_optimization_level=0" in flags
    known = os.environ["RNNREG_TEST_EMITTERS_FLAG"] == "1"
    assert (conftest._EMITTERS in flags) == known
    assert known == conftest._xla_parses(conftest._EMITTERS)


def test_a_flag_xla_does_not_know_is_left_out():
    # a process whose probe said no (as a jaxlib without the flag would say) adds only
    # the optimization level, and still runs XLA
    env = dict(os.environ, XLA_FLAGS="", RNNREG_TEST_EMITTERS_FLAG="0", JAX_PLATFORMS="cpu")
    code = ("import os, tests.conftest, jax.numpy as jnp; "
            "print(os.environ['XLA_FLAGS']); print(float(jnp.ones(2).sum()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.split("\n")[:2] == ["--xla_backend_optimization_level=0", "2.0"]
