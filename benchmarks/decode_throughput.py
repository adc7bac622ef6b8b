"""Decode throughput against context length: longjax caches (full, sliding, infini) next to Hugging Face static cache.

  python benchmarks/decode_throughput.py                                  # T = 1K..32K, CPU, about 20 min on 2 cores
  python benchmarks/decode_throughput.py --lengths 1024,4096 --types full --new_tokens 16
  python benchmarks/decode_throughput.py --lengths 8192,32768,131072      # on a GPU: bfloat16, writes ..._gpu.json

One small LLaMA (SHAPE below: 4 layers, d 256, 4 query / 2 key-value heads, vocab 32000), random weights,
batch 1, a random prompt of T tokens, then `--new_tokens` N greedy tokens. Both frameworks read the
prompt in chunks of `--prefill_chunk` tokens (longjax's default, 1024) into a cache of T + N slots
(longjax rounds its full cache up to the kernel block, as `generate` does).

longjax, for each attention type and T (everything compiled by a warm-up at the same shapes first):
  prefill  `longjax.inference.prefill` over the T prompt tokens into a fresh `init_cache`;
  decode   the compiled decode loop that `generate` runs after its prefill (one `lax.while_loop`), on a
           copy of that prefilled cache: it emits N tokens with N - 1 model steps (token 0 comes from
           the prefill logits), so ms/step = time / (N - 1) and decode tok/s = 1000 / ms/step.
Hugging Face (`transformers.LlamaForCausalLM` from `longjax.convert.hf.save` of the same full-attention
weights; float32 eager on CPU with `torch.set_num_threads(cpu count)`, under `torch.inference_mode`):
  prefill  forwards over the first T - 1 prompt tokens, chunk by chunk, into a `StaticCache` of T + N
           slots (tok/s counts T - 1 tokens);
  decode   `model.generate(prompt, cache=<a copy of that cache>, max_new_tokens=N, min_new_tokens=N,
           do_sample=False)`: generate feeds the one uncached prompt token and then its own tokens, N
           one-token forwards for N tokens, so ms/step = time / N.
Decode times are the median of `--repeats` runs; prefill is timed once per T (it dominates the run
at long T). `ratio` is longjax decode tok/s over Hugging Face's at the same T (HF has full attention
only, so sliding and infini rows compare against the same HF row). Targets (the issue): decode step time
flat in T for sliding and infini, linear for full; ratio >= 1 from 4K on.

A correctness check runs first: greedy tokens of longjax `generate` and of HF `generate` with
`cache_implementation="static"` for one short prompt must be equal. If HF's static cache fails, the
dynamic cache is used instead and `hf_cache` in the JSON says so.
Writes benchmarks/results/decode_throughput.json (decode_throughput_gpu.json off CPU) and prints a table.
"""

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from longjax.config import AttentionConfig, ModelConfig  # noqa: E402
from longjax.convert import hf as hf_convert  # noqa: E402
from longjax.inference import generate, init_cache, prefill  # noqa: E402
from longjax.inference.generate import _decode  # noqa: E402  (generate's decode loop, timed without its prefill)
from longjax.nn import Llama, init_params  # noqa: E402

SHAPE = ModelConfig(vocab_size=32000, hidden_size=256, intermediate_size=688, num_layers=4, num_heads=4,
                    num_kv_heads=2)
TYPES = {
    "full": AttentionConfig(type="full"),
    "sliding": AttentionConfig.of("sliding", window=1024, sinks=4),  # StreamingLLM's 4 sinks
    "infini": AttentionConfig.of("infini", segment_len=1024),
}
CPU_LENGTHS = "1024,2048,4096,8192,16384,32768"
ACCELERATOR_LENGTHS = "1024,4096,16384,32768,65536,131072"
CHECK_PROMPT_LEN = 100  # the correctness check's prompt: short, and not a multiple of any block


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _tree_bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _cache_length(config: ModelConfig, needed: int) -> int:
  """The cache length `generate` allocates for `needed` tokens (the full cache rounds up to the kernel block)."""
  block = config.attention.kernel_block
  return _round_up(needed, block) if needed > block else needed


