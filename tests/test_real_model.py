"""The real-model experiment's own logic on small inputs: methods keep the model's rope, cells are computed once,
and the report's conclusions and tables come from the cells (missing cells are named, never filled in)."""

import dataclasses
import json

import pytest

from longjax import real_model
from longjax.config import Config, ModelConfig, RopeConfig
from longjax.evaluate.extension import BASELINE


def _trained(theta=1e5, length=64) -> Config:
  return Config(model=ModelConfig(max_position_embeddings=length, rope=RopeConfig(rope_theta=theta)))


def test_every_method_keeps_the_models_rope_theta_and_trained_length():
  methods = real_model.training_free_methods(_trained())
  assert len(methods) == 9
  for name, config in methods.items():
    rope = config.model.rope
    assert rope.rope_theta == 1e5, name
    assert config.model.max_position_embeddings == 2 * 64
    if rope.rope_type in ("yarn", "dynamic_yarn", "dynamic"):
      assert rope.original_max_position_embeddings == 64, name
  assert methods["YaRN x2"].model.rope.factor == 2.0
  assert methods["Self-Extend G4"].model.attention.type == "self_extend"


def test_finetune_config_spans_twice_the_length_with_pose():
  config = real_model.finetune_config(_trained(), "yarn", "/m", "/text", steps=3, window=16)
  assert config.data.pose_target_length == 128 and config.train.seq_len == 16
  assert config.model.rope == dataclasses.replace(_trained().model.rope, rope_type="yarn", factor=2.0,
                                                  original_max_position_embeddings=64)
  assert config.train.init_from == "/m" and config.train.weight_decay == 0.0


def test_a_cell_is_computed_once(tmp_path):
  calls = []
  compute = lambda: calls.append(1) or {"value": 3}  # noqa: E731
  first = real_model.cell(str(tmp_path), "x", compute)
  second = real_model.cell(str(tmp_path), "x", compute)
  assert calls == [1] and first == second and first["value"] == 3 and "seconds" in first


def test_ruler_cells_of_other_seeds_hold_other_prompts_and_pool():
  """A second RULER run must add new prompts (another seed, another cell), never recount the first run's."""
  from longjax.evaluate import ruler
  from longjax.data.tokenizer import ByteTokenizer
  base = dict(documents={}, loss_length=128, passkey_lengths=(), depths=(0.5,), keys=1, ruler_lengths=(4096,),
              ruler_samples=2, tasks=("ruler",))
  first, second = real_model.Settings(**base), real_model.Settings(**base, ruler_seed=1)
  assert real_model.ruler_key(4096, first) == "ruler_niah_single_1_4096_s2"
  assert real_model.ruler_key(4096, second) == "ruler_niah_single_1_4096_s2_seed1"
  prompts = {}
  for seed in (0, 1):
    calls = []
    ruler.evaluate_ruler(lambda batch, n: calls.extend(batch) or [""] * len(batch), ByteTokenizer(), ["niah_single_1"], [1024],
                         samples=2, seed=seed)
    prompts[seed] = calls
  assert len(prompts[0]) == 2 and not set(prompts[0]) & set(prompts[1])
  summary = real_model.summarize(["m"], {"m": {"ruler_niah_single_1_4096_s2": {"accuracy": 1.0, "samples": 2},
                                               "ruler_niah_single_1_4096_s2_seed1": {"accuracy": 0.5, "samples": 2}}},
                                 2048, 4096, [])
  assert summary["m"]["ruler"] == {"4096": 0.75} and summary["m"]["ruler_prompts"] == {"4096": 4}


def _curve(losses, length=128):
  step = length // len(losses)
  return {"length": length, "starts": [1 + i * step for i in range(len(losses))],
          "ends": [1 + (i + 1) * step for i in range(len(losses))], "loss": losses, "documents": 1, "seconds": 1.0}


