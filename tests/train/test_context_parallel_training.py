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
from longjax.train.loop import Trainer, _global_batch

result = {}
for strategy, config_json in zip(("all_gather", "ring"), sys.argv[1:3]):
  trainer = Trainer(from_config_dict(json.loads(config_json)), sys.argv[3] + "/" + strategy)
  try:
    with trainer.context():
      params = trainer.initial_params()
      opt_state = jax.jit(trainer.optimizer.init, out_shardings=trainer.opt_shardings)(params)
      state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": opt_state}
      batches = trainer.train_batches()
      losses = []
      for step in range(3):
        batch = _global_batch(next(batches), trainer.batch_sharding)
        if step == 0:
          jaxpr = str(trainer.train_step.trace(state, batch).jaxpr)
        state, metrics = trainer.train_step(state, batch)
        losses.append(float(metrics["loss"]))
  finally:
    trainer.checkpointer.close()
  result[strategy] = {"losses": losses, "mesh": dict(trainer.mesh.shape),
                      "collectives": {name: name in jaxpr for name in ("shard_map", "ppermute", "all_gather")}}
print(json.dumps(result))
"""


def test_sequence_4_trains_like_one_device_with_each_strategy(runner, trained_workdir, tmp_path):
  configs = [runner.config({"mesh.data": 1, "mesh.sequence": 4, "model.attention.context_parallel": strategy})
             for strategy in ("all_gather", "ring")]
  result = runner.python(SCRIPT, *(c.to_json() for c in configs), str(tmp_path),
                         env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
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


def test_load_balance_needs_two_chunks_per_shard(runner):
  extra = {"mesh.sequence": 4, "train.seq_len": 68, "model.attention.context_parallel": "all_gather"}
  with pytest.raises(ConfigError, match=r"^train.seq_len=68 is invalid: .*two chunks each"):
    runner.config(extra)
  assert runner.config({**extra, "model.attention.load_balance": False}).train.seq_len == 68
