"""Perplexity against length of a trained run, optionally with another positional method.

  python -m longjax.evaluate --workdir /tmp/tiny
  python -m longjax.evaluate --workdir /tmp/tiny --config configs/tiny.py:rope=yarn --name yarn_x4

With --config, the run's weights are evaluated with that config's `model.rope`,
`model.attention` and `eval` sections (training-free extension); shapes stay the run's.
Writes WORKDIR/eval/perplexity_<name>.json and .png.
"""

import dataclasses
import os

from absl import flags

from longjax import cli, load
from longjax.config import from_config_dict
from longjax.evaluate import eval_documents, evaluate_perplexity, plot_perplexity_vs_length, write_results

_CONFIG = cli.define_config_flag("config", "Optional config whose rope/attention/eval sections apply.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; the newest by default.")
_NAME = flags.DEFINE_string("name", None, "Name of this evaluation (default: the rope_type).")


def main(argv):
  del argv
  run = load(_WORKDIR.value, _STEP.value)
  config = run.config
  if _CONFIG.value is not None:
    override = from_config_dict(_CONFIG.value)
    model = dataclasses.replace(config.model, rope=override.model.rope, attention=override.model.attention)
    config = dataclasses.replace(config, model=model, eval=override.eval)
  name = _NAME.value or config.model.rope.rope_type
  documents = eval_documents(config.data, config.eval.max_documents, min_tokens=min(config.eval.lengths) + 1,
                             max_tokens=config.eval.max_document_tokens)
  results = {name: evaluate_perplexity(config, run.params, documents)}
  out = os.path.join(_WORKDIR.value, "eval", f"perplexity_{name}")
  write_results(results, out + ".json")
  plot_perplexity_vs_length(results, out + ".png", trained_length=run.config.train.seq_len)
  for r in results[name]:
    print(f"{name} length {r.length}: perplexity {r.perplexity:.4f} over {r.tokens} tokens of {r.documents} documents")


if __name__ == "__main__":
  cli.run(main)