@pytest.mark.parametrize("rising", [True, False])
def test_report_conclusions_come_from_the_cells(tmp_path, rising):
  cells = tmp_path / "cells"
  baseline_loss = [2.0, 2.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0] if rising else [2.0] * 8
  for name, losses in ((BASELINE, baseline_loss), ("YaRN x2", [2.0] * 6 + [2.1, 2.1]), ("Dynamic NTK", [3.0] * 8)):
    folder = cells / real_model.slug(name)
    folder.mkdir(parents=True)
    (folder / "loss_topics_128.json").write_text(json.dumps(_curve(losses)))
  yarn = cells / real_model.slug("YaRN x2")
  (yarn / "passkey_64_d0.1-0.9_k1.json").write_text(json.dumps({"accuracy": [[1.0, 0.0]], "depths": [0.1, 0.9],
                                                                "trials": 1}))
  (yarn / "passkey_64_d0.5_k2.json").write_text(json.dumps({"accuracy": [[1.0]], "depths": [0.5], "trials": 2}))
  settings = real_model.Settings(documents={"topics": ""}, loss_length=128, passkey_lengths=(64,), depths=(0.5,),
                                 keys=1, ruler_lengths=(), ruler_samples=1, tasks=("loss",))
  (tmp_path / "notes.md").write_text("## What the runs show\n\nwritten by hand\n")
  path = real_model.write_report(str(tmp_path), str(cells), _trained(), [BASELINE, "YaRN x2", "PI x2", "Dynamic NTK"],
                                 settings,
                                 {"setup": "setup"})
  report = open(path).read()
  results = json.loads((tmp_path / "results.json").read_text())
  text = " ".join(results["conclusions"])
  assert ("loss rises" in text) == rising
  assert "YaRN x2" in text.split("Within")[1].split("(change")[0]  # +0.1 nats: within 0.15
  # flat (+0.0) but a nat above plain RoPE inside the window: not an extension, and said so
  assert "Dynamic NTK" not in text.split("Within")[1].split("(change")[0]
  assert "worse than plain RoPE inside it (nats above RoPE's 1-64 loss): Dynamic NTK +1.00." in text
  assert "| Dynamic NTK | 1 | 3.000 | 3.000 | 3.000 | 3.000 | +0.000 | +0.000 | +1.000 |" in report
  assert results["summary"]["YaRN x2"]["passkey"] == {"64": 0.75}  # both cells pooled: 3 of 4 prompts
  assert "| PI x2 | not run |" in report and "Not run yet: PI x2" in report
  assert "| YaRN x2 | 75% (3/4) |" in report and f"| {BASELINE} | not run |" in report
  assert (tmp_path / "loss_by_position_topics.png").stat().st_size > 0
  assert report.rstrip().endswith("## What the runs show\n\nwritten by hand")  # the hand-written notes, last


def test_the_kv_compression_table_and_plot_join_the_report(tmp_path):
  from longjax.config import ConfigError
  from longjax.real_model import kv_compression

  cells, report_dir, kv_dir = tmp_path / "cells", tmp_path / "docs" / "real_model", tmp_path / "docs" / "kv"
  cells.mkdir()
  settings = real_model.Settings(documents={"topics": ""}, loss_length=128, passkey_lengths=(64,), depths=(0.5,),
                                 keys=1, ruler_lengths=(), ruler_samples=1, tasks=("loss",))
  with pytest.raises(ConfigError, match=r"^--kv_dir=.*/kv: no summary.md there; build it with"):
    real_model.write_report(str(report_dir), str(cells), _trained(), [BASELINE], settings, {}, str(kv_dir))
  assert not report_dir.exists()  # nothing written
  kv_dir.mkdir(parents=True)
  report_dir.mkdir(parents=True)
  (kv_dir / kv_compression.SUMMARY).write_text("| method | x |\n|---|---|\n| int8 | 1/1 |\n\n![p](kv_compression.png)\n")
  report = open(real_model.write_report(str(report_dir), str(cells), _trained(), [BASELINE], settings, {},
                                        str(kv_dir))).read()
  section = report.split("## KV-cache compression")[1].split("\n## ")[0]
  assert "| int8 | 1/1 |" in section and "![p](../kv/kv_compression.png)" in section  # relative to the report
  assert "[../kv/report.md](../kv/report.md)" in section


