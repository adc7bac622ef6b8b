"""KV-cache compression on the imported SmolLM2-135M: full cache vs each policy at 1/2, 1/4, 1/8 of the context.

  nice -n 5 python -m longjax.real_model.kv_compression --workdir /tmp/real/out2/smollm2 \\
      --cells /tmp/kv_cells --out docs/kv_compression

Tasks (each a cell on disk, computed once; rerunning skips them): `loss` (loss by position over the first
8K + 1 tokens of the language reference, read in chunks of `--chunk` tokens with the policy compressing the
cache between chunks: each chunk's queries see the kept tokens plus the chunk's own, so position t's loss is
what the model predicts after the policy has compressed everything before t's chunk), `passkey` (the
passkey prompt at depth 0.5, one key; `--depths` adds prompts at other depths, each with its own key) and `ruler`
(RULER niah_single_1, one sample of seed 0; `--ruler_seeds` adds samples of other seeds) at 4K and 8K, greedy,
prompt prefilled in the same chunks (`--prefill chunk`) or in one piece then compressed once, as the H2O and
SnapKV papers run them (`--prefill whole`, cells `*_whole`; policies that evict nothing are not rerun that way),
then decoded token by token under the policy. Budgets are fractions of
the context length (tokens per layer, per kv head for h2o and snapkv); int8 and int4 keep every token.
A table cell is right/prompts over every prompt of its column on disk (one cell file a prompt).
Bytes are the KV-cache calculator's (`longjax.evaluate.kv_cache_bytes` with the policy), K/V in float16.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from longjax import checkpoint, cli, load
from longjax.config import ConfigError
from longjax.evaluate import kv_cache_bytes, passkey, ruler, write_json
from longjax.evaluate.kv_cache import format_bytes
from longjax.evaluate.tasks import EvalRun
from longjax.inference import kv_policies
from longjax.real_model import cell, documents, machine

FRACTIONS = (2, 4, 8)  # budgets: context // these
EVICTING = kv_policies.EVICTING  # the policies with a token budget: one column per fraction
TASK_ORDER = ("loss", "passkey", "ruler")
PREFILLS = ("chunk", "whole")  # retrieval prompts: compressed between --chunk-token chunks, or once after the prompt


@dataclasses.dataclass(frozen=True)
class Setting:
  """One column of the comparison: a policy and its budget as a fraction of the context (None: no budget)."""

  policy: str
  fraction: int | None = None

  @property
  def label(self) -> str:
    return self.policy if self.fraction is None else f"{self.policy} 1/{self.fraction}"

  def make(self, length: int, max_length: int):
    budget = None if self.fraction is None else length // self.fraction
    return kv_policies.make_policy(self.policy, budget, max_length)


def settings(fractions: tuple[int, ...] = FRACTIONS) -> list[Setting]:
  return ([Setting("full")] + [Setting(p, f) for p in EVICTING for f in fractions]
          + [Setting("int8"), Setting("int4")])


def run_order(setting: Setting) -> int:
  """Cells run in this order so that a run cut short has every method at 1/4 first, then 1/8, then 1/2."""
  return {None: 0, 4: 1, 8: 2, 2: 3}[setting.fraction]


@functools.partial(jax.jit, static_argnames=("model",), donate_argnames=("cache",))
def _chunk_nll(model, params, cache, tokens, targets):
  logits, cache = model.apply({"params": params}, tokens, cache=cache)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return cache, -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def chunked_losses(model, params, tokens: np.ndarray, policy, chunk: int) -> np.ndarray:
  """float32[len(tokens) - 1]: the loss of each next token, the text read `chunk` tokens at a time into a cache
  under `policy` (compressed between chunks)."""
  length = len(tokens) - 1
  cache = kv_policies.init_cache(model.config, 1, length, None, policy)
  losses = []
  for start in range(0, length, chunk):
    stop = min(start + chunk, length)
    cache, nll = _chunk_nll(model, params, cache, jnp.asarray(tokens[None, start:stop]),
                            jnp.asarray(tokens[None, start + 1:stop + 1]))
    losses.append(np.asarray(nll[0]))
  return np.concatenate(losses)


def prompt_key(task: str, length: int, prefill: str, variant: float | int | None = None) -> str:
  """A retrieval cell's name: the first prompt (passkey at depth 0.5, RULER seed 0) is `passkey_4096`,
  `ruler_8192_whole`; the others add the passkey's depth in percent (`passkey_4096_d10`) or RULER's seed
  (`ruler_4096_whole_s1`)."""
  key = f"{task}_{length}" + ("_whole" if prefill == "whole" else "")
  if task == "passkey" and variant is not None and variant != 0.5:
    return f"{key}_d{round(variant * 100):02d}"
  if task == "ruler" and variant:
    return f"{key}_s{variant}"
  return key


def run_cells(workdir: str, cells: str, tasks: tuple[str, ...], lengths: tuple[int, ...], loss_length: int,
              chunk: int, fractions: tuple[int, ...] = FRACTIONS, policies: tuple[str, ...] | None = None,
              prefill: str = "chunk", depths: tuple[float, ...] = (0.5,), ruler_seeds: tuple[int, ...] = (0,)) -> None:
  loaded = load(workdir)
  config, params, tokenizer = loaded.config, loaded.params, loaded.tokenizer
  model = loaded.model
  text = documents()["topics"]
  order = [("loss", loss_length)] * ("loss" in tasks) + [(t, n) for n in lengths for t in ("passkey", "ruler")
                                                         if t in tasks]
  for task, length in order:
    for setting in sorted(settings(fractions), key=run_order):
      if policies is not None and setting.policy not in policies:
        continue
      folder = os.path.join(cells, setting.label.replace(" ", "_").replace("/", "-"))
      max_length = length + 512  # one buffer for every prompt at this length: compiled once per policy
      if task == "loss":
        tokens = np.asarray(tokenizer.encode(text, bos=config.data.add_bos), np.int32)[:length + 1]
        policy = setting.make(length, length)
        cell(folder, f"loss_{length}", lambda: {"losses": chunked_losses(model, params, tokens, policy,
                                                                         chunk).tolist(), "chunk": chunk})
        continue
      if prefill == "whole" and setting.policy not in EVICTING:
        continue  # nothing is evicted, so when the cache is compressed cannot matter
      policy = setting.make(length, max_length)
      options = {"kv_policy": setting.policy, "kv_budget": policy.budget, "max_length": max_length,
                 "prefill_chunk": max_length if prefill == "whole" else chunk}
      run = EvalRun(config, {setting.label: config}, params, tokenizer, generate_options=options)
      if task == "passkey":
        for depth in depths:  # the key's seed: the length at depth 0.5 (the first cells), else length + percent
          seed = length if depth == 0.5 else length + round(depth * 100)
          cell(folder, prompt_key(task, length, prefill, depth), lambda: {**dataclasses.asdict(
              passkey.evaluate_passkey(run.generate, lambda t: len(run.encode(t)), [length], [depth],
                                       keys_per_cell=1, seed=seed)), "prefill_chunk": options["prefill_chunk"]})
      else:
        for seed in ruler_seeds:
          cell(folder, prompt_key(task, length, prefill, seed), lambda: {"accuracy": ruler.evaluate_ruler(
              run.generate, tokenizer, ["niah_single_1"], [length], samples=1, seed=seed,
              add_bos=config.data.add_bos)["niah_single_1"][length], "samples": 1, "seed": seed,
              "prefill_chunk": options["prefill_chunk"]})


SUMMARY = "summary.md"  # write_report's table and plot, without the protocol and notes


def check_kv_dir(kv_dir: str) -> str:
  """kv_dir's summary.md, or one clear line (ConfigError) if there is none."""
  path = os.path.join(kv_dir, SUMMARY)
  if not os.path.isfile(path):
    raise ConfigError(f"--kv_dir={kv_dir}: no {SUMMARY} there; build it with `python -m "
                      "longjax.real_model.kv_compression --report_only --out DIR` first")
  return path


