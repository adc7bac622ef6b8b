"""`make demo`: pre-train a small LLaMA that retrieves passkeys, extend its context, evaluate retrieval, report.

  python -m longjax.demo --workdir demo_out [--warmup_steps 400] [--pretrain_steps 800] [--finetune_steps 50]

1. Warm up on key=value recall at 128 tokens (configs/demo.py:stage=warmup): copying a value named earlier is
   what a passkey needs, and the model learns it from these dense episodes long before it would from passkeys.
2. Pre-train at 512 tokens with plain RoPE on the standard library's source, 99% of its documents replaced by
   2-digit passkey documents (about 4 rows in 5), each in a row of its own, their loss on the answer only
   (configs/demo.py).
3. Training-free extension: the same weights at 1x, 2x, 4x and 8x the trained length under RoPE, PI, NTK, YaRN,
   Dynamic YaRN and Self-Extend (demo_methods): passkey accuracy (lengths x depths), loss by position in 8x
   windows, and with --perplexity perplexity against length.
4. Fine-tune at 4x with YaRN, Position Interpolation and plain RoPE (the control); evaluate again.
5. Write demo_out/report.md (tables, heatmaps, curves) and demo_out/results.json; every conclusion sentence
   of the report is computed from results.json (`conclusions`).
Every stage is an ordinary longjax run in its own workdir (rerunning resumes or skips it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

from absl import flags

from longjax import cli, load
from longjax.config import Config, from_config_dict, load_file
from longjax.evaluate import (eval_documents, evaluate_passkey, evaluate_perplexity, loss_by_position, plots,
                              write_json)
from longjax.evaluate.extension import BASELINE, training_free_methods
from longjax.evaluate.tasks import EvalRun
from longjax.nn import Llama
from longjax.train import train_and_evaluate

_WORKDIR = flags.DEFINE_string("workdir", "demo_out", "Where the runs, results and report go.")
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", 400, "Key=value recall steps at 128 tokens, before pre-training.")
_PRETRAIN_STEPS = flags.DEFINE_integer("pretrain_steps", 800, "Pre-training steps at 512 tokens.")
_FINETUNE_STEPS = flags.DEFINE_integer("finetune_steps", 50, "Fine-tuning steps at 4x the length per method.")
_PASSKEY_TRIALS = flags.DEFINE_integer("passkey_trials", 4, "Passkeys per (length, depth) cell.")
_DEPTHS = flags.DEFINE_list("depths", ["0", "0.5", "1"], "Passkey depths in [0, 1].")
_FACTORS = flags.DEFINE_list("factors", ["1", "2", "4", "8"], "Evaluation lengths as multiples of the trained one.")
_PERPLEXITY = flags.DEFINE_bool("perplexity", False, "Also measure perplexity against length (slowest evaluation).")

FINETUNE_METHODS = ("yarn", "linear", "default")
# Of extension.training_free_methods, the ones `make demo` leaves to `make real-model` (each costs ~25 s of CPU
# here, mostly compiling): Dynamic NTK (Dynamic YaRN stands for dynamic scaling), DCA and ReRoPE (Self-Extend
# stands for position remapping).
SKIPPED_METHODS = ("Dynamic NTK", "DCA", "ReRoPE + log-n")
CONTROL = "RoPE fine-tuned (control)"

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py")


@dataclasses.dataclass(frozen=True)
class DemoSettings:
  """What the flags set; the test shrinks these."""

  pretrain_steps: int = 800
  finetune_steps: int = 50
  passkey_trials: int = 4
  depths: tuple[float, ...] = (0.0, 0.5, 1.0)
  factors: tuple[int, ...] = (1, 2, 4, 8)
  perplexity: bool = False
  warmup_steps: int = 400


def demo_methods(pretrain_length: int, factor: float) -> dict:
  """extension.training_free_methods without SKIPPED_METHODS: RoPE, PI, NTK, YaRN, Dynamic YaRN, Self-Extend."""
  return {name: method for name, method in training_free_methods(pretrain_length, factor).items()
          if name not in SKIPPED_METHODS}


def _demo_config(arg: str) -> Config:
  return from_config_dict(load_file(f"{DEMO_CONFIG}:{arg}"))


def _losses(workdir: str) -> list[tuple[int, float]]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


def _evaluate(config: Config, trained: Config, params, tokenizer, documents, settings: DemoSettings) -> dict:
  """Passkey grid, loss by position at the longest length and (optionally) perplexity of one method, JSON-able."""
  trained_length = trained.train.seq_len
  lengths = [trained_length * f for f in settings.factors]
  run = EvalRun(trained, {"method": config}, params, tokenizer)
  grid = evaluate_passkey(run.generate, lambda text: len(run.encode(text)), lengths, settings.depths,
                          keys_per_cell=settings.passkey_trials, digits=config.data.retrieval_digits,
                          trained_length=trained_length)
  curve = loss_by_position(Llama(config.model), params, documents, max(lengths))
  result = {"passkey": {**dataclasses.asdict(grid), "by_length": [sum(row) / len(row) for row in grid.accuracy]},
            "loss_by_position": dataclasses.asdict(curve)}
  if settings.perplexity:
    result["perplexity"] = [dataclasses.asdict(r) for r in evaluate_perplexity(config, params, documents)]
  return result


class _Clock:
  """Wall and CPU seconds (this process, all threads) since the last lap."""

  def __init__(self):
    self._wall, self._cpu = time.time(), time.process_time()

  def lap(self) -> dict[str, float]:
    wall, cpu = time.time(), time.process_time()
    lap = {"wall": wall - self._wall, "cpu": cpu - self._cpu}
    self._wall, self._cpu = wall, cpu
    return lap


def _percent(value: float) -> str:
  return f"{100 * value:.0f}%"


def _chance_tail(hits: int, trials: int, chance: float) -> float:
  """P(at least `hits` of `trials` guesses right) when each is right with probability `chance` (binomial)."""
  return sum(math.comb(trials, k) * chance ** k * (1 - chance) ** (trials - k) for k in range(hits, trials + 1))


def _best(results: dict, index: int) -> tuple[list[str], float]:
  """The methods with the highest passkey accuracy at lengths[index], and that accuracy."""
  top = max(r["passkey"]["by_length"][index] for r in results.values())
  return [name for name, r in results.items() if r["passkey"]["by_length"][index] == top], top


def conclusions(results: dict) -> list[str]:
  """The report's conclusion sentences, each computed from results.json's numbers (never written in advance)."""
  free, tuned = results["training_free"], results["finetuned"]
  factors, trained_length = results["factors"], results["trained_length"]
  digits, chance = results["digits"], 1 / (9 * 10 ** (results["digits"] - 1))
  longest = len(factors) - 1
  at_1x = free[BASELINE]["passkey"]["by_length"][0]
  sentences = []
  if max(r["passkey"]["by_length"][0] for r in free.values()) == 0:
    sentences.append(f"Retrieval was not learned even at 1x: no method retrieved any {digits}-digit passkey at "
                     f"the trained length ({trained_length} tokens; chance {_percent(chance)}), so the passkey "
                     "columns below say nothing about context extension; loss by position still does.")
  else:
    sentences.append(f"At the trained length ({trained_length} tokens) the pre-trained model retrieved "
                     f"{_percent(at_1x)} of {digits}-digit passkeys (chance {_percent(chance)}).")
  for label, group, reference in (("without fine-tuning", free, BASELINE),
                                  (f"after fine-tuning at {results['finetune_factor']}x", tuned, CONTROL)):
    names, top = _best(group, longest)
    ref = group[reference]["passkey"]["by_length"][longest]
    length = trained_length * factors[longest]
    if top == 0:
      sentences.append(f"At {factors[longest]}x ({length} tokens) {label}, no method retrieved any passkey (0%).")
    else:
      trials = len(results["depths"]) * results["passkey_trials"]
      hits = round(top * trials)
      by_chance = _chance_tail(hits, trials, chance)
      verdict = (f"{hits} of {trials} keys, which guessing alone reaches with probability {by_chance:.2f}"
                 if by_chance >= 0.01 else f"{hits} of {trials} keys, above guessing (p = {by_chance:.1g})")
      sentences.append(f"At {factors[longest]}x ({length} tokens) {label}, {' and '.join(names)} kept the highest "
                       f"passkey accuracy: {_percent(top)} ({verdict}) vs {_percent(ref)} for {reference}.")
    last = {name: r["loss_by_position"]["loss"][-1] for name, r in group.items()}
    lowest, runner_up = sorted(last, key=last.get)[:2]
    against = (f"vs {last[reference]:.2f} for {reference}" if lowest != reference else
               f"the next being {runner_up} with {last[runner_up]:.2f} nats")
    sentences.append(f"In the last position bin of {length}-token windows {label}, {lowest} had the lowest loss, "
                     f"{last[lowest]:.2f} nats, {against}.")
  return sentences


def _passkey_table(group: dict, factors, trained_length: int) -> list[str]:
  lines = ["| method | " + " | ".join(f"{f}x ({trained_length * f})" for f in factors) + " |",
           "|---" * (len(factors) + 1) + "|"]
  lines += [f"| {name} | " + " | ".join(_percent(a) for a in r["passkey"]["by_length"]) + " |"
            for name, r in group.items()]
  return lines


def _loss_table(group: dict) -> list[str]:
  first = next(iter(group.values()))["loss_by_position"]
  bins = list(range(0, len(first["loss"]), max(len(first["loss"]) // 4, 1))) + [len(first["loss"]) - 1]
  bins = sorted(set(bins))
  lines = ["| method | " + " | ".join(f"{first['starts'][i]}-{first['ends'][i] - 1}" for i in bins) + " |",
           "|---" * (len(bins) + 1) + "|"]
  lines += [f"| {name} | " + " | ".join(f"{r['loss_by_position']['loss'][i]:.2f}" for i in bins) + " |"
            for name, r in group.items()]
  return lines


def _perplexity_table(group: dict) -> list[str]:
  first = next(iter(group.values()))["perplexity"]
  lines = ["| method | " + " | ".join(str(r["length"]) for r in first) + " |", "|---" * (len(first) + 1) + "|"]
  lines += [f"| {name} | " + " | ".join(f"{p['perplexity']:.3f}" if p["tokens"] else "n/a" for p in r["perplexity"])
            + " |" for name, r in group.items()]
  return lines


def _plot(results: dict, out: str) -> None:
  from longjax.evaluate import LengthResult, PositionLoss, RetrievalGrid

  trained_length = results["trained_length"]
  for group in ("training_free", "finetuned"):
    for i, (name, r) in enumerate(results[group].items()):
      grid = {k: v for k, v in r["passkey"].items() if k != "by_length"}
      plots.plot_retrieval_heatmap(dataclasses.replace(RetrievalGrid(**grid), task=f"passkey, {name}"),
                                   os.path.join(out, f"passkey_{group}_{i}.png"))
    curves = {name: PositionLoss(**r["loss_by_position"]) for name, r in results[group].items()}
    plots.plot_loss_by_position(curves, os.path.join(out, f"loss_by_position_{group}.png"),
                                trained_length=trained_length)
    if all("perplexity" in r for r in results[group].values()):
      plots.plot_perplexity_vs_length({name: [LengthResult(**p) for p in r["perplexity"]]
                                       for name, r in results[group].items()},
                                      os.path.join(out, f"ppl_{group}.png"), trained_length=trained_length)


def write_report(results: dict, out: str) -> str:
  """report.md (tables, figures, computed conclusions) from results.json's contents."""
  _plot(results, out)
  factors, trained_length = results["factors"], results["trained_length"]
  report = ["# longjax demo report", "", results["setup"], "", "## Conclusions", "",
            *[f"- {s}" for s in results["conclusions"]], ""]
  for group, title in (("training_free", "Training-free extension"),
                       ("finetuned", f"Fine-tuned at {results['finetune_factor']}x "
                                     f"({trained_length * results['finetune_factor']} tokens, "
                                     f"{results['finetune_steps']} steps each)")):
    members = results[group]
    report += [f"## {title}", "", f"### Passkey accuracy ({results['passkey_trials']} keys x "
               f"{len(results['depths'])} depths per length)", "",
               *_passkey_table(members, factors, trained_length), ""]
    report += [f"![]({f'passkey_{group}_{i}.png'})" for i in range(len(members))] + [""]
    report += [f"### Loss by position (nats), windows of {trained_length * factors[-1]} tokens", "",
               *_loss_table(members), "", f"![](loss_by_position_{group}.png)", ""]
    if all("perplexity" in r for r in members.values()):
      report += ["### Perplexity against length", "", *_perplexity_table(members), "", f"![](ppl_{group}.png)", ""]
  report += ["## Training loss", "", "![](loss.png)", "",
             "Runs: `base/`, `finetune_*/` (each with config.json, metrics.jsonl, tensorboard/, checkpoints/); "
             "open one with `longjax.load(path)`. All numbers: `results.json`."]
  path = os.path.join(out, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(report) + "\n")
  return path


