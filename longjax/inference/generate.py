"""Generation with a cache: chunked prefill, then a compiled decode loop.

  tokens = generate(Llama(config), params, [[1, 5, 9], [1, 7]], 32, temperature=0.8, top_p=0.95)

Prompts of different lengths share one batch: each row is right-padded, its padding marked as
such (segment id 0) so that nothing of it is cached, and each row continues from its own length.
The prompt is read in chunks of `prefill_chunk` tokens, so a long prompt never materializes
[T, T] scores (the cached kernel walks key blocks). The decode loop is one `lax.while_loop`
under `jax.jit` with the cache donated; it stops early once every row has produced a stop token.

With an attention type that inserts tokens (`longjax.nn.attention.inserted_tokens`: landmark attention's
landmark after every `landmark_block` ordinary tokens), prompts get them before prefill, and each decode
step feeds the sampled token plus, when that token closes a block, the landmark (else the second slot is
padding); the next token is sampled from the landmark's logits, the landmark id is never sampled, and the
returned tokens hold no landmarks (the reference's `prepare_inputs_for_generation` inserts them the same way).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from longjax.config import ConfigError
from longjax.data import insert_landmarks
from longjax.inference import kv_policies
from longjax.nn import Llama, cache_lengths
from longjax.nn.attention import inserted_tokens
from longjax.ops import round_up
from longjax.sharding import fetchable

DEFAULT_PREFILL_CHUNK = 1024
_PROMPT_ROUNDING = 16  # prompt buffers grow in these steps, so nearby lengths share one compiled prefill


class GenerationError(ConfigError):
  """Arguments generation cannot run with (a main reports them in one line, exit status 2); the message names
  the argument (its flag has the same name), the value and what is allowed."""


def check_sampling(max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> None:
  """Raise GenerationError unless max_new_tokens >= 1, temperature >= 0, top_k >= 0 and 0 < top_p <= 1."""
  if not max_new_tokens >= 1:
    raise GenerationError(f"max_new_tokens={max_new_tokens} is invalid: must be >= 1")
  if not temperature >= 0.0:
    raise GenerationError(f"temperature={temperature} is invalid: must be >= 0 (0 is greedy)")
  if not top_k >= 0:
    raise GenerationError(f"top_k={top_k} is invalid: must be >= 0 (0 keeps every token)")
  if not 0.0 < top_p <= 1.0:
    raise GenerationError(f"top_p={top_p} is invalid: must be in (0, 1] (1 keeps every token)")


def check_cache_length(prompt_tokens: int, max_new_tokens: int, max_length: int | None) -> None:
  """Raise GenerationError when a prompt of `prompt_tokens` plus `max_new_tokens` does not fit a cache of
  `max_length` tokens (None: sized to fit)."""
  if max_length is not None and max_length < prompt_tokens + max_new_tokens:
    raise GenerationError(f"max_length={max_length} is too short: the prompt holds {prompt_tokens} tokens and "
                          f"max_new_tokens={max_new_tokens}; allowed: a cache of at least "
                          f"{prompt_tokens + max_new_tokens} tokens, or a shorter prompt")


def pad_prompts(prompts, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(tokens int32[B, P] right-padded, lengths int32[B]) from a list of token lists, an array [B, P] or one list."""
  if isinstance(prompts, (np.ndarray, jax.Array)):
    array = np.asarray(prompts, np.int32)
    array = array[None] if array.ndim == 1 else array
    return array, np.full((array.shape[0],), array.shape[1], np.int32)
  prompts = list(prompts)
  if prompts and np.ndim(prompts[0]) == 0:  # one prompt given as a flat list of ids
    prompts = [prompts]
  rows = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
  if not rows or min(len(r) for r in rows) == 0:
    raise GenerationError("prompt: every prompt needs at least one token; allowed: non-empty prompts (text that "
                          "tokenizes to at least one token, or token ids)")
  lengths = np.asarray([len(r) for r in rows], np.int32)
  tokens = np.full((len(rows), int(lengths.max())), pad_id, np.int32)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
  return tokens, lengths


def sample_logits(logits: jax.Array, rng: jax.Array, *, temperature: float = 0.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """int32[B] from logits float32[B, V]: greedy at temperature 0, else softmax(logits / temperature) restricted
  to the top_k most likely tokens (0: all) and to the smallest set whose probability reaches top_p (nucleus)."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked above each one
    kept = jnp.where(before < top_p, ordered, jnp.inf)  # the first token is always kept
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model",), donate_argnames=("cache",))
def _prefill_chunk(model: Llama, params, cache, tokens, valid, last_logits):
  """Read one chunk [B, C]; keep each row's logits at its last real token (rows with none keep theirs)."""
  counts = jnp.sum(valid, axis=1, dtype=jnp.int32)
  logits, cache = model.apply({"params": params}, tokens, segment_ids=valid.astype(jnp.int32), cache=cache,
                              logits_at=jnp.maximum(counts - 1, 0))
  return cache, jnp.where(counts[:, None] > 0, logits, last_logits)


def prefill(model: Llama, params, cache, tokens, lengths, *, chunk: int = DEFAULT_PREFILL_CHUNK):
  """Read prompts tokens int32[B, P] (row b's first lengths[b] tokens are real) into the cache, `chunk` tokens at a
  time -> (logits float32[B, vocab] at each row's last prompt token, cache)."""
  tokens, lengths = np.asarray(tokens, np.int32), np.asarray(lengths, np.int32)
  width = round_up(tokens.shape[1], _PROMPT_ROUNDING) if tokens.shape[1] <= chunk else chunk
  padded = round_up(tokens.shape[1], width)
  tokens = np.pad(tokens, [(0, 0), (0, padded - tokens.shape[1])])
  valid = np.arange(padded)[None, :] < lengths[:, None]
  logits = jnp.zeros((tokens.shape[0], model.config.vocab_size), jnp.float32)
  for start in range(0, padded, width):
    part = valid[:, start:start + width]
    if not part.any():
      break
    cache, logits = _prefill_chunk(model, params, cache, jnp.asarray(tokens[:, start:start + width]),
                                   jnp.asarray(part), logits)
  return logits, cache


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k", "top_p"),
                   donate_argnames=("cache",))
