"""Long-context inference on CPU: longjax next to Hugging Face transformers, on SmolLM2-135M's shape.

  python benchmarks/prefill_vs_hf.py                                   # forward at 4K-16K, prefill+decode at 16K
  python benchmarks/prefill_vs_hf.py --lengths 32768 --decode_lengths "" --out benchmarks/results/prefill_vs_hf_32k.json
  python benchmarks/prefill_vs_hf.py --lengths 16384 --methods all --no-hf --decode_lengths ""

The model: SmolLM2-135M's layer shape (hidden 576, 9 query / 3 key-value heads of 64, intermediate 1536,
vocab 49152, tied embeddings, rope_theta 1e5) with `--layers` layers (4) and random weights, float32, batch 1.
Measured, each framework's compiled or eager path as a user runs it:

  forward   logits for every position of T tokens: longjax's jitted `Llama.apply` (one compile per length),
            transformers' `LlamaForCausalLM(input_ids).logits` under no_grad with SDPA attention;
  prefill   a T-token prompt read through the KV cache, logits of its last token: longjax's
            `inference.prefill` (chunks of 1024 tokens through the cached kernel), transformers with a
            `StaticCache` (one call over the prompt, logits_to_keep=1);
  decode    greedy tokens after that prompt, seconds a token: longjax's compiled decode loop
            (`inference.generate`'s `_decode`, `--decode` tokens), transformers one call a token on the static
            cache.

The two run interleaved in one process (`--rounds` alternations; median of each, ratio transformers/longjax
time, > 1 is longjax faster), torch given XLA's thread count, malloc set as the mains set it
(`cli.keep_host_buffers`). Memory: longjax's from XLA's compiled memory analysis (temp = scratch, without the
parameters, inputs and the returned logits; out = the returned arrays); transformers' as the peak resident
memory above the loaded model, measured in a fresh subprocess (`--hf_memory`) so that no other allocation
in this process hides it. `--methods` times longjax's forward with other positional methods (RoPE scalings
and position-remapping attention) at each length, relative to plain RoPE. The JSON records the CPU (lscpu
model name, AVX-512 and AMX flags), versions and the command.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from longjax import cli  # noqa: E402

SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_heads=9, num_kv_heads=3,
             tie_embeddings=True, rms_norm_eps=1e-5)
ROPE_THETA = 1e5
# --methods: the demo's training-free list (`longjax.demo.training_free_methods`) for a model trained at 8K
# and read at 2x, the nine methods of the lead's SmolLM2 sweep; "all" runs every one.
PRETRAINED_LENGTH, FACTOR = 8192, 2.0


def methods() -> dict:
  from longjax.demo import training_free_methods

  return training_free_methods(PRETRAINED_LENGTH, FACTOR)


def cpu_facts() -> dict:
  """lscpu's model name and the AVX-512 / AMX flags (empty lists where the CPU has none)."""
  try:
    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    text = ""
  fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
  flags = fields.get("Flags", "").split()
  return {"model_name": fields.get("Model name", platform.processor()).strip(),
          "avx512": sorted(f for f in flags if f.startswith("avx512")),
          "amx": sorted(f for f in flags if f.startswith("amx")), "cores": os.cpu_count(),
          "threads_used": len(os.sched_getaffinity(0))}


def model_config(layers: int, max_length: int, method: str | None = None):
  import dataclasses

  from longjax.config import AttentionConfig, ModelConfig, RopeConfig

  rope, attention = methods()[method] if method else (RopeConfig(), AttentionConfig())
  return ModelConfig(**SHAPE, num_layers=layers, max_position_embeddings=max_length,
                     rope=dataclasses.replace(rope, rope_theta=ROPE_THETA), attention=attention)


def hf_model(layers: int, max_length: int):
  import torch
  import transformers

  torch.manual_seed(0)
  config = transformers.LlamaConfig(
      vocab_size=SHAPE["vocab_size"], hidden_size=SHAPE["hidden_size"], intermediate_size=SHAPE["intermediate_size"],
      num_hidden_layers=layers, num_attention_heads=SHAPE["num_heads"], num_key_value_heads=SHAPE["num_kv_heads"],
      tie_word_embeddings=True, rope_theta=ROPE_THETA, max_position_embeddings=max_length,
      rms_norm_eps=SHAPE["rms_norm_eps"], attn_implementation="sdpa")
  return transformers.LlamaForCausalLM(config).eval()


def _tokens(length: int):
  import numpy as np

  return np.random.default_rng(length).integers(0, SHAPE["vocab_size"], (1, length), dtype=np.int32)


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hf_memory(layers: int, length: int, mode: str) -> dict:
  """Peak resident bytes above the loaded model of one transformers call (run in a fresh process)."""
  import torch

  torch.set_num_threads(len(os.sched_getaffinity(0)))
  model = hf_model(layers, length + 64)
  tokens = torch.as_tensor(_tokens(length), dtype=torch.long)
  base = _rss_bytes()
  peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  with torch.no_grad():
    if mode == "forward":
      model(input_ids=tokens).logits
    else:
      import transformers

      cache = transformers.StaticCache(config=model.config, max_cache_len=length + 64)
      model(input_ids=tokens, past_key_values=cache, cache_position=torch.arange(length), logits_to_keep=1,
            use_cache=True)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {"peak_above_model_bytes": peak - max(base, peak_before) if peak > peak_before else peak - base}


