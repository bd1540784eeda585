"""What a batch of `experiments.reproduce` came to, once its runs ended: each run's
outcome (finished, stopped or failed, said on stdout, with a failed run's console.log
tail on stderr), the bring-back bundle written (experiments/bundle.py) with the runs whose
checkpoints did not travel, and the exit status `RUN_FAILED` of a batch with a failed run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from experiments import bundle
from experiments import reproduce_plan as plan_lib
from experiments.reproduce_procs import STOPPED_CODES
from experiments.reproduce_workdirs import console_tail, done_steps

RUN_FAILED = 1  # the exit status of a batch that ran, and wrote its bundle, with a run failed


def ended_run(spec: plan_lib.Spec, root: Path, code: int) -> dict:
    """A run's entry in the bundle's manifest once it ended with exit `code`, said on
    stdout (a failed run's console.log tail on stderr); its final metrics, printed by its
    binary, kept in its workdir as final.json."""
    workdir = root / spec.name
    final = {}
    try:
        final = json.loads((root / f".{spec.name}.stdout").read_text())
        (workdir / "final.json").write_text(json.dumps(final, indent=1))
    except (OSError, ValueError):
        pass
    status = ("failed" if code not in STOPPED_CODES
              else "stopped" if code != 0 or final.get("stopped") else "finished")
    run = {"name": spec.name, "task": spec.task, "preset": spec.preset,
           "flags": list(spec.flags), "status": status, "exit_code": code,
           "step": done_steps(workdir)}
    print(f"{spec.name}: {status} (exit {code}), step {run['step']}", flush=True)
    if status == "failed":  # the reason is in its console.log: say it here
        for line in console_tail(workdir):
            print(f"{spec.name} console: {line}", file=sys.stderr, flush=True)
    return run


def write_bundle(root: Path, runs: list[dict], out: Path) -> dict:
    """The bundle of the `runs` under `root` packed into `out`; its manifest, after a line
    on what it carries and one per run whose checkpoints stayed behind."""
    manifest = bundle.pack(root, runs, out)
    carried = [r["name"] for r in manifest["runs"] if r["checkpoint_carried"]]
    print(f"bundle {out}: {len(manifest['files']) + 1} files; checkpoints carried for "
          f"{', '.join(carried) or 'no run'}", flush=True)
    for line in stranded(manifest):
        print(line, flush=True)
    return manifest


def stranded(manifest: dict) -> list[str]:
    """One line per run with work left whose checkpoints did not travel."""
    budget = manifest["checkpoint_budget"]
    return [f"{r['name']}: its checkpoints ({r['checkpoint_bytes'] / 1e6:.1f} MB, the newest "
            f"and the best) did not travel (the bundle's room for checkpoints: "
            f"{budget / 1e6:.1f} MB): it cannot resume in a later window."
            for r in manifest["runs"] if r["status"] != "finished"
            and not r["checkpoint_carried"] and r["checkpoint_bytes"]]


def exit_if_a_run_failed(manifest: dict, out: Path) -> None:
    """Exit status `RUN_FAILED`, with one `error:` line naming the failed runs, where any
    failed; the bundle is written by now."""
    failed = [r for r in manifest["runs"] if r["status"] == "failed"]
    if failed:
        which = "; ".join(f"{r['name']}, exit {r['exit_code']}" for r in failed)
        print(f"error: {len(failed)} of {len(manifest['runs'])} runs failed ({which}); the "
              f"bundle {out} holds what the batch did, with each run's console.log.",
              file=sys.stderr, flush=True)
        sys.exit(RUN_FAILED)
