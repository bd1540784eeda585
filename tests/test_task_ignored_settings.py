"""`tasks.build_task` refuses settings it would ignore: carried state over windows drawn
in random order (each would start from another window's state) and for the classifiers
(pMNIST, sentiment), whose configs recorded the setting and ran without it, and Cornell
from TFDS."""

from __future__ import annotations

import pytest

from experiments.configs import common, pmnist, ptb, sentiment
from rnnreg_jax import tasks
from tests import data_fixtures as fx


def _build(config, data_dir):
    with config.unlocked():
        config.data.verify_checksums = False
    return tasks.build_task(config, common.regularization(config.reg), str(data_dir))


@pytest.mark.parametrize("batching", ["shuffled", "overlapping"])
def test_carried_state_over_windows_in_random_order_is_refused(tmp_path, batching):
    fx.write_repeated_ptb_word(tmp_path)
    config = ptb.tiny()  # carries its state over contiguous windows
    config.data.batch_size = config.data.eval_batch_size = 2
    config.data.seq_len = 4
    assert _build(config, tmp_path).carry_state
    config.data.batching = batching
    with pytest.raises(ValueError, match=rf"^train.carry_state carries the state from a "
                                         rf"window to the next of its stream, but "
                                         rf"data.batching={batching} draws windows in "
                                         rf"random order; .* set train.carry_state=False.$"):
        _build(config, tmp_path)
    config.train.carry_state = False  # the zoneout presets' protocol: streams at evaluation
    config.train.eval_carry_state = True
    assert _build(config, tmp_path).evaluation_carries_state


@pytest.mark.parametrize("preset, write", [(pmnist.tiny, fx.write_mnist),
                                           (sentiment.tiny, fx.write_cornell)])
@pytest.mark.parametrize("field", ["carry_state", "eval_carry_state"])
def test_carried_state_for_a_classifier_is_refused(tmp_path, preset, write, field):
    write(tmp_path)
    config = preset()
    with config.unlocked():
        config.data.validation_size = 8 if "validation_size" in config.data else None
        config.train[field] = True
    with pytest.raises(ValueError, match=r"^carry_state and eval_carry_state apply to "
                                         r"language models \(kind='lm'\) only"):
        _build(config, tmp_path)
    with config.unlocked():
        config.train[field] = False
    assert not _build(config, tmp_path).carry_state


def test_cornell_from_tfds_is_refused(tmp_path):
    """TFDS has no Cornell scale data: the setting was recorded and the files read."""
    fx.write_cornell(tmp_path)
    config = sentiment.tiny()
    config.data.source = "tfds"
    with pytest.raises(ValueError, match=r"^data.source=tfds applies to IMDB; the Cornell "
                                         r"scale data is read from files"):
        _build(config, tmp_path)
