"""Passkey retrieval at 1x-8x the training length: the tiny landmark model against the same model without landmarks.

  python benchmarks/landmark_passkey.py                      # 300 steps each, about 15 min CPU on 2 cores
  python benchmarks/landmark_passkey.py --steps 1200 --keys 8 --out /tmp/landmark_passkey

Trains configs/landmark_tiny.py (landmark attention, blocks of 31 + 1, top-4 retrieval at inference) and its
control `attention=full` (plain causal attention, RoPE unchanged) for `--steps` steps each at 256 byte tokens,
then asks each for passkeys (the landmark-attention prompt, 2-digit keys, greedy) at every length of
`--lengths` tokens and depths 0.25 and 0.75. Lengths count the prompt's ordinary tokens (the landmark model reads
one landmark more every 31). Chance for a 2-digit key is about 1/90. Writes
benchmarks/results/landmark_passkey.json and prints a table; not part of `make test`.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from longjax import load  # noqa: E402
from longjax.config import from_config_dict, load_file  # noqa: E402
from longjax.evaluate import evaluate_passkey  # noqa: E402
from longjax.train import train_and_evaluate  # noqa: E402

DEPTHS = (0.25, 0.75)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--keys", type=int, default=4, help="keys per (length, depth) cell")
  parser.add_argument("--lengths", default="256,512,1024,2048")
  parser.add_argument("--out", default="/tmp/landmark_passkey", help="work directories of the two runs")
  args = parser.parse_args()
  lengths = [int(n) for n in args.lengths.split(",")]
  results = {"steps": args.steps, "keys_per_cell": args.keys, "depths": list(DEPTHS), "lengths": lengths, "runs": {}}
  for attention in ("landmark", "full"):
    config = from_config_dict(load_file(f"{REPO}/configs/landmark_tiny.py:attention={attention},steps={args.steps}"))
    workdir = os.path.join(args.out, attention)
    started = time.time()
    metrics = train_and_evaluate(config, workdir)
    trained = time.time() - started
    run = load(workdir)
    started = time.time()
    grid = evaluate_passkey(lambda prompts, n: run.generate(prompts, n),
                            lambda text: len(run.encode(text)), lengths, DEPTHS, keys_per_cell=args.keys, digits=2,
                            trained_length=config.train.seq_len)
    results["runs"][attention] = {
        "final_loss": float(metrics["loss"]), "train_seconds": trained, "eval_seconds": time.time() - started,
        "accuracy": [float(np.mean(row)) for row in grid.accuracy], "samples": grid.samples[:4]}
  os.makedirs(os.path.join(REPO, "benchmarks", "results"), exist_ok=True)
  with open(os.path.join(REPO, "benchmarks", "results", "landmark_passkey.json"), "w") as f:
    json.dump(results, f, indent=2)
  print(f"passkey accuracy ({args.keys} keys x {len(DEPTHS)} depths per length, {args.steps} steps, trained at 256)")
  print(f"{'attention':>10} {'loss':>6} " + " ".join(f"{n:>6d}" for n in lengths) + "  train s")
  for name, run in results["runs"].items():
    print(f"{name:>10} {run['final_loss']:6.3f} " + " ".join(f"{a:6.2f}" for a in run["accuracy"])
          + f"  {run['train_seconds']:7.0f}")


if __name__ == "__main__":
  main()
