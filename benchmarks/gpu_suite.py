"""The GPU benchmarks of issue 12 in one run: the ~1B model's training MFU at 2K and 8K, attention kernels
forward+backward at 8K-64K (cuDNN against blockwise), and decode throughput; one JSON and one table.

  python benchmarks/gpu_suite.py                 # on a GPU (about 10 minutes on an H100)
  python benchmarks/gpu_suite.py --smoke         # a dry check of every part with tiny shapes, any backend

Each part runs as its own process (an out-of-memory or a failing kernel is recorded, not fatal, and frees its
memory for the next part), writing its JSON into a scratch folder; the suite merges them into
$OUT/gpu_suite.json when OUT is set, else benchmarks/results/gpu_suite.json, beside the full log.
MFU counts 6 x non-embedding parameters + causal attention per token against the card's dense bf16 peak
(989 TFLOP/s on H100 and H200; longjax.flops.flops_per_token, peak_flops).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ATTENTION_LENGTHS = (8192, 16384, 32768, 65536)


def parts(smoke: bool, scratch: str) -> list[tuple[str, list[str], str]]:
  """(name, command, its JSON) for every part; --smoke shrinks each to seconds on a CPU."""
  python = sys.executable
  out = lambda name: os.path.join(scratch, f"{name}.json")  # noqa: E731
  train = ["--shapes", "tiny", "--steps", "1", "--rounds", "1", "--warmup", "1"] if smoke else [
      "--shapes", "1b,1b_8k", "--steps", "5", "--rounds", "2"]
  todo = [("train", [python, f"{HERE}/train_throughput.py", *train, "--no-hf", "--out", out("train")], out("train"))]
  for length in (256,) if smoke else ATTENTION_LENGTHS:
    shape = ["--heads", "2", "--kv-heads", "1", "--head-dim", "32", "--iters", "1", "--smoke"] if smoke else []
    name = f"attention_{length}"
    todo.append((name, [python, f"{HERE}/attention_gpu.py", "--length", str(length), *shape, "--out", out(name)],
                 out(name)))
  decode = ["--lengths", "64", "--new_tokens", "4", "--types", "full", "--repeats", "1", "--prefill_chunk", "32"] \
      if smoke else ["--lengths", "4096,32768,131072", "--new_tokens", "64"]
  todo.append(("decode", [python, f"{HERE}/decode_throughput.py", *decode, "--skip_hf", "--out", out("decode")],
               out("decode")))
  return todo


def summary(results: dict) -> str:
  """One table: MFU of the training shapes, TFLOP/s of each attention impl, decode tok/s by length."""
  lines = ["| part | case | figure |", "| --- | --- | --- |"]
  for row in results.get("train", {}).get("rows", []):
    mfu = row["longjax"]["mfu"]
    lines.append(f"| train | {row['shape']} {row['batch']} x {row['seq_len']} | "
                 f"{row['longjax']['tokens_per_s']:,.0f} tok/s, MFU {f'{mfu:.1%}' if mfu else '-'} |")
  for name, result in results.items():
    if name.startswith("attention_") and "timing" in result:
      for impl, timing in result["timing"].items():
        figure = timing.get("error") or (f"{timing['forward_backward_tflops']} TFLOP/s fwd+bwd "
                                         f"({timing['forward_backward_ms']} ms)")
        lines.append(f"| attention | T={result['shape']['length']} {impl} | {figure} |")
  for row in results.get("decode", {}).get("rows", []):
    lines.append(f"| decode | T={row['length']} {row['type']} | {row['longjax']['decode_tok_s']:,.1f} tok/s |")
  for name, result in results.items():
    if "failed" in result:
      lines.append(f"| {name} | failed | {result['failed']} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="tiny shapes: check every part runs (CPU is fine)")
  parser.add_argument("--timeout", type=float, default=1200.0, help="seconds each part may run")
  args = parser.parse_args()
  out_dir = os.environ.get("OUT") or os.path.join(HERE, "results")
  os.makedirs(out_dir, exist_ok=True)
  results, log = {}, []
  with tempfile.TemporaryDirectory() as scratch:
    for name, command, json_path in parts(args.smoke, scratch):
      start = time.perf_counter()
      print(f"== {name}: {' '.join(command[1:])}", flush=True)
      try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        failed = None if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
        output = proc.stdout + proc.stderr
      except subprocess.TimeoutExpired as error:
        failed, output = f"timed out after {args.timeout:.0f} s", str(error.stdout or "")
      print(output[-3000:], flush=True)
      log.append(f"== {name} ({time.perf_counter() - start:.0f} s)\n{output}")
      if failed is None and os.path.exists(json_path):
        with open(json_path) as f:
          results[name] = json.load(f)
      else:
        results[name] = {"failed": failed or "no JSON written"}
      results[name]["seconds"] = round(time.perf_counter() - start, 1)
  path = os.path.join(out_dir, "gpu_suite_smoke.json" if args.smoke else "gpu_suite.json")
  with open(path, "w") as f:
    json.dump({"smoke": args.smoke, "parts": results}, f, indent=1)
  with open(os.path.join(out_dir, "gpu_suite.log"), "w") as f:
    f.write("\n".join(log))
  print(summary(results))
  print(f"wrote {path}")
  sys.exit(1 if any("failed" in r for r in results.values()) else 0)


if __name__ == "__main__":
  main()
