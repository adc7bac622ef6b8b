"""A PoSE run (positions up to 4x the row length, skipped between chunks) trains with falling loss."""

import numpy as np
import pytest
from conftest import read_metrics
from repo_configs import load_config

from longjax.config import ConfigError, from_config_dict
from longjax.data import make_batches
from longjax.train.step import model_inputs


def test_pose_run_lowers_the_loss(runner, tmp_path):
  runner.train(tmp_path, {"train.num_steps": 16, "data.pose_target_length": 256, "data.pose_chunks": 2,
                          "train.checkpoint_every": 16})
  losses = [r["loss"] for r in read_metrics(tmp_path)]
  assert len(losses) == 16
  assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.5, losses


def test_target_must_exceed_the_training_length():
  config = load_config("tiny.py")
  config.data.pose_target_length = config.train.seq_len
  with pytest.raises(ConfigError, match=r"data\.pose_target_length=\d+ is invalid: must exceed train\.seq_len"):
    from_config_dict(config)


@pytest.mark.parametrize("cross_documents", [True, False])
def test_the_model_reads_the_pose_positions(runner, cross_documents):
  config = runner.config({"data.pose_target_length": 256, "model.attention.cross_documents": cross_documents})
  batch = next(make_batches(config.data, split=config.data.train_split, seq_len=64, global_batch_size=4, seed=0))
  np.testing.assert_array_equal(model_inputs(config.model, batch)["positions"], batch["pose_positions"])
  assert batch["pose_positions"].max() >= 64
