"""Learning-rate schedule and weight-decay mask."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import traverse_util

from longjax.config import LoraConfig, ModelConfig, TrainConfig
from longjax.nn import abstract_params
from longjax.train.optimizer import decay_mask, learning_rate_schedule, make_optimizer


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedule_warms_up_from_the_first_update_and_ends_at_the_end_lr(schedule):
  cfg = TrainConfig(learning_rate=1.0, warmup_steps=4, num_steps=20, schedule=schedule, end_learning_rate_ratio=0.1)
  lr = [float(learning_rate_schedule(cfg)(count)) for count in range(cfg.num_steps)]  # count 0 = update 1
  np.testing.assert_allclose(lr[:4], [0.25, 0.5, 0.75, 1.0], rtol=1e-6)
  np.testing.assert_allclose(lr[-1], 1.0 if schedule == "constant" else 0.1, rtol=1e-5)
  assert all(b <= a + 1e-7 for a, b in zip(lr[3:], lr[4:]))  # never rises after warmup


@pytest.mark.parametrize("scan", [False, True])
def test_no_decay_on_norms_with_or_without_scanned_layers(scan):
  model = ModelConfig(vocab_size=31, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                      num_kv_heads=2, scan_layers=scan)
  shapes, _ = abstract_params(model)
  flat = traverse_util.flatten_dict(decay_mask(shapes))
  for path, decayed in flat.items():
    assert decayed == (path[-1] not in ("scale",)), path
  # and in effect: zero gradients with decay move kernels, never norm scales
  params = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)
  optimizer = make_optimizer(TrainConfig(learning_rate=1.0, warmup_steps=0, weight_decay=0.1, schedule="constant",
                                         grad_clip=0.0), params, LoraConfig())
  updates, _ = optimizer.update(jax.tree.map(np.zeros_like, params), optimizer.init(params), params)
  for path, update in traverse_util.flatten_dict(updates).items():
    moved = bool(np.any(np.asarray(update) != 0))
    assert moved == (path[-1] != "scale"), path


def test_lora_freezes_base_weights_only():
  model = dataclasses.replace(ModelConfig(vocab_size=31, hidden_size=16, intermediate_size=32, num_layers=1,
                                          num_heads=2, num_kv_heads=2), lora=LoraConfig(rank=2))
  shapes, _ = abstract_params(model)
  params = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)
  optimizer = make_optimizer(TrainConfig(learning_rate=1.0, warmup_steps=0, schedule="constant", grad_clip=0.0),
                             params, model.lora)
  updates, _ = optimizer.update(jax.tree.map(np.ones_like, params), optimizer.init(params), params)
  for path, update in traverse_util.flatten_dict(updates).items():
    trainable = path[-1] in ("lora_a", "lora_b", "scale", "embedding") or path[0] == "lm_head"
    assert bool(np.any(np.asarray(update) != 0)) == trainable, path
