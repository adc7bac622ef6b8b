"""Each attention type in the model: trains on the default corpus, and behaves as its config says."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from repo_configs import load_config

from longjax.config import from_config_dict
from longjax.nn import Llama, init_params
from longjax.train import train_and_evaluate
from longjax.train.optimizer import GATE, parameter_labels


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.parametrize("attention", ["full", "s2", "sliding", "infini"])
def test_each_attention_type_trains_on_the_default_corpus(tmp_path, data_dir, attention):
  config = load_config(f"tiny.py:attention={attention},steps=16")
  config.data.data_dir = data_dir  # the default text_dir: the standard library's source tree
  config.train.log_every = 1
  config.train.seq_len = 64
  config.train.global_batch_size = 4
  if attention == "sliding":
    config.model.attention.sliding.window = 16
  if attention == "infini":
    config.model.attention.infini.segment_len = 16
  train_and_evaluate(from_config_dict(config), str(tmp_path))
  losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(losses) == 16 and all(np.isfinite(losses))
  assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.3, losses


def _model(attention, **changes):
  """tiny.py's model with `changes` to the keys of its attention type's own section."""
  config = from_config_dict(load_config(f"tiny.py:attention={attention}")).model
  own = dataclasses.replace(config.attention.own, **changes)
  return dataclasses.replace(config, attention=dataclasses.replace(config.attention, **{attention: own}))


def _logits(config, params, tokens, train=False):
  return np.asarray(jax.jit(lambda p, t: Llama(config).apply({"params": p}, t, train=train))(params, tokens))


TOKENS = jax.random.randint(jax.random.key(1), (2, 32), 0, 259)


def test_s2_trains_sparse_and_evaluates_full():
  s2 = _model("s2")
  params = init_params(s2, jax.random.key(0))
  full = dataclasses.replace(s2, attention=dataclasses.replace(s2.attention, type="full"))
  np.testing.assert_array_equal(_logits(s2, params, TOKENS), _logits(full, params, TOKENS))
  assert np.abs(_logits(s2, params, TOKENS, train=True) - _logits(full, params, TOKENS)).max() > 1e-4
  at_eval = _model("s2", at_eval=True)
  np.testing.assert_allclose(_logits(at_eval, params, TOKENS), _logits(s2, params, TOKENS, train=True), atol=1e-6)


def test_sliding_window_covering_everything_equals_full():
  wide = _model("sliding", window=64, sinks=0)
  narrow = _model("sliding", window=4, sinks=2)
  params = init_params(wide, jax.random.key(0))
  full = dataclasses.replace(wide, attention=dataclasses.replace(wide.attention, type="full"))
  np.testing.assert_allclose(_logits(wide, params, TOKENS), _logits(full, params, TOKENS), atol=1e-6)
  assert np.abs(_logits(narrow, params, TOKENS) - _logits(full, params, TOKENS)).max() > 1e-4


def test_infini_gate_is_a_per_head_parameter_with_its_own_optimizer_label():
  config = _model("infini", segment_len=8)
  params = init_params(config, jax.random.key(0))
  gate = params["layers_0"]["attention"]["gate"]
  assert gate.shape == (config.num_heads,)
  labels = parameter_labels(params, config.lora)
  assert labels["layers_0"]["attention"]["gate"] == GATE
  # one segment covering the sequence with a closed gate is ordinary causal attention
  one_segment = _model("infini", segment_len=64)
  closed = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.full_like(x, -30.0) if "gate" in jax.tree_util.keystr(path) else x, params)
  full = dataclasses.replace(config, attention=dataclasses.replace(config.attention, type="full"))
  np.testing.assert_allclose(_logits(one_segment, closed, TOKENS), _logits(full, closed, TOKENS), atol=1e-5)
