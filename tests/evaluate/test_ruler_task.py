"""`python -m longjax.evaluate --task ruler` adapts a run to `ruler.evaluate_ruler`: scores per task and length,
cells too short for a task's template left empty and named."""

import dataclasses

from longjax.config import Config
from longjax.data import ByteTokenizer
from longjax.evaluate import ruler
from longjax.evaluate.tasks import TASKS, EvalRun, TaskOptions


@dataclasses.dataclass
class _AnswerKey(EvalRun):
  """A 'model' that answers every prompt with the words it was asked for (read back from the samples)."""

  answers: dict = dataclasses.field(default_factory=dict)

  def generate(self, prompts, max_new_tokens):
    return [" ".join(self.answers.get(p, [])) for p in prompts]


def test_ruler_task_scores_every_task_and_names_what_did_not_fit(monkeypatch):
  run = _AnswerKey(Config(), {"byte": Config()}, tokenizer=ByteTokenizer())
  real = ruler.generate_sample

  def remembering(task, **kwargs):
    sample = real(task, **kwargs)
    run.answers[sample.input] = sample.outputs
    return sample

  monkeypatch.setattr(ruler, "generate_sample", remembering)
  report = TASKS["ruler"].run(run, TaskOptions(lengths=(64, 3000), trials=1))
  scores = report.results["scores"]
  assert set(scores) == set(ruler.TASKS)
  assert all(scores[task]["3000"] == 1.0 for task in ruler.TASKS), scores
  assert all("64" not in scores[task] for task in ruler.TASKS)
  assert len(report.results["skipped"]) == len(ruler.TASKS) and "at 64" in report.results["skipped"][0]
  assert "niah_single_1" in report.table and "100%" in report.table
