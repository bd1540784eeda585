"""The training engine: `train_and_evaluate(task, config, workdir)`.

    from rnnreg_jax import train
    task = train.Task(model=LanguageModel(...), kind="lm", train=ptb_train,
                      evals={"valid": ptb_valid, "test": ptb_test}, carry_state=True)
    config = train.default_train_config()
    config.num_epochs, config.lr_schedule = 13, "zaremba"
    final = train.train_and_evaluate(task, config, "runs/zaremba_small")

Modules: `task` (Task, DataSource), `config`, `state` (TrainState), `optim`
(optax chains, LR rules), `losses`, `mesh` (data parallelism), `steps`
(jitted steps), `evaluator` (Evaluator, MC dropout), `evaluation` (the final evaluation),
`checkpoint` (orbax), `logging`, `termination` (SIGTERM), `stopping` (when a run
stops early, agreed by every process), `ntasgd` (the optax transform), `ntasgd_switch`
(the loop's side of it), `workdir_lock`, `loop` (the epoch loop) with `step_metrics`,
`non_finite`, `run_saves` (its checkpoints) and `final_eval` (its final evaluation).
See docs/TRAINING.md.
"""

from rnnreg_jax.train.checkpoint import (
    Checkpointer,
    CheckpointMismatchError,
    CheckpointUnreadableError,
    CheckpointWriteError,
    restore_state,
)
from rnnreg_jax.train.config import default_train_config, with_defaults
from rnnreg_jax.train.evaluator import Evaluator
from rnnreg_jax.train.loop import NonFiniteLossError, StartRefusedError, train_and_evaluate
from rnnreg_jax.train.mesh import global_batch, make_mesh, maybe_initialize_distributed
from rnnreg_jax.train.optim import make_optimizer, next_learning_rate
from rnnreg_jax.train.state import TrainState
from rnnreg_jax.train.steps import init_state, make_train_step, state_shardings
from rnnreg_jax.train.task import DataSource, Task

__all__ = [
    "CheckpointMismatchError", "CheckpointUnreadableError", "CheckpointWriteError",
    "Checkpointer", "DataSource",
    "Evaluator", "NonFiniteLossError", "StartRefusedError", "Task", "TrainState",
    "default_train_config", "global_batch", "init_state", "make_mesh", "make_optimizer",
    "make_train_step", "maybe_initialize_distributed", "next_learning_rate", "restore_state",
    "state_shardings", "train_and_evaluate", "with_defaults",
]
