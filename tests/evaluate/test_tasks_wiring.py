"""What each evaluation task passes to its library function and how it reports the result: the arguments (from
the options, else the run's config), the JSON results, the printed table, the training scalars and the figure.
The library functions are replaced by recorders that return known results (each is tested on its own), so
these tests compile no model; `python -m longjax.evaluate` reaches the same code (tests/evaluate/test_main.py)
in a subprocess, which mutation runs cannot see."""

import dataclasses

import numpy as np
import pytest

from longjax.config import AttentionConfig, Config, ConfigError, S2Config
from longjax.data import ByteTokenizer
from longjax.evaluate import kv_cache, needle, passkey, plots, tasks
from longjax.evaluate.loss_by_position import PositionLoss
from longjax.evaluate.perplexity import LengthResult
from longjax.evaluate.tasks import TASKS, EvalRun, TaskOptions
from longjax.nn import Llama


class Recorder:
  """Records its calls' arguments and returns `result` (or result(*args, **kwargs) when callable)."""

  def __init__(self, result=None):
    self.result, self.calls = result, []

  def __call__(self, *args, **kwargs):
    self.calls.append((args, kwargs))
    return self.result(*args, **kwargs) if callable(self.result) else self.result


def _config(trained=1024, **eval_fields):
  config = Config()
  model = dataclasses.replace(config.model, max_position_embeddings=trained)
  return dataclasses.replace(config, model=model, eval=dataclasses.replace(config.eval, **eval_fields))


def _with_data(config, **fields):
  return dataclasses.replace(config, data=dataclasses.replace(config.data, **fields))


PERPLEXITY = [LengthResult(16, 8, 2.0, 7.25, 40, 1, 7.5, 5, 0), LengthResult(32, 8, 3.0, 20.125, 60, 2, 21.0, 4, 2)]


@pytest.mark.parametrize("add_bos, option_lengths", [(True, None), (False, (16, 32))])
def test_perplexity_task(monkeypatch, add_bos, option_lengths):
  documents, plot = Recorder(["d1", "d2"]), Recorder("written.png")
  vs_length = Recorder(PERPLEXITY)
  monkeypatch.setattr(tasks, "eval_documents", documents)
  monkeypatch.setattr(tasks, "perplexity_vs_length", vs_length)
  monkeypatch.setattr(plots, "plot_perplexity_vs_length", plot)
  lengths = (16, 32)  # the config's, or the options' when they name some (the config's then differ)
  config = _with_data(_config(trained=24, lengths=(8, 64) if option_lengths else lengths, stride=8, max_documents=3,
                              max_document_tokens=20), add_bos=add_bos)
  trained = _config(trained=24)
  run = EvalRun(trained, {"first": trained, "yarn": config}, params="P")
  report = TASKS["perplexity"].run(run, TaskOptions(lengths=option_lengths, texts=("a", "b")))

  assert documents.calls == [((config.data, 3), {"min_tokens": 16, "max_tokens": 32, "bos": False,
                                                 "texts": ("a", "b")})]
  [(args, kwargs)] = vs_length.calls
  model, params, docs, called_lengths, stride, bos_id = args
  assert isinstance(model, Llama) and model.config == config.model and kwargs == {}
  assert (params, docs, tuple(called_lengths), stride, bos_id) == ("P", ["d1", "d2"], lengths, 8,
                                                                   1 if add_bos else None)
  assert report.results == {"yarn": [dataclasses.asdict(r) for r in PERPLEXITY]}
  assert report.table == (
      "yarn length 16: perplexity 7.2500 (token-weighted; YaRN's mean of window means 7.5000) over 40 tokens, 5 "
      "windows of 1 documents (0 too short)\n"
      "yarn length 32: perplexity 20.1250 (token-weighted; YaRN's mean of window means 21.0000) over 60 tokens, 4 "
      "windows of 2 documents (2 too short)")
  assert report.scalars == {"perplexity_16": 7.25, "perplexity_32": 20.125}
  assert report.plot("out.png") == "written.png"
  assert plot.calls == [(({"yarn": PERPLEXITY}, "out.png"), {"trained_length": 24})]


def _curve(model, params, documents, length, num_bins):
  first = model.config.hidden_size / 128  # tells the methods apart (exact in binary)
  return PositionLoss(length, [0, 4, 8], [4, 8, length], [first, first + 1.0, first + 2.0], 7)


