"""Evaluate a run's checkpoint again, under its own config or with overrides.

    python -m experiments.evaluate --workdir=DIR [--checkpoint=best|latest]
        [--config.train.eval_carry_state=True ...] [--batch_mean_ppl] [--data_dir=DIR]
        [--json=FILE]

Reads `DIR/config.json` and the newest checkpoint under `DIR/best` or
`DIR/checkpoints`: by default the model the run reports (`default_checkpoint`:
the best validation one where the run's config selects it, by early stopping or
`train.report_best`, else the latest, as Zaremba's and Gal's scripts test the
final model; NT-ASGD's averaged weights once its run averages), rebuilds the task with the
`--config.<field>=VALUE` overrides (the training binaries' syntax; `--set FIELD=VALUE`
is its older spelling), and prints every evaluation split's metrics (plus MC dropout
where `train.mc_samples` and `train.mc_splits` ask for it). Nothing in DIR is written:
use it to compare evaluation protocols (state carried or not, MC samples) on a trained
model.
Model, data and regularization overrides would evaluate another model than
the one trained and are refused, except the evaluation batch sizes.

`--batch_mean_ppl` adds, for language models, `ppl_batch_mean`: the mean over
evaluation batches of each batch's perplexity, which is what Blocks' monitors
(the zoneout authors' code) report; it is never below the perplexity of the
mean loss when the batches are equal (Jensen), and shows by how much.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence

import ml_collections

from experiments import run_record
from experiments.flag_parsing import (
    DATA_DIR_REMEDY,
    NO_FILE_REMEDY,
    ArgumentParser,
    refuse_empty,
)

# Data fields that only shape evaluation (batch sizes of the evaluation streams).
EVALUATION_DATA_FIELDS = ("data.eval_batch_size", "data.test_batch_size")


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The run's config, its train block completed with today's defaults (so fields
    added to the code after the run can be overridden) and without the fields retired
    since."""
    from experiments.cli import REQUIRED_BLOCKS
    from experiments.configs.common import train_config
    from rnnreg_jax.train.config import known_fields

    try:
        stored = run_record.read(workdir)["config"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{run_record.path_of(workdir)} does not exist; pass the "
                                "workdir of a run.") from None
    except run_record.NotARunFolder:
        raise ValueError(f"--workdir={workdir} is a file, not a run's folder.") from None
    # A hand-made or foreign record: one sentence here, not an AttributeError where a
    # block is first read.
    for block in REQUIRED_BLOCKS:
        if not isinstance(stored.get(block), dict):
            why = (f"its config has no {block!r} block" if block not in stored else
                   f"its config's {block!r} is not a JSON object")
            raise run_record.NotARunRecord(run_record.path_of(workdir), why)
    if not isinstance(stored["data"].get("dataset"), str):
        raise run_record.NotARunRecord(run_record.path_of(workdir),
                                       "its config's data block names no dataset")
    # A field the code has since retired (train.eval_batch_size, now the data block's) is
    # read by nothing, and the training config's check would refuse it.
    train, known = train_config(), set(known_fields())
    with train.unlocked():
        for key, value in stored.get("train", {}).items():
            if key in known:
                train[key] = value
    stored["train"] = train.to_dict()
    return ml_collections.ConfigDict(stored)


def default_checkpoint(config: ml_collections.ConfigDict) -> str:
    """"best" where the run's final evaluation reads the best validation checkpoint
    (early stopping or `train.report_best`, which records from before it lack), else
    "latest"."""
    train = config.get("train") or {}
    best = train.get("early_stop_patience") or train.get("report_best", False)
    return "best" if best else "latest"


def restore_checkpoint(workdir: str, checkpoint: str, fall_back: bool) -> tuple[dict, str]:
    """The newest state under `DIR/best` ("best") or `DIR/checkpoints` ("latest"), and the
    name of the one read: with `fall_back`, "best" falls back to the latest where best/ is
    empty (as the run's final evaluation does)."""
    from rnnreg_jax.train import checkpoint as ckpt_lib

    folder = {"best": "best", "latest": "checkpoints"}[checkpoint]
    state = ckpt_lib.restore_state(os.path.join(workdir, folder), None)
    if state is None and fall_back and checkpoint == "best":
        checkpoint, folder = "latest", "checkpoints"
        state = ckpt_lib.restore_state(os.path.join(workdir, folder), None)
    if state is None:
        raise FileNotFoundError(f"No checkpoint under {os.path.join(workdir, folder)}.")
    return state, checkpoint


