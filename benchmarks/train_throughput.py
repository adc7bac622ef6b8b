"""Training throughput: longjax's jitted step next to Hugging Face transformers (PyTorch) on the same shapes.

  python benchmarks/train_throughput.py                         # issue and demo shapes, CPU
  python benchmarks/train_throughput.py --shapes tiny --steps 3 --rounds 2
  python benchmarks/train_throughput.py --shapes 1b --no-hf     # on an accelerator: longjax tokens/s and MFU

One optimizer step = forward, backward and AdamW on a [batch, seq_len] batch of random tokens, for
both frameworks (same model sizes, same optimizer, float32 on CPU, torch given as many threads as XLA's
CPU pool). On a shared machine the load changes from second to second, so the two are interleaved:
each of `--rounds` rounds times `--steps` longjax steps, then `--steps` transformers steps. Reported:
the median step time over all rounds, tokens/s, and the median of the per-round ratios.
Both run in one process with malloc set as the train main sets it (`longjax.cli.keep_host_buffers`;
LONGJAX_KEEP_HOST_BUFFERS=0 for glibc's default).
Writes benchmarks/results/train_throughput.json (XLA_FLAGS, if set, recorded with it).
"""

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from longjax import cli  # noqa: E402
from longjax.config import ModelConfig, TrainConfig  # noqa: E402
from longjax.nn import abstract_params, init_params  # noqa: E402
from longjax.nn import Llama  # noqa: E402
from longjax.train.optimizer import make_optimizer, parameter_labels  # noqa: E402
from longjax.flops import flops_per_token, peak_flops  # noqa: E402
from longjax.train.step import make_train_step  # noqa: E402

SHAPES = {  # name: (model config, batch, seq_len)
    # the shape of issue 12: 4 layers, d256, 8 heads / 4 KV heads, vocab 256, 8 x 512 tokens
    "issue": (ModelConfig(vocab_size=256, hidden_size=256, intermediate_size=688, num_layers=4, num_heads=8,
                          num_kv_heads=4), 8, 512),
    "tiny": (ModelConfig(vocab_size=259, hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4,
                         num_kv_heads=2), 8, 128),
    # configs/demo.py's model at its pre-training stage (8 x 256 byte tokens)
    "demo": (ModelConfig(vocab_size=259, hidden_size=128, intermediate_size=352, num_layers=4, num_heads=4,
                         num_kv_heads=2), 8, 256),
    "small": (ModelConfig(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_layers=8, num_heads=8,
                          num_kv_heads=8), 4, 1024),
    "1b": (ModelConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=32,
                       num_kv_heads=4, dtype="bfloat16", remat_policy="dots_with_no_batch_dims",
                       scan_layers=True), 8, 2048),
    # the same model at 4x the context, same tokens a step: what a context extension run costs
    "1b_8k": (ModelConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=32,
                          num_kv_heads=4, dtype="bfloat16", remat_policy="dots_with_no_batch_dims",
                          scan_layers=True), 2, 8192),
}