def test_loss_by_position_task(monkeypatch):
  documents, plot, curves = Recorder(["d"]), Recorder("lbp.png"), Recorder(_curve)
  monkeypatch.setattr(tasks, "eval_documents", documents)
  monkeypatch.setattr(tasks, "loss_by_position", curves)
  monkeypatch.setattr(plots, "plot_loss_by_position", plot)
  trained = _config(trained=6, lengths=(4, 12, 8), max_documents=5)
  wide = dataclasses.replace(trained, model=dataclasses.replace(trained.model, hidden_size=250),
                             data=dataclasses.replace(trained.data, tokenizer_path="evaluated's"))
  run = EvalRun(trained, {"own": trained, "wide": wide}, params="P")
  report = TASKS["loss_by_position"].run(run, TaskOptions(num_bins=3, texts=("t",)))

  assert documents.calls == [((wide.data, 5), {"min_tokens": 13, "max_tokens": 13, "texts": ("t",)})]
  assert [(call[0][0].config, call[0][1:]) for call in curves.calls] == [
      (trained.model, ("P", ["d"], 12, 3)), (wide.model, ("P", ["d"], 12, 3))]
  own, other = _curve(Llama(trained.model), 0, 0, 12, 3), _curve(Llama(wide.model), 0, 0, 12, 3)
  assert report.results == {"own": dataclasses.asdict(own), "wide": dataclasses.asdict(other)}
  assert report.table == ("loss by position (nats), windows of 12 tokens, 7 documents\n"
                          "     positions          own         wide\n"
                          "           0-3       2.0000       1.9531\n"
                          "           4-7       3.0000       2.9531\n"
                          "          8-11       4.0000       3.9531")
  assert report.scalars == {"loss_first_bin": 2.0, "loss_last_bin": 4.0}
  assert report.plot("p.png") == "lbp.png"
  assert plot.calls == [(({"own": own, "wide": other}, "p.png"), {"trained_length": 6})]
  # --lengths: the longest of them
  TASKS["loss_by_position"].run(run, TaskOptions(lengths=(20, 16)))
  assert documents.calls[-1][1]["min_tokens"] == 21 and curves.calls[-1][0][3] == 20


@pytest.mark.parametrize("generate_options", [{}, {"kv_policy": "h2o", "kv_budget": 32}])
def test_kv_cache_task(monkeypatch, generate_options):
  mesh, plot = Recorder((2, 2, 4, 1)), Recorder("kv.png")
  monkeypatch.setattr(tasks, "mesh_shape", mesh)
  monkeypatch.setattr(plots, "plot_kv_cache", plot)
  config = _config(trained=64)
  run = EvalRun(config, {"m": config}, generate_options=generate_options)
  report = TASKS["kv_cache"].run(run, TaskOptions(lengths=(64, 256), batch_size=4, dtype="float32"))

  assert mesh.calls == [((config.mesh, tasks.jax.device_count()), {})]
  policy = run.kv_policy
  sizes = kv_cache.kv_cache_table(config.model, (64, 256), 4, "float32", kv_policy=policy, data=2, fsdp=2, tensor=4)
  per_token = kv_cache.kv_cache_size(config.model, 1, 1, "float32", kv_policy=policy).total_bytes
  for data, fsdp, tensor in [(1, 2, 4), (2, 1, 4), (2, 2, 1)]:  # each axis of the mesh shares it out
    assert kv_cache.kv_cache_table(config.model, (64,), 4, "float32", kv_policy=policy, data=data, fsdp=fsdp,
                                   tensor=tensor)[0].device_bytes != sizes[0].device_bytes
  assert report.results == {"mesh": {"data": 2, "fsdp": 2, "tensor": 4},
                            "sizes": [dataclasses.asdict(s) for s in sizes]}
  fmt = kv_cache.format_bytes
  policy_text = ", kv_policy h2o budget 32" if generate_options else ""
  lines = report.table.split("\n")
  assert lines[0] == (f"kv cache (llama, attention full{policy_text}, 4 layers, 4 kv heads x 64, float32, batch 4, "
                      f"mesh data=2 fsdp=2 tensor=4): {fmt(per_token)} for one token")
  assert lines[1:] == [f"{s.length:>9} tokens: {s.cached_tokens:>9} cached, {fmt(s.layer_bytes):>11} a layer, "
                       f"{fmt(s.total_bytes):>11} total, {fmt(s.device_bytes):>11} a device" for s in sizes]
  if not generate_options:  # K and V of 64 tokens, 4 heads x 64, float32, batch 4, a layer
    assert sizes[0].layer_bytes == 2 * 64 * 4 * 64 * 4 * 4 and lines[1].startswith("       64 tokens:        64 cached")
  assert report.plot("k.png") == "kv.png" and plot.calls == [((sizes, "k.png"), {})]
  # the trained length times 1, 2, 4, 8 without --lengths
  report = TASKS["kv_cache"].run(run, TaskOptions())
  assert [s["length"] for s in report.results["sizes"]] == [64, 128, 256, 512]