class Longjax:
  """One attention type's model; prefill and decode timed at one prompt length."""

  def __init__(self, config: ModelConfig, params, chunk: int):
    self.config, self.params, self.chunk = config, params, chunk
    self.model = Llama(config)

  def _decode(self, cache, logits, new_tokens: int):
    return _decode(self.model, self.params, cache, logits, jax.random.key(0), jnp.asarray([-1], jnp.int32),
                   jnp.int32(0), max_new_tokens=new_tokens, temperature=0.0, top_k=0, top_p=1.0)

  def run(self, prompt: np.ndarray, new_tokens: int, repeats: int) -> dict:
    length = prompt.shape[1]
    max_length = _cache_length(self.config, length + new_tokens)
    lengths = np.full((prompt.shape[0],), length, np.int32)

    def fresh_cache():
      return jax.block_until_ready(init_cache(self.config, prompt.shape[0], max_length))

    # Warm-up: one chunk compiles the prefill step for this cache shape (every chunk has the same width).
    start = time.perf_counter()
    warm = min(length, self.chunk)
    logits, cache = prefill(self.model, self.params, fresh_cache(), prompt[:, :warm], np.full_like(lengths, warm),
                            chunk=self.chunk)
    jax.block_until_ready(self._decode(cache, logits, new_tokens))
    warmup_s = time.perf_counter() - start

    cache = fresh_cache()
    start = time.perf_counter()
    logits, cache = jax.block_until_ready(prefill(self.model, self.params, cache, prompt, lengths, chunk=self.chunk))
    prefill_s = time.perf_counter() - start

    tokens = None

    def decode():
      nonlocal tokens
      tokens, _ = jax.block_until_ready(self._decode(jax.tree.map(jnp.copy, cache), logits, new_tokens))

    decode_s = _median_time(decode, repeats)
    step_s = decode_s / (new_tokens - 1)
    return {"prefill_s": prefill_s, "prefill_tok_s": length / prefill_s, "decode_s": decode_s,
            "decode_steps": new_tokens - 1, "step_ms": 1e3 * step_s, "decode_tok_s": 1.0 / step_s,
            "cache_length": max_length, "cache_bytes": _tree_bytes(cache), "warmup_s": warmup_s,
            "tokens": np.asarray(tokens)[0].tolist()}


