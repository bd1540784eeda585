"""shellcheck over launch.sh, its scripts and .ci/run (skipped where it is not
installed)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from launch_sandbox import REPO

SHELL_FILES = ["launch.sh", ".ci/run", "scripts/tpu.sh", "scripts/tpu_worker.sh",
               "scripts/launch_common.sh",
               "scripts/gpu_window.sh", "scripts/gpu_window_split.sh",
               "scripts/gpu_prepare.sh", "scripts/gpu_pallas_check.sh",
               "scripts/check_lower_bounds.sh", "scripts/lock.sh"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("path", SHELL_FILES)
def test_shellcheck_clean(path):
    # -x follows the `source`d scripts/launch_common.sh, so it is checked in context too.
    result = subprocess.run(["shellcheck", "-x", path], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
