"""The evaluation tasks by name: each adapts a loaded run to one library function and says how to report it.

`python -m longjax.evaluate --task NAME` looks tasks up in TASKS; a task returns a `Report` (JSON-able
results, a figure writer and a printed table). To add one, write a
`def _name(run: EvalRun, options: TaskOptions) -> Report` here and register it in TASKS.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from longjax.config import AttentionConfig, Config, ConfigError
from longjax.data import get_tokenizer, open_documents
from longjax.evaluate import eval_documents, kv_cache, needle, passkey, plots, ruler
from longjax.evaluate.loss_by_position import loss_by_position
from longjax.evaluate.perplexity import perplexity_vs_length
from longjax.inference import kv_policies
from longjax.inference.loaded import LoadedModel
from longjax.nn import ATTENTION_TYPES, Llama
from longjax.sharding import mesh_shape

EXTENSION_FACTORS = (1, 2, 4, 8)  # default retrieval lengths: the trained length times these
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclasses.dataclass(frozen=True)
class TaskOptions:
  """What the main's flags set; None means the task's default."""

  lengths: tuple[int, ...] | None = None  # tokens
  depths: tuple[float, ...] = DEPTHS  # passkey, needle
  trials: int = 5  # prompts per (length, depth) cell
  digits: int | None = None  # key / needle digits; None: 1..50000 (the passkey protocol)
  seed: int = 0
  num_bins: int = 16  # loss_by_position
  batch_size: int = 1  # kv_cache
  dtype: str = "float16"  # kv_cache: K/V storage
  texts: tuple[str, ...] | None = None  # perplexity, loss_by_position: documents instead of the run's eval split


@dataclasses.dataclass
class EvalRun:
  """A trained run under the positional methods to evaluate: name -> config (the run's own first; with
  --config, the override last). `params`, `tokenizer` are None for tasks that need no weights."""

  trained: Config
  methods: dict[str, Config]
  params: Any = None
  tokenizer: Any = None
  generate_options: dict = dataclasses.field(default_factory=dict)  # to `generate`: kv_policy, kv_budget, ...

  @property
  def name(self) -> str:
    return list(self.methods)[-1]

  @property
  def config(self) -> Config:
    return self.methods[self.name]

  @property
  def trained_length(self) -> int:
    """The length the weights were trained for: the model's max_position_embeddings (an import's context length)."""
    return self.trained.model.max_position_embeddings

  @property
  def kv_policy(self):
    """The KV-cache policy the generate options name (`longjax.inference.kv_policies`), None for the full cache."""
    name = self.generate_options.get("kv_policy", "full")
    if name == "full":
      return None
    return kv_policies.make_policy(name, self.generate_options.get("kv_budget"),
                                   **(self.generate_options.get("kv_options") or {}))

  def extension_lengths(self, options: TaskOptions) -> tuple[int, ...]:
    return options.lengths or tuple(self.trained_length * f for f in EXTENSION_FACTORS)

  def encode(self, text: str, bos: bool | None = None) -> list[int]:
    return self.tokenizer.encode(text, bos=self.config.data.add_bos if bos is None else bos)

  def generate(self, prompts, max_new_tokens: int):
    """Greedy, with the KV cache, under the evaluated config, stopping at EOS: texts -> texts, token lists -> lists
    of ids; each answer is cut at its first EOS (a decoded "42<EOS>17" would read 4217)."""
    model = LoadedModel(self.config, self.params, Llama(self.config.model), self.tokenizer, 0)
    texts = bool(prompts) and isinstance(prompts[0], str)
    ids = [self.encode(text) for text in prompts] if texts else [list(p) for p in prompts]
    rows = np.asarray(model.generate(ids, max_new_tokens, stop_at_eos=True, **self.generate_options)).tolist()
    rows = [needle.cut_at(row, self.tokenizer.eos_id) for row in rows]
    return [self.tokenizer.decode(row) for row in rows] if texts else rows


@dataclasses.dataclass(frozen=True)
class Report:
  results: Any  # JSON-able
  plot: Callable[[str], str]  # path -> path
  table: str
  scalars: dict[str, float] = dataclasses.field(default_factory=dict)  # what training logs (metrics.jsonl)


def check_length(attention: AttentionConfig, length: int, source: str) -> None:
  """Raise ConfigError when `attention` cannot read `length` tokens in one whole-sequence forward (its registry
  entry's `length_problem`: s2 evaluated as it trains; every other type reads any length)."""
  problem = ATTENTION_TYPES[attention.type].length_problem(attention, length)
  if problem is not None:
    raise ConfigError(f"{source}: length {length} is invalid: {problem}")


@dataclasses.dataclass(frozen=True)
class Task:
  run: Callable[[EvalRun, TaskOptions], Report]
  needs_params: bool = True
  # (config, length, flag or key that set it) of each whole-sequence forward the task runs, checked before loading
  forward_lengths: Callable[[EvalRun, TaskOptions], list[tuple[Config, int, str]]] = lambda run, options: []

  def check(self, run: EvalRun, options: TaskOptions) -> None:
    """Raise ConfigError for a forward length that a method's attention type cannot hold (`check_length`)."""
    for config, length, source in self.forward_lengths(run, options):
      check_length(config.model.attention, length, source)


def _lengths_source(options: TaskOptions) -> str:
  return "--lengths" if options.lengths else "eval.lengths"


def _perplexity_lengths(run: EvalRun, options: TaskOptions) -> list[tuple[Config, int, str]]:
  return [(run.config, n, _lengths_source(options)) for n in options.lengths or run.config.eval.lengths]


def _loss_by_position_lengths(run: EvalRun, options: TaskOptions) -> list[tuple[Config, int, str]]:
  return [(config, max(options.lengths or run.config.eval.lengths), _lengths_source(options))
          for config in run.methods.values()]


def _perplexity(run: EvalRun, options: TaskOptions) -> Report:
  config = run.config
  lengths = options.lengths or config.eval.lengths
  documents = eval_documents(config.data, config.eval.max_documents, min_tokens=min(lengths),
                             max_tokens=max(config.eval.max_document_tokens, max(lengths)), bos=False,
                             texts=options.texts)
  bos_id = get_tokenizer(config.data).bos_id if config.data.add_bos else None
  results = {run.name: perplexity_vs_length(Llama(config.model), run.params, documents, lengths, config.eval.stride,
                                            bos_id)}
  table = "\n".join(f"{run.name} length {r.length}: perplexity {r.perplexity:.4f} (token-weighted; YaRN's mean of "
                    f"window means {r.window_mean_perplexity:.4f}) over {r.tokens} tokens, {r.windows} windows of "
                    f"{r.documents} documents ({r.skipped} too short)" for r in results[run.name])
  scalars = {f"perplexity_{r.length}": r.perplexity for r in results[run.name]}
  return Report({name: [dataclasses.asdict(r) for r in rs] for name, rs in results.items()},
                lambda path: plots.plot_perplexity_vs_length(results, path, trained_length=run.trained_length), table,
                scalars)


def _retrieval_report(grid: passkey.RetrievalGrid) -> Report:
  results = {**dataclasses.asdict(grid), "mean_accuracy": grid.mean_accuracy}
  scalars = {f"{grid.task}_accuracy": grid.mean_accuracy,
             **{f"{grid.task}_accuracy_{n}": float(sum(row) / len(row)) for n, row in zip(grid.lengths, grid.accuracy)}}
  return Report(results, lambda path: plots.plot_retrieval_heatmap(grid, path), grid.table(), scalars)


def _passkey(run: EvalRun, options: TaskOptions) -> Report:
  grid = passkey.evaluate_passkey(run.generate, lambda text: len(run.encode(text)), run.extension_lengths(options),
                                  options.depths, keys_per_cell=options.trials, digits=options.digits,
                                  seed=options.seed, trained_length=run.trained_length)
  return _retrieval_report(grid)


def _needle(run: EvalRun, options: TaskOptions) -> Report:
  data = run.config.data
  source = open_documents(data, data.eval_split)
  documents = [source[i] for i in range(min(len(source), run.config.eval.max_documents))]
  grid = needle.evaluate_needle(run.generate, run.encode, run.tokenizer.decode, documents,
                                run.extension_lengths(options), options.depths, trials=options.trials,
                                digits=options.digits, seed=options.seed, trained_length=run.trained_length,
                                eos_id=run.tokenizer.eos_id)
  return _retrieval_report(grid)


def _needle_gkamradt(run: EvalRun, options: TaskOptions) -> Report:
  grid = needle.evaluate_needle_gkamradt(run.generate, lambda text: len(run.encode(text)),
                                         run.extension_lengths(options), options.depths,
                                         trained_length=run.trained_length)
  return _retrieval_report(grid)


def _loss_by_position(run: EvalRun, options: TaskOptions) -> Report:
  length = max(options.lengths or run.config.eval.lengths)
  documents = eval_documents(run.config.data, run.config.eval.max_documents, min_tokens=length + 1,
                             max_tokens=length + 1, texts=options.texts)
  curves = {name: loss_by_position(Llama(config.model), run.params, documents, length, options.num_bins)
            for name, config in run.methods.items()}
  first = next(iter(curves.values()))
  header = [f"loss by position (nats), windows of {length} tokens, {first.documents} documents",
            f"{'positions':>14} " + " ".join(f"{name:>12}" for name in curves)]
  rows = [f"{f'{a}-{b - 1}':>14} " + " ".join(f"{c.loss[i]:>12.4f}" for c in curves.values())
          for i, (a, b) in enumerate(zip(first.starts, first.ends))]
  table = "\n".join(header + rows)
  own = curves[next(iter(curves))]  # the run's own method: loss of the first and the last position bin
  scalars = {"loss_first_bin": float(own.loss[0]), "loss_last_bin": float(own.loss[-1])}
  return Report({name: dataclasses.asdict(c) for name, c in curves.items()},
                lambda path: plots.plot_loss_by_position(curves, path, trained_length=run.trained_length), table,
                scalars)


def _kv_cache(run: EvalRun, options: TaskOptions) -> Report:
  data, fsdp, tensor, _ = mesh_shape(run.config.mesh, jax.device_count())
  model = run.config.model
  policy = run.kv_policy
  sizes = kv_cache.kv_cache_table(model, run.extension_lengths(options), options.batch_size, options.dtype,
                                  kv_policy=policy, data=data, fsdp=fsdp, tensor=tensor)
  fmt = kv_cache.format_bytes
  per_token = kv_cache.kv_cache_size(model, 1, 1, options.dtype, kv_policy=policy).total_bytes
  compressed = "" if policy is None else f", kv_policy {policy.name} budget {policy.budget}"
  header = (f"kv cache ({model.block}, attention {model.attention.type}{compressed}, {model.num_layers} layers, "
            f"{model.num_kv_heads} kv heads x {model.resolved_head_dim}, {options.dtype}, batch {options.batch_size}, "
            f"mesh data={data} fsdp={fsdp} tensor={tensor}): {fmt(per_token)} for one token")
  rows = [f"{s.length:>9} tokens: {s.cached_tokens:>9} cached, {fmt(s.layer_bytes):>11} a layer, "
          f"{fmt(s.total_bytes):>11} total, {fmt(s.device_bytes):>11} a device" for s in sizes]
  results = {"mesh": {"data": data, "fsdp": fsdp, "tensor": tensor}, "sizes": [dataclasses.asdict(s) for s in sizes]}
  return Report(results, lambda path: plots.plot_kv_cache(sizes, path), "\n".join([header, *rows]))


def _ruler(run: EvalRun, options: TaskOptions) -> Report:
  """Every RULER task at each length; a cell whose shortest prompt does not fit is left empty."""
  results: dict[str, dict[int, float]] = {}
  skipped = []
  for task in ruler.TASKS:
    results[task] = {}
    for length in run.extension_lengths(options):
      try:
        results[task].update(ruler.evaluate_ruler(run.generate, run.tokenizer, [task], [length],
                                                  samples=options.trials, seed=options.seed,
                                                  add_bos=run.config.data.add_bos)[task])
      except ValueError as e:  # the template alone is longer than this length
        skipped.append(f"{task} at {length}: {e}")
  lengths = sorted({n for by_length in results.values() for n in by_length})
  rows = [f"{'task':>16} " + " ".join(f"{n:>7}" for n in lengths)]
  rows += [f"{task:>16} " + " ".join(f"{100 * by_length[n]:>6.0f}%" if n in by_length else f"{'-':>7}"
                                     for n in lengths) for task, by_length in results.items()]
  json_results = {"scores": {t: {str(n): v for n, v in r.items()} for t, r in results.items()}, "skipped": skipped}
  scalars = {}
  for n in lengths:
    cells = [by_length[n] for by_length in results.values() if n in by_length]
    scalars[f"ruler_{n}"] = sum(cells) / len(cells)
  return Report(json_results, lambda path: plots.plot_ruler(results, path), "\n".join(rows + skipped), scalars)


TASKS: dict[str, Task] = {
    "perplexity": Task(_perplexity, forward_lengths=_perplexity_lengths),
    "passkey": Task(_passkey),
    "needle": Task(_needle),
    "needle_gkamradt": Task(_needle_gkamradt),
    "loss_by_position": Task(_loss_by_position, forward_lengths=_loss_by_position_lengths),
    "kv_cache": Task(_kv_cache, needs_params=False),
    "ruler": Task(_ruler),
}


def evaluate_during_training(config: Config, params, tokenizer) -> dict[str, float]:
  """The scalars of `config.eval.tasks` for the parameters being trained (train.eval_every), as `eval/...` metrics."""
  run = EvalRun(config, {config.model.rope.rope_type: config}, params, tokenizer)
  options = TaskOptions(lengths=config.eval.task_lengths or None, trials=config.eval.task_trials, seed=config.seed)
  metrics = {}
  for name in config.eval.tasks:
    metrics.update({f"eval/{key}": value for key, value in TASKS[name].run(run, options).scalars.items()})
  return metrics