def run_demo(out: str, settings: DemoSettings = DemoSettings()) -> dict:
  """The four stages in `out`; returns results.json's contents."""
  os.makedirs(out, exist_ok=True)
  started, timings = time.time(), {}
  warmup_config = _demo_config(f"stage=warmup,steps={settings.warmup_steps}")
  base_config = _demo_config(f"stage=base,steps={settings.pretrain_steps}")
  finetune_configs = {method: _demo_config(f"stage={method},steps={settings.finetune_steps}")
                      for method in FINETUNE_METHODS}
  pretrain_length = base_config.train.seq_len
  extension = finetune_configs[FINETUNE_METHODS[0]].train.seq_len // pretrain_length
  longest = pretrain_length * max(settings.factors)
  warmup_dir, base_dir = os.path.join(out, "warmup"), os.path.join(out, "base")
  clock = _Clock()
  print(f"[1/5] warm-up: key=value recall at {warmup_config.train.seq_len} tokens ({settings.warmup_steps} steps) "
        f"in {warmup_dir}", flush=True)
  train_and_evaluate(warmup_config, warmup_dir)
  timings["warm-up"] = clock.lap()
  print(f"[2/5] pre-training at {pretrain_length} tokens ({settings.pretrain_steps} steps, "
        f"{base_config.data.retrieval_rate:.0%} of documents passkeys) in {base_dir}", flush=True)
  base_config = dataclasses.replace(base_config, train=dataclasses.replace(base_config.train, init_from=warmup_dir))
  train_and_evaluate(base_config, base_dir)
  base_run = load(base_dir)
  documents = eval_documents(base_config.data, base_config.eval.max_documents, min_tokens=longest + 1,
                             max_tokens=max(base_config.eval.max_document_tokens, longest + 1))
  timings["pre-training"] = clock.lap()

  def report_line(name, r, t0):
    return (f"  {name}: passkey " + ", ".join(f"{n}: {_percent(a)}" for n, a in zip(r["passkey"]["lengths"],
                                                                                     r["passkey"]["by_length"]))
            + f"; last-bin loss {r['loss_by_position']['loss'][-1]:.2f} ({time.time() - t0:.0f} s)")

  print(f"[3/5] training-free extension at {', '.join(f'{f}x' for f in settings.factors)}", flush=True)
  training_free = {}
  for name, (rope, attention) in demo_methods(pretrain_length, float(max(settings.factors))).items():
    t0 = time.time()
    attention = dataclasses.replace(attention, impl=base_config.model.attention.impl,
                                    kernel_block=base_config.model.attention.kernel_block)
    config = dataclasses.replace(base_config, model=dataclasses.replace(base_config.model, rope=rope,
                                                                        attention=attention))
    training_free[name] = _evaluate(config, base_config, base_run.params, base_run.tokenizer, documents, settings)
    print(report_line(name, training_free[name], t0), flush=True)
  timings["training-free evaluation"] = clock.lap()

  print(f"[4/5] fine-tuning at {extension}x the length: {', '.join(FINETUNE_METHODS)}", flush=True)
  finetuned = {}
  losses = {f"warm-up ({warmup_config.train.seq_len} tokens, key=value recall)": _losses(warmup_dir),
            f"pre-training ({pretrain_length} tokens)": [(settings.warmup_steps + s, loss)
                                                         for s, loss in _losses(base_dir)]}
  for method in FINETUNE_METHODS:
    t0 = time.time()
    config = finetune_configs[method]
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, init_from=base_dir))
    run_dir = os.path.join(out, f"finetune_{method}")
    train_and_evaluate(config, run_dir)
    run = load(run_dir)
    label = {"yarn": f"YaRN x{extension} fine-tuned", "linear": f"PI x{extension} fine-tuned",
             "default": CONTROL}[method]
    finetuned[label] = _evaluate(run.config, base_config, run.params, run.tokenizer, documents, settings)
    losses[label] = [(settings.warmup_steps + base_config.train.num_steps + s, loss) for s, loss in _losses(run_dir)]
    print(report_line(label, finetuned[label], t0), flush=True)
  timings["fine-tuning and its evaluation"] = clock.lap()

  print("[5/5] writing the report", flush=True)
  model = base_config.model
  results = {
      "trained_length": pretrain_length, "factors": list(settings.factors), "depths": list(settings.depths),
      "passkey_trials": settings.passkey_trials, "digits": base_config.data.retrieval_digits,
      "finetune_factor": extension, "pretrain_steps": settings.pretrain_steps,
      "finetune_steps": settings.finetune_steps, "warmup_steps": settings.warmup_steps,
      "training_free": training_free, "finetuned": finetuned,
  }
  results["conclusions"] = conclusions(results)
  results["seconds"] = time.time() - started
  results["timings"] = timings
  results["setup"] = (
      f"A {model.num_layers}-layer LLaMA (hidden {model.hidden_size}, {model.num_heads} heads / "
      f"{model.num_kv_heads} KV heads, byte-level tokens) warmed up for {settings.warmup_steps} steps on key=value "
      f"recall at {warmup_config.train.seq_len} tokens, then pre-trained for {settings.pretrain_steps} steps at "
      f"{pretrain_length} tokens on the Python standard library's source, {base_config.data.retrieval_rate:.0%} of "
      f"the documents replaced by passkey documents with {base_config.data.retrieval_digits}-digit keys (each in a "
      "row of its own, loss on its answer only), then extended. Passkey: the landmark-attention prompt, greedy "
      f"answer, {settings.passkey_trials} keys at each of "
      f"the depths {', '.join(f'{d:g}' for d in settings.depths)}. Loss by position: the "
      f"{len(documents)} longest validation documents, first {longest} tokens. Total time "
      f"{results['seconds']:.0f} s before the report (" + "; ".join(
          f"{stage} {t['wall']:.0f} s, CPU {t['cpu']:.0f} s" for stage, t in timings.items()) + ").")
  write_json(results, os.path.join(out, "results.json"))
  plots.plot_losses(losses, os.path.join(out, "loss.png"))
  path = write_report(results, out)
  print("\n".join(["", "Passkey accuracy, training-free:", *_passkey_table(training_free, settings.factors,
                                                                            pretrain_length),
                   "", f"Passkey accuracy, fine-tuned at {extension}x:",
                   *_passkey_table(finetuned, settings.factors, pretrain_length), "", "Conclusions:",
                   *results["conclusions"], "", f"report: {path} ({time.time() - started:.0f} s in all)"]),
        flush=True)
  return results


def main(argv):
  del argv
  run_demo(os.path.abspath(_WORKDIR.value),
           DemoSettings(_PRETRAIN_STEPS.value, _FINETUNE_STEPS.value, _PASSKEY_TRIALS.value,
                        tuple(float(d) for d in _DEPTHS.value), tuple(int(f) for f in _FACTORS.value),
                        _PERPLEXITY.value, _WARMUP_STEPS.value))


if __name__ == "__main__":
  cli.run(main)
