"""What produced a run: the command as typed from the repository root, the code's commit,
the packages and the devices. Stored in `config.json` and TensorBoard's hparams.

The command is written relative to the repository so that a record made on any machine
can be pasted on another: the binary as `python -m experiments.<name>`, and paths
(`--workdir`, `--data_dir`) inside the checkout relative to it. A workdir outside the
checkout (a scratch disk, a temp dir) is recorded as `runs/<its last folder>`, where the
same command would write from the repository root; the path as typed is not recorded.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The distributions whose versions decide a run's numbers.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml_collections",
            "absl-py")

_PATH_FLAGS = ("--workdir", "--data_dir")


def _relative_path(path: str, flag: str) -> str:
    """`path` relative to the repository when inside it; a workdir outside as runs/<name>."""
    if "://" in path or not os.path.isabs(path):
        return path  # a bucket URL or already relative: portable as typed
    real, root = os.path.realpath(path), os.path.realpath(REPO_ROOT)
    if real == root or real.startswith(root + os.sep):
        return os.path.relpath(real, root)
    if flag == "--workdir":
        return os.path.join("runs", os.path.basename(os.path.normpath(path)))
    return path


def relative_command(argv: Sequence[str]) -> str:
    """`argv` as a command to run from the repository root.

    `sys.argv[0]` of `python -m experiments.ptb` is the module's absolute file path;
    it becomes `python -m experiments.ptb`.
    """
    if not argv:
        return ""
    module = os.path.splitext(os.path.basename(argv[0]))[0]
    out = ["python", "-m", f"experiments.{module}"]
    args = list(argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        flag, sep, value = arg.partition("=")
        if flag in _PATH_FLAGS and sep:
            out.append(f"{flag}={_relative_path(value, flag)}")
        elif arg in _PATH_FLAGS and i + 1 < len(args):
            out.append(f"{arg}={_relative_path(args[i + 1], arg)}")
            i += 1
        else:
            out.append(arg)
        i += 1
    return " ".join(shlex.quote(a) for a in out)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", REPO_ROOT, *args], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict:
    """The checkout's commit and whether tracked files differ from it (None: not a git
    checkout, e.g. an installed wheel or a copy without .git)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> dict:
    import jax

    devices = jax.devices()
    return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind,
            "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
            "process_count": jax.process_count(), "host_cpu": _cpu_model(),
            "host_cpu_count": os.cpu_count()}


def provenance(argv: Sequence[str] | None = None) -> dict:
    """Everything `config.json` records about what produced the run."""
    argv = sys.argv if argv is None else argv
    return {"command": relative_command(argv), **git_state(),
            "python": platform.python_version(), "packages": package_versions(),
            **device_info(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


# What the report shows of each earlier start of a resumed run: its commit and device.
START_KEYS = ("commit", "dirty", "backend", "device_kind", "device_count", "host_cpu",
              "host_cpu_count")


def with_earlier_starts(record: dict, previous: dict | None) -> dict:
    """This start's provenance `record` with `earlier_starts`: the commit and device of
    every earlier start of the same run, oldest first, taken from `previous`, the
    provenance its record held (None for a new run). config.json is rewritten at each
    start, and without them a resumed run named only the last start's commit and device."""
    if not isinstance(previous, dict):
        return record
    earlier = [s for s in previous.get("earlier_starts") or [] if isinstance(s, dict)]
    last = {k: previous[k] for k in START_KEYS if k in previous}
    return {**record, "earlier_starts": earlier + ([last] if last else [])}


def device_label(record: dict) -> str:
    """A short device name for reports: the accelerator's kind, or the host CPU for CPU
    runs (`device_count` x when more than one)."""
    kind = record.get("device_kind") or ""
    if record.get("backend") == "cpu" or kind == "cpu":
        cores = record.get("host_cpu_count")
        cpu = record.get("host_cpu") or "CPU"
        return f"{cpu} ({cores} cores)" if cores else cpu
    count = record.get("device_count") or 1
    return f"{count} x {kind}" if count > 1 else kind


def hparams(config: dict, record: dict) -> dict:
    """Flat `section.field` -> value of a run's model, data, reg and train blocks, plus
    its commit, device, package versions, device and process counts and XLA_FLAGS,
    for TensorBoard's HParams view."""
    flat = {}
    for section in ("model", "data", "reg", "train"):
        for field, value in sorted(config.get(section, {}).items()):
            if isinstance(value, dict):  # the reg block's constructors: reg.zoneout.cells
                flat.update({f"{section}.{field}.{k}": v for k, v in sorted(value.items())})
            else:
                flat[f"{section}.{field}"] = value
    flat["preset"] = config.get("preset", "")
    flat["provenance.commit"] = record.get("commit") or ""
    flat["provenance.dirty"] = bool(record.get("dirty"))
    flat["provenance.device"] = device_label(record)
    for name, version in (record.get("packages") or {}).items():
        flat[f"provenance.{name}"] = version or ""
    for key in ("device_count", "process_count", "xla_flags"):
        flat[f"provenance.{key}"] = record.get(key)
    return {k: ("" if v is None else v) for k, v in flat.items()}
