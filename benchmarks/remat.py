"""Remat policies: the train step's compiled memory against its time, for each policy, layers scanned or not.

  python benchmarks/remat.py                          # the issue shape (4 layers, d256, 8 x 512), CPU
  python benchmarks/remat.py --shape 1b --steps 5     # on an accelerator

For every `model.remat_policy` and `model.scan_layers`, the jitted train step (forward, backward, AdamW, state
donated) is compiled once; XLA's memory analysis gives its temp bytes (activations kept for the backward
pass and scratch, beyond parameters, optimizer state and batch), then the median of --steps timed steps
(after one warm-up) gives its speed. Writes benchmarks/results/remat.json and prints a table.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train_throughput import SHAPES, setup_longjax  # noqa: E402
from longjax import cli  # noqa: E402
from longjax.nn import REMAT_POLICIES  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="issue", help=f"one of {', '.join(SHAPES)}")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "remat.json"))
  args = parser.parse_args()
  cli.keep_host_buffers()  # as the train main does
  config, batch, seq_len = SHAPES[args.shape]
  if jax.default_backend() == "cpu":
    config = dataclasses.replace(config, dtype="float32")
  rows = []
  for scan in (False, True):
    for policy in ("none",) + tuple(REMAT_POLICIES):
      run, facts = setup_longjax(dataclasses.replace(config, remat_policy=policy, scan_layers=scan), batch, seq_len)
      run()
      times = []
      for _ in range(args.steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
      rows.append({"policy": policy, "scan_layers": scan, "temp_bytes": facts["temp_bytes"],
                   "step_s": statistics.median(times)})
      print(f"{policy} scan={scan}: temp {facts['temp_bytes'] / 2**20:.1f} MiB, step {rows[-1]['step_s']:.3f} s",
            flush=True)
  lines = [f"{args.shape}: {batch} x {seq_len} tokens, {config.num_layers} layers, d{config.hidden_size}, "
           f"{jax.devices()[0].device_kind}", "",
           "| remat_policy | scan_layers | temp MiB | vs none | step s | vs none |",
           "| --- | --- | --- | --- | --- | --- |"]
  for row in rows:
    base = next(r for r in rows if r["policy"] == "none" and r["scan_layers"] == row["scan_layers"])
    lines.append(f"| {row['policy']} | {row['scan_layers']} | {row['temp_bytes'] / 2**20:.1f} | "
                 f"{row['temp_bytes'] / base['temp_bytes']:.2f}x | {row['step_s']:.3f} | "
                 f"{row['step_s'] / base['step_s']:.2f}x |")
  print("\n".join(lines))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"shape": args.shape, "batch": batch, "seq_len": seq_len, "device": jax.devices()[0].device_kind,
               "jax": jax.__version__, "platform": platform.platform(), "cpus": os.cpu_count(),
               "load_average": os.getloadavg(), "rows": rows}, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
