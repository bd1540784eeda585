"""The bundle's manifest read back: what `pack` writes reads back equal; a manifest
truncated on its way back or edited by hand is refused in one sentence that names the
file and the fault, by `unpack` and by `experiments.reproduce --resume_from`, where it
gave a KeyError, JSONDecodeError or FileNotFoundError traceback before."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import bundle
from tests.test_reproduce import _refusal

ROOT = Path(__file__).resolve().parents[1]
STEP_TIMES = ROOT / "results" / "step_times_h200.json"


@pytest.fixture
def packed(tmp_path) -> tuple[Path, dict]:
    """A bundle of two runs, one with a checkpoint that travels (so the manifest has a
    checkpoint part) and one that left no workdir; and the manifest pack returned."""
    step = tmp_path / "root" / "a" / "checkpoints" / "7"
    step.mkdir(parents=True)
    (step / "state").write_bytes(os.urandom(3000))
    (tmp_path / "root" / "a" / "config.json").write_text(json.dumps({"task": "ptb"}))
    runs = [{"name": "a", "status": "stopped", "step": 7},
            {"name": "b", "status": "failed", "step": 0}]
    out = tmp_path / "bundle"
    return out, bundle.pack(tmp_path / "root", runs, out)


def _on_json(edit):
    """A corruption of the manifest's text that `edit`s the parsed manifest in place."""
    def corrupt(text: str) -> str:
        manifest = json.loads(text)
        edit(manifest)
        return json.dumps(manifest, indent=1)
    return corrupt


def _del(*keys):
    def edit(manifest):
        for key in keys[:-1]:
            manifest = manifest[key]
        del manifest[keys[-1]]
    return _on_json(edit)


def _set(value, *keys):
    def edit(manifest):
        for key in keys[:-1]:
            manifest = manifest[key]
        manifest[keys[-1]] = value
    return _on_json(edit)


@_on_json
def _rename_file(manifest):
    files = manifest["files"]
    files[f"../{bundle.RUNS_ARCHIVE}"] = files.pop(bundle.RUNS_ARCHIVE)


