"""Peak memory of the loss and its gradient at long context: the plain loss over [B, T, vocab] float32 logits
against the chunked loss fused with the LM head (model.loss_chunk), from XLA's compiled memory analysis.

  python benchmarks/loss_memory.py                       # LLaMA-2 7B head (4096 x 32000), 1 x 32K tokens
  python benchmarks/loss_memory.py --length 8192 --chunks 0,1024

Compiles value_and_grad of the loss w.r.t. the final hidden states and the head kernel for abstract inputs
(nothing is allocated, any backend works; the figures are the compiling backend's). temp_bytes is what the
program needs beyond its arguments and outputs: the logits, their gradient and the softmax intermediates.
Writes benchmarks/results/loss_memory.json and prints a table.
"""

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.compiled import compiled_stats  # noqa: E402
from longjax.ops import chunked_cross_entropy, cross_entropy  # noqa: E402


def loss_and_grads(chunk: int):
  """(hidden [B, T, E], kernel [E, V], targets, mask) -> (loss sum, d hidden, d kernel), plain when chunk == 0."""

  def loss(hidden, kernel, targets, mask):
    if chunk:
      return chunked_cross_entropy(hidden, kernel, targets, mask, chunk=chunk)[0]
    logits = jnp.einsum("BTE,EV->BTV", hidden, kernel.astype(hidden.dtype))
    return cross_entropy(logits, targets, mask)[0]

  return jax.value_and_grad(loss, argnums=(0, 1))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--length", type=int, default=32768)
  parser.add_argument("--hidden", type=int, default=4096)
  parser.add_argument("--vocab", type=int, default=32000)
  parser.add_argument("--dtype", default="bfloat16", help="hidden-state (compute) dtype; the kernel is float32")
  parser.add_argument("--chunks", default="0,8192,4096,2048,1024", help="model.loss_chunk values; 0 is plain")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "loss_memory.json"))
  args = parser.parse_args()
  shape = (args.batch, args.length)
  inputs = (jax.ShapeDtypeStruct(shape + (args.hidden,), jnp.dtype(args.dtype)),
            jax.ShapeDtypeStruct((args.hidden, args.vocab), jnp.float32),
            jax.ShapeDtypeStruct(shape, jnp.int32), jax.ShapeDtypeStruct(shape, jnp.float32))
  logits_bytes = args.batch * args.length * args.vocab * 4
  rows = []
  for chunk in (int(c) for c in args.chunks.split(",")):
    stats = compiled_stats(loss_and_grads(chunk), *inputs)
    rows.append({"loss_chunk": chunk, **stats})
    print(f"loss_chunk={chunk}: temp {stats['temp_bytes'] / 2**30:.2f} GiB", flush=True)
  plain = next((r["temp_bytes"] for r in rows if r["loss_chunk"] == 0), None)
  lines = [f"batch {args.batch} x {args.length} tokens, hidden {args.hidden}, vocab {args.vocab}, {args.dtype}; "
           f"float32 logits of the whole batch: {logits_bytes / 2**30:.2f} GiB", "",
           "| loss_chunk | vocab tiles (T / chunk) | temp GiB | vs plain | compile s |",
           "| --- | --- | --- | --- | --- |"]
  for row in rows:
    tiles = -(-args.length // row["loss_chunk"]) if row["loss_chunk"] else 1
    ratio = f"{plain / row['temp_bytes']:.1f}x less" if plain and row["loss_chunk"] else "-"
    lines.append(f"| {row['loss_chunk'] or 'plain'} | {tiles} | {row['temp_bytes'] / 2**30:.2f} | {ratio} | "
                 f"{row['compile_s']} |")
  print("\n".join(lines))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "jax": jax.__version__,
               "batch": args.batch, "length": args.length, "hidden": args.hidden, "vocab": args.vocab,
               "dtype": args.dtype, "logits_bytes": logits_bytes, "rows": rows}, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
