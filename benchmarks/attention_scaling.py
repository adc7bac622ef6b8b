"""Memory and FLOPs of attention types against length, from the compiler, without running anything.

  python benchmarks/attention_scaling.py                      # T = 1K..16K, all types
  python benchmarks/attention_scaling.py --lengths 1024,8192 --types xla_full,s2

For each type and length T, jit the forward and backward pass (the gradient of the outputs' sum
w.r.t. q, k, v) at B=1, H=Hkv=4, D=64, lower and compile it, and read
  memory: compiled.memory_analysis(): temp + argument + output bytes;
  flops:  compiled.cost_analysis()['flops'] (XLA's HloCostAnalysis counts a while-loop body once,
          so for the scanned kernels it is the cost of one block pair or segment, not the total);
  matmul_flops: 2 * m * n * k of every dot_general in the jaxpr, scan bodies times their length
          (what the loops really execute).
Writes benchmarks/results/attention_scaling.json and prints each quantity's growth when T grows x8.
"""

import argparse
import json
import os
import platform
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.compiled import compiled_stats  # noqa: E402
from longjax import ops  # noqa: E402  (run as a script from anywhere)

BATCH, HEADS, KV_HEADS, HEAD_DIM = 1, 4, 4, 64
WINDOW, SINKS = 1024, 4
SEGMENT_LEN = 1024

TYPES = {
    "xla_full": lambda q, k, v, gate: ops.attention(q, k, v, causal=True, impl="xla"),
    "blockwise": lambda q, k, v, gate: ops.attention(q, k, v, causal=True, impl="blockwise"),
    # LongLoRA's G = T/4; the groups run blockwise so that memory, too, stays linear.
    "s2": lambda q, k, v, gate: ops.s2_attention(q, k, v, group_size=q.shape[1] // 4, impl="blockwise"),
    "sliding": lambda q, k, v, gate: ops.attention(q, k, v, causal=True, impl="blockwise", window=WINDOW,
                                                   sinks=SINKS),
    "infini": lambda q, k, v, gate: ops.infini_attention(q, k, v, gate, segment_len=SEGMENT_LEN)[0],
}


def measure(name: str, length: int, dtype) -> dict:
  attend = TYPES[name]
  grad = jax.grad(lambda q, k, v, gate: jnp.sum(attend(q, k, v, gate).astype(jnp.float32)), argnums=(0, 1, 2))
  q = jax.ShapeDtypeStruct((BATCH, length, HEADS, HEAD_DIM), dtype)
  kv = jax.ShapeDtypeStruct((BATCH, length, KV_HEADS, HEAD_DIM), dtype)
  gate = jax.ShapeDtypeStruct((HEADS,), jnp.float32)
  stats = compiled_stats(grad, q, kv, kv, gate)
  return {
      "type": name, "length": length, "compile_s": stats["compile_s"],
      "temp_bytes": stats["temp_bytes"], "argument_bytes": stats["argument_bytes"],
      "output_bytes": stats["output_bytes"],
      "memory_bytes": stats["temp_bytes"] + stats["argument_bytes"] + stats["output_bytes"],
      "flops": stats["xla_flops"],
      "matmul_flops": stats["jaxpr_flops"],
  }


def growth_table(results: list[dict]) -> str:
  """Each quantity at every length, then its ratio when T grows x8 (linear: 8, quadratic: 64).

  'vs causal' is matmul FLOPs over those of full causal attention computed blockwise (which, like
  the sparse types, skips the blocks its mask removes): S2-Attn's should be about G/T = 1/4.
  """
  by_key = {(row["type"], row["length"]): row for row in results}
  lines = [f"{'type':10} {'T':>6} {'memory MiB':>11} {'XLA GFLOP':>10} {'matmul GFLOP':>13} {'vs causal':>9} "
           f"{'compile s':>9}"]
  for row in results:
    full = by_key.get(("blockwise", row["length"]))
    versus = f"{row['matmul_flops'] / full['matmul_flops']:9.3f}" if full else f"{'-':>9}"
    lines.append(f"{row['type']:10} {row['length']:6d} {row['memory_bytes'] / 2**20:11.1f} "
                 f"{row['flops'] / 1e9:10.2f} {row['matmul_flops'] / 1e9:13.2f} {versus} {row['compile_s']:9.1f}")
  lines.append("")
  lines.append(f"{'type':10} {'T -> 8T':>12} {'memory x':>9} {'XLA flops x':>12} {'matmul flops x':>15}")
  for (name, length), row in by_key.items():
    small = by_key.get((name, length // 8))
    if small:
      lines.append(f"{name:10} {f'{length // 8}->{length}':>12} {row['memory_bytes'] / small['memory_bytes']:9.1f} "
                   f"{row['flops'] / small['flops']:12.1f} {row['matmul_flops'] / small['matmul_flops']:15.1f}")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="1024,2048,4096,8192,16384", help="comma-separated T")
  parser.add_argument("--types", default=",".join(TYPES), help=f"comma-separated, from {', '.join(TYPES)}")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                    "attention_scaling.json"))
  args = parser.parse_args()
  lengths = [int(x) for x in args.lengths.split(",")]
  names = args.types.split(",")
  unknown = sorted(set(names) - set(TYPES))
  if unknown:
    parser.error(f"--types: unknown {', '.join(unknown)}; allowed: {', '.join(TYPES)}")
  results = []
  for name in names:
    for length in lengths:
      results.append(measure(name, length, jnp.dtype(args.dtype)))
      print(json.dumps(results[-1]), flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"command": " ".join(sys.argv), "backend": jax.default_backend(), "jax": jax.__version__,
               "machine": platform.machine(), "dtype": args.dtype,
               "shape": {"batch": BATCH, "heads": HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM},
               "window": WINDOW, "sinks": SINKS, "segment_len": SEGMENT_LEN, "s2_group": "T/4",
               "results": results}, f, indent=1)
  print(growth_table(results))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
