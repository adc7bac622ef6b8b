"""Training with context parallelism over sequence=4 gives the losses of one device, for each strategy; bad
mesh and attention choices are one line and exit 2."""

import os

import numpy as np
import pytest
from conftest import assert_user_error, read_metrics

from longjax.config import ConfigError

# Runs in a fresh process with 4 fake devices: both strategies, 3 steps each, and whether the compiled step
# really runs them (the collectives each one issues).
SCRIPT = """
import json, sys
import jax, jax.numpy as jnp
from longjax.config import from_config_dict
from longjax.train.loop import Trainer

result = {}
for strategy, config_json in zip(("all_gather", "ring"), sys.argv[1:3]):
  trainer = Trainer(from_config_dict(json.loads(config_json)), sys.argv[3] + "/" + strategy)
  try:
    with trainer.context():
      state = trainer.initial_state()
      batches = trainer.train_batches()
      losses = []
      for step in range(3):
        batch = trainer.global_batch(next(batches), batches.rows)
        if step == 0:
          jaxpr = str(trainer.train_step.trace(state, batch).jaxpr)
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics["loss"]))
  finally:
    trainer.checkpointer.close()
  result[strategy] = {"losses": losses, "mesh": dict(trainer.mesh.shape),
                      "collectives": {name: name in jaxpr for name in ("shard_map", "ppermute", "all_gather")}}

# The model alone, on a balanced batch as the train step builds it, against one device: dynamic YaRN reads the
# whole sequence's length (cross-document rows), and packed documents restart their positions.
import numpy as np
import flax.linen as nn
from longjax import sharding
from longjax.config import AttentionConfig, MeshConfig, ModelConfig, RopeConfig
from longjax.nn import Llama, init_params
from longjax.ops import context_parallel as cp
from longjax.train.step import balance_batch, model_inputs

rng = np.random.default_rng(0)
segments = np.cumsum(rng.random((2, 256)) < 4 / 256, axis=1, dtype=np.int32) + 1
starts = np.maximum.accumulate(np.where(np.diff(segments, prepend=0, axis=1) != 0, np.arange(256), 0), axis=1)
batch = {"inputs": rng.integers(0, 259, (2, 256), dtype=np.int32), "segment_ids": segments,
         "positions": (np.arange(256) - starts).astype(np.int32)}
mesh = sharding.make_mesh(MeshConfig(data=1, sequence=4))
result["model"] = {}
for strategy, cross_documents in (("ring", True), ("all_gather", False)):
  rope = RopeConfig(rope_type="dynamic_yarn", factor=4.0, original_max_position_embeddings=64)
  config = ModelConfig(hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4, num_kv_heads=2,
                       max_position_embeddings=64, rope=rope,
                       attention=AttentionConfig(context_parallel=strategy, cross_documents=cross_documents))
  model = Llama(config)
  params = init_params(config, jax.random.key(0))
  expected = jax.jit(lambda p, b: model.apply({"params": p}, b["inputs"], **model_inputs(config, b)))(params, batch)

  def parallel(p, b):
    b = balance_batch(config, b, 4)
    return cp.unbalance(model.apply({"params": p}, b["inputs"], **model_inputs(config, b, balanced=True)), 4)

  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    got = jax.jit(parallel, in_shardings=(None, sharding.batch_sharding(mesh)))(params, batch)
  result["model"][strategy] = float(np.abs(np.asarray(got) - np.asarray(expected)).max() /
                                    np.abs(np.asarray(expected)).max())
print(json.dumps(result))
"""


def test_sequence_4_trains_like_one_device_with_each_strategy(runner, trained_workdir, tmp_path):
  configs = [runner.config({"mesh.data": 1, "mesh.sequence": 4, "model.attention.context_parallel": strategy})
             for strategy in ("all_gather", "ring")]
  result = runner.python(SCRIPT, *(c.to_json() for c in configs), str(tmp_path),
                         env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  # The model with dynamic YaRN (ring, one long sequence) and with packed documents (all_gather).
  model_errors = result.pop("model")
  assert len(model_errors) == 2 and all(error < 1e-5 for error in model_errors.values()), model_errors
  # The shared workdir: the same config and data on one device (runner.train, sequence=1).
  single = [record["loss"] for record in read_metrics(trained_workdir)[:3]]
  assert len(set(single)) == 3, single
  for strategy, run in result.items():
    assert run["mesh"]["sequence"] == 4, run["mesh"]
    np.testing.assert_allclose(run["losses"], single, rtol=1e-4, err_msg=strategy)
  assert result["ring"]["collectives"] == {"shard_map": True, "ppermute": True, "all_gather": False}
  assert result["all_gather"]["collectives"] == {"shard_map": True, "ppermute": False, "all_gather": True}


BAD_INPUT = {
    "mesh_product": ({"mesh.data": 2}, ["mesh=", "product 2", "1 devices"]),
    "sequence_does_not_divide_seq_len": ({"mesh.sequence": 3}, ["train.seq_len=64", "mesh.sequence=3"]),
    "heads_not_divisible_by_tensor": ({"mesh.tensor": 3}, ["model.num_heads=4", "mesh.tensor=3"]),
    "no_sequence_parallel_type": ({"model.attention.type": "infini", "model.attention.context_parallel": "ring"},
                                  ["model.attention.type='infini'", "full, sliding"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_mesh_or_attention_is_one_line_and_exit_2(runner, tmp_path, case):
  extra, fragments = BAD_INPUT[case]
  proc = runner.train(tmp_path / "workdir", {"train.num_steps": 2, **extra}, check=False)
  assert_user_error(proc, *fragments)
  assert not os.path.exists(tmp_path / "workdir" / "checkpoints")


def test_megalodon_runs_no_context_parallelism(runner):
  with pytest.raises(ConfigError, match=r"^model.attention.context_parallel='ring' is invalid: model.block=megalodon"):
    runner.config({"model.attention.context_parallel": "ring"}, spec="megalodon_tiny.py")


def test_load_balance_needs_two_chunks_per_shard(runner):
  extra = {"mesh.sequence": 4, "train.seq_len": 68, "model.attention.context_parallel": "all_gather"}
  with pytest.raises(ConfigError, match=r"^train.seq_len=68 is invalid: .*two chunks each"):
    runner.config(extra)
  assert runner.config({**extra, "model.attention.load_balance": False}).train.seq_len == 68
