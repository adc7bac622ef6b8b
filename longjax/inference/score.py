"""Per-token losses of a whole sequence, the forward that perplexity and loss-by-position run.

`token_nll(model, params, inputs, targets)` is one compiled call (per model and shape) that never holds
[B, T, vocab] logits: the LM head runs chunk by chunk (`ops.chunked_token_nll`), `model.loss_chunk` positions
at a time, or by default as many as keep one chunk's float32 logits under EVAL_LOGITS_BYTES. At 16K tokens and
SmolLM2's 49,152-token vocabulary the whole logits would take 3 GiB a sequence (12 GiB at 64K).
"""

import functools

import jax
import jax.numpy as jnp

from longjax.nn import Llama, lm_head_kernel
from longjax.ops import chunked_token_nll

# One chunk's float32 logits at most (at batch 1 and vocabulary 49,152: 682 positions a chunk).
EVAL_LOGITS_BYTES = 128 << 20


def eval_chunk(model: Llama, batch: int) -> int:
  """Positions a chunk: `model.loss_chunk` when set, else as many as fit EVAL_LOGITS_BYTES of logits."""
  return model.config.loss_chunk or max(1, EVAL_LOGITS_BYTES // (4 * batch * model.config.vocab_size))


@functools.partial(jax.jit, static_argnames=("model",))
def token_nll(model: Llama, params, inputs: jax.Array, targets: jax.Array, positions: jax.Array | None = None,
              seq_len: jax.Array | None = None) -> jax.Array:
  """float32[B, T]: -log p(targets[:, t] | inputs[:, :t + 1]), inputs and targets int32[B, T].

  positions int32[B, T] default to 0..T-1; `seq_len` (what dynamic positional methods read) defaults to
  max(positions) + 1; pass the real length when the inputs are padded.
  """
  hidden = model.apply({"params": params}, inputs, positions, seq_len=seq_len, hidden_only=True)
  return chunked_token_nll(hidden, lm_head_kernel(model.config, params), targets,
                           chunk=eval_chunk(model, inputs.shape[0]))
