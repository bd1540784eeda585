"""Settings for every test run: the suite's time is XLA compile time on a small CPU.

* `--xla_backend_optimization_level=0` compiles the many small scans ~35%
  faster, and `--xla_cpu_use_fusion_emitters=false` (XLA's older elementwise
  codegen) another ~38% (four of the slowest test files, cold cache, 2-core
  Intel Xeon: 96 s -> 60 s); the tests' computations are tiny, so slower code
  does not matter. (Never use them for benchmarks.) The second is added only
  where this jaxlib's XLA knows it (one probe; XLA retires flags, and an unknown
  one aborts every process).
* A persistent compilation cache shared by the tests, their xdist workers and
  the subprocesses they start, so identical computations compile once.
* Full-precision float32 matrix products (`JAX_DEFAULT_MATMUL_PRECISION=highest`):
  the tolerances assume them, and GPUs may otherwise use TF32 (on CPU this
  changes nothing). The suite's run on an NVIDIA H100 (README.md) set it by hand.
* `RNNREG_SKIP_DATA_CHECKS=1`: the small data sets the tests make carry the
  real file names, so the published-sha256 check (rnnreg_jax.data.checksums)
  would refuse them; tests/test_data_checksums.py unsets it to test the check.
All go through the environment so subprocesses inherit them; tests that set
their own XLA_FLAGS (device counts) keep these two flags by appending.
"""

import os
import subprocess
import sys
import tempfile

_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def _xla_parses(flag: str) -> bool:
    """Whether this jaxlib's XLA knows `flag`: an unknown one in XLA_FLAGS aborts every
    process, and XLA retires flags (this one goes with its legacy codegen)."""
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"],
                           env=dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu"),
                           capture_output=True, check=False)
    return probe.returncode == 0


def _emitters_flag_known() -> bool:
    """`_xla_parses(_EMITTERS)`, probed by the first process only: the xdist workers and
    the tests' subprocesses inherit the answer through the environment."""
    if "RNNREG_TEST_EMITTERS_FLAG" not in os.environ:
        os.environ["RNNREG_TEST_EMITTERS_FLAG"] = "1" if _xla_parses(_EMITTERS) else "0"
    return os.environ["RNNREG_TEST_EMITTERS_FLAG"] == "1"


_SUITE_FLAGS = ["--xla_backend_optimization_level=0"]
if _emitters_flag_known():
    _SUITE_FLAGS.append(_EMITTERS)
for _flag in _SUITE_FLAGS:
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "rnnreg_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ["RNNREG_SKIP_DATA_CHECKS"] = "1"