def _grid(task, *args, **kwargs):
  return passkey.RetrievalGrid(task, [64, 128], [0.0, 1.0], [[1.0, 0.5], [0.25, 0.0]], 2, [63, 127], 64)


def test_needle_task_reads_at_most_max_documents_of_the_eval_split(monkeypatch):
  source = ["doc0", "doc1", "doc2", "doc3"]
  opened, evaluate = Recorder(source), Recorder(lambda *a, **k: _grid("needle"))
  monkeypatch.setattr(tasks, "open_documents", opened)
  monkeypatch.setattr(needle, "evaluate_needle", evaluate)
  tokenizer = ByteTokenizer()
  trained = _config(trained=64)
  config = _with_data(_config(trained=64, max_documents=3), eval_split="held_out")
  run = EvalRun(trained, {"own": trained, "ntk": config}, tokenizer=tokenizer)
  report = TASKS["needle"].run(run, TaskOptions(depths=(0.0, 1.0), trials=2, digits=3, seed=9))
  assert opened.calls == [((config.data, "held_out"), {})]
  [(args, kwargs)] = evaluate.calls
  assert args == (run.generate, run.encode, tokenizer.decode, source[:3], (64, 128, 256, 512), (0.0, 1.0))
  assert kwargs == {"trials": 2, "digits": 3, "seed": 9, "trained_length": 64, "eos_id": tokenizer.eos_id}
  assert report.results["mean_accuracy"] == 0.4375
  run = EvalRun(trained, {"own": _config(trained=64, max_documents=8)}, tokenizer=tokenizer)
  TASKS["needle"].run(run, TaskOptions(lengths=(100,)))
  assert evaluate.calls[-1][0][3:5] == (source, (100,))  # fewer documents than max_documents: all of them


def test_gkamradt_task_passes_lengths_depths_and_the_trained_length(monkeypatch):
  evaluate = Recorder(lambda *a, **k: _grid("needle_gkamradt"))
  monkeypatch.setattr(needle, "evaluate_needle_gkamradt", evaluate)
  tokenizer = ByteTokenizer()
  trained = _config(trained=32)
  run = EvalRun(trained, {"own": trained}, tokenizer=tokenizer)
  TASKS["needle_gkamradt"].run(run, TaskOptions(depths=(0.5,)))
  [(args, kwargs)] = evaluate.calls
  assert args[0] == run.generate and args[2:] == ((32, 64, 128, 256), (0.5,))
  assert kwargs == {"trained_length": 32}
  assert args[1]("abc") == len(tokenizer.encode("abc", bos=True)) == 4  # counts BOS: the run's add_bos


def test_retrieval_report():
  grid = _grid("passkey")
  report = tasks._retrieval_report(grid)
  assert report.results == {**dataclasses.asdict(grid), "mean_accuracy": 0.4375}
  assert report.scalars == {"passkey_accuracy": 0.4375, "passkey_accuracy_64": 0.75, "passkey_accuracy_128": 0.125}
  assert report.table == grid.table()


def test_retrieval_report_plots_its_grid(monkeypatch):
  plot = Recorder("heat.png")
  monkeypatch.setattr(plots, "plot_retrieval_heatmap", plot)
  grid = _grid("needle")
  assert tasks._retrieval_report(grid).plot("h.png") == "heat.png"
  assert plot.calls == [((grid, "h.png"), {})]


def test_passkey_task_passes_its_options(monkeypatch):
  evaluate = Recorder(lambda *a, **k: _grid("passkey"))
  monkeypatch.setattr(passkey, "evaluate_passkey", evaluate)
  tokenizer = ByteTokenizer()
  trained = _config(trained=32)
  run = EvalRun(trained, {"own": trained}, tokenizer=tokenizer)
  report = TASKS["passkey"].run(run, TaskOptions(lengths=(40, 80), depths=(0.25,), trials=3, digits=2, seed=4))
  [(args, kwargs)] = evaluate.calls
  assert args[0] == run.generate and args[2:] == ((40, 80), (0.25,))
  assert args[1]("abc") == 4  # BOS and three bytes
  assert kwargs == {"keys_per_cell": 3, "digits": 2, "seed": 4, "trained_length": 32}
  assert report.scalars["passkey_accuracy"] == 0.4375


