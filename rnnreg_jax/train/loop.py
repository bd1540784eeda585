"""`train_and_evaluate`: the epoch loop, resume, LR rules, logs, final evaluation."""

from __future__ import annotations

import math
import os
import time

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
from rnnreg_jax.train.evaluation import (
    evaluate_all,
    final_passes,
    flat_results,
    recorded_passes,
    validation_history,
)
from rnnreg_jax.train.evaluator import Evaluator, PassStopped
from rnnreg_jax.train.logging import MetricsLogger, progress_line, read_metrics
from rnnreg_jax.train.ntasgd_switch import AveragingSwitch
from rnnreg_jax.train.save_clock import SaveClock
from rnnreg_jax.train.stopping import RunStop
from rnnreg_jax.train.task import (
    Task,
    check_divides,
    check_shared_eval_batches,
    first_training_batch,
    steps_in_epoch,
)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class StartRefusedError(ValueError):
    """The task and config cannot start (a batch that does not divide over the devices, a
    source that yields nothing, a `param_axes` name no layer has, ...): one sentence,
    raised before any step, the first problem chained as its cause."""


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
            self._start(state)
        except BaseException:
            self.ckpt.close()
            raise

    def _start(self, state) -> None:
        task, config, workdir = self.task, self.config, self.workdir
        restored = self.ckpt.restore_latest(state)
        self.resumed = restored is not None
        self.state = restored if restored is not None else state
        self.shardings = steps.state_shardings(self.state, self.mesh)
        self.train_step = steps.make_train_step(task, config, self.tx, self.mesh, self.shardings)
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
        self.state_is_finite = jax.jit(steps.all_finite)
        self.pending: list = []
        self.last_saved = self.step if self.resumed else None
        self.last_train: dict = {}
        self.total_steps = sum(steps_in_epoch(task.train, e) for e in range(config.num_epochs))
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.t_last, self.step_last = time.time(), self.step
        self.stopped = False  # by the time limit or SIGTERM: saved, final evaluation not (all) run
        self.stop_rules = RunStop(config.time_limit_s, config.log_every_steps)
        self.save_clock = SaveClock(config.checkpoint_every_s, config.log_every_steps)

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

    def final_state(self):
        """The state the final evaluation reads. With early stopping on, or
        `report_best` (a config field the experiments add; absent: False), the best
        validation checkpoint: early stopping selects that model, and the papers
        that use it (zoneout) report its numbers; the last epoch's model is up to
        `early_stop_patience` epochs past it. Otherwise the current state."""
        best_model = self.config.early_stop_patience or self.config.get("report_best", False)
        if not best_model or self.task.validation_split is None:
            return self.state
        best = self.ckpt.restore_best(self.state)
        if best is None:
            return self.state
        self.logger.console(f"Final evaluation on the best validation checkpoint "
                            f"(epoch {int(best.epoch)}, step {int(best.step)}).")
        return best

    # -- training metrics, NaN check -------------------------------------------------------
    def flush(self) -> None:
        """Fetch pending step metrics, raise on a non-finite loss, log an event."""
        if not self.pending:
            return
        fetched = jax.device_get(self.pending)
        first_step = self.step - len(fetched) + 1
        for i, m in enumerate(fetched):
            value = float(m["objective"])
            if not math.isfinite(value):
                self.pending = []
                self._non_finite(value, first_step + i)
                return
        self.pending = []
        metrics = losses.summarize_steps(self.task.kind, fetched, self.task.target_scale)
        metrics["lr"] = self.lr
        now = time.time()
        dt = max(now - self.t_last, 1e-9)
        unit = "tokens" if self.task.kind == "lm" else "examples"
        rate = metrics.pop("count") / dt
        steps_per_s = (self.step - self.step_last) / dt
        metrics[f"{unit}_per_sec"] = rate
        metrics["steps_per_sec"] = steps_per_s
        self.t_last, self.step_last = now, self.step
        self.last_train = metrics
        self.logger.write("train", self.step, self.epoch, metrics)
        eta = (self.total_steps - self.step) / steps_per_s if steps_per_s > 0 else math.inf
        self.logger.console(progress_line(self.epoch, self.step, self.total_steps, metrics,
                                          rate, unit, eta))

    def _kept(self) -> str:
        if self.last_saved is None:
            return "no checkpoint had been saved yet"
        return (f"the last good checkpoint (step {self.last_saved}) is kept in "
                f"{os.path.join(self.workdir, 'checkpoints')}")

    def _non_finite(self, value: float, step: int) -> None:
        message = (f"The training loss became {value} at step {step} (epoch {self.epoch + 1}); "
                   f"the run stopped and {self._kept()}.")
        self._stop(message, {"objective": value, "error_message": message}, step)

    def _stop(self, message: str, event: dict, step: int | None = None) -> None:
        """Log why the run cannot go on; raise (`stop_on_nan`) or save nothing more."""
        self.logger.write("train", self.step if step is None else step, self.epoch, event)
        if self.stop_on_nan:
            raise NonFiniteLossError(message)
        self.logger.console("WARNING: " + message)
        self.skip_saves = True

    skip_saves = False

    def save(self, best: bool = False) -> None:
        """Checkpoint the state; `best`: also as the best one, written first. A kill
        between the two writes then leaves best/ at this step and the latest checkpoint
        one epoch back, whose resumed run ends the epoch in the same state again."""
        self.flush()  # never save a non-finite state: the loss lags the update by a step,
        if self.skip_saves:  # so the state itself is checked too
            return
        if not bool(self.state_is_finite(self.state.params, self.state.opt_state)):
            self._non_finite_state()
            return
        if best:
            self.ckpt.save_best(self.state, self.step)
        self.ckpt.save(self.state, self.step)
        self.last_saved = self.step
        self.save_clock.saved()

    def repair_best(self) -> None:
        """A resumed epoch-end checkpoint that improved on the validation metric
        (`bad_epochs` 0) is the best state: write it to best/ if a kill between the two
        epoch-end writes of an earlier version of this engine (latest first) lost it."""
        s = self.state
        if (self.task.validation_split is None or int(s.batch_in_epoch) != 0
                or int(s.epoch) == 0 or int(s.bad_epochs) != 0):
            return
        if max(self.ckpt.best.all_steps(), default=-1) >= self.step:
            return
        self.ckpt.save_best(s, self.step)
        self.logger.console(f"Wrote best/{self.step}: the checkpoint of step {self.step} is "
                            "the best validation one and best/ lacked it.")

    def _non_finite_state(self) -> None:
        message = (f"The parameters or optimizer state became non-finite by step {self.step} "
                   f"(epoch {self.epoch + 1}); the run stopped and {self._kept()}.")
        self._stop(message, {"error_message": message})

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
            self.pending.append(metrics)
            steps.throttle(self.mesh, self.step, metrics)
            if cfg.log_every_steps and self.step % cfg.log_every_steps == 0:
                self.flush()
            if self.pos < spe and self._save_due():
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

    def _save_due(self) -> bool:
        """A mid-epoch save after this step: every `checkpoint_every_steps` steps, and
        `checkpoint_every_s` seconds after the last save (the same answer on every
        process: the step rule needs none, the clock's is a collective all make)."""
        every = self.config.checkpoint_every_steps
        by_steps = bool(every) and self.step % every == 0
        return self.save_clock.due(self.step) or by_steps

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
            improved = optim.improved(value, self.best)
            if self.ntasgd is not None:
                self.state, started = self.ntasgd.after_validation(self.state, value)
                if started:
                    self.logger.console(f"epoch {self.epoch + 1}: NT-ASGD starts averaging.")
            metrics["lr"] = self.lr
            self.logger.write(split, self.step, self.epoch, dict(metrics, phase="epoch_end"))
            shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            self.logger.console(f"epoch {self.epoch + 1} {split}: {shown}")
        if improved:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if split is not None or cfg.lr_schedule != "plateau":  # plateau needs a validation
            self.lr = self.next_lr(self.epoch + 1, self.lr, improved)
        self.epoch += 1
        self.pos = 0
        self.state = self.epoch_end(self.state, self.lr, self.best, self.bad_epochs, self.epoch)
        # An epoch saved before its validation (SIGTERM) keeps that checkpoint: orbax
        # holds one per step and a replacement would not be atomic. A resume from it
        # validates the epoch again (a repeated event; readers keep the last).
        self.save(best=improved)
        return True

    def final_eval(self) -> dict | None:
        """The final evaluation, each pass recorded as it ends; passes recorded before
        for this step and model (a run that died or got SIGTERM mid-way, resumed) are
        not run again (process 0 reads them and tells the others: every process must
        run the same passes). SIGTERM ends it part-way (`RunStop.passes_stop_on_sigterm`);
        then None, the passes done recorded."""
        state = self.final_state()
        eval_epoch = int(state.epoch)
        passes = final_passes(self.task, self.config)
        signatures = {p.name: p.signature for p in passes}
        done = {}
        if self.resumed:
            done = mesh_lib.from_first_process(lambda: recorded_passes(
                read_metrics(self.workdir), passes, self.step, eval_epoch))
        for name, metrics in done.items():
            self._show(name, metrics, " (recorded before)")

        def record(name, metrics):
            event = dict(metrics, phase="final", eval_epoch=eval_epoch)
            if signatures[name] is not None:
                event["evaluated_as"] = signatures[name]
            self.logger.write(name, self.step, self.epoch, event)
            self._show(name, metrics)

        with self.stop_rules.passes_stop_on_sigterm(self.evaluator):
            results = evaluate_all(self.task, self.evaluator, self.eval_params(state),
                                   state.model_state, self.config, done=done,
                                   on_result=record, should_stop=self.stop_rules.between_passes)
        if len(results) < len(passes):
            self.stopped = True
            self._announce_stop()
            return None
        return {"step": self.step, "epoch": self.epoch, "eval_epoch": eval_epoch,
                **{f"train/{k}": v for k, v in self.last_train.items()},
                **flat_results(results)}

    def _show(self, name, metrics, note=""):
        # a recorded non-finite value comes back from metrics.jsonl as the text "inf"
        shown = " ".join(f"{k} {v:.4g}" if isinstance(v, int | float) else f"{k} {v}"
                         for k, v in metrics.items())
        self.logger.console(f"final {name}: {shown}{note}")

    def close(self) -> None:
        self.stop_rules.close()
        # Each closed even if the other fails (a full disk fails both): the error that
        # ended the run is the one to report.
        for close in (self.logger.close, self.ckpt.close):
            try:
                close()
            except Exception as err:  # noqa: BLE001
                logging.warning("Closing the run's files failed: %s", err)


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
            run.repair_best()
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
