"""The training run's side of the final evaluation (`evaluation`): which state it reads
(the best validation checkpoint or the last state), each pass recorded as it ends, the
passes a resumed run recorded before not run again, and SIGTERM ending it part-way."""

from __future__ import annotations

from collections.abc import Callable

from rnnreg_jax.train import mesh as mesh_lib
from rnnreg_jax.train.checkpoint import Checkpointer
from rnnreg_jax.train.evaluation import evaluate_all, final_passes, recorded_passes
from rnnreg_jax.train.evaluator import Evaluator
from rnnreg_jax.train.logging import MetricsLogger, read_metrics
from rnnreg_jax.train.stopping import RunStop
from rnnreg_jax.train.task import Task


class FinalEvaluation:
    """The final evaluation of one run.

    Args:
      task, config, workdir: the run's.
      logger: records and shows each pass as it ends.
      evaluator: the run's `Evaluator`.
      stop_rules: the run's `RunStop` (SIGTERM ends the evaluation part-way).
      eval_params: the weights to evaluate of a state (NT-ASGD's average once on).
    """

    def __init__(self, task: Task, config, workdir: str, logger: MetricsLogger,
                 evaluator: Evaluator, stop_rules: RunStop, eval_params: Callable):
        self.task, self.config, self.workdir = task, config, workdir
        self.logger, self.evaluator, self.stop_rules = logger, evaluator, stop_rules
        self.eval_params = eval_params

    def state_to_evaluate(self, state, ckpt: Checkpointer):
        """With early stopping on, or `report_best` (a config field the experiments add;
        absent: False), the best validation checkpoint: early stopping selects that
        model, and the papers that use it (zoneout) report its numbers; the last epoch's
        model is up to `early_stop_patience` epochs past it. Otherwise `state`."""
        best_model = self.config.early_stop_patience or self.config.get("report_best", False)
        if not best_model or self.task.validation_split is None:
            return state
        best = ckpt.restore_best(state)
        if best is None:
            return state
        self.logger.console(f"Final evaluation on the best validation checkpoint "
                            f"(epoch {int(best.epoch)}, step {int(best.step)}).")
        return best

    def run(self, state, step: int, epoch: int, resumed: bool) -> dict | None:
        """Every pass on `state` at the run's `step` and `epoch`: the results by pass
        name (`evaluate_all`), each pass recorded as it ends. A `resumed` run (one that
        died or got SIGTERM mid-way) does not run again the passes recorded for this step
        and model (process 0 reads them and tells the others: every process must run the
        same passes). SIGTERM ends it part-way (`RunStop.passes_stop_on_sigterm`); then
        None, the passes done recorded."""
        eval_epoch = int(state.epoch)
        passes = final_passes(self.task, self.config)
        signatures = {p.name: p.signature for p in passes}
        done = {}
        if resumed:
            done = mesh_lib.from_first_process(lambda: recorded_passes(
                read_metrics(self.workdir), passes, step, eval_epoch))
        for name, metrics in done.items():
            self._show(name, metrics, " (recorded before)")

        def record(name, metrics):
            event = dict(metrics, phase="final", eval_epoch=eval_epoch)
            if signatures[name] is not None:
                event["evaluated_as"] = signatures[name]
            self.logger.write(name, step, epoch, event)
            self._show(name, metrics)

        with self.stop_rules.passes_stop_on_sigterm(self.evaluator):
            results = evaluate_all(self.task, self.evaluator, self.eval_params(state),
                                   state.model_state, self.config, done=done,
                                   on_result=record, should_stop=self.stop_rules.between_passes)
        return None if len(results) < len(passes) else results

    def _show(self, name, metrics, note=""):
        # a recorded non-finite value comes back from metrics.jsonl as the text "inf"
        shown = " ".join(f"{k} {v:.4g}" if isinstance(v, int | float) else f"{k} {v}"
                         for k, v in metrics.items())
        self.logger.console(f"final {name}: {shown}{note}")