def _hf_memory_subprocess(layers: int, length: int, mode: str) -> dict:
  command = [sys.executable, os.path.abspath(__file__), "--hf_memory", mode, "--layers", str(layers),
             "--lengths", str(length)]
  result = subprocess.run(command, capture_output=True, text=True)
  if result.returncode:
    return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
  return json.loads(result.stdout.strip().splitlines()[-1])


def _median(values):
  import statistics

  return statistics.median(values)


def _timed(fn):
  start = time.perf_counter()
  result = fn()
  return time.perf_counter() - start, result


def longjax_forward(config, params, length: int):
  """(run -> seconds, compiled memory facts) of the jitted whole-sequence forward (logits for every position)."""
  import jax
  import jax.numpy as jnp

  from longjax.nn import Llama

  model = Llama(config)
  tokens = jnp.asarray(_tokens(length))
  compiled = jax.jit(lambda p, t: model.apply({"params": p}, t)).lower(params, tokens).compile()
  memory = compiled.memory_analysis()

  def run():
    seconds, logits = _timed(lambda: jax.block_until_ready(compiled(params, tokens)))
    del logits
    return seconds

  return run, {"temp_bytes": memory.temp_size_in_bytes, "output_bytes": memory.output_size_in_bytes}


def hf_forward(model, length: int):
  import torch

  tokens = torch.as_tensor(_tokens(length), dtype=torch.long)

  def run():
    with torch.no_grad():
      seconds, logits = _timed(lambda: model(input_ids=tokens).logits)
    del logits
    return seconds

  return run