def test_generate_runs_the_evaluated_model_with_the_generate_options_and_cuts_at_eos(monkeypatch):
  tokenizer = ByteTokenizer()
  answer = tokenizer.encode(" 42", bos=False)
  generate = Recorder(lambda model, params, prompts, n, **kwargs: np.asarray(
      [(answer + [tokenizer.eos_id] * n + [9])[:n] for _ in prompts], np.int32))
  monkeypatch.setattr("longjax.inference.loaded._generate", generate)
  trained = _config()
  evaluated = dataclasses.replace(trained, model=dataclasses.replace(trained.model, hidden_size=128))
  run = EvalRun(trained, {"own": trained, "ntk": evaluated}, params="P", tokenizer=tokenizer,
                generate_options={"kv_policy": "h2o", "kv_budget": 8})
  assert run.generate(["ab", "c"], 5) == [" 42", " 42"]
  [(args, kwargs)] = generate.calls
  model, params, prompts, n = args
  assert (model.config, params, n) == (evaluated.model, "P", 5)
  assert [list(p) for p in prompts] == [run.encode("ab"), run.encode("c")]
  assert kwargs["stop_tokens"] == (tokenizer.eos_id,) and (kwargs["kv_policy"], kwargs["kv_budget"]) == ("h2o", 8)
  assert run.generate([[1, 2, 3]], 5) == [answer] and generate.calls[-1][0][2] == [[1, 2, 3]]  # ids: as given


def _s2(config, at_eval=True):
  attention = AttentionConfig(type="s2", s2=S2Config(group_size_ratio=0.25, at_eval=at_eval))
  return dataclasses.replace(config, model=dataclasses.replace(config.model, attention=attention))


def test_forward_lengths_each_task_checks():
  trained = _config(lengths=(64, 100))
  s2 = _s2(trained)
  run = EvalRun(trained, {"own": trained, "s2": s2})
  assert TASKS["perplexity"].forward_lengths(run, TaskOptions()) == [(s2, 64, "eval.lengths"),
                                                                     (s2, 100, "eval.lengths")]
  assert TASKS["perplexity"].forward_lengths(run, TaskOptions(lengths=(32,))) == [(s2, 32, "--lengths")]
  assert TASKS["loss_by_position"].forward_lengths(run, TaskOptions()) == [(trained, 100, "eval.lengths"),
                                                                           (s2, 100, "eval.lengths")]
  assert TASKS["loss_by_position"].forward_lengths(run, TaskOptions(lengths=(8, 16))) == [
      (trained, 16, "--lengths"), (s2, 16, "--lengths")]
  for name in ("passkey", "needle", "needle_gkamradt", "kv_cache", "ruler"):
    assert TASKS[name].forward_lengths(run, TaskOptions()) == []
  assert [name for name, task in TASKS.items() if not task.needs_params] == ["kv_cache"]


def test_check_names_the_length_its_source_and_the_problem():
  s2 = _s2(_config(lengths=(64, 100)))
  run = EvalRun(s2, {"s2": s2})
  TASKS["perplexity"].check(run, TaskOptions(lengths=(64, 128)))  # groups of 16 and 32: fine
  problem = ("model.attention.type=s2 with s2.at_eval=True cuts it into groups of s2.group_size_ratio=0.25 x 100 = "
             "25 tokens, which must be an even divisor of it; allowed: such lengths, or "
             "model.attention.s2.at_eval=False")
  with pytest.raises(ConfigError) as error:
    TASKS["perplexity"].check(run, TaskOptions())
  assert str(error.value) == f"eval.lengths: length 100 is invalid: {problem}"
  with pytest.raises(ConfigError, match=r"^--lengths: length 100 is invalid: model\.attention\.type=s2 "):
    TASKS["loss_by_position"].check(run, TaskOptions(lengths=(64, 100)))
  TASKS["passkey"].check(run, TaskOptions(lengths=(100,)))  # generation: no whole-sequence forward
  tasks.check_length(_s2(_config(), at_eval=False).model.attention, 100, "x")  # full attention at evaluation
  tasks.check_length(Config().model.attention, 100, "x")


