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


def test_metrics_keep_integers_and_booleans(tmp_path):
    import jax.numpy as jnp
    import numpy as np

    logger = run_logging.MetricsLogger(str(tmp_path), enabled=True, tensorboard=False)
    logger.write("resume", 7, 1, {"batch_in_epoch": 82, "tokens": np.int64(3),
                                  "count": jnp.asarray(5), "stopped": np.bool_(True),
                                  "loss": np.float32(0.5), "lr": jnp.asarray(0.25),
                                  "ppl": np.float32("nan"), "phase": "epoch_end"})
    logger.close()
    (event,) = run_logging.read_metrics(str(tmp_path))
    typed = {k: (type(v).__name__, v) for k, v in event.items() if k != "wall_time"}
    assert typed == {"step": ("int", 7), "epoch": ("int", 1), "split": ("str", "resume"),
                     "batch_in_epoch": ("int", 82), "tokens": ("int", 3),
                     "count": ("int", 5), "stopped": ("bool", True),
                     "loss": ("float", 0.5), "lr": ("float", 0.25), "ppl": ("str", "nan"),
                     "phase": ("str", "epoch_end")}


def test_remote_workdir_rewrites_the_whole_file(tmp_path, monkeypatch):
    # A gs:// workdir cannot append; simulate one on local disk through epath.
    monkeypatch.setattr(run_logging, "is_remote", lambda path: True)
    events = _write_a_run_and_its_resume(str(tmp_path / "bucket_run"))
    assert [e["step"] for e in events] == [1, 2, 3]


def test_is_remote():
    assert run_logging.is_remote("gs://bucket/run")
    assert not run_logging.is_remote("/tmp/run")


def test_tensorboard_holds_each_logged_step_before_the_logger_closes(tmp_path):
    """A killed run never closes its logger: each write's scalars must be in the event
    file already (tensorboardX's SummaryWriter queued them for a thread, and a kill lost
    the last logged step TensorBoard had not yet been handed)."""
    import os
    import struct

    from tensorboardX.proto import event_pb2

    logger = run_logging.MetricsLogger(str(tmp_path), enabled=True, tensorboard=True)
    logger.write("train", 100, 0, {"loss": 1.5, "ppl": float("inf")})  # inf: not a scalar
    logger.write("valid", 200, 0, {"loss": 1.25})
    (name,) = os.listdir(tmp_path / "tb")
    data, pos, scalars = (tmp_path / "tb" / name).read_bytes(), 0, []
    while pos < len(data):  # TFRecord framing: length, its CRC, the event, its CRC
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
        scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
        pos += 12 + length + 4
    assert scalars == [(100, "train/loss", 1.5), (200, "valid/loss", 1.25)]
    logger.close()
