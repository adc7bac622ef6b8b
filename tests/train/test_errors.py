"""What a user can get wrong ends in one line `error: ...` and exit status 2; damaged or diverging runs
keep their last good checkpoint."""

import glob
import os

import jax
import numpy as np
import pytest
from conftest import assert_user_error, checkpoint_steps, read_metrics

from longjax import checkpoint


def _bad_input(tmp_path, case):
  """(extra overrides, fragments the error line must contain) of each bad input."""
  if case == "empty_text_dir":
    (tmp_path / "empty").mkdir()
    return {"data.text_dir": str(tmp_path / "empty")}, ["data.text_dir=", "no non-empty files"]
  if case == "missing_text_dir":
    return {"data.text_dir": str(tmp_path / "missing")}, ["data.text_dir=", "not a directory"]
  if case == "unknown_tfds_name":
    return {"data.source": "tfds", "data.tfds_name": "no_such_dataset_xyz"}, ["data.tfds_name='no_such_dataset_xyz'"]
  if case == "unknown_config_key":
    return {"model.no_such_key": 1}, ["no_such_key"]
  if case == "bad_config_value":
    return {"model.num_kv_heads": 3}, ["model.num_kv_heads=3", "num_heads"]
  raise ValueError(case)


@pytest.mark.parametrize("case", ["empty_text_dir", "missing_text_dir", "unknown_tfds_name", "unknown_config_key",
                                  "bad_config_value"])
def test_bad_input_is_one_line_and_exit_2(runner, tmp_path, case):
  extra, fragments = _bad_input(tmp_path, case)
  proc = runner.train(tmp_path / "workdir", {"train.num_steps": 2, **extra}, check=False)
  assert_user_error(proc, *fragments)
  assert "Traceback" not in proc.stderr


def _files(workdir):
  return {path: os.path.getsize(path) for path in glob.glob(os.path.join(workdir, "**"), recursive=True)
          if os.path.isfile(path)}


def test_another_model_shape_names_the_parameter_and_changes_nothing(runner, trained_copy):
  before = _files(trained_copy)
  with open(os.path.join(trained_copy, "config.json")) as f:
    config_json = f.read()
  proc = runner.train(trained_copy, {"train.num_steps": 40, "model.hidden_size": 32}, check=False)
  assert_user_error(proc, "['embed_tokens']['embedding']", "(259, 64)", "(259, 32)")
  assert "Traceback" not in proc.stderr
  with open(os.path.join(trained_copy, "config.json")) as f:
    assert f.read() == config_json  # the run that failed did not overwrite what the checkpoints were made by
  assert _files(trained_copy) == before


def _corrupt_arrays(step_dir):
  files = glob.glob(os.path.join(step_dir, "params", "**", "d", "*"), recursive=True)
  assert files
  for path in files:
    os.truncate(path, os.path.getsize(path) // 2)


def _delete_metadata(step_dir):
  os.remove(os.path.join(step_dir, "params", "_METADATA"))


@pytest.mark.parametrize("corrupt", [_corrupt_arrays, _delete_metadata], ids=["truncated_arrays", "no_metadata"])
def test_corrupted_newest_checkpoint_falls_back_to_the_previous_one(runner, trained_copy, corrupt):
  corrupt(os.path.join(trained_copy, "checkpoints", "30"))
  proc = runner.train(trained_copy, {"train.num_steps": 32})
  assert "checkpoints/30 does not restore" in proc.stderr
  steps = [r["step"] for r in read_metrics(trained_copy)]
  assert steps == list(range(1, 31)) + list(range(21, 33))  # resumed after step 20, and went on to the end
  # The damaged step is set aside (not deleted), so that step 30 could be saved again.
  assert checkpoint_steps(trained_copy) == [20, 30, 32]
  assert os.path.isdir(os.path.join(trained_copy, "checkpoints", "30.unrestorable"))


def _restore_params(workdir, step):
  checkpointer = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    return jax.device_get(checkpointer.restore_params(step=step)[1])
  finally:
    checkpointer.close()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(runner, trained_workdir, trained_copy):
  before = _files(os.path.join(trained_copy, "checkpoints"))
  proc = runner.train(trained_copy, {"train.num_steps": 40, "train.learning_rate": 1e30}, check=False)
  line = assert_user_error(proc, "last good checkpoint (step 30)")
  failed_step = int(line.split(" at step ")[1].split(";")[0])
  assert 30 < failed_step <= 40, line
  assert read_metrics(trained_copy)[-1]["step"] == failed_step - 1  # the diverged step is not logged
  assert _files(os.path.join(trained_copy, "checkpoints")) == before
  restored = _restore_params(trained_copy, 30)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(_restore_params(trained_workdir, 30))):
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
