"""`make demo`: pre-train a small LLaMA on the standard library's source, extend its context, evaluate, report.

  python -m longjax.demo --workdir demo_out [--pretrain_steps 600] [--finetune_steps 100]

1. Pre-train at 128 tokens with plain RoPE (configs/demo.py).
2. Training-free extension: the same weights read at 64..1024 tokens with each positional method.
3. Fine-tune at 512 tokens with YaRN, Position Interpolation and plain RoPE (the control).
4. Write demo_out/report.md with tables and PNG plots.
Every stage is an ordinary longjax run in its own workdir (rerunning resumes or skips it).
"""

import dataclasses
import json
import os
import time

from absl import flags

from longjax import cli, load
from longjax.config import Config, RopeConfig, from_config_dict, load_file
from longjax.evaluate import eval_documents, evaluate_perplexity, plot_losses, plot_perplexity_vs_length, write_results
from longjax.train import train_and_evaluate

_WORKDIR = flags.DEFINE_string("workdir", "demo_out", "Where the runs, results and report go.")
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", 600, "Pre-training steps at 128 tokens.")
_FINETUNE_STEPS = flags.DEFINE_integer("finetune_steps", 100, "Fine-tuning steps at 512 tokens per method.")

FINETUNE_METHODS = ("yarn", "linear", "default")


DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py")


def _demo_config(arg: str) -> Config:
  return from_config_dict(load_file(f"{DEMO_CONFIG}:{arg}"))


def _training_free_ropes(pretrain_length: int, factor: float) -> dict[str, RopeConfig]:
  common = dict(original_max_position_embeddings=pretrain_length)
  return {
      "RoPE (no scaling)": RopeConfig(),
      f"PI x{factor:g}": RopeConfig(rope_type="linear", factor=factor),
      f"NTK-aware alpha {factor:g}": RopeConfig(rope_type="ntk", alpha=factor),
      "Dynamic NTK": RopeConfig(rope_type="dynamic", factor=2.0, **common),
      f"YaRN x{factor:g}": RopeConfig(rope_type="yarn", factor=factor, **common),
      "Dynamic YaRN": RopeConfig(rope_type="dynamic_yarn", **common),
  }


def _losses(workdir: str) -> list[tuple[int, float]]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], r["loss"]) for r in map(json.loads, f)]


def _table(results: dict, lengths) -> list[str]:
  lines = ["| method | " + " | ".join(str(n) for n in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
  for name, rs in results.items():
    cells = [f"{r.perplexity:.3f}" if r.tokens else "n/a" for r in rs]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


def main(argv):
  del argv
  out = os.path.abspath(_WORKDIR.value)
  os.makedirs(out, exist_ok=True)
  started = time.time()
  base_config = _demo_config(f"stage=base,steps={_PRETRAIN_STEPS.value}")
  finetune_configs = {method: _demo_config(f"stage={method},steps={_FINETUNE_STEPS.value}")
                      for method in FINETUNE_METHODS}
  pretrain_length = base_config.train.seq_len
  finetune_length = finetune_configs[FINETUNE_METHODS[0]].train.seq_len
  extension = finetune_length // pretrain_length
  base_dir = os.path.join(out, "base")
  print(f"[1/4] pre-training at {base_config.train.seq_len} tokens in {base_dir}", flush=True)
  train_and_evaluate(base_config, base_dir)

  print("[2/4] training-free extension: perplexity against length for each positional method", flush=True)
  base_run = load(base_dir)
  lengths = base_config.eval.lengths
  documents = eval_documents(base_config.data, base_config.eval.max_documents, min_tokens=max(lengths) + 1,
                             max_tokens=base_config.eval.max_document_tokens)
  training_free = {}
  for name, rope in _training_free_ropes(pretrain_length, float(extension * 2)).items():
    config = dataclasses.replace(base_config, model=dataclasses.replace(base_config.model, rope=rope))
    training_free[name] = evaluate_perplexity(config, base_run.params, documents)
    print(f"  {name}: " + ", ".join(f"{r.length}: {r.perplexity:.3f}" for r in training_free[name]), flush=True)

  print(f"[3/4] fine-tuning at {extension}x the length: {', '.join(FINETUNE_METHODS)}", flush=True)
  finetuned, losses = {}, {f"pre-training ({pretrain_length} tokens)": _losses(base_dir)}
  for method in FINETUNE_METHODS:
    config = finetune_configs[method]
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, init_from=base_dir))
    run_dir = os.path.join(out, f"finetune_{method}")
    train_and_evaluate(config, run_dir)
    run = load(run_dir)
    label = {"yarn": f"YaRN x{extension} fine-tuned", "linear": f"PI x{extension} fine-tuned",
             "default": "RoPE fine-tuned (control)"}[method]
    finetuned[label] = evaluate_perplexity(run.config, run.params, documents)
    losses[label] = [(base_config.train.num_steps + s, loss) for s, loss in _losses(run_dir)]
    print(f"  {label}: " + ", ".join(f"{r.length}: {r.perplexity:.3f}" for r in finetuned[label]), flush=True)

  print("[4/4] writing the report", flush=True)
  write_results({**training_free, **finetuned}, os.path.join(out, "perplexity.json"))
  plot_perplexity_vs_length(training_free, os.path.join(out, "ppl_training_free.png"),
                            trained_length=base_config.train.seq_len,
                            title=f"Training-free extension of a model pre-trained at {pretrain_length} tokens")
  before = {f"RoPE, pre-trained at {pretrain_length}": training_free["RoPE (no scaling)"]}
  plot_perplexity_vs_length({**before, **finetuned},
                            os.path.join(out, "ppl_finetuned.png"), trained_length=base_config.train.seq_len,
                            title=f"After fine-tuning at {finetune_length} tokens")
  plot_losses(losses, os.path.join(out, "loss.png"))
  report = [
      "# longjax demo report", "",
      f"A {base_run.config.model.num_layers}-layer LLaMA (hidden {base_run.config.model.hidden_size}, "
      f"{base_run.config.model.num_heads} heads / {base_run.config.model.num_kv_heads} KV heads, byte-level tokens) "
      f"pre-trained for {base_config.train.num_steps} steps at {base_config.train.seq_len} tokens on the Python "
      "standard library's source (a TFDS dataset built from the local tree), then extended. Perplexity is "
      f"token-weighted over the {len(documents)} longest validation documents (cut to "
      f"{base_config.eval.max_document_tokens} tokens), sliding windows with stride "
      f"{base_config.eval.stride}. Total time {time.time() - started:.0f} s.", "",
      "## Training-free extension", "", *_table(training_free, lengths), "", "![](ppl_training_free.png)", "",
      f"## Fine-tuned at {finetune_length} tokens "
      f"({_FINETUNE_STEPS.value} steps each)", "", *_table(finetuned, lengths), "", "![](ppl_finetuned.png)", "",
      "## Training loss", "", "![](loss.png)", "",
      "Runs: `base/`, `finetune_*/` (each with config.json, metrics.jsonl, tensorboard/, checkpoints/); "
      "open one with `longjax.load(path)`.",
  ]
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(report) + "\n")
  print(f"report: {os.path.join(out, 'report.md')}")


if __name__ == "__main__":
  cli.run(main)
