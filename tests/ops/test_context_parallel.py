"""Context-parallel attention (all_gather, ring) on 8 fake CPU devices equals one device's; memory falls with
the sequence axis; the balanced layout gives every shard the same work."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from longjax import config as config_lib
from longjax import nn as lnn
from longjax.ops import blockwise
from longjax.ops import context_parallel as cp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Runs in a fresh process: the device count is fixed when JAX starts. One process, every case, one JSON line.
SCRIPT = """
import json, time
import jax, jax.numpy as jnp, numpy as np
from longjax import positional, sharding
from longjax.config import MeshConfig, RopeConfig
from longjax.ops import blockwise_attention, context_parallel as cp
from longjax.ops.reference import attention_mask, naive_attention

B, T, H, KV, D = 2, 2048, 4, 2, 16  # causal grouped-query attention: 4 query heads over 2 key/value heads
BLOCK = 128
# Query heads 0-1 and their key/value head 0 turn with default RoPE, heads 2-3 and key/value head 1 with YaRN,
# so that one call checks both; row 0 packs a few documents (segment ids), row 1 is one document.
ROPES = (RopeConfig(), RopeConfig(rope_type="yarn", factor=4.0, original_max_position_embeddings=512))
rng = np.random.default_rng(0)
q, w = (jnp.asarray(rng.standard_normal((B, T, H, D), np.float32)) for _ in range(2))
k, v = (jnp.asarray(rng.standard_normal((B, T, KV, D), np.float32)) for _ in range(2))
segments = jnp.asarray(np.cumsum(rng.random((B, T)) < 6 / T, axis=1, dtype=np.int32)).at[1].set(0)
positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))

def rotate(q, k, positions):
  # seq_len: the global length, which dynamic methods read
  parts = [(positional.apply_rope(q[:, :, 2 * i:2 * i + 2], positions, positional.frequencies(rope, D, T)),
            positional.apply_rope(k[:, :, i:i + 1], positions, positional.frequencies(rope, D, T)))
           for i, rope in enumerate(ROPES)]
  return jnp.concatenate([p[0] for p in parts], axis=2), jnp.concatenate([p[1] for p in parts], axis=2)

def reference(q, k, v, **window):
  q, k = rotate(q, k, positions)
  return naive_attention(q, k, v, attention_mask(T, T, causal=True, segment_ids=segments, **window))

def parallel(strategy, q, k, v, **window):
  shards = jax.sharding.get_abstract_mesh().shape[sharding.sequence_axis()]
  balance = lambda x: cp.load_balance(x, shards)
  q, k, v, pos, seg = (balance(x) for x in (q, k, v, positions, segments))
  q, k = rotate(q, k, pos)  # RoPE at each token's global position, in the layout
  out = cp.context_parallel_attention(q, k, v, axis_name=sharding.sequence_axis(), strategy=strategy, balanced=True,
                                      segment_ids=seg, block_size=BLOCK, **window)
  return cp.unbalance(out, shards)

def value_and_grads(fn):
  out, vjp = jax.vjp(fn, q, k, v)
  return [np.asarray(x) for x in (out, *vjp(w))]

def rel(a, b):
  return float(np.abs(a - b).max() / np.abs(b).max())

result = {"errors": {}, "memory": {}, "seconds": {}}
start = time.perf_counter()
expected = value_and_grads(jax.jit(reference))
result["seconds"]["reference"] = time.perf_counter() - start
for mesh_cfg in (MeshConfig(data=1, sequence=8), MeshConfig(data=2, sequence=4)):
  mesh = sharding.make_mesh(mesh_cfg)
  for strategy in cp.STRATEGIES:
    start = time.perf_counter()
    with jax.set_mesh(mesh):
      got = value_and_grads(jax.jit(lambda *a: parallel(strategy, *a)))
    name = f"sequence={mesh_cfg.sequence},data={mesh_cfg.data},{strategy}"
    result["errors"][name] = [rel(a, b) for a, b in zip(got, expected)]
    result["seconds"][name] = time.perf_counter() - start
# Sliding window with sinks (type sliding): the ring visits only the blocks each step's window reaches.
SLIDING = dict(window=300, sinks=4)
with jax.set_mesh(sharding.make_mesh(MeshConfig(data=1, sequence=8))):
  got = value_and_grads(jax.jit(lambda *a: parallel("ring", *a, **SLIDING)))
result["errors"]["sequence=8,data=1,ring,sliding"] = [
    rel(a, b) for a, b in zip(got, value_and_grads(jax.jit(lambda *a: reference(*a, **SLIDING))))]

# The compiled forward + backward of one attention layer of Llama-3-8B's shape (32 query heads over 8 key/value
# heads of 128) at 8K tokens, per device, as the sequence axis grows: compiled only, never run.
SHAPES = {"q": (1, 8192, 32, 128), "k": (1, 8192, 8, 128), "v": (1, 8192, 8, 128), "w": (1, 8192, 32, 128)}

