"""Landmark decoding against full attention: cache bytes, compiled memory and step time against context length.

  python benchmarks/landmark_decode.py                          # T = 1K..32K on CPU, a few minutes on 2 cores
  python benchmarks/landmark_decode.py --lengths 8192,32768,131072 --dtype bfloat16   # on a GPU: writes ..._gpu.json

One small LLaMA (4 layers, d 256, 4 query / 2 key-value heads, head_dim 64, vocab 32000), random weights, batch 1,
a cache of T + 64 slots filled to T with random keys and values (the step's cost does not depend on them). One
decode step is `Llama.apply` of one token against that cache, compiled once per (type, T):
  full      attention over every cached key (the blockwise cached kernel stops at the last filled block);
  landmark  blocks of 63 + 1, each head scores the T/64 landmark keys, retrieves its top-4 blocks and attends to
            them and its own block (generate feeds one more token, the landmark, once every 63 steps: not timed).
Columns: cache MiB (all layers, `init_cache`), the compiled step's temp MiB (XLA memory analysis: activations and
scratch; arguments, the cache among them, are counted in cache MiB) and ms per step (median of --repeats steps,
the cache donated as in `generate`, so a step writes its token in place; `min ms` is the fastest step, the
figure least disturbed by other load on a shared machine).
Writes benchmarks/results/landmark_decode.json (landmark_decode_gpu.json off CPU) and prints a table.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from longjax.config import AttentionConfig, ModelConfig  # noqa: E402
from longjax.nn import Llama, init_cache, init_params  # noqa: E402

SHAPE = dict(vocab_size=32000, hidden_size=256, intermediate_size=688, num_layers=4, num_heads=4, num_kv_heads=2)
TYPES = {"full": AttentionConfig(type="full"),
         "landmark": AttentionConfig.of("landmark", block=63, topk=4, id=31999)}


def filled_cache(config: ModelConfig, length: int, dtype) -> dict:
  """init_cache(T + 64 slots) with random keys/values and every row's length set to T."""
  cache = init_cache(config, 1, length + 64, dtype)
  keys = iter(jax.random.split(jax.random.key(0), 1000))

  def fill(x):
    if x.dtype == jnp.int32:
      return jnp.full_like(x, length) if x.ndim == 1 else jnp.broadcast_to(jnp.arange(x.shape[-1]), x.shape)
    return jax.random.normal(next(keys), x.shape, x.dtype)

  return jax.tree.map(fill, cache)


def bench(name: str, length: int, dtype: str, repeats: int) -> dict:
  config = ModelConfig(**SHAPE, dtype=dtype, attention=TYPES[name])
  config.validate()
  params = init_params(config, jax.random.key(1))
  cache = filled_cache(config, length, config.dtype)
  model = Llama(config)
  # The cache is donated, as generate's decode loop does: a step writes its token in place, no copy of the cache.
  step = jax.jit(lambda params, token, cache: model.apply({"params": params}, token, cache=cache), donate_argnums=2)
  token = jnp.ones((1, 1), jnp.int32)
  cache_bytes = sum(x.nbytes for x in jax.tree.leaves(cache))
  compiled = step.lower(params, token, cache).compile()
  memory = compiled.memory_analysis()
  temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
  _, cache = jax.block_until_ready(compiled(params, token, cache))
  times = []
  for _ in range(repeats):  # each step one token longer (repeats < the 64 spare slots)
    started = time.perf_counter()
    _, cache = jax.block_until_ready(compiled(params, token, cache))
    times.append(time.perf_counter() - started)
  return {"type": name, "length": length, "cache_mib": cache_bytes / 2**20,
          "temp_mib": None if temp is None else temp / 2**20, "ms_per_step": 1000 * statistics.median(times),
          "ms_per_step_min": 1000 * min(times)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="1024,4096,16384,32768")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=40)
  args = parser.parse_args()
  rows = [bench(name, int(n), args.dtype, args.repeats) for n in args.lengths.split(",") for name in TYPES]
  device = jax.devices()[0]
  suffix = "" if device.platform == "cpu" else "_gpu"
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"landmark_decode{suffix}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump({"device": f"{device.platform} {device.device_kind}", "machine": platform.machine(),
               "cpu_count": os.cpu_count(), "dtype": args.dtype, "shape": SHAPE,
               "landmark": {"block": 64, "topk": 4}, "rows": rows}, f, indent=2)
  print(f"device {device.platform} ({device.device_kind}), {args.dtype}, batch 1, one-token decode step")
  print(f"{'length':>8} {'type':>9} {'cache MiB':>10} {'temp MiB':>9} {'ms/step':>8} {'min ms':>7}")
  for row in rows:
    temp = "n/a" if row["temp_mib"] is None else f"{row['temp_mib']:.2f}"
    print(f"{row['length']:>8} {row['type']:>9} {row['cache_mib']:>10.1f} {temp:>9} {row['ms_per_step']:>8.2f} "
          f"{row['ms_per_step_min']:>7.2f}")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
