"""The bring-back bundle of a batch of runs: a few files that carry everything home.

A GPU machine returns at most `MAX_FILES` files of at most `MAX_FILE_BYTES` each and
`MAX_TOTAL_BYTES` together, so a batch's runs travel as:

* `bundle.json`: the manifest: each run's spec, status, steps and whether its
  checkpoint travels; each file's size and sha256.
* `runs.tar.gz`: every run's `config.json`, `metrics.jsonl`, TensorBoard events,
  `final.json` (the binary's final metrics) and `console.log`.
* `checkpoints.tar.gz.partNN`: the newest checkpoint and the best one of each run
  small enough to travel (larger ones are left out and the manifest says so; runs
  with work left go before finished ones), split into parts under the size limit, so
  a run can resume in a later window. To resume, the bundle goes back to the machine
  inside the call's working tree, whose limit (64 MiB) it shares with the repository
  and the data: 30-45 MB of checkpoints resume (docs/RESULTS_HOWTO.md).

`unpack` restores a bundle into a runs folder; `read_manifest` reads and checks the
manifest for it and for `experiments.reproduce`; `experiments.report` reads a bundle
folder as it reads workdirs.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from rnnreg_jax.data.locate import sha256_file

MAX_FILES = 8
MAX_FILE_BYTES = 16 << 20
MAX_TOTAL_BYTES = 64 << 20  # all files back together
CALLER_ROOM_BYTES = 1 << 20  # the manifest and a log file the caller adds
PART_BYTES = MAX_FILE_BYTES - (256 << 10)  # under the limit with room to spare
MANIFEST = "bundle.json"
RUNS_ARCHIVE = "runs.tar.gz"
CHECKPOINT_PREFIX = "checkpoints.tar.gz.part"
RUN_FILES = ("config.json", "metrics.jsonl", "final.json", "console.log")


def newest_step_dirs(workdir: Path) -> list[Path]:
    """The newest complete step of `checkpoints/` and of `best/` (orbax step folders)."""
    out = []
    for sub in ("checkpoints", "best"):
        steps = [p for p in (workdir / sub).glob("*") if p.is_dir() and p.name.isdigit()]
        if steps:
            out.append(max(steps, key=lambda p: int(p.name)))
    return out


def _tree_bytes(paths: Sequence[Path]) -> int:
    return sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file())


def _add_run_logs(tar: tarfile.TarFile, root: Path, name: str) -> None:
    workdir = root / name
    for file_name in RUN_FILES:
        if (workdir / file_name).is_file():
            tar.add(workdir / file_name, arcname=f"{name}/{file_name}")
    if (workdir / "tb").is_dir():
        tar.add(workdir / "tb", arcname=f"{name}/tb")


def _write_parts(data: bytes, out: Path) -> list[str]:
    names: list[str] = []
    for i in range(0, len(data), PART_BYTES):
        name = f"{CHECKPOINT_PREFIX}{len(names):02d}"
        (out / name).write_bytes(data[i:i + PART_BYTES])
        names.append(name)
    return names


def pack(root: Path, runs: Sequence[dict], out: Path, checkpoint_budget: int | None = None
         ) -> dict:
    """Writes the bundle of the runs under `root` into `out`; returns the manifest.

    Args:
        root: the folder holding one workdir per run (`root/<name>`).
        runs: one dict per run with at least `name` (more keys go to the manifest).
        out: the bundle folder (created).
        checkpoint_budget: bytes of checkpoints that may travel; default what the file
            limits leave after the manifest and the logs (and 1 MiB for a log file the
            caller adds, as scripts/gpu_window_split.sh its window.log).
    """
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / RUNS_ARCHIVE, "w:gz") as tar:
        for run in runs:
            if (root / run["name"]).is_dir():
                _add_run_logs(tar, root, run["name"])
    if checkpoint_budget is None:
        checkpoint_budget = default_checkpoint_budget((out / RUNS_ARCHIVE).stat().st_size)
    buffer = io.BytesIO()
    carried: list[str] = []
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        # Runs with work left first (they resume from it: training, or final passes a
        # deadline cut), then the finished; within each, smallest first: the most fit.
        # Counted uncompressed (gzip's buffer makes the stream's position lag behind
        # what it will write; float weights hardly compress).
        dirs_of = {r["name"]: newest_step_dirs(root / r["name"]) for r in runs}
        sizes = {name: _tree_bytes(dirs) for name, dirs in dirs_of.items()}
        used = 0
        for run in sorted(runs, key=lambda r: (r.get("status") == "finished",
                                               sizes[r["name"]])):
            dirs = dirs_of[run["name"]]
            if not dirs or used + sizes[run["name"]] > checkpoint_budget:
                continue
            for d in dirs:
                tar.add(d, arcname=f"{run['name']}/{d.parent.name}/{d.name}")
            used += sizes[run["name"]]
            carried.append(run["name"])
    data = buffer.getvalue() if carried else b""
    if len(data) > checkpoint_budget:  # compressed size over budget after all: carry none
        data, carried = b"", []
    parts = _write_parts(data, out) if data else []
    manifest = {
        "runs": [dict(run, checkpoint_carried=run["name"] in carried,
                      checkpoint_bytes=sizes[run["name"]]) for run in runs],
        "checkpoint_budget": checkpoint_budget,
        "checkpoint_parts": parts,
        "files": {name: {"bytes": (out / name).stat().st_size, "sha256": sha256_file(out / name)}
                  for name in [RUNS_ARCHIVE, *parts]},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    check_limits(out)
    return manifest


def default_checkpoint_budget(logs_bytes: int) -> int:
    """The checkpoint bytes a bundle may carry beside `logs_bytes` of compressed logs:
    the parts the file count leaves (one file for the manifest, one for the logs, one
    for a caller's log), within the total (less the logs, `CALLER_ROOM_BYTES` for the
    manifest and that log)."""
    return max(0, min((MAX_FILES - 3) * PART_BYTES,
                      MAX_TOTAL_BYTES - logs_bytes - CALLER_ROOM_BYTES))


def check_limits(out: Path) -> None:
    """Raises ValueError unless the bundle folder fits the bring-back limits."""
    files = [p for p in out.iterdir() if p.is_file()]
    if len(files) > MAX_FILES:
        raise ValueError(f"Bundle {out} has {len(files)} files, more than {MAX_FILES}.")
    total = sum(p.stat().st_size for p in files)
    if total > MAX_TOTAL_BYTES:
        raise ValueError(f"Bundle {out} holds {total} bytes, more than {MAX_TOTAL_BYTES} "
                         "together.")
    big = [p for p in files if p.stat().st_size > MAX_FILE_BYTES]
    if big:
        raise ValueError(f"Bundle file {big[0]} is {big[0].stat().st_size} bytes, over "
                         f"{MAX_FILE_BYTES}.")


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    tar.extractall(dest, filter="data")  # no absolute paths, no escapes, no devices


_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
               int: "a number", float: "a number", type(None): "null"}


def read_manifest(bundle_dir: Path) -> dict:
    """The manifest of the bundle in `bundle_dir`, checked to hold what `unpack` and
    `experiments.reproduce` read from it, typed as `pack` writes it (a bundle may come
    back truncated or be edited by hand).

    Raises:
        ValueError: one sentence naming the file and what is wrong with it.
    """
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        where = "it has no " + MANIFEST if Path(bundle_dir).is_dir() else "no such folder"
        raise ValueError(f"{bundle_dir} is not a bundle: {where}.")
    try:
        manifest = json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"Bundle manifest {path} cannot be read ({err.strerror}).") from err
    except ValueError as err:  # not JSON, or bytes that are not UTF-8
        raise ValueError(f"Bundle manifest {path} is not valid JSON ({err}).") from err
    problem = _manifest_problem(manifest)
    if problem:
        raise ValueError(f"Bundle manifest {path} {problem}.")
    return manifest


def _manifest_problem(manifest: object) -> str | None:
    """What keeps `manifest` from being read as `pack` writes it, or None."""
    if not isinstance(manifest, dict):
        return f"holds {_JSON_KINDS.get(type(manifest), 'a value')}, not an object"
    for key, kind in (("runs", list), ("files", dict), ("checkpoint_parts", list)):
        if key not in manifest:
            return f"lacks the key {key!r}"
        if not isinstance(manifest[key], kind):
            return (f"has {key!r} as {_JSON_KINDS.get(type(manifest[key]), 'a value')}, "
                    f"not {_JSON_KINDS[kind]}")
    names: set[str] = set()
    for i, run in enumerate(manifest["runs"]):
        if not isinstance(run, dict):
            return f"has run {i} as {_JSON_KINDS.get(type(run), 'a value')}, not an object"
        if "name" not in run:
            return f"has run {i} without a name"
        name, step = run["name"], run.get("step", 0)
        if not isinstance(name, str) or not name:
            return f"has run {i} named {json.dumps(name)}, not a non-empty string"
        if name in names:
            return f"lists run {name!r} twice"
        names.add(name)
        if type(step) is not int or step < 0:  # bool is an int; a step is not
            return f"has run {name!r} at step {json.dumps(step)}, not a whole number >= 0"
    for name, meta in manifest["files"].items():
        # unpack reads each listed file from the bundle folder: no other path.
        if name in ("", ".", "..") or Path(name).name != name:
            return f"lists the file {name!r}, which is no file name in the bundle folder"
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
            return f"has no sha256 string for the file {name!r}"
    # Every file unpack opens must be listed, so that its sha256 is checked first.
    if RUNS_ARCHIVE not in manifest["files"]:
        return f"does not list {RUNS_ARCHIVE} among its files"
    for part in manifest["checkpoint_parts"]:
        if not isinstance(part, str) or part not in manifest["files"]:
            return (f"names the checkpoint part {json.dumps(part)}, which it does not list "
                    "among its files")
    return None


def unpack(bundle: Path, root: Path) -> dict:
    """Restores a bundle's logs and checkpoints under `root/<name>`; returns the manifest.

    Raises:
        ValueError: the manifest is missing or malformed (`read_manifest`), or a file is
            missing or its sha256 differs from the manifest's.
    """
    manifest = read_manifest(bundle)
    for name, meta in manifest["files"].items():
        path = bundle / name
        if not path.is_file() or sha256_file(path) != meta["sha256"]:
            raise ValueError(f"Bundle file {path} is missing or differs from its manifest; "
                             "bring the bundle back again.")
    root.mkdir(parents=True, exist_ok=True)
    # The hashes matched, so a broken archive was packed so or edited with its hash.
    try:
        with tarfile.open(bundle / RUNS_ARCHIVE, "r:gz") as tar:
            _safe_extract(tar, root)
        if manifest["checkpoint_parts"]:
            data = b"".join((bundle / p).read_bytes() for p in manifest["checkpoint_parts"])
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                _safe_extract(tar, root)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise ValueError(f"Bundle {bundle} holds an archive that cannot be extracted "
                         f"({err or type(err).__name__}).") from err
    return manifest


def is_bundle(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file() and (Path(path) / RUNS_ARCHIVE).is_file()


def logs_view(bundle: str | os.PathLike) -> str:
    """A temporary folder holding the bundle's run logs (for the report), removed when the
    process exits."""
    dest = Path(tempfile.mkdtemp(prefix="rnnreg_bundle_"))
    atexit.register(shutil.rmtree, dest, ignore_errors=True)
    with tarfile.open(Path(bundle) / RUNS_ARCHIVE, "r:gz") as tar:
        _safe_extract(tar, dest)
    return str(dest)
