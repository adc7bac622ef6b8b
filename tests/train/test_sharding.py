"""Training on a data x fsdp x tensor mesh of 8 fake CPU devices matches one device, and really shards."""

import json

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

from repo_configs import load_config
from longjax import sharding
from longjax.config import MESH_AXES, from_config_dict
from longjax.nn import abstract_params

# Runs in a fresh process: the device count is fixed when JAX starts.
SCRIPT = """
import json, sys
import jax, jax.numpy as jnp
from longjax.config import MESH_AXES, from_config_dict
from longjax.train.loop import Trainer

def spec(x):
  return [None if a is None else list(a) if isinstance(a, tuple) else a for a in x.sharding.spec]

trainer = Trainer(from_config_dict(json.loads(sys.argv[1])), sys.argv[2])
try:
  with trainer.context():
    state = trainer.initial_state()
    batches = trainer.train_batches()
    losses = []
    for _ in range(3):
      state, metrics = trainer.train_step(state, trainer.global_batch(next(batches), batches.rows))
      losses.append(float(metrics["loss"]))
finally:
  trainer.checkpointer.close()
leaves = jax.tree_util.tree_flatten_with_path(state)[0]
print(json.dumps({
    "devices": jax.device_count(), "mesh": dict(trainer.mesh.shape), "losses": losses,
    "specs": {jax.tree_util.keystr(p): spec(x) for p, x in leaves if hasattr(x, "sharding")},
    "shard_shapes": {jax.tree_util.keystr(p): list(x.sharding.shard_shape(x.shape)) for p, x in leaves
                     if hasattr(x, "sharding")}}))
"""

Q = "['params']['layers_0']['attention']['q_proj']['kernel']"
# Tiny: embed 64, 4 query heads and 2 key/value heads of 16; on fsdp=2 x tensor=2 each device holds one
# key/value head, as it holds two query heads.
ATTENTION_SHARDS = {"q": [32, 2, 16], "k": [32, 1, 16], "v": [32, 1, 16]}


def _run(runner, tmp_path, name, devices, mesh):
  config = runner.config({f"mesh.{axis}": size for axis, size in mesh.items()})
  flags = f"--xla_force_host_platform_device_count={devices}" if devices > 1 else ""
  return runner.python(SCRIPT, config.to_json(), str(tmp_path / name), env={"XLA_FLAGS": flags})


def test_sharded_training_matches_one_device(runner, tmp_path):
  sharded = _run(runner, tmp_path, "sharded", 8, {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1})
  single = _run(runner, tmp_path, "single", 1, {"data": 1, "fsdp": 1, "tensor": 1, "sequence": 1})
  assert sharded["devices"] == 8 and single["devices"] == 1
  assert sharded["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1}

  np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-4)
  assert len(set(single["losses"])) == 3, single["losses"]

  specs, shapes = sharded["specs"], sharded["shard_shapes"]
  for name, shard_shape in ATTENTION_SHARDS.items():
    kernel = Q.replace("q_proj", f"{name}_proj")
    assert specs[kernel] == ["fsdp", "tensor", None] and shapes[kernel] == shard_shape, (kernel, specs[kernel],
                                                                                          shapes[kernel])
    # Adam's moments are sharded like their parameters.
    moments = [path for path in specs if path.startswith("['opt_state']") and f"['{name}_proj']['kernel']" in path
               and "layers_0" in path]
    assert len(moments) == 2 and all(specs[path] == specs[kernel] and shapes[path] == shard_shape
                                     for path in moments), json.dumps({p: (specs[p], shapes[p]) for p in moments})
  assert specs["['params']['layers_0']['mlp']['down_proj']['kernel']"] == ["tensor", "fsdp"]
  # 259 byte tokens do not split in two: the vocabulary axis stays whole, the embedding axis is sharded.
  assert specs["['params']['embed_tokens']['embedding']"] == [None, "fsdp"]
  assert specs["['params']['lm_head']"] == ["fsdp", None]
  assert single["shard_shapes"][Q] == [64, 4, 16]


def test_sequence_sharded_training_matches_one_device(runner, tmp_path):
  """fsdp x tensor x sequence: parameters cut over fsdp and sequence, activations' length over sequence."""
  sharded = _run(runner, tmp_path, "sequence", 8, {"data": 1, "fsdp": 2, "tensor": 2, "sequence": 2})
  single = _run(runner, tmp_path, "single", 1, {"data": 1, "fsdp": 1, "tensor": 1, "sequence": 1})
  np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-4)
  specs, shapes = sharded["specs"], sharded["shard_shapes"]
  assert specs[Q] == [["fsdp", "sequence"], "tensor", None] and shapes[Q] == [16, 2, 16], (specs[Q], shapes[Q])
  assert specs["['params']['embed_tokens']['embedding']"] == [None, ["fsdp", "sequence"]]


