"""longjax: extending the context window of LLaMA-family models in JAX/Flax.

`longjax.load(workdir)` opens a training run's checkpoint in a notebook.
"""

__version__ = "0.1.0"


def load(workdir: str, step: int | None = None):
  """The model of a training run: `.config`, `.params`, `.model`, `.tokenizer`, `.logits(...)`, `.generate(...)`."""
  from longjax.inference.loaded import load as _load  # deferred: `import longjax` stays cheap

  return _load(workdir, step)
