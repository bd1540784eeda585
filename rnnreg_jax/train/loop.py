"""`train_and_evaluate`: the epoch loop, resume, LR rules and early stopping, stopping
before the end; the final evaluation (`final_eval`), checkpoints (`run_saves`), the
steps' metrics (`step_metrics`) and a non-finite loss (`non_finite`) have their own
modules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from rnnreg_jax.train import checkpoint as ckpt_lib
from rnnreg_jax.train import losses, optim, steps
from rnnreg_jax.train import mesh as mesh_lib
from rnnreg_jax.train.config import check as check_config
from rnnreg_jax.train.config import check_for_task, with_defaults
from rnnreg_jax.train.evaluation import flat_results, validation_history
from rnnreg_jax.train.evaluator import Evaluator, PassStopped
from rnnreg_jax.train.final_eval import FinalEvaluation
from rnnreg_jax.train.logging import MetricsLogger, read_metrics
from rnnreg_jax.train.non_finite import NonFiniteLossError, NonFiniteStop
from rnnreg_jax.train.ntasgd_switch import AveragingSwitch
from rnnreg_jax.train.run_saves import RunSaves
from rnnreg_jax.train.step_metrics import StepMetrics
from rnnreg_jax.train.stopping import RunStop
from rnnreg_jax.train.task import (
    Task,
    check_divides,
    check_shared_eval_batches,
    first_training_batch,
    steps_in_epoch,
    total_steps,
)

__all__ = ["NonFiniteLossError", "StartRefusedError", "train_and_evaluate"]


class StartRefusedError(ValueError):
    """The task and config cannot start (a batch that does not divide over the devices, a
    source that yields nothing, a `param_axes` name no layer has, settings the training
    step refuses as it is traced, ...): one sentence, raised before any step, the first
    problem chained as its cause."""


class _Run:
    """The mutable bookkeeping of one `train_and_evaluate` call."""

    def __init__(self, task: Task, config, workdir: str):
        self.task, self.config, self.workdir = task, config, workdir
        self.mesh = mesh_lib.make_mesh()
        self.tx = optim.make_optimizer(config)
        self.next_lr = optim.lr_rule(config)
        self.stop_on_nan = bool(config.stop_on_nan)
        sample = first_training_batch(task)
        check_divides(sample, self.mesh.devices.size, "The global training batch")
        check_shared_eval_batches(task, self.mesh.devices.size)
        self.batch_rows = sample["inputs"].shape[0]
        self.window = int(np.prod(sample["inputs"].shape[:2])) if task.kind == "lm" else None
        state = steps.init_state(task, config, self.mesh, self.tx, sample)
        self.ckpt = ckpt_lib.Checkpointer(workdir, config.keep_checkpoints)
        try:  # from here a failure must close orbax's managers (their threads outlive us)
            self._start(state, sample)
        except BaseException:
            self.ckpt.close()
            raise

    def _start(self, state, sample: dict) -> None:
        task, config, workdir = self.task, self.config, self.workdir
        restored = self.ckpt.restore_latest(state)
        self.resumed = restored is not None
        self.state = restored if restored is not None else state
        self.shardings = steps.state_shardings(self.state, self.mesh)
        self.train_step = steps.make_train_step(task, config, self.tx, self.mesh, self.shardings)
        # Settings that clash only in training mode (an input dropout mask on embed_to_gates'
        # pre-activations, lengths with batch statistics) fail as the step is traced: a
        # refusal here, before the logs are opened, not a traceback at the first step.
        self.train_step.trace(self.state, mesh_lib.global_batch(self.mesh, sample))
        self.evaluator = Evaluator.from_config(task, self.mesh, config)
        self.zero_carry = jax.jit(lambda c: jax.tree.map(jnp.zeros_like, c),
                                  out_shardings=self.shardings.carry, donate_argnums=0)
        self.epoch_end = jax.jit(steps.epoch_end_update, out_shardings=self.shardings,
                                 donate_argnums=0)
        self.logger = MetricsLogger(workdir, tensorboard=config.tensorboard)
        self.evaluator.progress = self.logger.console
        self.step = int(self.state.step)
        self.epoch = int(self.state.epoch)
        self.pos = int(self.state.batch_in_epoch)
        self.lr = float(self.state.learning_rate)
        self.best = float(self.state.best_metric)
        self.bad_epochs = int(self.state.bad_epochs)
        self.ntasgd = self._ntasgd_switch() if config.optimizer == "ntasgd" else None
        self.non_finite = NonFiniteStop(self.logger, workdir, self.stop_on_nan)
        self.metrics = StepMetrics(task, self.logger, total_steps(task, config), self.step)
        if self.resumed:
            self.metrics.last = mesh_lib.from_first_process(
                lambda: StepMetrics.last_logged(read_metrics(workdir), self.step))
        self.stopped = False  # by the time limit or SIGTERM: saved, final evaluation not (all) run
        self.stop_rules = RunStop(config.time_limit_s, config.log_every_steps)
        self.saves = RunSaves(self.ckpt, config, self.logger, self.non_finite,
                              last_saved=self.step if self.resumed else None)

    def _ntasgd_switch(self) -> AveragingSwitch:
        """NT-ASGD's host side; a resumed run's trigger hears the validation history it
        had (process 0 reads it from its metrics and tells the others)."""
        history: list[float] = []
        if self.resumed:
            history = mesh_lib.from_first_process(lambda: validation_history(
                read_metrics(self.workdir), self.task.validation_split,
                losses.task_metric(self.task.kind), self.epoch))
        return AveragingSwitch(self.state, self.shardings, self.config.ntasgd_nonmono,
                               history)

    def eval_params(self, state=None):
        """The weights to evaluate: NT-ASGD's average once averaging is on (the
        non-parameter `model_state`, e.g. BN population statistics, is the
        running one, not averaged)."""
        state = self.state if state is None else state
        if self.ntasgd is None:
            return state.params
        return self.ntasgd.eval_params(state)

    def flush(self) -> None:
        """Fetch and log the pending step metrics; a non-finite loss among them goes to
        `NonFiniteStop` (which raises, or halts the saves)."""
        non_finite = self.metrics.flush(self.step, self.epoch, self.lr)
        if non_finite is not None:
            value, step = non_finite
            self.non_finite.loss(value, step, self.epoch, self.saves.last_saved)

    def save(self, best: bool = False) -> None:
        """Checkpoint the state (`RunSaves.save`; `best`: also as the best one). The
        pending metrics are fetched first: a non-finite loss among them halts the saves."""
        self.flush()
        self.saves.save(self.state, self.step, self.epoch, best)

    # -- the loop ----------------------------------------------------------------------------
    def train(self) -> None:
        cfg, task = self.config, self.task
        carry_state = task.kind == "lm" and task.carry_state
        while self.epoch < cfg.num_epochs:
            spe = steps_in_epoch(task.train, self.epoch)
            if cfg.max_steps and self.step >= cfg.max_steps and self.pos < spe:
                return  # (at pos == spe the epoch's validation is still to run)
            if cfg.early_stop_patience and self.bad_epochs >= cfg.early_stop_patience:
                self.logger.console(f"Stopping early: {self.bad_epochs} epochs without "
                                    "validation improvement.")
                return
            if self.pos == 0 and carry_state:
                self.state = self.state.replace(carry=self.zero_carry(self.state.carry))
            if self.pos < spe:
                self._train_batches(spe)
            self.flush()
            if self.pos < spe:  # stopped by max_steps, the time limit or SIGTERM mid-epoch
                self.save()
                if self.stopped:
                    self._announce_stop()
                return
            if not self.end_epoch():  # SIGTERM during its validation: the epoch is saved
                self.save()  # trained (batch_in_epoch == its steps), to validate on resume
                self.stopped = True
                self._announce_stop(during="validation")
                return
            if self.epoch < cfg.num_epochs and self.stop_rules.in_training(self.step,
                                                                           epoch_end=True):
                self.stopped = True
                self._announce_stop()
                return

    def _train_batches(self, spe: int) -> None:
        """The epoch's steps from batch `pos` on, until its last (`spe`), `max_steps`, or
        a stop rule (then `stopped`); mid-epoch saves as they fall due."""
        cfg = self.config
        for batch in self.task.train.iterate(self.epoch, self.pos):
            if batch["inputs"].shape[0] != self.batch_rows:  # a smaller last batch
                check_divides(batch, self.mesh.devices.size,
                              f"Training batch {self.pos} of epoch {self.epoch + 1}")
            g = mesh_lib.global_batch(self.mesh, batch)
            self.state, metrics = self.train_step(self.state, g)
            self.step += 1
            self.pos += 1
            self.metrics.add(metrics)
            steps.throttle(self.mesh, self.step, metrics)
            if cfg.log_every_steps and self.step % cfg.log_every_steps == 0:
                self.flush()
            if self.pos < spe and self.saves.due(self.step):
                self.save()
            if (cfg.max_steps and self.step >= cfg.max_steps) or self.pos >= spe:
                return
            if self.stop_rules.in_training(self.step):
                self.stopped = True
                return
        # the source ran out before the steps it promised
        self.flush()
        self.save()
        raise ValueError(f"The training source yielded {self.pos} of the {spe} batches its "
                         f"steps_per_epoch promised for epoch {self.epoch + 1} (the steps so "
                         "far are saved).")

    def _announce_stop(self, during: str | None = None) -> None:
        """The `stopped` event (`during`: "validation" where the epoch was saved before
        its validation, which a resume runs first) and the console line."""
        why = self.stop_rules.reason()
        self.logger.write("stopped", self.step, self.epoch,
                          {"reason": why, **({"during": during} if during else {})})
        pending = f", its {during} to run first" if during else ""
        self.logger.console(f"Stopped by {why} at step {self.step} (epoch {self.epoch + 1}) "
                            f"with a checkpoint{pending}; rerun the same command to resume.")

    def end_epoch(self) -> bool:
        """Validate, update the LR rule, early stopping and NT-ASGD, save. False, with
        nothing changed, where SIGTERM ended the validation part-way."""
        cfg, task = self.config, self.task
        split = task.validation_split
        improved = False
        if split is not None:
            try:
                with self.stop_rules.passes_stop_on_sigterm(self.evaluator):
                    metrics = self.evaluator.evaluate(self.eval_params(), task.evals[split],
                                                      model_state=self.state.model_state,
                                                      label=f"epoch {self.epoch + 1} {split}")
            except PassStopped:
                return False
            value = metrics[losses.task_metric(task.kind)]
            as_best = _as_stored(value, self.state.best_metric)
            improved = optim.improved(as_best, self.best)
            if self.ntasgd is not None:
                self.state, started = self.ntasgd.after_validation(self.state, value)
                if started:
                    self.logger.console(f"epoch {self.epoch + 1}: NT-ASGD starts averaging.")
            metrics["lr"] = self.lr
            self.logger.write(split, self.step, self.epoch, dict(metrics, phase="epoch_end"))
            shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            self.logger.console(f"epoch {self.epoch + 1} {split}: {shown}")
        if improved:
            self.best, self.bad_epochs = as_best, 0
        else:
            self.bad_epochs += 1
        if split is not None or cfg.lr_schedule != "plateau":  # plateau needs a validation
            self.lr = _as_stored(self.next_lr(self.epoch + 1, self.lr, improved),
                                 self.state.learning_rate)
        self.epoch += 1
        self.pos = 0
        self.state = self.epoch_end(self.state, self.lr, self.best, self.bad_epochs, self.epoch)
        # An epoch saved before its validation (SIGTERM) keeps that checkpoint: orbax
        # holds one per step and a replacement would not be atomic. A resume from it
        # validates the epoch again (a repeated event; readers keep the last).
        self.save(best=improved)
        return True

    def final_eval(self) -> dict | None:
        """The final evaluation (`FinalEvaluation`): the final metrics, or None where
        SIGTERM ended it part-way (the passes done recorded; the run `stopped`)."""
        final = FinalEvaluation(self.task, self.config, self.workdir, self.logger,
                                self.evaluator, self.stop_rules, self.eval_params)
        state = final.state_to_evaluate(self.state, self.ckpt)
        results = final.run(state, self.step, self.epoch, self.resumed)
        if results is None:
            self.stopped = True
            self._announce_stop()
            return None
        return {"step": self.step, "epoch": self.epoch, "eval_epoch": int(state.epoch),
                **{f"train/{k}": v for k, v in self.metrics.last.items()},
                **flat_results(results)}

    def close(self) -> None:
        self.stop_rules.close()
        # Each closed even if the other fails (a full disk fails both): the error that
        # ended the run is the one to report.
        for close in (self.logger.close, self.ckpt.close):
            try:
                close()
            except Exception as err:  # noqa: BLE001
                logging.warning("Closing the run's files failed: %s", err)


def _as_stored(value: float, stored: jax.Array) -> float:
    """`value` rounded to the dtype of the state's `stored` copy (float32): the loop
    decides on what a resumed run reads back from the checkpoint, not on float64."""
    return float(np.asarray(value, stored.dtype))


def train_and_evaluate(task: Task, config, workdir: str) -> dict:
    """Train `task` under `config`, checkpointing in `workdir`; resume if possible.

    Args:
      task: what to train (`rnnreg_jax.train.Task`).
      config: an `ml_collections.ConfigDict`; missing fields take the values of
        `default_train_config()`.
      workdir: holds `checkpoints/`, `best/`, `metrics.jsonl` and `tb/`. A
        workdir with a checkpoint is resumed from its newest readable one.

    Returns:
      Final metrics: `"<split>/<metric>"` for every eval split (deterministic),
      `"<split>_mc/<metric>"` for MC evaluation, the last `"train/..."` log
      values, `"step"` and `"epoch"`. A run stopped by `time_limit_s` or SIGTERM
      returns `{"step", "epoch", "stopped": True}` after saving a checkpoint; SIGTERM
      during an epoch-end validation or the final evaluation ends that pass at its
      next batch (with several processes: within `stopping.EVAL_CHECK_BATCHES`):
      the epoch's training is saved, to be validated first on resume; each final pass
      done is recorded (the same call runs the rest).

    Raises:
      NonFiniteLossError: the training loss became NaN/inf (`stop_on_nan`).
      StartRefusedError: the task and config cannot start (nothing was trained).
      CheckpointMismatchError: the workdir's checkpoints are of another model.
    """
    config = with_defaults(config)
    check_config(config)
    check_for_task(config, task)
    mesh_lib.maybe_initialize_distributed(config.distributed)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # a local path or gs://...
    try:
        run = _Run(task, config, workdir)
    except ckpt_lib.CheckpointMismatchError:
        raise
    except ValueError as err:
        raise StartRefusedError(str(err)) from err
    try:
        if run.resumed:
            run.saves.repair_best(run.state, run.step, task.validation_split is not None)
            run.logger.write("resume", run.step, run.epoch, {"batch_in_epoch": run.pos})
            run.logger.console(f"Resumed from step {run.step} (epoch {run.epoch + 1}, "
                               f"batch {run.pos}) in {workdir}.")
        run.train()
        final = None if run.stopped else run.final_eval()
        if final is None:
            return {"step": run.step, "epoch": run.epoch, "stopped": True}
        return final
    finally:
        run.close()
