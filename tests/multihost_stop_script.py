"""One process of a multi-process NT-ASGD run of a tiny LM (jax.distributed on
127.0.0.1, one CPU device a process), for the multi-host stop and resume tests.

    python tests/multihost_stop_script.py WORKDIR --port P --process_id I
        --num_processes N --out FILE [--sigterm_at LABEL --sigterm_process K]

--sigterm_at: process K sends itself SIGTERM as the evaluation pass of that label
  starts (the others are not told); --out: this process's JSON record: the run's
  result, the validation histories NT-ASGD's trigger heard, the label of every stop
  check of the evaluator, and what `from_first_process` gave it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_helpers as th  # noqa: E402

th.enable_compilation_cache()

import jax  # noqa: E402

from rnnreg_jax import regularizers, train  # noqa: E402
from rnnreg_jax.train import mesh as mesh_lib  # noqa: E402
from rnnreg_jax.train import ntasgd  # noqa: E402
from rnnreg_jax.train.evaluator import Evaluator  # noqa: E402

EVAL_WINDOWS = 12  # more than `stopping.EVAL_CHECK_BATCHES`: a pass stops part-way


def task(index: int, count: int) -> train.Task:
    def source(batch, windows, seed):
        return th.LMSource(batch=batch, steps=4, num_windows=windows, seed=seed,
                           process_index=index, process_count=count)

    return train.Task(model=th.tiny_lm(hidden=8, reg=regularizers.awd_lstm()), kind="lm",
                      train=source(8, 3, 0),
                      evals={"valid": source(4, EVAL_WINDOWS, 1),
                             "test": source(2, EVAL_WINDOWS, 2)},
                      carry_state=True, test_protocol=True)


def config():
    c = train.default_train_config()
    c.num_epochs, c.log_every_steps, c.mc_samples = 3, 3, 2
    c.optimizer, c.learning_rate, c.clip_norm, c.lr_schedule = "ntasgd", 1.0, 0.25, "constant"
    c.tensorboard = False
    return c


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workdir")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--process_id", type=int, required=True)
    p.add_argument("--num_processes", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--sigterm_at", default="")
    p.add_argument("--sigterm_process", type=int, default=1)
    args = p.parse_args()
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}",
                               num_processes=args.num_processes, process_id=args.process_id)
    record: dict = {"heard": [], "checks": []}
    record["broadcast"] = mesh_lib.from_first_process(lambda: {"from": jax.process_index()})

    trigger = ntasgd.nonmono_trigger
    ntasgd.nonmono_trigger = lambda h, v, n: record["heard"].append(list(h)) or trigger(h, v, n)
    evaluate, evaluate_mc, check = Evaluator.evaluate, Evaluator.evaluate_mc, Evaluator._check_stop

    def told(label):
        if label == args.sigterm_at and jax.process_index() == args.sigterm_process:
            os.kill(os.getpid(), signal.SIGTERM)

    def det(ev, *a, label="", **k):
        told(label)
        return evaluate(ev, *a, label=label, **k)

    def mc(ev, *a, label="", **k):
        told(label)
        return evaluate_mc(ev, *a, label=label, **k)

    def counted(ev, label):
        record["checks"].append(label)
        return check(ev, label)

    Evaluator.evaluate, Evaluator.evaluate_mc, Evaluator._check_stop = det, mc, counted
    record["result"] = train.train_and_evaluate(
        task(jax.process_index(), jax.process_count()), config(), args.workdir)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