def _decode(model: Llama, params, cache, logits, rng, stop_tokens, pad_id, *, max_new_tokens: int,
            temperature: float, top_k: int, top_p: float):
  """Sample token 0 from the prefill logits, then feed each token and sample the next; int32[B, max_new_tokens]."""
  batch = logits.shape[0]
  inserted = inserted_tokens(model.config)

  def sample(logits, key):
    if inserted is not None:  # generation inserts these tokens itself
      logits = logits.at[:, inserted.token_id].set(-jnp.inf)
    return sample_logits(logits, key, temperature=temperature, top_k=top_k, top_p=top_p)

  def emit(i, logits, rng, out, done):
    rng, key = jax.random.split(rng)
    token = jnp.where(done, pad_id, sample(logits, key))
    out = jax.lax.dynamic_update_index_in_dim(out, token, i, axis=1)
    return token, rng, out, done | jnp.isin(token, stop_tokens)

  out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
  token, rng, out, done = emit(0, logits, rng, out, jnp.zeros((batch,), bool))

  def cond(carry):
    i, _, _, _, _, done = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    i, cache, token, rng, out, done = carry
    if inserted is None:
      logits, cache = model.apply({"params": params}, token[:, None],
                                  segment_ids=(~done)[:, None].astype(jnp.int32), cache=cache)
      logits = logits[:, 0]
    else:  # the token, then the landmark where the token closes a block (slot % (block + 1) == block - 1)
      block, landmark_id = inserted
      closes = (cache_lengths(cache) % (block + 1) == block - 1) & ~done
      tokens = jnp.stack([token, jnp.full_like(token, landmark_id)], axis=1)
      segment_ids = jnp.stack([~done, closes], axis=1).astype(jnp.int32)
      logits, cache = model.apply({"params": params}, tokens, segment_ids=segment_ids, cache=cache,
                                  logits_at=closes.astype(jnp.int32))
    token, rng, out, done = emit(i, logits, rng, out, done)
    return i + 1, cache, token, rng, out, done

  carry = jax.lax.while_loop(cond, body, (jnp.int32(1), cache, token, rng, out, done))
  return carry[4], carry[1]


def generate(model: Llama, params, prompts, max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, stop_tokens: Sequence[int] = (), seed: int = 0, pad_id: int = 0,
             max_length: int | None = None, prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
             cache_dtype=None, return_cache: bool = False, kv_policy: str = "full", kv_budget: int | None = None,
             kv_options: dict | None = None):
  """int32[B, max_new_tokens] continuing each prompt (a list of token lists of any lengths, or int[B, P]).

  temperature 0 is greedy; after a row emits one of `stop_tokens` its remaining tokens are `pad_id`.
  The cache holds `max_length` tokens (default: the longest prompt plus max_new_tokens, plus the landmarks
  landmark attention inserts); the sliding and infini types keep constant memory whatever it is.
  `kv_policy` compresses a full-attention cache (`longjax.inference.kv_policies`: streaming, h2o, snapkv with
  `kv_budget` tokens per layer, int8, int4; `kv_options` the entry's own, e.g. {"window": 16} for snapkv).
  """
  check_sampling(max_new_tokens, temperature, top_k, top_p)
  tokens, lengths = pad_prompts(prompts, pad_id)
  inserted = inserted_tokens(model.config)
  new_slots = max_new_tokens
  if inserted is not None:
    tokens, lengths = pad_prompts([insert_landmarks(row[:n], *inserted) for row, n in zip(tokens, lengths)], pad_id)
    new_slots += max_new_tokens // inserted.every + 1
  check_cache_length(int(lengths.max()), new_slots, max_length)  # with landmark attention, the landmarks count
  max_length = int(lengths.max()) + new_slots if max_length is None else max_length
  policy = kv_policies.make_policy(kv_policy, kv_budget, max_length, **(kv_options or {}))
  cache = kv_policies.init_cache(model.config, tokens.shape[0], max_length, cache_dtype, policy)
  logits, cache = prefill(model, params, cache, tokens, lengths, chunk=prefill_chunk)
  out, cache = _decode(model, params, cache, logits, jax.random.key(seed), jnp.asarray(list(stop_tokens) or [-1],
                                                                                          jnp.int32),
                       jnp.int32(pad_id), max_new_tokens=max_new_tokens, temperature=float(temperature),
                       top_k=int(top_k), top_p=float(top_p))
  out = fetchable(out)  # over a mesh that spans processes: the tokens, on every process
  return (out, cache) if return_cache else out
