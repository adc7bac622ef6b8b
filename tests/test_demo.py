"""`make demo` end to end, shrunk: every stage runs, report.md has its tables and figures, and each number in
its conclusion sentences is one of results.json's."""

import json
import os
import re

from longjax import demo


def test_demo_end_to_end(tmp_path):
  settings = demo.DemoSettings(pretrain_steps=3, finetune_steps=2, passkey_trials=1, depths=(0.5,), factors=(1, 2),
                               perplexity=False, warmup_steps=2)
  returned = demo.run_demo(str(tmp_path), settings)
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  assert results["conclusions"] == returned["conclusions"] == demo.conclusions(results)
  report = (tmp_path / "report.md").read_text()
  for sentence in results["conclusions"]:
    assert f"- {sentence}" in report
  assert report.count("| method |") == 4  # passkey and loss-by-position tables, training-free and fine-tuned
  for name in ["loss.png", "loss_by_position_training_free.png", "loss_by_position_finetuned.png",
               *[f"passkey_training_free_{i}.png" for i in range(len(demo.demo_methods(256, 2.0)))],
               *[f"passkey_finetuned_{i}.png" for i in range(3)]]:
    assert os.path.getsize(tmp_path / name) > 0, name
    assert f"]({name})" in report, name

  groups = [results["training_free"], results["finetuned"]]
  accuracies = {f"{100 * a:.0f}%" for g in groups for r in g.values() for a in r["passkey"]["by_length"]}
  accuracies.add(f"{100 / (9 * 10 ** (results['digits'] - 1)):.0f}%")  # chance
  losses = {f"{r['loss_by_position']['loss'][-1]:.2f}" for g in groups for r in g.values()}
  text = " ".join(results["conclusions"])
  assert set(re.findall(r"\d+%", text)) <= accuracies
  found = re.findall(r"(\d+\.\d\d) (?:nats|for)", text)
  assert len(found) == 4 and set(found) <= losses
  for group, reference in zip(groups, [demo.BASELINE, demo.CONTROL]):
    last = {name: r["loss_by_position"]["loss"][-1] for name, r in group.items()}
    best = min(last, key=last.get)
    assert f"{best} had the lowest loss, {last[best]:.2f} nats, " in text