def summary_section(kv_dir: str, report_dir: str) -> list[str]:
  """The real-model report's section on KV compression: kv_dir's summary table and plot (its image path made
  relative to report_dir) and a link to the whole report; one clear line if kv_dir holds no report."""
  path = check_kv_dir(kv_dir)
  relative = os.path.relpath(kv_dir, report_dir)
  with open(path) as f:
    text = f.read().rstrip().replace("](kv_compression.png)", f"]({relative}/kv_compression.png)")
  return ["## KV-cache compression", "",
          "Full cache vs StreamingLLM, H2O, SnapKV (1/2, 1/4, 1/8 of the context) and KIVI-style int8/int4 on the "
          f"imported model; the protocol, timings and what the cells show: [{relative}/report.md]"
          f"({relative}/report.md).", "", text, ""]


def _read(cells: str, label: str, key: str) -> dict | None:
  path = os.path.join(cells, label.replace(" ", "_").replace("/", "-"), key + ".json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _read_prompts(cells: str, label: str, key: str) -> list[tuple[str, dict]]:
  """Every cell of a retrieval column on disk: `key` itself (the first prompt) and its other depths or seeds
  (`key`_d<percent>, `key`_s<seed>), as (cell name, contents), the first prompt first."""
  folder = os.path.join(cells, label.replace(" ", "_").replace("/", "-"))
  names = sorted(name[:-5] for name in (os.listdir(folder) if os.path.isdir(folder) else [])
                 if name.endswith(".json") and re.fullmatch(re.escape(key) + r"(_[ds]\d+)?", name[:-5]))
  return [(name, _read(cells, label, name)) for name in names]  # `key` sorts before every name it begins


def _right_and_prompts(key: str, value: dict) -> tuple[float, int]:
  """A retrieval cell's (prompts right, prompts): a passkey cell is a RetrievalGrid of one (length, depth), a RULER
  cell a mean over its samples."""
  if key.startswith("passkey"):
    return value["accuracy"][0][0] * value["trials"], value["trials"]
  return value["accuracy"] * value["samples"], value["samples"]


def _retrieval_keys(lengths: tuple[int, ...]) -> list[str]:
  """Cell keys of the retrieval columns: each task and length, chunked prefill first, then the whole prompt."""
  return [prompt_key(t, n, prefill) for prefill in PREFILLS for t in ("passkey", "ruler") for n in lengths]


def _column_name(key: str) -> str:
  task, n, *whole = key.split("_")
  return f"{task} {int(n) // 1024}K" + (" whole" if whole else "")


def write_report(workdir: str, cells: str, out: str, lengths: tuple[int, ...], loss_length: int, chunk: int) -> str:
  """out/report.md, out/results.json and out/kv_compression.png from the cells on disk."""
  config = checkpoint.read_config(workdir)
  results = {}
  for setting in settings():
    entry = {"bytes": {n: kv_cache_bytes(config.model, n, kv_policy=setting.make(n, n)) for n in
                       sorted({*lengths, loss_length})}}
    loss = _read(cells, setting.label, f"loss_{loss_length}")
    if loss is not None:
      losses = np.asarray(loss["losses"])
      bins = np.array_split(losses, loss_length // 1024)
      entry["loss_bins"] = [float(b.mean()) for b in bins]
      entry["loss_mean"] = float(losses.mean())
      entry["loss_seconds"] = loss["seconds"]
    for key in _retrieval_keys(lengths):
      found = _read_prompts(cells, setting.label, key)
      if found:  # fraction right over every prompt of the column; each prompt's own score under "<key>_each"
        scores = {name: _right_and_prompts(key, value) for name, value in found}
        right = {name: score[0] for name, score in scores.items()}
        prompts = sum(score[1] for score in scores.values())
        entry[key] = sum(right.values()) / prompts
        entry[f"{key}_prompts"] = prompts
        entry[f"{key}_each"] = {name: float(r) for name, r in right.items()}
        entry[f"{key}_seconds"] = sum(value["seconds"] for _, value in found)
    results[setting.label] = entry
  write_json(results, os.path.join(out, "results.json"))
  columns = [key for key in _retrieval_keys(lengths) if not key.endswith("_whole")
             or any(key in entry for entry in results.values())]  # the whole-prompt columns once measured
  header = (["method", f"KV bytes at {loss_length}", "of full", f"mean loss 1-{loss_length}", "loss last 1K"]
            + [_column_name(key) for key in columns])
  full_bytes = results["full"]["bytes"][loss_length]
  table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for label, entry in results.items():
    cells_text = [label, format_bytes(entry["bytes"][loss_length]), f"{entry['bytes'][loss_length] / full_bytes:.3f}",
                  f"{entry['loss_mean']:.3f}" if "loss_mean" in entry else "not run",
                  f"{entry['loss_bins'][-1]:.3f}" if "loss_bins" in entry else "not run"]
    for key in columns:
      value, prompts = entry.get(key), entry.get(f"{key}_prompts")
      if value is None:
        evicts = label.split()[0] in EVICTING  # a label is "policy" or "policy 1/N", as _plot reads it
        cells_text.append("not run" if evicts or not key.endswith("_whole") else "=")
      else:
        cells_text.append(f"{int(round(value * prompts))}/{prompts}")
    table.append("| " + " | ".join(cells_text) + " |")
  # How long each column took (seconds, as its cells recorded them; the machine's load varied between runs).
  keys = [("loss_seconds", f"loss {loss_length // 1024}K")] + [(f"{key}_seconds", _column_name(key))
                                                                 for key in columns]
  timing = ["| method | " + " | ".join(name for _, name in keys) + " |", "|" + "---|" * (len(keys) + 1)]
  for label, entry in results.items():
    timing.append("| " + " | ".join([label] + [f"{entry[k]:.0f}" if k in entry else "-" for k, _ in keys]) + " |")
  _plot(results, loss_length, os.path.join(out, "kv_compression.png"))
  report = "\n".join([
      "# KV-cache compression on SmolLM2-135M", "",
      f"Machine: {machine()}. Produced by `python -m longjax.real_model.kv_compression --workdir {workdir} "
      f"--cells {cells} --out {out}`.", "",
      f"Loss by position: the first {loss_length} + 1 tokens of the language reference (`pydoc_data.topics`), "
      f"read in chunks of {chunk} tokens into a cache under the policy, compressed between chunks (a chunk's "
      f"queries see the kept tokens plus the chunk's own, causally). Passkey (depth 0.5, more depths where a cell "
      f"shows more prompts) and RULER niah_single_1 (seed 0, more seeds likewise): "
      f"greedy, prefilled in the same chunks then decoded under the policy (columns marked whole: the prompt "
      f"prefilled in one piece and compressed once, as the H2O and SnapKV papers do; `=`: a policy that evicts "
      f"nothing, the same either way) (a decode step sees the kept tokens "
      f"plus itself; streaming's sees the budget, itself included, as StreamingLLM); a cell is right/prompts. "
      f"Budgets are tokens per layer (per kv head for h2o and snapkv): 1/2, 1/4, 1/8 of the context length of "
      f"the cell. Bytes: the KV-cache calculator with the policy's own `state_bytes`, 30 layers, "
      f"one sequence, K/V in float16 (the model ran in float32).", "",
      *table, "", "![loss and retrieval vs KV bytes](kv_compression.png)", "",
      "Seconds per column (wall clock, as each cell recorded it, summed over the column's prompts; `-`: not "
      "run):", "", *timing, ""])
  # The table and the plot alone, for the real-model report to include (`python -m longjax.real_model --kv_dir`).
  with open(os.path.join(out, SUMMARY), "w") as f:
    f.write("\n".join([*table, "", "![loss and retrieval vs KV bytes](kv_compression.png)", ""]))
  notes = os.path.join(out, "notes.md")  # what was run and what it shows, written by hand beside the cells
  if os.path.isfile(notes):
    with open(notes) as f:
      report += "\n" + f.read()
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(report)
  return report


def _plot(results: dict, loss_length: int, path: str) -> None:
  """Left: mean loss vs cache bytes, one line per policy. Right: loss by position of the full cache, int8, int4
  and each evicting policy at its smallest budget measured."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
  for index, policy in enumerate(("full", *EVICTING, "int8", "int4")):
    measured = [(label, e) for label, e in results.items() if label.split()[0] == policy and "loss_bins" in e]
    if not measured:
      continue
    left.plot(*zip(*sorted((e["bytes"][loss_length], e["loss_mean"]) for _, e in measured)), marker="o",
              color=f"C{index}", label=policy)
    label, smallest = min(measured, key=lambda item: item[1]["bytes"][loss_length])
    ends = np.arange(1, len(smallest["loss_bins"]) + 1) * (loss_length // len(smallest["loss_bins"]))
    right.plot(ends, smallest["loss_bins"], ".-", color=f"C{index}", label=label, linewidth=2.5 if policy == "full" else 1)
  left.set_xscale("log", base=2)
  left.set_xlabel(f"KV-cache bytes at {loss_length} tokens (float16, all layers)")
  left.set_ylabel(f"mean loss over positions 1-{loss_length} (nats)")
  right.set_xlabel("position (end of bin)")
  right.set_ylabel("mean loss in bin (nats)")
  if left.lines:  # no loss cell yet: empty axes, no legend
    left.legend(fontsize=8)
    right.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def define_flags() -> None:
  """The command line's flags, defined only when the module runs as a program (`python -m ...`): importing it
  (tests, other mains) defines none, so it can sit beside any other main in one process."""
  flags.DEFINE_string("workdir", "real_out/smollm2",
                      "The imported SmolLM2 workdir (read only; `make real-model` imports it there).")
  flags.DEFINE_string("cells", "docs/kv_compression/cells",
                      "Where the cells go (the committed ones by default: a run adds only the missing).")
  flags.DEFINE_string("out", "docs/kv_compression", "Where report.md, results.json and the plot go.")
  flags.DEFINE_list("tasks", list(TASK_ORDER), "Tasks, in the order they run.")
  flags.DEFINE_list("lengths", ["4096", "8192"], "Passkey and RULER lengths.")
  flags.DEFINE_integer("loss_length", 8192, "Loss by position length.")
  flags.DEFINE_integer("chunk", 1024, "Prefill chunk (compression between chunks).")
  flags.DEFINE_list("fractions", [str(f) for f in FRACTIONS], "Budgets to run: context // these.")
  flags.DEFINE_list("policies", None, "Policies to run (default: all).")
  flags.DEFINE_enum("prefill", "chunk", list(PREFILLS),
                    "Retrieval prompts: compressed between --chunk-token chunks, or once after the whole prompt.")
  flags.DEFINE_list("depths", ["0.5"], "Passkey depths to run, one prompt (and key) each; 0.5 is the first cell.")
  flags.DEFINE_list("ruler_seeds", ["0"], "RULER niah_single_1 seeds to run, one sample each; 0 is the first cell.")
  flags.DEFINE_bool("report_only", False, "Only rebuild the report from the cells on disk.")


def _ints(name: str, values: list[str], allowed: tuple[int, ...] | None = None) -> tuple[int, ...]:
  """--name as positive whole numbers (from `allowed` if given), or one clear line (ConfigError)."""
  try:
    out = tuple(int(v) for v in values)
  except ValueError:
    out = ()
  if not out or any(v < 1 or (allowed is not None and v not in allowed) for v in out):
    rule = f"one or more of {', '.join(map(str, allowed))}" if allowed else "positive whole numbers"
    raise ConfigError(f"--{name}={','.join(values)} is invalid: allowed {rule}")
  return out


def _depths(values: list[str]) -> tuple[float, ...]:
  """--depths as fractions in [0, 1] on a whole percent (they name the cells), or one clear line (ConfigError)."""
  try:
    out = tuple(float(v) for v in values)
  except ValueError:
    out = ()
  if not out or any(not 0 <= d <= 1 or abs(d * 100 - round(d * 100)) > 1e-9 for d in out):
    raise ConfigError(f"--depths={','.join(values)} is invalid: allowed fractions from 0 to 1 in whole percent "
                      f"(0.1, 0.25, 0.5)")
  return out


def _seeds(values: list[str]) -> tuple[int, ...]:
  """--ruler_seeds as whole numbers >= 0, or one clear line (ConfigError)."""
  if not values or not all(v.isdigit() for v in values):
    raise ConfigError(f"--ruler_seeds={','.join(values)} is invalid: allowed whole numbers from 0")
  return tuple(int(v) for v in values)


def _names(name: str, values: list[str], allowed: tuple[str, ...]) -> tuple[str, ...]:
  if not values or any(v not in allowed for v in values):
    raise ConfigError(f"--{name}={','.join(values)} is invalid: allowed one or more of {', '.join(allowed)}")
  return tuple(values)


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  lengths = _ints("lengths", FLAGS.lengths)
  loss_length, chunk = _ints("loss_length", [str(FLAGS.loss_length)])[0], _ints("chunk", [str(FLAGS.chunk)])[0]
  if not FLAGS.report_only:
    fractions = _ints("fractions", FLAGS.fractions, FRACTIONS)
    policies = None if FLAGS.policies is None else _names("policies", FLAGS.policies, tuple(kv_policies.KV_POLICIES))
    run_cells(FLAGS.workdir, FLAGS.cells, _names("tasks", FLAGS.tasks, TASK_ORDER), lengths, loss_length, chunk,
              fractions, policies, FLAGS.prefill, _depths(FLAGS.depths), _seeds(FLAGS.ruler_seeds))
  print(write_report(FLAGS.workdir, FLAGS.cells, FLAGS.out, lengths, loss_length, chunk))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