def xla_cpu_threads() -> int:
  """The size of XLA's CPU intra-op pool: one thread per core this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def setup_longjax(config: ModelConfig, batch: int, seq_len: int):
  """(run one step, facts): the jitted train step with donated state, compiled once here."""
  train = TrainConfig(learning_rate=1e-4, warmup_steps=0, schedule="constant", grad_clip=0.0, weight_decay=0.0)
  params = init_params(config, jax.random.key(0))
  optimizer = make_optimizer(train, params, config.lora)
  step = jax.jit(make_train_step(Llama(config), optimizer, parameter_labels(params, config.lora)),
                 donate_argnums=(0,))
  tokens = jax.random.randint(jax.random.key(1), (batch, seq_len), 0, config.vocab_size)
  data = {"inputs": tokens, "targets": jnp.roll(tokens, -1, axis=1), "loss_mask": jnp.ones(tokens.shape),
          "positions": jnp.broadcast_to(jnp.arange(seq_len), tokens.shape), "segment_ids": jnp.ones_like(tokens)}
  state = {"step": jnp.int32(0), "params": params, "opt_state": optimizer.init(params)}
  compiled = step.lower(state, data).compile()
  memory = compiled.memory_analysis()

  def run():
    nonlocal state
    state, metrics = compiled(state, data)
    jax.block_until_ready(metrics["loss"])

  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params(config)[0]))
  return run, {"params": num_params, "flops_per_token": flops_per_token(config, num_params, seq_len),
               "temp_bytes": getattr(memory, "temp_size_in_bytes", None)}


def setup_transformers(config: ModelConfig, batch: int, seq_len: int):
  """(run one step, facts): the same step in PyTorch, float32 on CPU; on a GPU float32 parameters with bf16
  autocast and SDPA."""
  import torch
  import transformers

  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.set_num_threads(xla_cpu_threads())
  torch.manual_seed(0)
  hf_config = transformers.LlamaConfig(
      vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
      num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_kv_heads, max_position_embeddings=seq_len, attn_implementation="sdpa")
  model = transformers.LlamaForCausalLM(hf_config).to(device).train()
  if config.remat_policy != "none":
    model.gradient_checkpointing_enable()  # the closest transformers has to a remat policy
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
  tokens = torch.randint(0, config.vocab_size, (batch, seq_len), device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda" and config.dtype == "bfloat16")

  def run():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    optimizer.step()
    if device == "cuda":
      torch.cuda.synchronize()

  return run, {"torch": torch.__version__, "transformers": transformers.__version__, "device": device,
               "threads": torch.get_num_threads(), "gradient_checkpointing": config.remat_policy != "none"}


def _time(run, steps: int) -> list[float]:
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return times


def bench_shape(config: ModelConfig, batch: int, seq_len: int, *, steps: int, warmup: int, rounds: int,
                hf: bool) -> dict:
  """Both frameworks on one shape, interleaved round by round (see the module docstring)."""
  runners = {"longjax": setup_longjax(config, batch, seq_len)}
  if hf:
    runners["transformers"] = setup_transformers(config, batch, seq_len)
  times = {name: [] for name in runners}
  for run, _ in runners.values():
    _time(run, warmup)
  for _ in range(rounds):
    for name, (run, _) in runners.items():
      times[name].append(_time(run, steps))
  row = {}
  for name, (_, facts) in runners.items():
    median = statistics.median(t for round_times in times[name] for t in round_times)
    row[name] = {"step_s": median, "tokens_per_s": batch * seq_len / median,
                 "round_medians_s": [statistics.median(r) for r in times[name]], **facts}
  peak = peak_flops(jax.devices()[0].device_kind)
  longjax = row["longjax"]
  longjax["mfu"] = longjax["flops_per_token"] * longjax["tokens_per_s"] / peak if peak else None
  if hf:
    ratios = [t / j for j, t in zip(longjax["round_medians_s"], row["transformers"]["round_medians_s"])]
    row["ratio_tokens_per_s"] = statistics.median(ratios)
    row["ratio_per_round"] = ratios
  return row


def table(rows: list[dict]) -> str:
  """The results as a Markdown table (benchmarks/README.md keeps the latest)."""
  lines = ["| shape | batch x length | params | longjax tok/s | transformers tok/s | ratio | MFU |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for row in rows:
    hf = row.get("transformers", {}).get("tokens_per_s")
    mfu = row["longjax"]["mfu"]
    ratio = f"{row['ratio_tokens_per_s']:.2f}x" if hf else "-"
    lines.append(f"| {row['shape']} | {row['batch']} x {row['seq_len']} | {row['longjax']['params']:,} | "
                 f"{row['longjax']['tokens_per_s']:,.0f} | {f'{hf:,.0f}' if hf else '-'} | {ratio} | "
                 f"{f'{mfu:.1%}' if mfu else '-'} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shapes", default="issue,demo", help=f"comma-separated, of {', '.join(SHAPES)}")
  parser.add_argument("--steps", type=int, default=4, help="steps a round, per framework")
  parser.add_argument("--rounds", type=int, default=5, help="alternations of longjax and transformers")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--impl", default=None, help="override model.attention.impl (auto, xla, cudnn, blockwise)")
  parser.add_argument("--no-hf", action="store_true", help="skip transformers")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "train_throughput.json"))
  args = parser.parse_args()
  kept = cli.keep_host_buffers()  # as the train main does (LONGJAX_KEEP_HOST_BUFFERS=0: glibc's default)
  rows = []
  for name in args.shapes.split(","):
    config, batch, seq_len = SHAPES[name]
    if args.impl:
      config = dataclasses.replace(config, attention=dataclasses.replace(config.attention, impl=args.impl))
    if jax.default_backend() == "cpu":
      config = dataclasses.replace(config, dtype="float32")  # transformers on CPU runs float32 too
    result = bench_shape(config, batch, seq_len, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
                         hf=not args.no_hf)
    row = {"shape": name, "impl": config.attention.impl, "batch": batch, "seq_len": seq_len,
           "layers": config.num_layers, "hidden": config.hidden_size, **result}
    rows.append(row)
    print(f"{name}: longjax {row['longjax']['tokens_per_s']:,.0f} tok/s", flush=True)
  print(table(rows))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"device": jax.devices()[0].device_kind, "backend": jax.default_backend(), "cpus": os.cpu_count(),
               "xla_flags": os.environ.get("XLA_FLAGS", ""), "keep_host_buffers": kept,
               "jax": jax.__version__, "platform": platform.platform(), "rows": rows}, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
