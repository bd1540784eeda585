"""A tiny LM training run in a subprocess (resume and device-count tests).

    python tests/train_resume_script.py WORKDIR [--epochs N] [--ckpt_every N]
        [--progress FILE] [--sleep S] [--hang_in_save_step N] [--out FILE]

--progress: append the index of every batch fed (the parent kills at random
  points); --sleep: seconds per batch, so kills land mid-epoch;
--hang_in_save_step: when orbax is about to commit (rename) checkpoint step
  N, write `WORKDIR/in_save` and hang, so the parent can SIGKILL mid-write;
--out: write final params (npz) and the per-step train losses (json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_helpers as th  # noqa: E402

th.enable_compilation_cache()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rnnreg_jax import regularizers, train  # noqa: E402
from rnnreg_jax.train.logging import read_metrics  # noqa: E402


class Slow:
    """Wraps a source: records progress, sleeps per batch."""

    def __init__(self, source, progress, sleep):
        self.source, self.progress, self.sleep = source, progress, sleep
        self.steps_per_epoch = source.steps_per_epoch

    def iterate(self, epoch, start_batch=0):
        for i, batch in enumerate(self.source.iterate(epoch, start_batch), start_batch):
            if self.progress:
                with open(self.progress, "a") as f:
                    f.write(f"{epoch * self.steps_per_epoch + i}\n")
            time.sleep(self.sleep)
            yield batch


def hang_in_save(workdir, step):
    from orbax.checkpoint._src.path import atomicity
    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
        if os.path.basename(str(self._final_path)) == str(step):
            open(os.path.join(workdir, "in_save"), "w").close()
            time.sleep(600)
        return await original(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workdir")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--max_steps", type=int, default=0)
    p.add_argument("--ckpt_every", type=int, default=2)
    p.add_argument("--progress", default="")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--hang_in_save_step", type=int, default=-1)
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.hang_in_save_step >= 0:
        hang_in_save(args.workdir, args.hang_in_save_step)
    reg = regularizers.compose(regularizers.zaremba(0.3),
                               regularizers.variational(recurrent=0.2))
    task = train.Task(
        model=th.tiny_lm(hidden=8, reg=reg), kind="lm",
        train=Slow(th.LMSource(batch=8, steps=4, num_windows=5), args.progress, args.sleep),
        evals={"valid": th.LMSource(batch=4, steps=4, num_windows=2, seed=1)},
        carry_state=True)
    c = train.default_train_config()
    c.num_epochs, c.max_steps = args.epochs, args.max_steps
    c.learning_rate, c.loss_sum_over_time = 0.5, True
    c.lr_schedule, c.decay_after = "zaremba", 1
    c.checkpoint_every_steps, c.keep_checkpoints = args.ckpt_every, 2
    c.log_every_steps = 1
    c.tensorboard = False
    final = train.train_and_evaluate(task, c, args.workdir)
    if args.out:
        restored = train.restore_state(os.path.join(args.workdir, "checkpoints"), None)
        flat = {jax.tree_util.keystr(k): np.asarray(v)
                for k, v in jax.tree_util.tree_leaves_with_path(restored["params"])}
        np.savez(args.out + ".npz", **flat)
        losses = {}
        for e in read_metrics(args.workdir):
            if e["split"] == "train":
                losses[e["step"]] = e["loss"]
        with open(args.out + ".json", "w") as f:
            json.dump({"final": final, "losses": losses, "devices": jax.device_count()}, f)


if __name__ == "__main__":
    main()