class HuggingFace:
  """transformers' LLaMA with the same weights; static cache unless it fails, then dynamic."""

  def __init__(self, config: ModelConfig, params, chunk: int, dtype: str, threads: int):
    import torch
    import transformers

    self.torch, self.transformers, self.chunk = torch, transformers, chunk
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as path:
      hf_convert.save(config, params, path)
      self.model = transformers.LlamaForCausalLM.from_pretrained(
          path, dtype=getattr(torch, dtype), attn_implementation="sdpa").to(self.device).eval()
    self.cache_mode = "static"
    self.generate_kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)

  def _sync(self):
    if self.device == "cuda":
      self.torch.cuda.synchronize()

  def _new_cache(self, max_length: int):
    if self.cache_mode == "static":
      return self.transformers.StaticCache(config=self.model.config, max_cache_len=max_length)
    return self.transformers.DynamicCache(config=self.model.config)

  def greedy(self, prompt: np.ndarray, new_tokens: int) -> list[int]:
    """HF generate's greedy tokens with the static cache (the dynamic one if static fails)."""
    ids = self.torch.as_tensor(prompt, dtype=self.torch.long, device=self.device)
    with self.torch.inference_mode():
      try:
        out = self.model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  cache_implementation="static", **self.generate_kwargs)
      except Exception as error:  # noqa: BLE001  (any failure of the static path means: measure dynamic)
        print(f"HF static cache failed ({type(error).__name__}: {error}); using the dynamic cache", flush=True)
        self.cache_mode = "dynamic"
        out = self.model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **self.generate_kwargs)
    return out[0, prompt.shape[1]:].tolist()

  def run(self, prompt: np.ndarray, new_tokens: int, repeats: int) -> dict:
    torch = self.torch
    length = prompt.shape[1]
    ids = torch.as_tensor(prompt, dtype=torch.long, device=self.device)
    cache = self._new_cache(length + new_tokens)
    with torch.inference_mode():
      self._sync()
      start = time.perf_counter()
      for begin in range(0, length - 1, self.chunk):
        self.model(input_ids=ids[:, begin:min(begin + self.chunk, length - 1)], cache=cache, use_cache=True,
                   logits_to_keep=1)
      self._sync()
      prefill_s = time.perf_counter() - start
      tokens = None

      def decode():
        nonlocal tokens
        tokens = self.model.generate(ids, cache=copy.deepcopy(cache), max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, **self.generate_kwargs)
        self._sync()

      decode()  # warm-up (on a GPU, generate compiles the static-cache forward here)
      decode_s = _median_time(decode, repeats)
    step_s = decode_s / new_tokens
    cache_bytes = sum(t.nbytes for layer in getattr(cache, "layers", []) for t in (layer.keys, layer.values)
                      if t is not None)
    return {"prefill_s": prefill_s, "prefill_tok_s": (length - 1) / prefill_s, "decode_s": decode_s,
            "decode_steps": new_tokens, "step_ms": 1e3 * step_s, "decode_tok_s": 1.0 / step_s,
            "cache_bytes": cache_bytes, "cache": self.cache_mode, "tokens": tokens[0, length:].tolist()}