def test_evaluate_during_training_runs_each_configured_task_on_the_trained_weights(monkeypatch):
  seen = []

  def task(name):
    def run(run, options):
      seen.append((name, run, options))
      return tasks.Report({}, None, "", {f"{name}_accuracy": 0.5, "calls": len(seen)})
    return tasks.Task(run)

  monkeypatch.setitem(TASKS, "passkey", task("passkey"))
  monkeypatch.setitem(TASKS, "ruler", task("ruler"))
  config = dataclasses.replace(_config(tasks=("passkey", "ruler"), task_lengths=(300, 600), task_trials=3), seed=5)
  metrics = tasks.evaluate_during_training(config, "P", "T")
  assert metrics == {"eval/passkey_accuracy": 0.5, "eval/ruler_accuracy": 0.5, "eval/calls": 2}
  assert [name for name, _, _ in seen] == ["passkey", "ruler"]
  for _, run, options in seen:
    assert (run.trained, run.methods, run.params, run.tokenizer, run.generate_options) == (
        config, {config.model.rope.rope_type: config}, "P", "T", {})
    assert options == TaskOptions(lengths=(300, 600), trials=3, seed=5)
  seen.clear()
  tasks.evaluate_during_training(dataclasses.replace(config, eval=dataclasses.replace(config.eval, task_lengths=())),
                                 "P", "T")
  assert seen[0][2].lengths is None  # the tasks' own default: the trained length times 1, 2, 4, 8


@pytest.mark.parametrize("add_bos", [True, False])
def test_encode_adds_bos_as_the_evaluated_config_says_unless_told(add_bos):
  tokenizer = ByteTokenizer()
  trained = _config()
  run = EvalRun(trained, {"own": trained, "evaluated": _with_data(trained, add_bos=add_bos)}, tokenizer=tokenizer)
  ids = tokenizer.encode("ab", bos=False)
  assert run.encode("ab") == ([tokenizer.bos_id] if add_bos else []) + ids
  assert run.encode("ab", bos=True) == [tokenizer.bos_id] + ids and run.encode("ab", bos=False) == ids


def test_ruler_task_runs_each_task_at_each_length_and_names_what_did_not_fit(monkeypatch):
  from longjax.evaluate import ruler

  names = list(ruler.TASKS)[:2]
  monkeypatch.setattr(ruler, "TASKS", {name: ruler.TASKS[name] for name in names})

  def evaluate(generate, tokenizer, tasks_, lengths, **kwargs):
    [task], [length] = tasks_, lengths
    if (task, length) == (names[1], 64):
      raise ValueError("the template alone is longer")
    return {task: {length: {names[0]: 0.5, names[1]: 0.25}[task] + length / 2048}}

  recorder, plot = Recorder(evaluate), Recorder("ruler.png")
  monkeypatch.setattr(ruler, "evaluate_ruler", recorder)
  monkeypatch.setattr(plots, "plot_ruler", plot)
  tokenizer = ByteTokenizer()
  trained = _config(trained=32)
  run = EvalRun(trained, {"own": _with_data(trained, add_bos=False)}, tokenizer=tokenizer)
  report = TASKS["ruler"].run(run, TaskOptions(lengths=(64, 128), trials=3, seed=7))

  assert [(args[2:], kwargs) for args, kwargs in recorder.calls] == [
      (([task], [n]), {"samples": 3, "seed": 7, "add_bos": False}) for task in names for n in (64, 128)]
  assert all(args[0] == run.generate and args[1] is tokenizer for args, _ in recorder.calls)
  results = {names[0]: {64: 0.53125, 128: 0.5625}, names[1]: {128: 0.3125}}
  skipped = [f"{names[1]} at 64: the template alone is longer"]
  assert report.results == {"scores": {names[0]: {"64": 0.53125, "128": 0.5625}, names[1]: {"128": 0.3125}},
                            "skipped": skipped}
  assert report.table == "\n".join([
      f"{'task':>16}      64     128",
      f"{names[0]:>16}     53%     56%",
      f"{names[1]:>16}       -     31%",
      *skipped])
  assert report.scalars == {"ruler_64": 0.53125, "ruler_128": 0.4375}
  assert report.plot("r.png") == "ruler.png" and plot.calls == [((results, "r.png"), {})]
  # without --lengths: the trained length times 1, 2, 4, 8
  recorder.calls.clear()
  TASKS["ruler"].run(run, TaskOptions())
  assert [args[3] for args, _ in recorder.calls] == [[n] for _ in names for n in (32, 64, 128, 256)]
