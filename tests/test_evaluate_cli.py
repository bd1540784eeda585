"""experiments.evaluate and experiments.generate on workdirs the ptb binary wrote: the
weights the run's own evaluations read (NT-ASGD's average), and workdirs whose record or
checkpoints do not describe one model refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import evaluate
from experiments import generate as generate_binary
from rnnreg_jax.train import checkpoint as ckpt_lib
from tests import data_fixtures as fx
from tests.train_helpers import run_tiny_ptb


@pytest.fixture(scope="module")
def ntasgd_run(tmp_path_factory):
    """The `tiny` preset under NT-ASGD on a text whose validation and test streams run
    backwards: the better it learns the training order, the worse validation gets (4.00,
    4.03, 4.07 here), so averaging starts (trigger n = 1) at epoch 3 and averages the
    last two: (workdir, data dir, the run's final metrics)."""

    root = tmp_path_factory.mktemp("ntasgd")
    data_dir, workdir = root / "data", root / "wd"
    words = [f"w{i}" for i in range(20)]
    forward, backward = (" " + " ".join(w) + " \n" for w in (words, words[::-1]))
    fx.write_ptb_word(data_dir, {"train": forward * 20, "valid": backward * 4,
                                 "test": backward * 4})
    final = run_tiny_ptb(workdir, data_dir, max_steps=0, num_epochs=5, optimizer="ntasgd",
                         ntasgd_nonmono=1, learning_rate=3.0, lr_schedule="constant")
    return str(workdir), str(data_dir), final


def _averaging(state):
    """The checkpoint's NT-ASGD state (a dict in the raw restored tree)."""
    (node,) = [s for s in state["opt_state"]["inner_state"]
               if isinstance(s, dict) and "avg_params" in s]
    return node


def test_evaluate_reads_the_averaged_weights_the_run_reported(ntasgd_run):
    """The run's final evaluation reads NT-ASGD's average; evaluate read the running
    weights, and printed other numbers than the run's."""
    workdir, data_dir, final = ntasgd_run
    state = ckpt_lib.restore_state(f"{workdir}/checkpoints", None)
    node = _averaging(state)
    assert bool(node["averaging"]) and int(node["count"]) > 0  # the trigger fired
    assert any(not np.allclose(a, p) for a, p in zip(jax.tree.leaves(node["avg_params"]),
                                                     jax.tree.leaves(state["params"]),
                                                     strict=True))
    again = evaluate.evaluate_workdir(workdir, data_dir=data_dir)
    for split in ("valid", "test"):
        assert again[split]["loss"] == pytest.approx(final[f"{split}/loss"], rel=1e-5)


def test_generate_reads_the_averaged_weights(ntasgd_run, monkeypatch):
    """The text comes from the average, which the run's evaluations read, not from the
    running weights."""
    import rnnreg_jax.generate

    workdir, data_dir, _ = ntasgd_run
    seen = []
    real = rnnreg_jax.generate.generate

    def spy(model, variables, *args, **kwargs):
        seen.append(variables["params"])
        return real(model, variables, *args, **kwargs)

    monkeypatch.setattr(rnnreg_jax.generate, "generate", spy)
    generate_binary.generate_workdir(workdir, length=3, temperature=0, data_dir=data_dir)
    state = ckpt_lib.restore_state(f"{workdir}/checkpoints", None)
    for got, want in zip(jax.tree.leaves(seen[0]),
                         jax.tree.leaves(_averaging(state)["avg_params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    return errors[0]


@pytest.mark.parametrize("tool", ["evaluate", "generate"])
def test_checkpoints_of_another_model_or_vocabulary_are_one_line(ntasgd_run, tmp_path,
                                                                  capsys, tool):
    """A record edited or copied over another run's checkpoints, and a --data_dir whose
    vocabulary has another size, ended in Flax's ScopeParamShapeError traceback."""
    workdir, data_dir, _ = ntasgd_run
    main = {"evaluate": evaluate.main, "generate": generate_binary.main}[tool]
    copy = tmp_path / "wd"
    shutil.copytree(workdir, copy)
    record = json.loads((copy / "config.json").read_text())
    record["config"]["model"]["hidden_sizes"] = [8, 8]
    (copy / "config.json").write_text(json.dumps(record))
    assert main([f"--workdir={copy}", f"--data_dir={data_dir}"]) == 2
    assert _one_error_line(capsys) == (
        f"error: The latest checkpoint in {copy} does not fit the model that config.json "
        "describes over this data (rnn/layer_0/b is float32[64] there but float32[32] in "
        "this model): the "
        "checkpoints of another run, or a --data_dir with another vocabulary.")
    line = " " + " ".join(f"v{i}" for i in range(30)) + " \n"
    other = fx.write_ptb_word(tmp_path / "other", {"train": line * 20, "valid": line * 4,
                                                   "test": line * 4}).parent
    assert main([f"--workdir={workdir}", f"--data_dir={other}"]) == 2
    assert ("(embed/embedding is float32[21, 16] there but float32[31, 16] in this model)"
            in _one_error_line(capsys))


@pytest.mark.parametrize("tool", ["evaluate", "generate"])
@pytest.mark.parametrize("config,why", [
    ({}, "its config has no 'model' block"),
    ({"model": {}, "data": {}, "reg": {}, "train": 3}, "its config's 'train' is not a JSON "
                                                       "object"),
    ({"model": {}, "data": {}, "reg": {}, "train": {}}, "its config's data block names no "
                                                        "dataset"),
])
def test_a_record_without_a_runs_blocks_is_one_line(ntasgd_run, tmp_path, capsys, tool,
                                                    config, why):
    """Beside real checkpoints, a hand-made record without the model, data, reg and train
    blocks ended in an AttributeError traceback."""
    workdir, data_dir, _ = ntasgd_run
    main = {"evaluate": evaluate.main, "generate": generate_binary.main}[tool]
    shutil.copytree(workdir, tmp_path / "wd")
    (tmp_path / "wd" / "config.json").write_text(json.dumps({"config": config}))
    assert main([f"--workdir={tmp_path / 'wd'}", f"--data_dir={data_dir}"]) == 2
    assert _one_error_line(capsys) == (
        f"error: {tmp_path / 'wd' / 'config.json'} is not a run record ({why}).")


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory):
    """One epoch of `tiny` at learning rate 100 without clipping: weights still finite,
    losses in the thousands of nats (perplexity past float range): (workdir, data dir,
    the run's final metrics)."""

    root = tmp_path_factory.mktemp("diverged")
    data_dir, workdir = root / "data", root / "wd"
    fx.write_repeated_ptb_word(data_dir)
    final = run_tiny_ptb(workdir, data_dir, max_steps=0, num_epochs=1, learning_rate=100.0,
                         clip_norm=0.0)
    return str(workdir), str(data_dir), final


def test_a_perplexity_past_float_range_shows_as_inf(diverged_run, capsys, tmp_path):
    """`--batch_mean_ppl` ended in math.exp's OverflowError traceback on a batch loss
    past 709.78 nats, and the printed line left an infinite perplexity out (the run's
    own log shows `ppl inf`)."""
    workdir, data_dir, final = diverged_run
    assert final["valid/loss"] > 710  # what the test is about
    out = tmp_path / "eval.json"
    assert evaluate.main([f"--workdir={workdir}", f"--data_dir={data_dir}",
                          "--batch_mean_ppl", f"--json={out}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    valid = next(line.split() for line in lines if line.startswith("  valid:"))
    shown = dict(zip(valid[1::2], valid[2::2], strict=True))
    assert shown["ppl"] == "inf" and shown["ppl_batch_mean"] == "inf"
    assert float(shown["loss"]) == pytest.approx(final["valid/loss"], rel=1e-3)
    # strict JSON (json.dumps wrote the token Infinity, which strict readers refuse), the
    # non-finite value as its text, as metrics.jsonl holds it
    written = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert written["valid"]["ppl"] == "inf" and written["valid"]["loss"] > 710


def test_a_record_with_a_retired_training_field_loads_and_passes_the_checks(tmp_path):
    """Runs recorded before train.eval_batch_size moved to the data block hold it; the
    training config's check refuses unknown fields, so re-evaluating them failed."""
    from experiments.configs.common import check_config

    root = Path(__file__).resolve().parent.parent
    shutil.copy(root / "results" / "runs" / "awd_small" / "config.json", tmp_path)
    assert "eval_batch_size" in json.loads((tmp_path / "config.json").read_text())[
        "config"]["train"]
    config = evaluate.load_config(str(tmp_path))
    assert "eval_batch_size" not in config.train
    check_config(config)