def reported_params(state: dict):
    """The weights a run's evaluations read, from a restored (raw) state: NT-ASGD's
    running average once averaging is on and has seen an update, as the training loop's
    final evaluation reads them (`ntasgd.averaged_params`), else the parameters."""
    from rnnreg_jax.train import ntasgd

    opt_state = ntasgd.typed_states(state.get("opt_state"))
    if not ntasgd.uses_ntasgd(opt_state):
        return state["params"]
    return ntasgd.averaged_params(opt_state, state["params"])


def check_fits(model, inputs, language_model: bool, params, where: str) -> None:
    """A one-sentence ValueError where `params` (read from `where`, a checkpoint) are not
    the arrays of `model` over `inputs` (one batch; its shape past the batch axis
    matters): checkpoints of another run, or a data folder of another vocabulary (which
    sets the embedding's and the softmax's size), made a Flax traceback."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rnnreg_jax.train.checkpoint import tree_difference

    x = np.asarray(inputs)
    x1 = jnp.zeros((1, *x.shape[1:]), x.dtype)
    args = (x1, None) if language_model else (x1,)
    wanted = jax.eval_shape(
        lambda key: model.init({"params": key}, *args, deterministic=True)["params"],
        jax.random.PRNGKey(0))
    diff = tree_difference(params, wanted)  # the training engine's own comparison
    if diff:
        raise ValueError(f"{where} does not fit the model that config.json describes "
                         f"over this data ({diff}): the checkpoints of another run, or a "
                         "--data_dir with another vocabulary.")


def evaluate_workdir(workdir: str, overrides: Sequence[str] = (), checkpoint: str | None = None,
                     data_dir: str | None = None,
                     batch_mean_ppl: bool = False) -> dict[str, dict[str, float]]:
    """split (and `<split>_mc`) -> metrics of the checkpoint under the overridden config,
    as the run's final evaluation computes them (`rnnreg_jax.train.evaluation.evaluate_all`);
    `batch_mean_ppl` adds each split's mean per-batch perplexity (language models).
    `checkpoint` None: the run's own (`default_checkpoint` of its stored config; the
    latest where best/ is empty, as the final evaluation falls back); "checkpoint" in
    the result names the one read."""
    from experiments import cli
    from experiments.configs.common import check_config, regularization
    from rnnreg_jax.tasks import build_task
    from rnnreg_jax.train import losses
    from rnnreg_jax.train import mesh as mesh_lib
    from rnnreg_jax.train.config import check_for_task
    from rnnreg_jax.train.evaluation import evaluate_all
    from rnnreg_jax.train.evaluator import Evaluator

    config = load_config(workdir)
    explicit = checkpoint is not None
    if checkpoint is None:  # from the stored config, before the overrides change it
        checkpoint = default_checkpoint(config)
    for item in overrides:
        field, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"An override takes --config.FIELD=VALUE, got {item!r}.")
        if field.split(".")[0] != "train" and field not in EVALUATION_DATA_FIELDS:
            raise ValueError(f"Only train.* fields and {', '.join(EVALUATION_DATA_FIELDS)} may "
                             f"change on re-evaluation, not {field!r}: the checkpoint holds "
                             "the model that model/data/reg describe.")
        cli.apply_override(config, field, text)
    check_config(config)  # the overrides as the training binaries check them
    state, checkpoint = restore_checkpoint(workdir, checkpoint, fall_back=not explicit)
    task = build_task(config, regularization(config.reg), data_dir)
    check_for_task(config.train, task, "config.train")
    if batch_mean_ppl and task.kind != "lm":
        raise ValueError(f"--batch_mean_ppl applies to language models; {workdir} holds a "
                         f"{task.kind} run.")
    params = reported_params(state)
    batch = next((b for source in task.evals.values() for b in source.iterate(0)), None)
    if batch is not None:  # the model's input shape, past the batch axis
        check_fits(task.model, batch["inputs"], task.kind == "lm", params,
                   f"The {checkpoint} checkpoint in {workdir}")
    evaluator = Evaluator.from_config(task, mesh_lib.make_mesh(), config.train)
    # a long pass (MC dropout over a whole test stream) says how it goes, on stderr
    evaluator.progress = lambda message: print(message, file=sys.stderr, flush=True)
    # Blocks' perplexity comes from the same pass, so it pairs with each split's `ppl`.
    batch_ppls: dict[str, list[float]] = {}

    def collect(split, metrics):
        batch_ppls.setdefault(split, []).append(losses.perplexity(metrics["loss"]))

    # The training loop's own final evaluation: same splits, protocol and MC keys.
    out = evaluate_all(task, evaluator, params, state.get("model_state") or {},
                       config.train,
                       on_batch=collect if batch_mean_ppl else None)
    for split, ppls in batch_ppls.items():
        out[split]["ppl_batch_mean"] = sum(ppls) / len(ppls)
    out["checkpoint"] = {"name": checkpoint, "epoch": int(state["epoch"]),
                         "step": int(state["step"])}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m experiments.evaluate", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a run's workdir")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default=None,
                        help="default: the one the run reports (best validation where its "
                             "config selects it, else latest)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="deprecated spelling of --config.FIELD=VALUE")
    parser.add_argument("--batch_mean_ppl", action="store_true",
                        help="also the mean of per-batch perplexities (language models)")
    parser.add_argument("--data_dir", default=None,
                        help="data folder (default: $RNNREG_DATA_DIR, then the cache)")
    parser.add_argument("--json", default=None, help="also write the metrics here")
    parser.epilog = ("--config.FIELD=VALUE  override a train.* field (or the evaluation batch "
                     "sizes), e.g. --config.train.eval_carry_state=True")
    args, rest = parser.parse_known_args(argv)
    refuse_empty({"workdir": (args.workdir, "pass the workdir of a run"),
                  "data_dir": (args.data_dir, DATA_DIR_REMEDY),
                  "json": (args.json, NO_FILE_REMEDY)})
    overrides = list(args.set)
    words = iter(rest)
    for word in words:  # --config.x=v or --config.x v, as the training binaries take them
        if not word.startswith("--config."):
            parser.error(f"unrecognized arguments: {word}")
        field, sep, text = word[len("--config."):].partition("=")
        if not sep:
            value = next(words, None)
            if value is None:
                parser.error(f"{word} needs a value: {word}=VALUE")
            text = value
        overrides.append(f"{field}={text}")
    from rnnreg_jax.data import DataError

    if args.json:  # checked before the evaluation, which may take minutes
        folder = os.path.dirname(os.path.abspath(args.json))
        try:
            os.makedirs(folder, exist_ok=True)
            writable = os.access(args.json if os.path.exists(args.json) else folder, os.W_OK)
            reason = "permission denied"
        except OSError as err:
            writable, reason = False, err.strerror or str(err)
        if not writable or os.path.isdir(args.json):
            print(f"error: cannot write --json={args.json} "
                  f"({'a directory' if os.path.isdir(args.json) else reason}).",
                  file=sys.stderr)
            return 2
    try:
        results = evaluate_workdir(args.workdir, overrides, args.checkpoint, args.data_dir,
                                   args.batch_mean_ppl)
    except (ValueError, FileNotFoundError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    where = results["checkpoint"]
    print(f"{args.workdir} ({where['name']} checkpoint: epoch {where['epoch']}, "
          f"step {where['step']})"
          f"{' with ' + ' '.join('--config.' + o for o in overrides) if overrides else ''}")
    for split, metrics in results.items():
        if split != "checkpoint":
            # "ppl inf" as the run's own log shows it (a perplexity past 1e308 vanished)
            shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
            print(f"  {split}: {shown}")
    if args.json:  # strict JSON, as metrics.jsonl: a non-finite value as its text ("inf")
        clean = {split: {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v
                         for k, v in metrics.items()} if isinstance(metrics, dict) else metrics
                 for split, metrics in results.items()}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(clean, f, indent=1, allow_nan=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
