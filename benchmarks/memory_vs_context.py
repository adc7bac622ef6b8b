"""The longest trainable context of Llama 2 7B per 16 GiB and 80 GiB device, by attention type and remat policy.

  python benchmarks/memory_vs_context.py                       # the whole grid (about an hour on 2 CPU cores)
  python benchmarks/memory_vs_context.py --attention full/blockwise --remat full --step 16384

The 7B config (configs/llama2_7b.py: bf16 compute, float32 parameters and AdamW moments, scanned layers)
on 8 fake CPU devices, mesh fsdp=8, one sequence a device (global batch 8): longjax.plan compiles the
Trainer's step for each length and reads XLA's per-device memory (nothing runs), doubling the length
from --step and bisecting to a multiple of --step. Sliding windows are 4096 keys (+4 sinks), S2 groups a
quarter of the length, Infini segments 2048 tokens. Also checks that with blockwise attention (full
remat) 8x the length costs at most about 9x the activation memory (temporaries), and plans fsdp=4 x
sequence=2 (4 sequences, the same tokens a device). Writes benchmarks/results/memory_vs_context.json and
prints a Markdown table.
"""

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from longjax import plan  # noqa: E402  (run as a script from anywhere)

DEVICES = 8
MEMORIES = {"16GiB": 16 * 2**30, "80GiB": 80 * 2**30}
ATTENTIONS = ("full/blockwise", "full/xla", "sliding/blockwise", "s2/blockwise", "infini/blockwise")
REMATS = ("none", "dots_with_no_batch_dims", "save_attention_out", "full")
# Per attention type: the settings its rows use (a window and segment length a 7B long-context run would pick).
TYPE_SETTINGS = {"sliding": {"model.attention.sliding.window": 4096, "model.attention.sliding.sinks": 4},
                 "infini": {"model.attention.infini.segment_len": 2048},
                 "s2": {"model.attention.s2.group_size_ratio": 0.25}}
SETTINGS = {key: value for values in TYPE_SETTINGS.values() for key, value in values.items()}
GROWTH_LENGTHS = (4096, 32768)  # the "8x the length, at most ~9x the memory" check


def _config(fsdp: int, sequence: int, batch: int):
  from longjax.config import from_config_dict, load_file  # after use_fake_devices: nothing may start JAX first

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = from_config_dict(load_file(os.path.join(root, "configs", "llama2_7b.py")))
  return plan.with_values(config, {"mesh.data": 1, "mesh.fsdp": fsdp, "mesh.tensor": 1, "mesh.sequence": sequence,
                                   "train.global_batch_size": batch})


def _row(search: plan.Search) -> dict:
  fit = search.longest
  return {"longest": fit, "first_failing": search.first_failing,
          "total_bytes": search.tried[fit].total if fit else None,
          "state_bytes": search.tried[fit].state if fit else None}


def _write(path: str, result: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--attention", default=",".join(ATTENTIONS), help="type/impl list")
  parser.add_argument("--remat", default=",".join(REMATS))
  parser.add_argument("--step", type=int, default=8192, help="lengths are multiples of this")
  parser.add_argument("--max_seq_len", type=int, default=2**20)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                    "memory_vs_context.json"))
  args = parser.parse_args()
  plan.use_fake_devices(DEVICES)
  start = time.perf_counter()
  config = _config(fsdp=8, sequence=1, batch=8)
  report = lambda line: print(f"  [{time.perf_counter() - start:6.0f} s] {line}", flush=True)  # noqa: E731
  result = {"model": "configs/llama2_7b.py", "devices": DEVICES, "mesh": "fsdp=8", "global_batch_size": 8,
            "step": args.step, "max_seq_len": args.max_seq_len, "settings": SETTINGS, "rows": [],
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (compiled for fake "
                       "CPU devices)"}
  rows = result["rows"]
  for attention in args.attention.split(","):
    for remat in args.remat.split(","):
      row = {"attention": attention, "remat": remat}
      for name, limit in MEMORIES.items():  # compiles are remembered: the 80 GiB search reuses the 16 GiB one's
        ((_, _, search),) = plan.search_lengths(config, [attention], [remat], limit, args.step, args.max_seq_len,
                                                report, settings=TYPE_SETTINGS)
        row[name] = _row(search)
      rows.append(row)
      _write(args.out, {**result, "elapsed_s": round(time.perf_counter() - start)})  # an interrupted run keeps rows

  values = {**plan.attention_values("full/blockwise"), "model.remat_policy": "full"}
  short, long = (plan.step_memory(plan.with_values(config, {**values, "train.seq_len": n})) for n in GROWTH_LENGTHS)
  growth = {"lengths": GROWTH_LENGTHS, "temporaries_bytes": [short.temporaries, long.temporaries],
            "total_bytes": [short.total, long.total], "temporaries_ratio": long.temporaries / short.temporaries,
            "total_ratio": long.total / short.total}
  # Context over the sequence axis: 4 sequences of twice the length on fsdp=4 x sequence=2.
  sequence_parallel = {}
  for name, limit in MEMORIES.items():
    ((_, _, search),) = plan.search_lengths(_config(fsdp=4, sequence=2, batch=4), ["full/blockwise"], ["full"],
                                            limit, 2 * args.step, 2 * args.max_seq_len, report)
    sequence_parallel[name] = _row(search)
  elapsed = time.perf_counter() - start

  result.update(blockwise_growth_8x=growth, fsdp4_sequence2_full_blockwise_full_remat=sequence_parallel,
                elapsed_s=round(elapsed))
  _write(args.out, result)

  def cell(r):
    if not r["longest"]:
      return "none"
    capped = "+" if r["first_failing"] is None else ""  # fits even at --max_seq_len
    return f"{r['longest'] // 1024}K{capped} ({plan.size_text(r['total_bytes'])})"

  print(f"\nLlama 2 7B, fsdp=8 on 8 devices, 1 sequence a device: longest seq_len (multiple of {args.step}) and its "
        f"XLA memory a device; + fits at the {args.max_seq_len // 1024}K cap\n")
  print("| attention | remat | 16 GiB device | 80 GiB device |")
  print("|---|---|---:|---:|")
  for row in rows:
    print(f"| {row['attention']} | {row['remat']} | {cell(row['16GiB'])} | {cell(row['80GiB'])} |")
  print(f"| full/blockwise, fsdp=4 x sequence=2 (4 sequences) | full | {cell(sequence_parallel['16GiB'])} | "
        f"{cell(sequence_parallel['80GiB'])} |")
  print(f"\nblockwise, full remat, {GROWTH_LENGTHS[0]} -> {GROWTH_LENGTHS[1]} tokens (8x): temporaries x"
        f"{growth['temporaries_ratio']:.2f}, total x{growth['total_ratio']:.2f}; {elapsed / 60:.0f} min of compiling")


if __name__ == "__main__":
  main()