def longjax_generation(config, params, length: int, new_tokens: int):
  """run -> (prefill seconds, decode seconds a token): `inference.prefill` then the compiled decode loop."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from longjax.inference.generate import _decode, prefill
  from longjax.nn import Llama, init_cache

  model = Llama(config)
  tokens = _tokens(length)
  lengths = np.full((1,), length, np.int32)
  decode = lambda cache, logits: _decode(  # noqa: E731  (generate's own decode loop)
      model, params, cache, logits, jax.random.key(0), jnp.asarray([-1], jnp.int32), jnp.int32(0),
      max_new_tokens=new_tokens, temperature=0.0, top_k=0, top_p=1.0)

  def run():
    cache = init_cache(config, 1, length + new_tokens)
    jax.block_until_ready(cache)
    prefill_s, (logits, cache) = _timed(lambda: jax.block_until_ready(prefill(model, params, cache, tokens,
                                                                                  lengths)))
    decode_s, out = _timed(lambda: jax.block_until_ready(decode(cache, logits)))
    del out
    return prefill_s, decode_s / new_tokens

  return run


def hf_generation(model, length: int, new_tokens: int):
  import torch
  import transformers

  tokens = torch.as_tensor(_tokens(length), dtype=torch.long)

  def run():
    with torch.no_grad():
      cache = transformers.StaticCache(config=model.config, max_cache_len=length + new_tokens)
      prefill_s, out = _timed(lambda: model(input_ids=tokens, past_key_values=cache,
                                            cache_position=torch.arange(length), logits_to_keep=1, use_cache=True))
      token = out.logits[:, -1].argmax(-1, keepdim=True)
      start = time.perf_counter()
      for i in range(new_tokens - 1):  # the first new token comes from the prefill's logits
        out = model(input_ids=token, past_key_values=cache, cache_position=torch.tensor([length + i]),
                    use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
      decode_s = (time.perf_counter() - start) / max(new_tokens - 1, 1)
    return prefill_s, decode_s

  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lengths", default="4096,8192,16384", help="forward lengths (comma-separated)")
  parser.add_argument("--decode_lengths", default="16384", help="prompt lengths for prefill + decode ('' for none)")
  parser.add_argument("--decode", type=int, default=32, help="greedy tokens decoded after each prompt")
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--rounds", type=int, default=3, help="alternations of longjax and transformers")
  parser.add_argument("--methods", default="", help="also time longjax's forward with these training-free methods "
                      "(names of longjax.demo.training_free_methods, comma-separated, or 'all')")
  parser.add_argument("--no-hf", action="store_true", help="longjax only")
  parser.add_argument("--hf_memory", default="", help=argparse.SUPPRESS)  # subprocess mode: forward | prefill
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                    "prefill_vs_hf.json"))
  args = parser.parse_args()
  lengths = [int(n) for n in args.lengths.split(",") if n]
  if args.hf_memory:
    print(json.dumps(hf_memory(args.layers, lengths[0], args.hf_memory)))
    return
  kept = cli.keep_host_buffers()
  import jax
  import torch
  import transformers

  from longjax.nn import init_params

  threads = len(os.sched_getaffinity(0))
  torch.set_num_threads(threads)
  decode_lengths = [int(n) for n in args.decode_lengths.split(",") if n]
  longest = max(lengths + [n + args.decode for n in decode_lengths])
  config = model_config(args.layers, longest)
  params = init_params(config, jax.random.key(0))
  hf = None if args.no_hf else hf_model(args.layers, longest)
  rows = []
  for length in lengths:
    run, memory = longjax_forward(config, params, length)
    run()  # warm-up (the first call also faults the pages in)
    row = {"kind": "forward", "length": length, "longjax_memory": memory, "longjax_s": [], "transformers_s": []}
    hf_run = None
    if hf is not None:
      hf_run = hf_forward(hf, length)
      hf_run()
      row["transformers_memory"] = _hf_memory_subprocess(args.layers, length, "forward")
    for _ in range(args.rounds):
      row["longjax_s"].append(run())
      if hf_run is not None:
        row["transformers_s"].append(hf_run())
    del run
    names = list(methods())[1:] if args.methods == "all" else [m for m in args.methods.split(",") if m]
    for method in names:
      method_config = model_config(args.layers, longest, method)
      method_run, method_memory = longjax_forward(method_config, params, length)
      method_run()
      times = [method_run() for _ in range(args.rounds)]
      row.setdefault("methods", {})[method] = {"s": times, "median_s": _median(times), "memory": method_memory,
                                               "vs_rope": _median(times) / _median(row["longjax_s"])}
      del method_run
    rows.append(row)
    print(json.dumps(row), flush=True)
  for length in decode_lengths:
    run = longjax_generation(config, params, length, args.decode)
    run()
    row = {"kind": "generation", "length": length, "decode_tokens": args.decode, "longjax_prefill_s": [],
           "longjax_decode_s_per_token": [], "transformers_prefill_s": [], "transformers_decode_s_per_token": []}
    hf_run = None
    if hf is not None:
      hf_run = hf_generation(hf, length, args.decode)
      hf_run()
      row["transformers_memory"] = _hf_memory_subprocess(args.layers, length, "prefill")
    for _ in range(args.rounds):
      prefill_s, decode_s = run()
      row["longjax_prefill_s"].append(prefill_s)
      row["longjax_decode_s_per_token"].append(decode_s)
      if hf_run is not None:
        prefill_s, decode_s = hf_run()
        row["transformers_prefill_s"].append(prefill_s)
        row["transformers_decode_s_per_token"].append(decode_s)
    rows.append(row)
    print(json.dumps(row), flush=True)
  result = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv), "cpu": cpu_facts(),
            "jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": threads, "keep_host_buffers": kept, "layers": args.layers, "shape": SHAPE,
            "rope_theta": ROPE_THETA, "rounds": args.rounds, "rows": rows,
            "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(table(result))


def table(result: dict) -> str:
  mib = lambda n: f"{n / 2**20:,.0f}" if isinstance(n, (int, float)) else "-"  # noqa: E731
  lines = ["| pass | T | longjax s | transformers s | ratio (hf/longjax) | longjax temp MiB (+ out) | "
           "transformers peak MiB above model |", "| --- | --- | --- | --- | --- | --- | --- |"]
  for row in result["rows"]:
    hf_memory_bytes = row.get("transformers_memory", {}).get("peak_above_model_bytes")
    if row["kind"] == "forward":
      ours, theirs = _median(row["longjax_s"]), row["transformers_s"] and _median(row["transformers_s"])
      memory = row["longjax_memory"]
      lines.append(f"| forward | {row['length']} | {ours:.2f} | {theirs or 0:.2f} | "
                   f"{(theirs / ours if theirs else 0):.2f}x | {mib(memory['temp_bytes'])} "
                   f"(+ {mib(memory['output_bytes'])}) | {mib(hf_memory_bytes)} |")
      for method, facts in row.get("methods", {}).items():
        lines.append(f"| forward, {method} | {row['length']} | {facts['median_s']:.2f} | - | "
                     f"{facts['vs_rope']:.2f}x rope's time | {mib(facts['memory']['temp_bytes'])} | - |")
    else:
      for part, key in (("prefill", "prefill_s"), ("decode s/token", "decode_s_per_token")):
        ours = _median(row[f"longjax_{key}"])
        theirs = row[f"transformers_{key}"] and _median(row[f"transformers_{key}"])
        hf_peak = mib(hf_memory_bytes) if part == "prefill" else "-"
        lines.append(f"| {part} | {row['length']} | {ours:.3f} | {theirs or 0:.3f} | "
                     f"{(theirs / ours if theirs else 0):.2f}x | - | {hf_peak} |")
  cpu = result["cpu"]
  lines.append(f"\n{cpu['model_name']}, {cpu['threads_used']} threads; avx512: {' '.join(cpu['avx512']) or 'none'}; "
               f"amx: {' '.join(cpu['amx']) or 'none'}")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