PARTS_AGAIN = ("import", "free", "finetune", "report")


def test_the_whole_job_on_a_tiny_gguf(tmp_path):
  """Import (with parity against transformers), two training-free methods, both fine-tunes, the report: the real
  path end to end on a 2-layer random model trained for 64 tokens; rerunning computes nothing again."""
  from gguf_reference import byte_level_vocab, write_gguf
  from hf_reference import tiny_hf_llama

  tokens, merges = byte_level_vocab()
  model = tiny_hf_llama(tmp_path / "hf", vocab_size=len(tokens), hidden_size=64, intermediate_size=160, num_heads=4,
                        num_kv_heads=2, tie=True, max_position_embeddings=64)
  gguf = tmp_path / "tiny.gguf"
  write_gguf(gguf, model, tokens, merges, context_length=64)
  documents = real_model.documents()
  settings = real_model.Settings(documents={"topics": documents["topics"]}, loss_length=128, passkey_lengths=(),
                                 depths=(0.5,), keys=1, ruler_lengths=(), ruler_samples=1, tasks=("loss",))
  out, cells = tmp_path / "out", tmp_path / "cells"
  methods = [BASELINE, "YaRN x2"]
  args = (str(out), ("import", "free", "finetune", "report"), settings, methods, str(cells), 2, 32, str(gguf))
  path = real_model.run(*args)
  results = json.loads((out / "results.json").read_text())
  assert results["parity"]["token_ids_equal"] and results["parity"]["max_abs_diff"] < 1e-3
  assert results["trained_length"] == 64
  assert set(results["summary"]) == {*methods, *real_model.FINETUNE_METHODS}
  for name, summary in results["summary"].items():
    assert summary["loss_documents"] == 1 and len(summary["loss_bands"]) == 4, name
  assert set(results["finetune_seconds"]) == set(real_model.FINETUNE_METHODS)
  assert (cells / "parts.json").is_file()
  report = open(path).read()
  assert "| YaRN x2 fine-tuned | 1 |" in report and "![loss by position, topics]" in report
  written = sorted(p.name for p in cells.rglob("*.json"))
  # Every cell is on disk: a fresh workdir recomputes nothing and trains nothing (the model is imported again).
  again = tmp_path / "again"
  real_model.run(str(again), PARTS_AGAIN, *args[2:7], str(gguf), str(tmp_path / "report"))
  assert sorted(p.name for p in cells.rglob("*.json")) == written
  assert not (again / "finetune_yarn").exists()
  assert json.loads((tmp_path / "report" / "results.json").read_text())["summary"] == results["summary"]
  # New cells asked of finished fine-tunes evaluate them as they are: no training again (nor a resume).
  fresh = tmp_path / "fresh_cells"
  real_model.run(str(out), ("free", "finetune"), *args[2:4], str(fresh), 2, 32, str(gguf))
  tuned = {p.parent.name for p in fresh.rglob("loss_*.json")}
  assert tuned >= {real_model.slug(name) for name in real_model.FINETUNE_METHODS}, tuned
  assert "finetune_seconds" not in json.loads((fresh / "parts.json").read_text())
  # The report says how many steps were trained, not what a later run's --finetune_steps says.
  later = real_model.run(str(out), ("report",), *args[2:5], 30, 32, str(gguf), str(tmp_path / "later"))
  assert "Fine-tuning: 2 steps of 32-token rows" in open(later).read()


@pytest.mark.parametrize("flag", ["--parts=import,bogus", "--tasks=loss,perplexity", "--documents=essays",
                                  "--depths=half"])
def test_bad_flags_are_one_line_and_exit_2(flag, tmp_path):
  import subprocess
  import sys

  proc = subprocess.run([sys.executable, "-m", "longjax.real_model", f"--workdir={tmp_path}", flag],
                        capture_output=True, text=True, timeout=120)
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 2 and len(lines) == 1 and flag.split("=")[0] in lines[0], proc.stderr[-2000:]
