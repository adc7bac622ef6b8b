"""Evaluation tasks during training: `eval.tasks` run every `train.eval_every` steps into metrics.jsonl."""

from train.conftest import read_metrics

from longjax.config import EVAL_TASKS
from longjax.evaluate.tasks import TASKS
from longjax.train.loop import train_and_evaluate


def test_config_allows_exactly_the_registered_tasks():
  assert set(EVAL_TASKS) == set(TASKS)


def test_passkey_and_ruler_scores_land_in_the_metrics(runner, tmp_path):
  config = runner.config({"train.num_steps": 2, "train.eval_every": 2, "train.eval_batches": 1,
                          "eval.tasks": ("passkey", "ruler"), "eval.task_lengths": (1200,), "eval.task_trials": 1})
  train_and_evaluate(config, str(tmp_path))
  last = read_metrics(tmp_path)[-1]
  assert last["step"] == 2 and "eval_loss" in last
  assert 0.0 <= last["eval/passkey_accuracy_1200"] <= 1.0 and last["eval/passkey_accuracy"] == \
      last["eval/passkey_accuracy_1200"]
  assert 0.0 <= last["eval/ruler_1200"] <= 1.0
