"""`longjax.load(workdir)`: a training run's model, ready in a notebook, on one device or sharded over a mesh.

  run = longjax.load("gs://bucket/run")  # float32, on this process's first device
  # each device restores only its block of each parameter, in bfloat16
  run = longjax.load(workdir, mesh=sharding.make_mesh(MeshConfig(data=1, fsdp=-1)), dtype="bfloat16")
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from longjax import checkpoint, sharding
from longjax.config import Config
from longjax.data import get_tokenizer
from longjax.inference.generate import generate as _generate
from longjax.nn import Llama


@dataclasses.dataclass
class LoadedModel:
  """A restored model: `config`, `params`, `model`, `tokenizer`, `step`, and `logits`/`generate` helpers, which
  run under `mesh` (the parameters' mesh; None: one device)."""

  config: Config
  params: dict
  model: Llama
  tokenizer: object
  step: int
  mesh: jax.sharding.Mesh | None = None

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self.tokenizer.encode(text, bos=self.config.data.add_bos), np.int32)

  def _tokens(self, inputs) -> jax.Array:
    if isinstance(inputs, str):
      inputs = [inputs]
    if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str):
      rows = [self.encode(text) for text in inputs]
      if len({len(r) for r in rows}) != 1:
        raise ValueError("logits/generate: texts of a batch must tokenize to the same length; pass them one by one")
      return jnp.asarray(np.stack(rows))
    tokens = jnp.asarray(inputs, jnp.int32)
    return tokens[None] if tokens.ndim == 1 else tokens

  def logits(self, inputs: str | Sequence[str] | Sequence[int] | np.ndarray, positions=None) -> jax.Array:
    """float32 [B, T, vocab] for text(s) or token ids [T] / [B, T]: one compiled forward per length bucket."""
    tokens = self._tokens(inputs)
    length = tokens.shape[1]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens.shape)
    positions = jnp.broadcast_to(jnp.asarray(positions, jnp.int32), tokens.shape)
    # The length dynamic positional methods read is the real one, not the padded buffer's.
    seq_len = jnp.max(positions) + 1
    padded = length_bucket(length)
    tokens = jnp.pad(tokens, [(0, 0), (0, padded - length)])
    positions = jnp.pad(positions, [(0, 0), (0, padded - length)], mode="edge")
    with sharding.use_mesh(self.mesh):
      return sharding.fetchable(_logits(self.model, self.params, tokens, positions, seq_len)[:, :length])

  def generate(self, prompt: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | np.ndarray,
               max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               stop_at_eos: bool = True, **kwargs):
    """Text in -> text out (a list of texts of any lengths -> a list of texts); token ids in (one list, a list of
    lists of any lengths, or [B, P]) -> int32 [B, max_new_tokens]. Decoding stops at the tokenizer's eos unless
    `stop_at_eos=False`; other keywords go to `longjax.inference.generate`."""
    texts = [prompt] if isinstance(prompt, str) else list(prompt) if (
        isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], str)) else None
    prompts = [self.encode(text) for text in texts] if texts is not None else prompt
    stop = (self.tokenizer.eos_id,) if stop_at_eos else ()
    with sharding.use_mesh(self.mesh):
      tokens = _generate(self.model, self.params, prompts, max_new_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, seed=seed, stop_tokens=stop, pad_id=self.tokenizer.pad_id, **kwargs)
    if texts is None:
      return tokens
    decoded = [self.tokenizer.decode(row) for row in np.asarray(tokens).tolist()]
    return decoded[0] if isinstance(prompt, str) else decoded


def length_bucket(length: int) -> int:
  """The padded length a forward of `length` tokens compiles for: exact up to 64, else rounded up to an eighth of
  the power of two at or below it (at most 12.5% padding, eight compiled shapes per doubling of length)."""
  if length <= 64:
    return length
  step = 1 << (length.bit_length() - 4)
  return -(-length // step) * step


@functools.partial(jax.jit, static_argnames=("model",))
def _logits(model: Llama, params, tokens, positions, seq_len):
  """The whole-sequence forward, compiled once per (model, shape). Padding sits after every real token, which
  a causal model's real positions never read; `seq_len` is the real length."""
  return model.apply({"params": params}, tokens, positions, seq_len=seq_len)


def load(workdir: str, step: int | None = None, *, mesh: jax.sharding.Mesh | None = None,
         dtype: str | jnp.dtype | None = None) -> LoadedModel:
  """Restore the parameters of `step` (newest by default) of the run in `workdir` (any epath: local, gs://).

  Without `mesh`, onto this process's first device; with one, each parameter cut over `mesh` by its logical axes
  (`sharding.tree_shardings`, as training cuts it), each device reading only its own block. `dtype` (e.g.
  "bfloat16") casts the floating parameters as they are read, block by block: no float32 copy of the model is
  made. In a multi-process run every process calls it with the same global mesh.
  """
  config = checkpoint.read_config(workdir)
  step, params = checkpoint.restore_model_params(workdir, config.model, step, mesh=mesh, dtype=dtype)
  return LoadedModel(config, params, Llama(config.model), get_tokenizer(config.data), step, mesh)