def table(rows: list[dict]) -> str:
  lines = ["| length | type | prefill tok/s | decode tok/s | ms/step | cache MiB | HF prefill tok/s | HF decode tok/s "
           "| ratio |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
  for row in rows:
    ours, hf = row["longjax"], row.get("hf")
    cells = [f"{row['length']}", row["type"], f"{ours['prefill_tok_s']:,.0f}", f"{ours['decode_tok_s']:,.1f}",
             f"{ours['step_ms']:.2f}", f"{ours['cache_bytes'] / 2**20:.1f}"]
    if hf:
      cells += [f"{hf['prefill_tok_s']:,.0f}", f"{hf['decode_tok_s']:,.1f}", f"{row['ratio']:.2f}"]
    else:
      cells += ["-", "-", "-"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  on_cpu = jax.default_backend() == "cpu"
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default=CPU_LENGTHS if on_cpu else ACCELERATOR_LENGTHS,
                      help="comma-separated prompt lengths T")
  parser.add_argument("--new_tokens", type=int, default=32, help="N tokens decoded after each prompt (>= 2)")
  parser.add_argument("--types", default=",".join(TYPES), help=f"comma-separated, from {', '.join(TYPES)}")
  parser.add_argument("--dtype", default="float32" if on_cpu else "bfloat16", choices=["float32", "bfloat16"],
                      help="compute and cache dtype (parameters stay float32), and HF's dtype")
  parser.add_argument("--prefill_chunk", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=3, help="decode runs per point (the median is reported)")
  parser.add_argument("--skip_hf", action="store_true", help="longjax only")
  parser.add_argument("--torch_threads", type=int, default=os.cpu_count(),
                      help="torch.set_num_threads for Hugging Face on CPU (on a machine shared with other work, "
                           "1 can be much faster than the core count)")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                    "decode_throughput.json" if on_cpu else
                                                    "decode_throughput_gpu.json"))
  args = parser.parse_args()
  lengths = [int(x) for x in args.lengths.split(",")]
  names = args.types.split(",")
  unknown = sorted(set(names) - set(TYPES))
  if unknown:
    parser.error(f"--types: unknown {', '.join(unknown)}; allowed: {', '.join(TYPES)}")
  if args.new_tokens < 2:
    parser.error("--new_tokens must be >= 2 (decode steps are counted after the first token)")

  base = dataclasses.replace(SHAPE, dtype=args.dtype, max_position_embeddings=max(lengths) + args.new_tokens)
  configs = {name: dataclasses.replace(base, attention=TYPES[name]) for name in names}
  # Every type starts from the same weights (flax seeds each parameter by its path; infini adds its gate).
  params = {name: init_params(config, jax.random.key(0)) for name, config in configs.items()}
  models = {name: Longjax(config, params[name], args.prefill_chunk) for name, config in configs.items()}
  rng = np.random.default_rng(0)

  hf, check = None, None
  if not args.skip_hf:
    full = dataclasses.replace(base, attention=TYPES["full"])
    full_params = params["full"] if "full" in params else init_params(full, jax.random.key(0))
    hf = HuggingFace(full, full_params, args.prefill_chunk, args.dtype, args.torch_threads)
    if not on_cpu and hf.device == "cpu":
      print("note: torch has no CUDA here, so Hugging Face runs on the CPU", flush=True)
    prompt = rng.integers(1, base.vocab_size, (1, CHECK_PROMPT_LEN), dtype=np.int32)
    ours = np.asarray(generate(Llama(full), full_params, prompt, args.new_tokens))[0].tolist()
    theirs = hf.greedy(prompt, args.new_tokens)
    check = {"prompt_len": CHECK_PROMPT_LEN, "new_tokens": args.new_tokens, "match": ours == theirs,
             "longjax": ours, "hf": theirs, "hf_cache": hf.cache_mode,
             "first_mismatch": next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)}
    print(f"greedy tokens, longjax full vs HF {hf.cache_mode} cache, prompt {CHECK_PROMPT_LEN}: "
          f"{'match' if check['match'] else 'MISMATCH at ' + str(check['first_mismatch'])}", flush=True)

  rows = []
  for length in lengths:
    prompt = rng.integers(1, base.vocab_size, (1, length), dtype=np.int32)
    hf_row = hf.run(prompt, args.new_tokens, args.repeats) if hf else None
    if hf_row:
      print(f"T={length} HF ({hf_row['cache']}): prefill {hf_row['prefill_tok_s']:,.0f} tok/s, decode "
            f"{hf_row['decode_tok_s']:,.1f} tok/s ({hf_row['step_ms']:.2f} ms/step)", flush=True)
    for name in names:
      ours = models[name].run(prompt, args.new_tokens, args.repeats)
      row = {"length": length, "type": name, "longjax": ours}
      if hf_row:
        row["hf"] = hf_row
        row["ratio"] = ours["decode_tok_s"] / hf_row["decode_tok_s"]
        if name == "full":
          row["tokens_match_hf"] = ours["tokens"] == hf_row["tokens"]
      rows.append(row)
      print(f"T={length} {name}: prefill {ours['prefill_tok_s']:,.0f} tok/s ({ours['prefill_s']:.1f} s), decode "
            f"{ours['decode_tok_s']:,.1f} tok/s ({ours['step_ms']:.2f} ms/step), cache "
            f"{ours['cache_bytes'] / 2**20:.1f} MiB, warm-up {ours['warmup_s']:.1f} s" +
            (f", ratio {row['ratio']:.2f}" if hf_row else ""), flush=True)

  import torch
  import transformers
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"command": " ".join(sys.argv), "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
               "cpus": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__,
               "transformers": transformers.__version__, "platform": platform.platform(), "dtype": args.dtype,
               "new_tokens": args.new_tokens, "prefill_chunk": args.prefill_chunk, "repeats": args.repeats,
               "model": dataclasses.asdict(SHAPE) | {"attention": None},
               "types": {name: dataclasses.asdict(TYPES[name]) for name in names},
               "hf_cache": hf.cache_mode if hf else None, "hf_device": hf.device if hf else None,
               "torch_threads": args.torch_threads if hf else None, "load_average": os.getloadavg(),
               "correctness": check, "rows": rows}, f, indent=1)
  print(table(rows))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
