"""Per-device memory and FLOPs of context-parallel attention on 8 fake CPU devices, from the compiler.

  python benchmarks/context_parallel.py                          # T = 8K, 16K, 32K over sequence=8
  python benchmarks/context_parallel.py --lengths 8192 --shards 4

One attention layer of Llama-3-8B's shape (B=1, 32 query heads over 8 key/value heads of 128, float32),
forward and backward (the gradient of <out, w> w.r.t. q, k, v), inputs sharded along T over the sequence
axis, in three ways:
  implicit    ops.attention (blockwise) under jit: XLA's partitioner decides, gathering what it needs;
  all_gather  ops.context_parallel_attention, strategy all_gather (balanced layout);
  ring        ops.context_parallel_attention, strategy ring (balanced layout).
Each is lowered and compiled, never run:
  memory: compiled.memory_analysis() temp + argument + output bytes, per device;
  matmul_flops: 2 m n k of every dot_general in the jaxpr, scan bodies times their length. Inside
          shard_map that is one device's program; for implicit it is the whole (unsplit) program, which
          is what each device runs when XLA replicates the kernel's loop (see its memory).
Writes benchmarks/results/context_parallel.json and prints a table.
"""

import argparse
import json
import os
import platform
import sys

if "jax" not in sys.modules:  # the device count is fixed when JAX starts
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.compiled import compiled_stats  # noqa: E402
from longjax import ops, sharding  # noqa: E402  (run as a script from anywhere)
from longjax.config import MeshConfig  # noqa: E402

BATCH, HEADS, KV_HEADS, HEAD_DIM = 1, 32, 8, 128
BLOCK = 512

WAYS = {
    "implicit": lambda q, k, v: ops.attention(q, k, v, causal=True, impl="blockwise", block_size=BLOCK),
    "all_gather": lambda q, k, v: ops.context_parallel_attention(
        q, k, v, axis_name=sharding.sequence_axis(), strategy="all_gather", balanced=True, block_size=BLOCK),
    "ring": lambda q, k, v: ops.context_parallel_attention(
        q, k, v, axis_name=sharding.sequence_axis(), strategy="ring", balanced=True, block_size=BLOCK),
}


def measure(name: str, length: int, shards: int) -> dict:
  attend = WAYS[name]

  def step(q, k, v, w):
    return jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v) * w), argnums=(0, 1, 2))(q, k, v)

  mesh = sharding.make_mesh(MeshConfig(data=1, sequence=shards), devices=jax.devices()[:shards])
  with jax.set_mesh(mesh):
    spec = sharding.logical_sharding(mesh, ("batch", "length", "heads", "head_dim"))
    q = jax.ShapeDtypeStruct((BATCH, length, HEADS, HEAD_DIM), jnp.float32, sharding=spec)
    kv = jax.ShapeDtypeStruct((BATCH, length, KV_HEADS, HEAD_DIM), jnp.float32, sharding=spec)
    stats = compiled_stats(step, q, kv, kv, q)
  return {"way": name, "length": length, "shards": shards, "compile_s": stats["compile_s"],
          "temp_bytes": stats["temp_bytes"], "argument_bytes": stats["argument_bytes"],
          "output_bytes": stats["output_bytes"],
          "memory_bytes": stats["temp_bytes"] + stats["argument_bytes"] + stats["output_bytes"],
          "matmul_flops": stats["jaxpr_flops"]}


def table(results: list[dict]) -> str:
  """Memory and FLOPs per device. 'vs ideal' divides matmul FLOPs by those of causal attention's half square
  (2 matmuls forward, 5 backward) split evenly over the shards; whole diagonal blocks make up the excess."""
  lines = [f"{'way':10} {'T':>6} {'S':>2} {'memory MiB':>11} {'temp MiB':>9} {'matmul GFLOP':>13} {'vs ideal':>8} "
           f"{'compile s':>9}"]
  for row in results:
    # Backward: recomputed logits, dP, dV, dK, dQ.
    ideal = 7 * 2 * BATCH * HEADS * HEAD_DIM * row["length"] ** 2 / 2 / row["shards"]
    lines.append(f"{row['way']:10} {row['length']:6d} {row['shards']:2d} {row['memory_bytes'] / 2**20:11.1f} "
                 f"{row['temp_bytes'] / 2**20:9.1f} {row['matmul_flops'] / 1e9:13.1f} "
                 f"{row['matmul_flops'] / ideal:8.2f} {row['compile_s']:9.1f}")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="8192,16384,32768", help="comma-separated T")
  parser.add_argument("--shards", type=int, default=8, help="size of the sequence axis (at most 8)")
  parser.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated, from {', '.join(WAYS)}")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                    "context_parallel.json"))
  args = parser.parse_args()
  names = args.ways.split(",")
  unknown = sorted(set(names) - set(WAYS))
  if unknown:
    parser.error(f"--ways: unknown {', '.join(unknown)}; allowed: {', '.join(WAYS)}")
  if not 1 < args.shards <= jax.device_count():
    parser.error(f"--shards={args.shards}: need 2..{jax.device_count()}")
  results = []
  for length in [int(x) for x in args.lengths.split(",")]:
    for name in names:
      results.append(measure(name, length, args.shards))
      print(json.dumps(results[-1]), flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"command": " ".join(sys.argv), "backend": jax.default_backend(), "jax": jax.__version__,
               "machine": platform.machine(), "dtype": "float32", "block": BLOCK,
               "shape": {"batch": BATCH, "heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM},
               "results": results}, f, indent=1)
  print(table(results))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