# (the manifest's text -> its corrupt text or bytes; what the error then says)
CORRUPTIONS = {
    "truncated": (lambda text: text[:len(text) // 2], "is not valid JSON (Expecting"),
    "not_utf8": (lambda text: b"\xff\xfe{}", "is not valid JSON ('utf-8' codec"),
    "an_array": (lambda text: "[]", "holds an array, not an object"),
    "no_runs": (_del("runs"), "lacks the key 'runs'"),
    "no_files": (_del("files"), "lacks the key 'files'"),
    "no_parts": (_del("checkpoint_parts"), "lacks the key 'checkpoint_parts'"),
    "runs_object": (_set({}, "runs"), "has 'runs' as an object, not an array"),
    "files_array": (_set([], "files"), "has 'files' as an array, not an object"),
    "parts_string": (_set("x", "checkpoint_parts"),
                     "has 'checkpoint_parts' as a string, not an array"),
    "parts_null": (_set(None, "checkpoint_parts"),
                   "has 'checkpoint_parts' as null, not an array"),
    "run_unnamed": (_del("runs", 1, "name"), "has run 1 without a name"),
    "run_string": (_set("a", "runs", 0), "has run 0 as a string, not an object"),
    "name_number": (_set(3, "runs", 0, "name"), "has run 0 named 3, not a non-empty string"),
    "name_empty": (_set("", "runs", 0, "name"), 'has run 0 named "", not a non-empty string'),
    "name_twice": (_set("a", "runs", 1, "name"), "lists run 'a' twice"),
    "step_string": (_set("7", "runs", 0, "step"),
                    "has run 'a' at step \"7\", not a whole number >= 0"),
    "step_negative": (_set(-1, "runs", 0, "step"), "has run 'a' at step -1, not a whole"),
    "step_bool": (_set(True, "runs", 0, "step"), "has run 'a' at step true, not a whole"),
    "step_float": (_set(7.5, "runs", 0, "step"), "has run 'a' at step 7.5, not a whole"),
    "no_sha": (_del("files", bundle.RUNS_ARCHIVE, "sha256"),
               f"has no sha256 string for the file '{bundle.RUNS_ARCHIVE}'"),
    "meta_string": (_set("x", "files", bundle.RUNS_ARCHIVE),
                    f"has no sha256 string for the file '{bundle.RUNS_ARCHIVE}'"),
    "file_outside": (_rename_file, f"lists the file '../{bundle.RUNS_ARCHIVE}', which is no "
                     "file name in the bundle folder"),
    "archive_unlisted": (_del("files", bundle.RUNS_ARCHIVE),
                         f"does not list {bundle.RUNS_ARCHIVE} among its files"),
    "part_unlisted": (_del("files", f"{bundle.CHECKPOINT_PREFIX}00"),
                      f'names the checkpoint part "{bundle.CHECKPOINT_PREFIX}00", which it '
                      "does not list among its files"),
}


def _corrupt(out: Path, case: str) -> str:
    """Applies `CORRUPTIONS[case]` to the manifest in `out`; returns what the error says."""
    corrupt, says = CORRUPTIONS[case]
    path = out / bundle.MANIFEST
    new = corrupt(path.read_text())
    if isinstance(new, bytes):
        path.write_bytes(new)
    else:
        path.write_text(new)
    return says


def _one_sentence(err: pytest.ExceptionInfo, start: str, says: str) -> None:
    message = str(err.value)
    assert message.startswith(start) and says in message, message
    assert message.endswith(".") and "\n" not in message, message


def test_a_packed_manifest_reads_back_equal(packed, tmp_path):
    from experiments import reproduce

    out, manifest = packed
    assert manifest["checkpoint_parts"] == [f"{bundle.CHECKPOINT_PREFIX}00"]
    assert bundle.read_manifest(out) == manifest
    assert bundle.unpack(out, tmp_path / "restored") == manifest
    assert (tmp_path / "restored" / "a" / "checkpoints" / "7" / "state").is_file()
    reproduce._check_resume(out, tmp_path / "empty", ["a", "b"])  # no refusal


def test_a_bundle_without_a_step_reads_back():
    """pack's callers need give no step (the report's tests); reproduce counts it as 0."""
    assert bundle._manifest_problem({"runs": [{"name": "a"}], "checkpoint_parts": [],
                                     "files": {bundle.RUNS_ARCHIVE: {"sha256": "0"}}}) is None


def test_a_folder_without_a_manifest_is_not_a_bundle(tmp_path):
    with pytest.raises(ValueError) as err:
        bundle.read_manifest(tmp_path)
    assert str(err.value) == f"{tmp_path} is not a bundle: it has no {bundle.MANIFEST}."
    with pytest.raises(ValueError) as err:
        bundle.unpack(tmp_path / "none", tmp_path / "restored")
    assert str(err.value) == f"{tmp_path / 'none'} is not a bundle: no such folder."
    assert not (tmp_path / "restored").exists()


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_a_corrupt_manifest_is_refused_in_one_sentence(packed, tmp_path, case):
    out, _ = packed
    says = _corrupt(out, case)
    start = f"Bundle manifest {out / bundle.MANIFEST} "
    with pytest.raises(ValueError) as err:
        bundle.read_manifest(out)
    _one_sentence(err, start, says)
    with pytest.raises(ValueError) as err:  # before it restores anything
        bundle.unpack(out, tmp_path / "restored")
    _one_sentence(err, start, says)
    assert not (tmp_path / "restored").exists()


@pytest.mark.parametrize("case", ["missing", "truncated", "no_runs", "run_unnamed",
                                  "step_string", "part_unlisted"])
def test_resuming_from_a_corrupt_bundle_is_one_line(packed, tmp_path, capsys, case):
    out, _ = packed
    if case == "missing":
        (out / bundle.MANIFEST).unlink()
        message = f"{out} is not a bundle: it has no {bundle.MANIFEST}."
    else:
        says = _corrupt(out, case)
        message = f"Bundle manifest {out / bundle.MANIFEST} {says}"
    lines = _refusal(capsys, ["--runs=ptb:tiny:a,ptb:tiny:b", "--calibrate_s=0",
                              "--budget_s=100", f"--step_times={STEP_TIMES}",
                              f"--resume_from={out}", f"--root={tmp_path / 'w'}",
                              f"--out={tmp_path / 'out'}"])
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot resume from {out}: "
                                                   + message), lines
    assert not (tmp_path / "w").exists()


def test_the_binary_refuses_a_truncated_bundle_without_a_traceback(packed, tmp_path):
    out, _ = packed
    _corrupt(out, "truncated")
    run = subprocess.run(
        [sys.executable, "-m", "experiments.reproduce", "--runs=ptb:tiny:a",
         "--calibrate_s=0", "--budget_s=100", f"--step_times={STEP_TIMES}",
         f"--resume_from={out}", f"--root={tmp_path / 'w'}", f"--out={tmp_path / 'out'}"],
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: cannot resume from {out}: Bundle manifest {out / bundle.MANIFEST} is not "
        "valid JSON"), lines


@pytest.mark.parametrize("archive", ["runs", "checkpoints"])
def test_an_archive_that_matches_its_hash_but_is_broken_is_one_sentence(packed, tmp_path,
                                                                         archive):
    """Packed so, or edited together with its hash: the sha256 check passes and tarfile's
    or gzip's error was a traceback."""
    out, _ = packed
    name = bundle.RUNS_ARCHIVE if archive == "runs" else f"{bundle.CHECKPOINT_PREFIX}00"
    data = (out / name).read_bytes()
    (out / name).write_bytes(data[: len(data) // 2])  # a gzip stream cut in the middle
    manifest = json.loads((out / bundle.MANIFEST).read_text())
    manifest["files"][name]["sha256"] = bundle.sha256_file(out / name)
    (out / bundle.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"holds an archive that cannot be extracted \(.+\)\.$"):
        bundle.unpack(out, tmp_path / "restored")
