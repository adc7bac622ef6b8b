"""Every training-free extension method on one checkpoint: perplexity and passkey at 1x-16x, and forward cost.

  python benchmarks/training_free.py                                    # the demo's base model, or trains it
  python benchmarks/training_free.py --workdir demo_out/base --factors 1,2,4,8,16 --trials 2

The checkpoint is the demo's pre-trained model (`python -m longjax.demo` writes it to demo_out/base): a
4-layer LLaMA trained at 256 tokens with 2-digit passkey documents mixed in. When --workdir holds no run,
it is trained there first with configs/demo.py:stage=base for --pretrain_steps steps (the JSON says which).
Methods are the demo's training-free list (`longjax.evaluate.extension.training_free_methods`): RoPE scaling (PI, NTK,
dynamic NTK, YaRN, dynamic YaRN) and remapping inside attention (Self-Extend, DCA, ReRoPE with log-n).
For each: perplexity on the longest validation documents and passkey accuracy (greedy, through the KV
cache) at each factor x 256 tokens; and the cost of one forward pass of the model at --cost_length tokens:
compiled FLOPs (XLA's cost analysis, which counts a loop body once, and the jaxpr's matmul FLOPs with loop
bodies times their trip count) and the median wall time of 3 calls, each relative to plain RoPE.
Writes benchmarks/results/training_free.json and prints one table.
"""

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.compiled import compiled_stats  # noqa: E402
from longjax import load  # noqa: E402  (run as a script from anywhere)
from longjax.config import from_config_dict, load_file  # noqa: E402
from longjax.demo import DEMO_CONFIG  # noqa: E402
from longjax.evaluate.extension import BASELINE, training_free_methods  # noqa: E402
from longjax.evaluate import eval_documents, evaluate_passkey, evaluate_perplexity  # noqa: E402
from longjax.evaluate.tasks import EvalRun  # noqa: E402
from longjax.nn import Llama  # noqa: E402
from longjax.train import train_and_evaluate  # noqa: E402


def checkpoint(workdir: str, steps: int):
  """The run in `workdir`, trained there first (demo stage base) when it holds none; (run, how it was made)."""
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    return load(workdir), f"existing run {workdir}"
  config = from_config_dict(load_file(f"{DEMO_CONFIG}:stage=base,steps={steps}"))
  start = time.time()
  train_and_evaluate(config, workdir)
  return load(workdir), f"trained here: configs/demo.py:stage=base,steps={steps} in {time.time() - start:.0f} s"


def forward_cost(config, params, length: int) -> dict:
  """Compiled FLOPs and median wall time of one forward pass over `length` tokens (batch 1)."""
  model = Llama(config.model)
  tokens = jnp.zeros((1, length), jnp.int32)

  def forward(p, x):
    return model.apply({"params": p}, x)

  stats = compiled_stats(forward, params, tokens)
  compiled = jax.jit(forward)
  jax.block_until_ready(compiled(params, tokens))
  times = []
  for _ in range(3):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, tokens))
    times.append(time.perf_counter() - start)
  return {"xla_flops": stats["xla_flops"], "jaxpr_flops": stats["jaxpr_flops"], "seconds": float(np.median(times))}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="demo_out/base", help="A run of the demo's base model (or where to "
                      "train one).")
  parser.add_argument("--pretrain_steps", type=int, default=1200, help="Steps when the model is trained here.")
  parser.add_argument("--factors", default="1,2,4,8,16", help="Lengths as multiples of the trained length.")
  parser.add_argument("--trials", type=int, default=2, help="Passkeys per (length, depth) cell.")
  parser.add_argument("--depths", default="0.5", help="Passkey depths.")
  parser.add_argument("--documents", type=int, default=2, help="Validation documents for perplexity.")
  parser.add_argument("--cost_length", type=int, default=8192, help="Tokens of the forward pass that is costed.")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                    "training_free.json"))
  args = parser.parse_args()
  started = time.time()
  run, origin = checkpoint(os.path.abspath(args.workdir), args.pretrain_steps)
  trained = run.config
  trained_length = trained.train.seq_len
  factors = [int(f) for f in args.factors.split(",")]
  depths = [float(d) for d in args.depths.split(",")]
  lengths = [trained_length * f for f in factors]
  documents = eval_documents(trained.data, args.documents, min_tokens=max(lengths) + 1, max_tokens=max(lengths) + 1)
  print(f"checkpoint: {origin}; {len(documents)} documents of {max(lengths) + 1} tokens", flush=True)

  results = {}
  for name, (rope, attention) in training_free_methods(trained_length, float(max(factors))).items():
    t0 = time.time()
    attention = dataclasses.replace(attention, kernel_block=trained.model.attention.kernel_block)
    model = dataclasses.replace(trained.model, rope=rope, attention=attention)
    config = dataclasses.replace(trained, model=model,
                                 eval=dataclasses.replace(trained.eval, lengths=tuple(lengths), stride=max(lengths)))
    perplexity = evaluate_perplexity(config, run.params, documents)
    method_run = EvalRun(trained, {name: config}, run.params, run.tokenizer)
    grid = evaluate_passkey(method_run.generate, lambda text, r=method_run: len(r.encode(text)), lengths, depths,
                            keys_per_cell=args.trials, digits=trained.data.retrieval_digits,
                            trained_length=trained_length)
    cost = forward_cost(config, run.params, args.cost_length)
    results[name] = {"rope": dataclasses.asdict(rope), "attention": dataclasses.asdict(attention),
                     "perplexity": [p.perplexity for p in perplexity],
                     "passkey": [float(np.mean(row)) for row in grid.accuracy], "cost": cost}
    print(f"  {name}: ppl {[round(p.perplexity, 2) for p in perplexity]}, passkey "
          f"{results[name]['passkey']}, forward {cost['seconds']:.2f} s ({time.time() - t0:.0f} s)", flush=True)

  plain = results[BASELINE]["cost"]
  for r in results.values():
    r["cost"]["relative_jaxpr_flops"] = r["cost"]["jaxpr_flops"] / plain["jaxpr_flops"]
    r["cost"]["relative_xla_flops"] = r["cost"]["xla_flops"] / plain["xla_flops"]
    r["cost"]["relative_seconds"] = r["cost"]["seconds"] / plain["seconds"]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"command": " ".join(sys.argv), "checkpoint": origin, "backend": jax.default_backend(),
               "jax": jax.__version__, "machine": platform.machine(), "trained_length": trained_length,
               "lengths": lengths, "depths": depths, "trials": args.trials, "documents": len(documents),
               "cost_length": args.cost_length, "seconds": time.time() - started, "methods": results}, f, indent=2)

  cells = [f"{f}x" for f in factors]
  print(f"\nperplexity | passkey ({args.trials * len(depths)} keys per length) | forward at {args.cost_length} "
        "tokens relative to plain RoPE (matmul FLOPs, XLA FLOPs, time)")
  print("| method | " + " | ".join(f"ppl {c}" for c in cells) + " | " + " | ".join(f"key {c}" for c in cells)
        + " | FLOPs | XLA FLOPs | time |")
  print("|---" * (2 * len(cells) + 4) + "|")
  for name, r in results.items():
    c = r["cost"]
    print(f"| {name} | " + " | ".join(f"{p:.2f}" for p in r["perplexity"]) + " | "
          + " | ".join(f"{100 * a:.0f}%" for a in r["passkey"]) + f" | {c['relative_jaxpr_flops']:.2f}x | "
          f"{c['relative_xla_flops']:.2f}x | {c['relative_seconds']:.2f}x |")
  print(f"\n{args.out} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
  main()
