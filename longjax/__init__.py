"""longjax: extending the context window of LLaMA-family models in JAX/Flax.

`longjax.load(workdir)` opens a training run's checkpoint in a notebook.
"""

__version__ = "0.1.0"


def load(workdir: str, step: int | None = None, *, mesh=None, dtype=None):
  """The model of a training run: `.config`, `.params`, `.model`, `.tokenizer`, `.logits(...)`, `.generate(...)`;
  with `mesh`, its parameters cut over the mesh, and with `dtype` ("bfloat16"), cast as they are read."""
  from longjax.inference.loaded import load as _load  # deferred: `import longjax` stays cheap

  return _load(workdir, step, mesh=mesh, dtype=dtype)
