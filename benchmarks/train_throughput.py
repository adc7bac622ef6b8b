"""Training throughput: longjax's jitted step next to Hugging Face transformers (PyTorch) on the same shapes.

  python benchmarks/train_throughput.py                         # tiny and demo shapes, CPU
  python benchmarks/train_throughput.py --shapes tiny --steps 20
  python benchmarks/train_throughput.py --shapes 1b --no-hf     # on an accelerator: longjax tokens/s and MFU

One optimizer step = forward, backward and AdamW on a [batch, seq_len] batch of random tokens, for
both frameworks (same model sizes, same optimizer, float32 on CPU). Steps are timed after warm-up
(compilation for JAX); the median step time is reported with tokens/s and the longjax/transformers
ratio. Writes benchmarks/results/train_throughput.json.
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
from longjax.config import ModelConfig, TrainConfig  # noqa: E402
from longjax.nn import abstract_params, init_params  # noqa: E402
from longjax.nn import Llama  # noqa: E402
from longjax.train.optimizer import make_optimizer, parameter_labels  # noqa: E402
from longjax.train.step import flops_per_token, make_train_step, peak_flops  # noqa: E402

SHAPES = {  # name: (model config, batch, seq_len)
    "tiny": (ModelConfig(vocab_size=259, hidden_size=64, intermediate_size=176, num_layers=2, num_heads=4,
                         num_kv_heads=2), 8, 128),
    "demo": (ModelConfig(vocab_size=259, hidden_size=128, intermediate_size=352, num_layers=4, num_heads=4,
                         num_kv_heads=2), 4, 512),
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


def _time(step_fn, steps: int, warmup: int) -> list[float]:
  for _ in range(warmup):
    step_fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step_fn()
    times.append(time.perf_counter() - start)
  return times


def bench_longjax(config: ModelConfig, batch: int, seq_len: int, steps: int, warmup: int) -> dict:
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

  times = _time(run, steps, warmup)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params(config)[0]))
  median = statistics.median(times)
  result = {"step_s": median, "tokens_per_s": batch * seq_len / median, "params": num_params,
            "flops_per_token": flops_per_token(config, num_params, seq_len),
            "temp_bytes": getattr(memory, "temp_size_in_bytes", None)}
  peak = peak_flops(jax.devices()[0].device_kind)
  result["mfu"] = result["flops_per_token"] * result["tokens_per_s"] / peak if peak else None
  return result


def bench_transformers(config: ModelConfig, batch: int, seq_len: int, steps: int, warmup: int) -> dict:
  """The same step in PyTorch: float32 on CPU; on a GPU float32 parameters with bf16 autocast and SDPA."""
  import torch
  import transformers

  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.set_num_threads(os.cpu_count())
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

  times = _time(run, steps, warmup)
  median = statistics.median(times)
  return {"step_s": median, "tokens_per_s": batch * seq_len / median, "torch": torch.__version__,
          "transformers": transformers.__version__, "device": device, "threads": torch.get_num_threads(),
          "gradient_checkpointing": config.remat_policy != "none"}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shapes", default="tiny,demo,small", help=f"comma-separated, of {', '.join(SHAPES)}")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--impl", default=None, help="override model.attention.impl (auto, xla, cudnn, blockwise)")
  parser.add_argument("--no-hf", action="store_true", help="skip transformers")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "train_throughput.json"))
  args = parser.parse_args()
  rows = []
  for name in args.shapes.split(","):
    config, batch, seq_len = SHAPES[name]
    if args.impl:
      config = dataclasses.replace(config, attention=dataclasses.replace(config.attention, impl=args.impl))
    if jax.default_backend() == "cpu":
      config = dataclasses.replace(config, dtype="float32")  # transformers on CPU runs float32 too
    row = {"shape": name, "impl": config.attention.impl, "batch": batch, "seq_len": seq_len, "layers": config.num_layers,
           "hidden": config.hidden_size, "longjax": bench_longjax(config, batch, seq_len, args.steps, args.warmup)}
    if not args.no_hf:
      row["transformers"] = bench_transformers(config, batch, seq_len, args.steps, args.warmup)
      row["ratio_tokens_per_s"] = row["longjax"]["tokens_per_s"] / row["transformers"]["tokens_per_s"]
    rows.append(row)
    hf = row.get("transformers", {}).get("tokens_per_s")
    mfu = row["longjax"]["mfu"]
    print(f"{name:6s} B={batch} T={seq_len} params={row['longjax']['params']:,}: longjax "
          f"{row['longjax']['tokens_per_s']:,.0f} tok/s" + (f", transformers {hf:,.0f} tok/s, ratio "
                                                            f"{row['ratio_tokens_per_s']:.2f}x" if hf else "") +
          (f", MFU {mfu:.1%}" if mfu else ""), flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"device": jax.devices()[0].device_kind, "backend": jax.default_backend(), "cpus": os.cpu_count(),
               "jax": jax.__version__, "platform": platform.platform(), "rows": rows}, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