def _abstract_mesh(**sizes) -> AbstractMesh:
  shape = tuple(sizes.get(name, 1) for name in MESH_AXES)
  return AbstractMesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def test_attention_projections_split_query_and_key_value_heads_over_tensor():
  """The logical rules, without devices: key/value heads are cut over `tensor` like query heads (replicating
  them would keep the numbers right and cost their memory on every device); `embed` over fsdp and sequence."""
  config = from_config_dict(load_config("tiny.py"))
  abstract, logical = abstract_params(config.model)
  mesh = _abstract_mesh(fsdp=2, tensor=2, sequence=2)
  attention = sharding.tree_shardings(mesh, logical, abstract)["layers_0"]["attention"]
  for name in ("q", "k", "v"):
    assert attention[f"{name}_proj"]["kernel"].spec == PartitionSpec(("fsdp", "sequence"), "tensor", None), name
  assert attention["o_proj"]["kernel"].spec == PartitionSpec("tensor", None, ("fsdp", "sequence"))


def test_activations_cut_length_over_sequence_and_leave_embed_whole():
  """[batch, length, embed] activations: `batch` takes fsdp and `length` sequence, so `embed` (which parameters
  cut over both) is not cut again; size-1 mesh axes are left out of specs."""
  mesh = _abstract_mesh(data=2, fsdp=2, sequence=2)
  assert sharding.logical_sharding(mesh, ("batch", "length", "embed")).spec == PartitionSpec(("data", "fsdp"),
                                                                                            "sequence", None)
  assert sharding.logical_sharding(mesh, ("batch", "length", "mlp")).spec == PartitionSpec(("data", "fsdp"),
                                                                                          "sequence", None)
  assert sharding.logical_sharding(_abstract_mesh(fsdp=8), ("embed", "mlp")).spec == PartitionSpec("fsdp", None)


def test_uneven_dimensions_keep_the_leading_axes_that_divide_them():
  mesh = _abstract_mesh(fsdp=4, sequence=2)
  cut = {size: sharding.logical_sharding(mesh, ("embed",), (size,)).spec for size in (16, 12, 6)}
  assert cut == {16: PartitionSpec(("fsdp", "sequence")), 12: PartitionSpec("fsdp"), 6: PartitionSpec(None)}


# 8 fake devices, fresh process: tiny's compiled train step (longjax.plan) on two meshes of one device count.
MEMORY_SCRIPT = """
import json, sys
from longjax import plan
plan.use_fake_devices(8)
from longjax.config import MESH_AXES, from_config_dict
base = from_config_dict(json.loads(sys.argv[1]))
out = {}
for name, fsdp, sequence in (("fsdp8", 8, 1), ("fsdp4_sequence2", 4, 2)):
  memory = plan.step_memory(plan.with_values(base, {"mesh.data": 1, "mesh.fsdp": fsdp, "mesh.sequence": sequence}))
  out[name] = {"state": memory.state, "arguments": memory.arguments, "total": memory.total}
print(json.dumps(out))
"""


def test_parameter_and_optimizer_bytes_per_device_equal_for_fsdp8_and_fsdp4_x_sequence2(runner):
  # 64 sequences x 256 tokens: 8 shards over fsdp=8, or 4 x 2 over fsdp=4 x sequence=2: equal tokens per device.
  config = runner.config({"train.global_batch_size": 8, "train.seq_len": 256, "model.hidden_size": 256,
                          "model.intermediate_size": 512})
  result = runner.python(MEMORY_SCRIPT, config.to_json())
  fsdp8, sequence2 = result["fsdp8"], result["fsdp4_sequence2"]
  abstract, _ = abstract_params(config.model)
  whole = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
  # Adam holds two moments a parameter: 3x the parameter bytes in all, cut 8 ways (the 259-row vocabulary of the
  # byte tokenizer does not split; its embed axis does).
  assert fsdp8["state"] == sequence2["state"] and abs(fsdp8["state"] - 3 * whole / 8) < 0.01 * whole, result
  assert fsdp8["arguments"] == sequence2["arguments"], result