def step_memory(shards, attend):
  def step(q, k, v, w):
    return jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v) * w), argnums=(0, 1, 2))(q, k, v)
  mesh = sharding.make_mesh(MeshConfig(data=1, sequence=shards), devices=jax.devices()[:shards])
  with jax.set_mesh(mesh):
    spec = sharding.logical_sharding(mesh, ("batch", "length", "heads", "head_dim"))
    args = [jax.ShapeDtypeStruct(shape, jnp.float32, sharding=spec) for shape in SHAPES.values()]
    memory = jax.jit(step).lower(*args).compile().memory_analysis()
  return memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes

start = time.perf_counter()
# One device: the same blockwise kernel on the whole sequence.
single = step_memory(1, lambda q, k, v: blockwise_attention(q, k, v, causal=True))
for strategy in cp.STRATEGIES:
  attend = lambda q, k, v: cp.context_parallel_attention(q, k, v, axis_name=sharding.sequence_axis(),
                                                         strategy=strategy, balanced=True)
  result["memory"][strategy] = [single] + [step_memory(shards, attend) for shards in (2, 4, 8)]
result["seconds"]["memory"] = time.perf_counter() - start
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def eight_devices():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": REPO}
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_both_strategies_equal_one_device_forward_and_gradients(eight_devices):
  errors = eight_devices["errors"]
  assert len(errors) == 5, sorted(errors)  # 2 strategies x (sequence=8, sequence=4 x data=2), ring with a window
  for name, (out, dq, dk, dv) in errors.items():
    assert out < 1e-5 and max(dq, dk, dv) < 1e-4, (name, out, dq, dk, dv)


def test_attention_memory_per_device_falls_as_the_sequence_axis_grows(eight_devices):
  for strategy, memory in eight_devices["memory"].items():
    assert all(a > b for a, b in zip(memory, memory[1:])), (strategy, memory)
  memory = eight_devices["memory"]
  # At 8 shards the ring, which holds a few K/V blocks at a time, needs less than all_gather with all of K/V.
  assert memory["ring"][-1] < memory["all_gather"][-1], memory


def test_load_balance_is_a_permutation_and_unbalance_inverts_it():
  x = np.arange(2 * 16).reshape(2, 16)
  balanced = np.asarray(cp.load_balance(x, 4))
  # shard i holds chunks i and 7 - i of eight chunks of 2
  np.testing.assert_array_equal(balanced[0], [0, 1, 14, 15, 2, 3, 12, 13, 4, 5, 10, 11, 6, 7, 8, 9])
  np.testing.assert_array_equal(np.asarray(cp.unbalance(balanced, 4)), x)
  np.testing.assert_array_equal(cp.shard_indices(16, 4, balanced=True), balanced[0].reshape(4, 4))
  np.testing.assert_array_equal(cp.shard_indices(16, 4, balanced=False), np.arange(16).reshape(4, 4))


def _live_pairs(table, k_blocks):
  return [int((shard[:, 1] < k_blocks).sum()) for shard in table]


@pytest.mark.parametrize("shards", [2, 4, 8])
def test_balanced_layout_gives_every_shard_the_same_causal_work(shards):
  plan = cp._plan("axis", shards, 64 * shards, True, True, None, 0, 16)
  _, gathered, first, later = cp._tables(plan)
  live = _live_pairs(gathered, 64 * shards // 16)
  assert len(set(live)) == 1, live
  for step in (first, *later):  # each ring step: one key/value shard of 64 rows, 4 blocks
    assert len(set(_live_pairs(step, 64 // 16))) == 1
  # ...and exactly the blocks the causal mask reaches: half the square plus the diagonal blocks.
  blocks = 64 * shards // 16
  assert live[0] * shards == blocks * (blocks + 1) // 2
  contiguous = cp._plan("axis", shards, 64 * shards, False, True, None, 0, 16)
  assert len(set(_live_pairs(cp._tables(contiguous)[1], blocks))) == shards  # unbalanced: shard i does more


def test_indexed_attention_masks_by_global_index():
  rng = np.random.default_rng(1)
  q, k, v = (rng.standard_normal((1, 24, 2, 8), np.float32) for _ in range(3))
  order = rng.permutation(24).astype(np.int32)
  out, lse = blockwise.indexed_attention(q[:, order], k, v, order, np.arange(24), window=5, block_q=8, block_k=8)
  expected = blockwise.blockwise_attention(q, k, v, window=5, block_q=8, block_k=8)
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected)[:, order], atol=1e-6)
  logits = np.einsum("BTHD,BSHD->BHTS", q, k) / np.sqrt(8)
  mask = (np.arange(24)[None] <= np.arange(24)[:, None]) & (np.arange(24)[None] > np.arange(24)[:, None] - 5)
  ref_lse = np.log(np.where(mask, np.exp(logits), 0).sum(-1))  # [B, H, T]
  np.testing.assert_allclose(np.asarray(lse), np.moveaxis(ref_lse, 1, 2)[:, order], rtol=1e-5)


def test_sequence_parallel_types_equal_the_registry():
  assert {name for name, t in lnn.ATTENTION_TYPES.items() if t.sequence_parallel} == set(
      config_lib.SEQUENCE_PARALLEL_TYPES)
  assert set(cp.STRATEGIES) == set(config_lib.CONTEXT_PARALLEL) - {"none"}
