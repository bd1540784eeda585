"""metrics.jsonl on local disks (appended) and object stores (rewritten whole)."""

from rnnreg_jax.train import logging as run_logging


def _write_a_run_and_its_resume(workdir):
    logger = run_logging.MetricsLogger(workdir, enabled=True, tensorboard=False)
    logger.write("train", 1, 0, {"loss": 1.0})
    logger.write("valid", 2, 0, {"ppl": float("inf")})
    logger.close()
    logger = run_logging.MetricsLogger(workdir, enabled=True, tensorboard=False)  # a resume
    logger.write("train", 3, 1, {"loss": 0.5})
    logger.close()
    return run_logging.read_metrics(workdir)


def test_local_metrics_append_across_a_resume(tmp_path):
    events = _write_a_run_and_its_resume(str(tmp_path))
    assert [e["step"] for e in events] == [1, 2, 3]
    assert events[1]["ppl"] == "inf"  # JSON has no inf: written as a string


def test_remote_workdir_rewrites_the_whole_file(tmp_path, monkeypatch):
    # A gs:// workdir cannot append; simulate one on local disk through epath.
    monkeypatch.setattr(run_logging, "is_remote", lambda path: True)
    events = _write_a_run_and_its_resume(str(tmp_path / "bucket_run"))
    assert [e["step"] for e in events] == [1, 2, 3]


def test_is_remote():
    assert run_logging.is_remote("gs://bucket/run")
    assert not run_logging.is_remote("/tmp/run")
