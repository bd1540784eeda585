"""An experiment binary that SIGKILLs itself at a given moment (tests/test_resume_after_kill.py).

    python tests/kill_at_script.py MOMENT experiments.ptb --workdir=... [flags]

MOMENT: "step:N" (once training step N is dispatched), "pass:WORDS:N" (as the Nth batch
but the first of an evaluation pass whose label holds WORDS begins), or "none".
"""

from __future__ import annotations

import os
import runpy
import signal
import sys


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _at_step(step: int) -> None:
    from rnnreg_jax.train import steps

    throttle = steps.throttle

    def killing(mesh, at, value):
        throttle(mesh, at, value)
        if at == step:
            _die()

    steps.throttle = killing


def _in_pass(words: str, nth: int) -> None:
    from rnnreg_jax.train.evaluator import Evaluator

    check, seen = Evaluator._check_stop, [0]

    def killing(self, label):
        if words in label:
            seen[0] += 1
            if seen[0] == nth:
                _die()
        return check(self, label)

    Evaluator._check_stop = killing


def main() -> None:
    moment, module, *flags = sys.argv[1:]
    kind, *args = moment.split(":")
    if kind == "step":
        _at_step(int(args[0]))
    elif kind == "pass":
        _in_pass(args[0], int(args[1]))
    sys.argv = [module, *flags]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
