"""cuDNN against XLA and blockwise attention on one GPU: bf16 accuracy, then forward+backward time.

  python benchmarks/attention_gpu.py                     # T=8192, B=1, H=16, D=128, bfloat16
  python benchmarks/attention_gpu.py --length 16384 --out /tmp/gpu.json
  python benchmarks/attention_gpu.py --length 256 --heads 2 --kv-heads 1 --head-dim 32 --smoke   # any backend

Accuracy: each impl in bf16 against the float32 reference (ops.naive_attention on float32 copies
of the same bf16 inputs), output and gradients of <out, projection>, next to the error of the bf16
naive reference itself. Timing: the median of --iters calls of the jitted forward, and of the
gradient of sum(out) w.r.t. q, k, v, after two warm-up calls; TFLOP/s counts causal attention as
2 * B * H * T^2 * D forward (half of 4 T^2 D) and 2.5 times that backward.
"""

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from longjax import ops  # noqa: E402  (run as a script from anywhere)

IMPLS = ("cudnn", "xla", "blockwise")


def _inputs(batch, length, heads, kv_heads, head_dim, dtype, seed=0):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype)
  return (normal(batch, length, heads, head_dim), normal(batch, length, kv_heads, head_dim),
          normal(batch, length, kv_heads, head_dim), normal(batch, length, heads, head_dim))


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grads(attend, q, k, v, projection):
  out, pullback = jax.vjp(attend, q, k, v)
  return out, pullback(projection.astype(out.dtype))


def accuracy(window, length=2048, batch=2, heads=16, kv_heads=4, head_dim=128, impls=IMPLS) -> dict:
  """Max |error| of output and gradients against float32, per impl (naive: the bf16 reference)."""
  q, k, v, projection = _inputs(batch, length, heads, kv_heads, head_dim, jnp.bfloat16)
  mask = ops.attention_mask(length, length, causal=True, window=window)
  f32 = [x.astype(jnp.float32) for x in (q, k, v, projection)]
  with jax.default_matmul_precision("highest"):
    truth = _value_and_grads(lambda q, k, v: ops.naive_attention(q, k, v, mask), *f32)
  report = {}
  for impl in ("naive",) + impls:
    got = _value_and_grads(functools.partial(ops.attention, impl=impl, window=window), q, k, v, projection)
    errors = [float(jnp.max(jnp.abs(a.astype(jnp.float32) - b))) for a, b in zip(jax.tree.leaves(got),
                                                                                 jax.tree.leaves(truth))]
    scale = [float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(truth)]
    report[impl] = {"max_abs_error": dict(zip(["out", "dq", "dk", "dv"], errors)),
                    "max_abs_value": dict(zip(["out", "dq", "dk", "dv"], scale))}
  return report


def _median_ms(fn, *args, iters):
  jax.block_until_ready(fn(*args))
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def timing(length, batch, heads, kv_heads, head_dim, iters) -> dict:
  q, k, v, _ = _inputs(batch, length, heads, kv_heads, head_dim, jnp.bfloat16)
  forward_flops = 2 * batch * heads * length ** 2 * head_dim
  report = {}
  for impl in IMPLS:
    attend = functools.partial(ops.attention, causal=True, impl=impl)
    forward = jax.jit(attend)
    backward = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2)))
    try:
      forward_ms = _median_ms(forward, q, k, v, iters=iters)
      train_ms = _median_ms(backward, q, k, v, iters=iters)
    except Exception as error:  # an impl that does not fit (memory, shape) is reported, not fatal
      report[impl] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
      continue
    report[impl] = {"forward_ms": round(forward_ms, 3), "forward_backward_ms": round(train_ms, 3),
                    "forward_tflops": round(forward_flops / forward_ms / 1e9, 1),
                    "forward_backward_tflops": round(3.5 * forward_flops / train_ms / 1e9, 1)}
    print(impl, report[impl], flush=True)
  return report


def table(report: dict, length: int) -> str:
  lines = ["| T | impl | forward ms | fwd+bwd ms | fwd TFLOP/s | fwd+bwd TFLOP/s |",
           "| --- | --- | --- | --- | --- | --- |"]
  for impl, row in report.items():
    cells = ["error: " + row["error"][:60], "", "", ""] if "error" in row else [
        row["forward_ms"], row["forward_backward_ms"], row["forward_tflops"], row["forward_backward_tflops"]]
    lines.append("| " + " | ".join(str(c) for c in [length, impl, *cells]) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--length", type=int, default=8192)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=16)
  parser.add_argument("--kv-heads", type=int, default=16)
  parser.add_argument("--head-dim", type=int, default=128)
  parser.add_argument("--iters", type=int, default=10)
  parser.add_argument("--smoke", action="store_true", help="a dry check on any backend: tiny accuracy shapes, "
                      "impls the backend lacks reported as errors")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                    "attention_gpu.json"))
  args = parser.parse_args()
  if jax.default_backend() != "gpu" and not args.smoke:
    sys.exit(f"attention_gpu.py needs a CUDA GPU; this process runs on '{jax.default_backend()}'")
  check = dict(length=128, batch=1, heads=2, kv_heads=1, head_dim=32) if args.smoke else {}
  impls = IMPLS if jax.default_backend() == "gpu" else tuple(i for i in IMPLS if i != "cudnn")
  result = {"command": " ".join(sys.argv), "device": jax.devices()[0].device_kind, "jax": jax.__version__,
            "accuracy_bf16": {str(window): accuracy(window, impls=impls, **check)
                              for window in (None, 64 if args.smoke else 256)}}
  print(json.dumps(result["accuracy_bf16"], indent=1), flush=True)
  result["shape"] = {"length": args.length, "batch": args.batch, "heads": args.heads, "kv_heads": args.kv_heads,
                     "head_dim": args.head_dim, "dtype": "bfloat16", "causal": True}
  result["timing"] = timing(args.length, args.batch, args.heads, args.kv_heads, args.head_dim, args.iters)
  print(table(result["timing"], args.length))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
