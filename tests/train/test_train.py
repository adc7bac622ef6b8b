"""The training loop end to end: the loss falls, its outputs, exact resume, gradient accumulation, the logged
learning rate."""

import glob
import json
import os
import struct

import jax
import numpy as np
import pytest
from conftest import TRAINED_STEPS, checkpoint_steps, read_metrics

from longjax.train import metrics as metrics_lib
from longjax.train.loop import Trainer, train_and_evaluate
from longjax.train.optimizer import learning_rate_schedule

METRIC_KEYS = {"step", "loss", "learning_rate", "grad_norm", "tokens_per_s", "mfu"}


def event_scalars(path: str) -> dict[str, list[tuple[int, float]]]:
  """The scalars of a TensorBoard event file (TFRecord framing: length, crc, Event proto, crc)."""
  metrics_lib._summary_writer_class()  # imports tensorboardX without torch
  from tensorboardX.proto import event_pb2

  with open(path, "rb") as f:
    data = f.read()
  scalars, offset = {}, 0
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
    offset += 12 + length + 4
    for value in event.summary.value:
      scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_tiny_training_lowers_the_loss_and_writes_its_outputs(trained_workdir):
  records = read_metrics(trained_workdir)
  assert [r["step"] for r in records] == list(range(1, TRAINED_STEPS + 1))
  assert all(set(r) >= METRIC_KEYS for r in records), records[0]
  losses = [r["loss"] for r in records]
  first, last = np.mean(losses[:5]), np.mean(losses[-5:])
  assert last < first - 1.0, (first, last)  # from ~5.5 (uniform over 259 bytes) to ~3.5 nats
  assert all(r["grad_norm"] > 0 and r["learning_rate"] > 0 for r in records[1:])
  assert all(r["tokens_per_s"] > 0 for r in records[1:])  # step 1 is compilation: null

  events = glob.glob(os.path.join(trained_workdir, "tensorboard", "events.out.tfevents.*"))
  assert len(events) == 1
  loss_events = event_scalars(events[0])["loss"]
  assert [step for step, _ in loss_events] == list(range(1, TRAINED_STEPS + 1))
  np.testing.assert_allclose([v for _, v in loss_events], losses, rtol=1e-6)

  with open(os.path.join(trained_workdir, "config.json")) as f:
    config = json.load(f)
  assert config["train"]["num_steps"] == TRAINED_STEPS and config["train"]["seq_len"] == 64
  assert checkpoint_steps(trained_workdir) == [10, 20, 30]


def _final_state(config, workdir):
  trainer = Trainer(config, workdir)
  try:
    with trainer.context():
      return trainer.checkpointer.restore(trainer.abstract_params, trainer.abstract_opt)
  finally:
    trainer.checkpointer.close()


