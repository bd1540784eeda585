"""A gs:// workdir end to end, on an emulated Cloud Storage bucket (tests/emulated_gcs.py).

The ptb binary trains, checkpoints, resumes, prunes old steps and refuses another model with
`--workdir=gs://...`, taking the code paths a TPU VM takes: etils.epath's remote branch
through fsspec (a local filesystem under the `gs` protocol, in place of gcsfs), orbax's
GCS handling (commit files instead of renames, deletion of old steps) and TensorStore's
GCS driver over HTTP (a local server speaking the JSON API). Not covered: TensorBoard,
whose gs:// writer needs google-cloud-storage and a real endpoint (off here), and
orbax's question about hierarchical namespaces (google-cloud-storage again; answered
"flat" by the emulation).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("fsspec", reason="gs:// workdirs go through fsspec (etils[epath])")

from tests import data_fixtures as fx  # noqa: E402
from tests.emulated_gcs import GCSServer  # noqa: E402

BUCKET = "rnnreg-test"  # TensorStore checks GCS's bucket-name rules


def _run(root, data, server, *extra):
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    # No credentials to find (TensorStore would fetch a token over the network; without
    # any it calls anonymously) and no proxy between the client and the local server.
    env.update(TENSORSTORE_GCS_HTTP_URL=server.url, CLOUDSDK_CONFIG=str(root.parent / "gcloud"),
               no_proxy="127.0.0.1", NO_PROXY="127.0.0.1")
    return subprocess.run(
        [sys.executable, "-m", "tests.emulated_gcs", str(root), "experiments.ptb",
         "--config=tiny", f"--workdir=gs://{BUCKET}/run", f"--data_dir={data}",
         "--config.data.batch_size=2", "--config.data.eval_batch_size=2",
         "--config.train.mc_samples=0", "--config.train.tensorboard=False",
         "--config.train.checkpoint_every_steps=1", *extra],
        # TensorStore retries a server error with backoff for minutes: fail, not hang.
        capture_output=True, text=True, check=False, env=env, timeout=180)


@pytest.mark.slow
def test_a_run_trains_checkpoints_and_resumes_in_a_gs_workdir(tmp_path):
    data, root = tmp_path / "data", tmp_path / "store"
    fx.write_repeated_ptb_word(data)
    run = root / BUCKET / "run"
    with GCSServer(str(root)) as server:
        first = _run(root, data, server, "--config.train.max_steps=2")
        assert first.returncode == 0, first.stderr[-3000:]
        # TensorStore wrote the arrays over HTTP: uploads, and no orbax tmp folder left.
        assert server.calls.get("POST", 0) > 0, server.calls
        steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir())
        assert steps == [1, 2]
        assert (run / "checkpoints" / "2" / "commit_success.txt").exists()
        assert list((run / "checkpoints" / "2" / "default" / "d").iterdir())
        record = json.loads((run / "config.json").read_text())
        assert record["task"] == "ptb" and record["config"]["train"]["max_steps"] == 2

        reads = server.calls.get("GET", 0)
        second = _run(root, data, server, "--config.train.max_steps=5",
                      "--config.train.keep_checkpoints=3")
        assert second.returncode == 0, second.stderr[-3000:]
        assert server.calls["GET"] > reads  # the restore read step 2's arrays back
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        resumed = [line for line in lines if line.get("split") == "resume"]
        assert [line["step"] for line in resumed] == [2], lines
        # The remote logger rewrites metrics.jsonl whole: the first run's lines stay.
        assert [line["step"] for line in lines if line["split"] == "train"] == [1, 2, 3, 4, 5]
        # Orbax deleted the oldest steps through fsspec's rm on the gs:// path.
        assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == [3, 4, 5]

        stored = (run / "config.json").read_text()
        other = _run(root, data, server, "--config.train.max_steps=5",
                     "--config.model.hidden_sizes=(8,8)")
        assert other.returncode == 2
        assert "--config.model.hidden_sizes=(16,16)," in other.stderr, other.stderr[-3000:]
        assert "Traceback" not in other.stderr
        assert (run / "config.json").read_text() == stored  # refused before writing
