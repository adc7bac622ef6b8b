"""The evaluation tasks through `tasks.TASKS`, with the byte, SentencePiece and tokenizer.json tokenizers: a model
that reads the answer off the prompt scores 100% on every task, a model with one fixed answer its expected
fraction, and generation stops at EOS with the answer cut there."""

import dataclasses
import re

import numpy as np
import pytest

from longjax.config import Config
from longjax.data import ByteTokenizer
from longjax.evaluate import passkey, ruler
from longjax.evaluate.tasks import TASKS, EvalRun, TaskOptions

TOKENIZERS = ["byte", "sentencepiece", "tokenizer.json"]


def _key(prompt: str) -> str:
  return re.search(r"The pass key is (\d+)\. Remember it", prompt).group(1)


def test_generation_stops_at_eos_and_the_answer_is_cut_there(monkeypatch):
  """Defect: tasks generated past EOS and decoding dropped it, so "4213<EOS>17" read as 421317."""
  tokenizer = ByteTokenizer()

  def model_says_key_eos_then_more(model, params, prompts, max_new_tokens, **kwargs):
    rows = [tokenizer.encode(f" {_key(tokenizer.decode(p))}") + [tokenizer.eos_id] + tokenizer.encode("17")
            for p in prompts]
    return np.asarray([(row + [tokenizer.eos_id] * max_new_tokens)[:max_new_tokens] for row in rows], np.int32)

  monkeypatch.setattr("longjax.inference.loaded._generate", model_says_key_eos_then_more)
  run = EvalRun(Config(), {"byte": Config()}, params=None, tokenizer=tokenizer)
  assert run.generate(["The pass key is 4213. Remember it."], 12) == [" 4213"]
  assert run.generate([tokenizer.encode("The pass key is 4213. Remember it.", bos=True)], 12) == [
      tokenizer.encode(" 4213")]
  report = TASKS["passkey"].run(run, TaskOptions(lengths=(512,), depths=(0.0, 1.0), trials=3))
  assert report.results["mean_accuracy"] == 1.0


@dataclasses.dataclass
class _Model(EvalRun):
  """A run whose 'model' answers with answer(prompt text) (token prompts: the answer's tokens in context)."""

  answer: object = None

  def generate(self, prompts, max_new_tokens):
    if isinstance(prompts[0], str):
      return [self.answer(p) for p in prompts]
    rows = []
    for p in prompts:
      text = self.tokenizer.decode(p)
      full = self.tokenizer.encode(text + self.answer(text), bos=True)
      common = next(i for i, (a, b) in enumerate(zip(list(p) + [-1], full)) if a != b)
      rows.append(full[common:][:max_new_tokens])
    return rows


def _run(tokenizer, answer):
  return _Model(Config(), {"test": Config()}, tokenizer=tokenizer, answer=answer)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_passkey_reader_and_guesser(tokenizers, name):
  options = TaskOptions(lengths=(400, 800), depths=(0.0, 0.5, 1.0), trials=4)
  report = TASKS["passkey"].run(_run(tokenizers[name], lambda p: f" {_key(p)}. Remember"), options)
  assert report.results["accuracy"] == [[1.0] * 3] * 2
  seen = []
  guesser = _run(tokenizers[name], lambda p: seen.append(int(_key(p))) or " 7.")
  report = TASKS["passkey"].run(guesser, dataclasses.replace(options, digits=1, trials=30))
  assert report.results["mean_accuracy"] == pytest.approx(np.mean([k == 7 for k in seen]))
  assert 0 < report.results["mean_accuracy"] < 0.5


@pytest.mark.parametrize("name", TOKENIZERS)
def test_gkamradt_reader_and_half_answer(tokenizers, name):
  options = TaskOptions(lengths=(1024, 2048), depths=(0.0, 0.5, 1.0))
  reader = lambda p: re.search(r"\nThe best thing to do in San Francisco is ([^\n]+)\n", p).group(1)  # noqa: E731
  assert TASKS["needle_gkamradt"].run(_run(tokenizers[name], reader), options).results["mean_accuracy"] == 1.0
  half = TASKS["needle_gkamradt"].run(_run(tokenizers[name], lambda p: " Dolores Park."), options)
  assert half.results["accuracy"] == [[0.5] * 3] * 2  # one of the needle's two facts


@pytest.mark.parametrize("name", TOKENIZERS)
def test_ruler_reader_scores_every_task_and_a_fixed_answer_its_expected_share(tokenizers, name, monkeypatch):
  samples = {}
  real = ruler.generate_sample

  def remembering(task, **kwargs):
    sample = real(task, **kwargs)
    samples[sample.input] = (task, sample.outputs)
    return sample

  monkeypatch.setattr(ruler, "generate_sample", remembering)
  options = TaskOptions(lengths=(3000,), trials=2)
  reader = _run(tokenizers[name], lambda p: " " + ", ".join(samples[p][1]))
  scores = TASKS["ruler"].run(reader, options).results["scores"]
  assert scores == {task: {"3000": 1.0} for task in ruler.TASKS}
  fixed_answer = " 1234567, " + ", ".join(next(iter(samples.values()))[1])  # right for some samples at most
  samples.clear()
  report = TASKS["ruler"].run(_run(tokenizers[name], lambda p: fixed_answer), options)
  for task in ruler.TASKS:
    expected = np.mean([ruler.score(task, fixed_answer.strip(), outputs) for t, outputs in samples.values()
                        if t == task])
    assert report.results["scores"][task]["3000"] == pytest.approx(expected)
  assert report.results["skipped"] == []


def test_passkey_prompts_take_the_whole_length_when_the_tokenizer_allows(tokenizers):
  for name in TOKENIZERS:
    count = lambda text: len(tokenizers[name].encode(text, bos=True))  # noqa: E731
    for length in (300, 777, 2048):
      n = passkey.fit_characters(lambda n: passkey.passkey_prompt(50000, n, 0.5), count, length, 16 * length)
      assert count(passkey.passkey_prompt(50000, n, 0.5)) == length, (name, length)
