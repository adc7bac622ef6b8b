"""FLOPs and compiled memory of a training step against length: the MEGALODON block versus LLaMA's, without running.

  python benchmarks/megalodon_scaling.py                       # T = 1K..32K, llama_xla, llama_blockwise, megalodon
  python benchmarks/megalodon_scaling.py --lengths 1024,8192 --models megalodon --chunk 2048

Small models (2 layers, hidden 256, vocab 256, FFN 512, float32, batch 1) built from ModelConfig:
  llama_xla        LLaMA blocks, full causal attention materialised by XLA (the T x T logits);
  llama_blockwise  LLaMA blocks, the same attention computed blockwise (online softmax, linear memory);
  megalodon        MEGALODON blocks (2 heads, z 128, value 256, EMA 16, norm groups 16), attention
                   inside chunks of --chunk tokens, CEMA (by FFT) across them.
For each model and T, `jax.jit(jax.value_and_grad(loss)).lower(...).compile()` of the mean next-token
cross-entropy over abstract parameters and tokens (ShapeDtypeStructs: nothing is allocated), and read
  temp / argument bytes: compiled.memory_analysis();
  XLA flops:    compiled.cost_analysis()['flops'] (it counts FFTs, as ~N log N, but a while-loop body
                only once, so it undercounts the blockwise kernel's scan);
  jaxpr flops:  2 m n k of every dot_general plus 2.5 N log2 N per real FFT of length N, scan bodies
                times their length (what the program really executes; elementwise work left out);
  decode cache: the bytes of longjax.inference.init_cache(config, 1, T) (by jax.eval_shape).
A point whose compile at a smaller T took over --max-compile-s is skipped (null, with the reason).
Writes benchmarks/results/megalodon_scaling.json; prints a Markdown table and the growth from the
smallest to the largest T (linear: the length ratio).
"""

import argparse
import dataclasses
import json
import math
import os
import platform
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.compiled import compiled_stats  # noqa: E402
from longjax import inference, nn, ops  # noqa: E402  (run as a script from anywhere)
from longjax.config import AttentionConfig, MegalodonConfig, ModelConfig  # noqa: E402

BATCH = 1
BASE = dict(vocab_size=256, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4, num_kv_heads=4,
            dtype="float32", param_dtype="float32")
MODELS = ("llama_xla", "llama_blockwise", "megalodon")


def model_config(name: str, max_length: int, chunk: int) -> ModelConfig:
  if name == "megalodon":
    mega = MegalodonConfig(z_dim=128, value_dim=256, ema_dim=16, chunk_size=chunk, norm_groups=16)
    config = ModelConfig(**{**BASE, "num_heads": 2, "num_kv_heads": 2}, block="megalodon", megalodon=mega,
                         max_position_embeddings=max_length)
  else:
    impl = {"llama_xla": "xla", "llama_blockwise": "blockwise"}[name]
    config = ModelConfig(**BASE, attention=AttentionConfig(impl=impl), max_position_embeddings=max_length)
  config.validate()
  return config


def train_loss(config: ModelConfig):
  model = nn.Llama(config)

  def loss(params, tokens):
    logits = model.apply({"params": params}, tokens[:, :-1], train=True)
    targets = tokens[:, 1:]
    total, count = ops.cross_entropy(logits, targets, jnp.ones(targets.shape, jnp.float32))
    return total / count

  return loss


def cache_bytes(config: ModelConfig, length: int) -> int:
  shapes = jax.eval_shape(lambda: inference.init_cache(config, BATCH, length))
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(shapes))


def measure(name: str, length: int, chunk: int) -> dict:
  config = model_config(name, length, chunk)
  params, _ = nn.abstract_params(config)
  # T + 1 tokens: the loss predicts T next tokens, so the model runs at exactly T.
  tokens = jax.ShapeDtypeStruct((BATCH, length + 1), jnp.int32)
  step = jax.value_and_grad(train_loss(config))
  return {
      "model": name, "length": length, **compiled_stats(step, params, tokens),
      "decode_cache_bytes": cache_bytes(config, length),
  }


def skipped(name: str, length: int, chunk: int, reason: str) -> dict:
  keys = ("compile_s", "temp_bytes", "argument_bytes", "output_bytes", "xla_flops", "jaxpr_flops")
  return {"model": name, "length": length, **dict.fromkeys(keys), "skipped": reason,
          "decode_cache_bytes": cache_bytes(model_config(name, length, chunk), length)}