def _assert_trees_equal(a, b):
  flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  assert [path for path, _ in flat_a] == [path for path, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("async_checkpointing", [True, False])
def test_resume_is_exact(runner, tmp_path, async_checkpointing):
  """3 steps, then the same command with num_steps=6, equals 6 steps in one go: losses, parameters,
  optimizer state and data position, bit for bit (the LR schedule is constant after warmup, so it does
  not depend on num_steps)."""
  extra = {"train.async_checkpointing": async_checkpointing}
  resumed, straight = str(tmp_path / "resumed"), str(tmp_path / "straight")
  train_and_evaluate(runner.config({**extra, "train.num_steps": 3}), resumed)
  assert checkpoint_steps(resumed) == [3]
  train_and_evaluate(runner.config({**extra, "train.num_steps": 6}), resumed)
  train_and_evaluate(runner.config({**extra, "train.num_steps": 6}), straight)

  resumed_metrics, straight_metrics = read_metrics(resumed), read_metrics(straight)
  assert [r["step"] for r in resumed_metrics] == [r["step"] for r in straight_metrics] == [1, 2, 3, 4, 5, 6]
  for key in ("loss", "grad_norm", "learning_rate"):
    assert [r[key] for r in resumed_metrics] == [r[key] for r in straight_metrics], key
  assert checkpoint_steps(resumed) == [3, 6] and checkpoint_steps(straight) == [6]

  config = runner.config({**extra, "train.num_steps": 6})
  step_a, params_a, opt_a, data_a = _final_state(config, resumed)
  step_b, params_b, opt_b, data_b = _final_state(config, straight)
  assert step_a == step_b == 6
  _assert_trees_equal(params_a, params_b)
  _assert_trees_equal(opt_a, opt_b)
  assert data_a == data_b and data_a["streams"]["0"]["offset"] > 0, (data_a, data_b)


def _run_steps(runner, workdir, extra, steps=2):
  """(losses, grad norms, initial params, final params) of `steps` steps of a fresh Trainer on the first batches."""
  trainer = Trainer(runner.config(extra), workdir)
  try:
    with trainer.context():
      state = trainer.initial_state()
      initial = jax.device_get(state["params"])
      batches = trainer.train_batches()
      losses, grad_norms = [], []
      for _ in range(steps):
        state, metrics = trainer.train_step(state, trainer.global_batch(next(batches), batches.rows))
        losses.append(float(metrics["loss"]))
        grad_norms.append(float(metrics["grad_norm"]))
      return losses, grad_norms, initial, jax.device_get(state["params"])
  finally:
    trainer.checkpointer.close()


def test_gradient_accumulation_matches_one_big_batch(runner, tmp_path):
  """Two micro-batches of 2 sequences give the loss, gradient and update of one batch of 4. (Adam divides by
  the gradient's own size, so summation-order rounding in a near-zero gradient can move a weight by ~1e-6.)"""
  losses_1, norms_1, initial, params_1 = _run_steps(runner, str(tmp_path / "one"), {"train.grad_accum_steps": 1})
  losses_2, norms_2, _, params_2 = _run_steps(runner, str(tmp_path / "two"), {"train.grad_accum_steps": 2})
  np.testing.assert_allclose(losses_2, losses_1, rtol=1e-5)
  np.testing.assert_allclose(norms_2, norms_1, rtol=1e-5)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), params_1, initial))
  assert min(moved) > 1e-4  # every parameter changed, so the comparison below is not trivially true
  for a, b in zip(jax.tree.leaves(params_2), jax.tree.leaves(params_1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_logged_learning_rate_is_the_one_each_update_used(runner, trained_workdir, tmp_path):
  """metrics.jsonl's `learning_rate` at step k is the schedule at update k: the peak at the end of warmup,
  the end value at the last step."""
  config = runner.config({"train.num_steps": TRAINED_STEPS})
  schedule = learning_rate_schedule(config.train)
  logged = [r["learning_rate"] for r in read_metrics(trained_workdir)]
  np.testing.assert_allclose(logged, [float(schedule(step - 1)) for step in range(1, TRAINED_STEPS + 1)], rtol=1e-6)
  warmup, peak = config.train.warmup_steps, config.train.learning_rate
  np.testing.assert_allclose(logged[:warmup], peak * np.arange(1, warmup + 1) / warmup, rtol=1e-6)
  np.testing.assert_allclose(logged[warmup:], peak, rtol=1e-6)  # constant after warmup

  # A decaying schedule: 2 warmup updates, then linear decay reaching the end LR at the last update.
  decaying = runner.config({"train.num_steps": 4, "train.warmup_steps": 2, "train.schedule": "linear",
                            "train.end_learning_rate_ratio": 0.1, "train.learning_rate": 1e-2})
  train_and_evaluate(decaying, str(tmp_path / "decaying"))
  np.testing.assert_allclose([r["learning_rate"] for r in read_metrics(tmp_path / "decaying")],
                             [5e-3, 1e-2, 5.5e-3, 1e-3], rtol=1e-6)