def markdown(results: list[dict]) -> str:
  def num(value, scale, fmt):
    return "—" if value is None else format(value / scale, fmt)

  lines = ["| T | block / attention | fwd+bwd GFLOP (XLA) | fwd+bwd GFLOP (jaxpr) | temp memory MiB | "
           "decode cache MiB |", "|---:|---|---:|---:|---:|---:|"]
  for row in sorted(results, key=lambda r: (r["length"], MODELS.index(r["model"]))):
    lines.append(f"| {row['length']} | {row['model']} | {num(row['xla_flops'], 1e9, '.2f')} | "
                 f"{num(row['jaxpr_flops'], 1e9, '.2f')} | {num(row['temp_bytes'], 2**20, '.1f')} | "
                 f"{num(row['decode_cache_bytes'], 2**20, '.2f')} |")
  return "\n".join(lines)


def growth(results: list[dict]) -> tuple[str, dict]:
  """Each quantity's ratio from the smallest to the largest measured T, against the length ratio."""
  lines, summary = [], {}
  for name in MODELS:
    rows = sorted((r for r in results if r["model"] == name and r["temp_bytes"] is not None),
                  key=lambda r: r["length"])
    if len(rows) < 2:
      continue
    small, large = rows[0], rows[-1]
    ratios = {"length": large["length"] / small["length"]}
    for key in ("xla_flops", "jaxpr_flops", "temp_bytes", "decode_cache_bytes"):
      ratios[key] = large[key] / small[key] if small[key] else None
    # exponent b in quantity ~ T^b (1: linear, 2: quadratic)
    exponents = {k: round(math.log(v) / math.log(ratios["length"]), 2) for k, v in ratios.items()
                 if k != "length" and v}
    summary[name] = {"from": small["length"], "to": large["length"], "ratios": ratios, "exponents": exponents}
    lines.append(f"{name:16} T {small['length']}->{large['length']} (x{ratios['length']:.0f}): "
                 f"XLA flops x{ratios['xla_flops']:.1f}, jaxpr flops x{ratios['jaxpr_flops']:.1f}, "
                 f"temp memory x{ratios['temp_bytes']:.1f}, decode cache x{ratios['decode_cache_bytes']:.2f}  "
                 f"(exponents {exponents})")
  mega = summary.get("megalodon")
  if mega:
    r = mega["ratios"]

    def verdict(x):  # within 25% of the length ratio
      return "linear" if abs(x / r["length"] - 1) <= 0.25 else f"NOT linear ({x / r['length']:.2f} x the length ratio)"

    checks = {"flops (XLA)": verdict(r["xla_flops"]), "flops (jaxpr)": verdict(r["jaxpr_flops"]),
              "temp memory": verdict(r["temp_bytes"]),
              "decode cache": "flat" if abs(r["decode_cache_bytes"] - 1) < 1e-9 else f"x{r['decode_cache_bytes']:.2f}"}
    mega["checks"] = checks
    lines.append("megalodon check: " + ", ".join(f"{k} {v}" for k, v in checks.items()))
  return "\n".join(lines), summary


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768", help="comma-separated T")
  parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
  parser.add_argument("--chunk", type=int, default=1024, help="MEGALODON attention chunk (megalodon.chunk_size)")
  parser.add_argument("--max-compile-s", type=float, default=60.0,
                      help="skip a model's longer lengths once one of its compiles took longer than this")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                    "megalodon_scaling.json"))
  args = parser.parse_args()
  lengths = sorted(int(x) for x in args.lengths.split(","))
  names = args.models.split(",")
  unknown = sorted(set(names) - set(MODELS))
  if unknown:
    parser.error(f"--models: unknown {', '.join(unknown)}; allowed: {', '.join(MODELS)}")
  results = []
  for name in names:
    slow = None
    for length in lengths:
      if slow:
        results.append(skipped(name, length, args.chunk, slow))
      else:
        results.append(measure(name, length, args.chunk))
        if results[-1]["compile_s"] > args.max_compile_s:
          slow = f"compile at T={length} took {results[-1]['compile_s']} s > {args.max_compile_s} s"
      print(json.dumps(results[-1]), flush=True)
  table = markdown(results)
  growth_lines, summary = growth(results)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"command": " ".join(["python"] + sys.argv), "backend": jax.default_backend(), "jax": jax.__version__,
               "device_kind": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
               "machine": platform.machine(), "batch": BATCH,
               "configs": {name: dataclasses.asdict(model_config(name, lengths[0], args.chunk)) for name in names},
               "chunk_size": args.chunk, "results": results, "growth": summary}, f, indent=1)
  print(table)
  print()
  print(growth_lines)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
