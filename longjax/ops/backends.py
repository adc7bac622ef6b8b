"""Attention through library kernels: XLA's fused softmax, cuDNN flash attention, Pallas TPU splash.

Each takes q [B, T, H, D], k/v [B, S, Hkv, D] and the mask rule of `reference.attention_mask`.
`*_native` says whether a kernel can take the mask without materializing it; where it cannot,
the kernel still runs, with an explicit [B, 1, T, S] mask, which is exact but quadratic in memory.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

from longjax.ops.reference import attention_mask

# cuDNN's fused flash attention (cudnn-frontend SDPA): half-precision inputs, head_dim a multiple
# of 8 up to 128 on this path of jax.nn.dot_product_attention.
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_MAX_HEAD_DIM = 128
# Splash attention's default tiles; lengths must be whole tiles.
SPLASH_BLOCK = 128


def _zero_unseen_rows(out, mask):
  """jax.nn.dot_product_attention gives a query that sees no key the mean of all values; the reference gives 0.

  Only queries placed before every key (T > S) can see none: each other query sees its own position.
  """
  if out.shape[1] <= mask.shape[-1]:
    return out
  return out * jnp.any(mask, axis=-1)[:, 0, :, None, None].astype(out.dtype)


# Causal queries are cut into chunks that each meet only the keys up to their last position, so about half
# the [T, S] logits are never computed; chunks are unrolled (static shapes), at most XLA_MAX_CHUNKS of them.
# 64 measured best on CPU at T = 256 and 512 (single-thread CPU time of forward + backward: 128 costs
# 10-15% more, 32 the same as 64).
XLA_QUERY_CHUNK = 64
XLA_MAX_CHUNKS = 16
# On CPU, above this many bytes of float32 logits per batch row, rows go one at a time (forward and backward)
# so that a row's logits stay in cache. Measured forward + backward on 2 cores: 8 x 512 tokens, 8 heads
# (4.5 MiB a row) 48.5 -> 38.7 ms with rows one at a time; 8 x 256, 4 heads (0.6 MiB) 5.0 ms all rows at
# once against 6.7 ms one at a time.
XLA_ROW_BYTES = 2 << 20
_MASKED = float(jnp.finfo(jnp.float32).min)  # a finite fill: a row without keys gets no NaN


def _query_chunks(q_len: int, k_len: int, causal: bool) -> tuple[tuple[int, int, int], ...]:
  """(start, stop, keys) per query chunk: queries [start, stop) see at most the first `keys` keys."""
  if not causal:
    return ((0, q_len, k_len),)
  chunk = max(XLA_QUERY_CHUNK, -(-q_len // XLA_MAX_CHUNKS))
  chunks = []
  for start in range(0, q_len, chunk):
    stop = min(start + chunk, q_len)
    # query stop - 1 sits at key position S - T + stop - 1; a chunk before every key keeps one (masked) key
    chunks.append((start, stop, max(1, min(k_len, k_len - q_len + stop))))
  return tuple(chunks)


def _chunk_logits(q, k, mask, chunk):
  """Masked float32 logits of one query chunk: q [B, Hkv, G, T, D] (pre-scaled), k [B, Hkv, S, D]."""
  start, stop, keys = chunk
  logits = jnp.einsum("BKGTD,BKSD->BKGTS", q[:, :, :, start:stop], k[:, :, :keys],
                      preferred_element_type=jnp.float32)
  return jnp.where(mask[:, :, None, start:stop, :keys], logits, _MASKED)


def _softmax_forward(q, k, v, mask, chunks):
  """(out [B, Hkv, G, T, D], float32 log-sum-exp [B, Hkv, G, T, 1]) with mask bool[B|1, 1, T, S]."""
  outs, lses = [], []
  for chunk in chunks:
    logits = _chunk_logits(q, k, mask, chunk)
    peak = jnp.max(logits, axis=-1, keepdims=True)
    probs = jnp.exp(logits - peak)
    total = jnp.sum(probs, axis=-1, keepdims=True)
    out = jnp.einsum("BKGTS,BKSD->BKGTD", probs.astype(v.dtype), v[:, :, :chunk[2]],
                     preferred_element_type=jnp.float32) / total
    outs.append(out.astype(v.dtype))
    lses.append(peak + jnp.log(total))
  return jnp.concatenate(outs, axis=3), jnp.concatenate(lses, axis=3)


def _softmax_backward(q, k, v, mask, out, lse, d_out, chunks):
  """dq, dk, dv of `_softmax_forward`, the probabilities recomputed from the log-sum-exp (FlashAttention-2's
  backward, one query chunk at a time): dS = P * (dP - rowsum(dO * O)), with no reduction over the keys."""
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
  dq = []
  # dK and dV are accumulated transposed, [B, Hkv, D, S]: dK^T = Q^T dS contracts dS over its major dims (G, T)
  # in place, where dK = dS^T Q would make XLA CPU copy each chunk's dS into a transposed layout first.
  dk = jnp.zeros(k.shape[:2] + k.shape[:1:-1], jnp.float32)
  dv = jnp.zeros(v.shape[:2] + v.shape[:1:-1], jnp.float32)
  for chunk in chunks:
    start, stop, keys = chunk
    probs = jnp.exp(_chunk_logits(q, k, mask, chunk) - lse[:, :, :, start:stop])
    d_out_chunk = d_out[:, :, :, start:stop]
    d_probs = jnp.einsum("BKGTD,BKSD->BKGTS", d_out_chunk, v[:, :, :keys], preferred_element_type=jnp.float32)
    d_logits = (probs * (d_probs - delta[:, :, :, start:stop])).astype(q.dtype)
    dq.append(jnp.einsum("BKGTS,BKSD->BKGTD", d_logits, k[:, :, :keys], preferred_element_type=jnp.float32))
    dk = dk.at[..., :keys].add(jnp.einsum("BKGTD,BKGTS->BKDS", q[:, :, :, start:stop], d_logits,
                                          preferred_element_type=jnp.float32))
    dv = dv.at[..., :keys].add(jnp.einsum("BKGTD,BKGTS->BKDS", d_out_chunk, probs.astype(v.dtype),
                                          preferred_element_type=jnp.float32))
  dk, dv = jnp.swapaxes(dk, -1, -2), jnp.swapaxes(dv, -1, -2)
  return jnp.concatenate(dq, axis=3).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def _by_rows(fn, rows: bool):
  """fn over the batch at once, or (rows) one batch row at a time with lax.map; every argument batched."""
  if not rows:
    return fn
  return lambda *args: jax.lax.map(lambda row: jax.tree.map(lambda x: x[0], fn(*(x[None] for x in row))), args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunked_attention(q, k, v, mask, chunks, rows):
  return _by_rows(lambda *a: _softmax_forward(*a, chunks), rows)(q, k, v, mask)[0]


def _chunked_attention_fwd(q, k, v, mask, chunks, rows):
  out, lse = _by_rows(lambda *a: _softmax_forward(*a, chunks), rows)(q, k, v, mask)
  return out, (q, k, v, mask, out, lse)


def _chunked_attention_bwd(chunks, rows, residuals, d_out):
  grads = _by_rows(lambda *a: _softmax_backward(*a, chunks), rows)(*residuals, d_out)
  return (*grads, None)


_chunked_attention.defvjp(_chunked_attention_fwd, _chunked_attention_bwd)


def xla(q, k, v, *, causal, window, sinks, segment_ids):
  """Softmax attention materialized one query chunk at a time, in head-major layout [B, Hkv, G, T, S] (no
  transposes of the logits), GQA without repeating K/V; causal chunks skip the keys after them.

  Its VJP is written by hand (FlashAttention-2's): the forward keeps only the output and the float32
  log-sum-exp, and the backward recomputes each chunk's probabilities; autodiff of a softmax would keep every
  probability for the backward pass and reduce dP * P over the keys (on CPU, 12 of a 135 ms demo step).
  On CPU, when one batch row's logits pass XLA_ROW_BYTES, rows run one at a time (lax.map) in both passes,
  each row's logits in cache (an accelerator keeps every row at once: a loop over rows would leave it idle).
  Being a custom VJP it has no forward-mode rule (`jax.jvp`, `jax.jacfwd` raise, as for `blockwise`; `naive` has one).
  """
  batch, q_len, heads, head_dim = q.shape
  k_len, kv_heads = k.shape[1], k.shape[2]
  group = heads // kv_heads
  mask = attention_mask(q_len, k_len, causal=causal, window=window, sinks=sinks, segment_ids=segment_ids)
  q_heads = (q * (1.0 / np.sqrt(head_dim))).astype(q.dtype).reshape(batch, q_len, kv_heads, group, head_dim)
  q_heads = q_heads.transpose(0, 2, 3, 1, 4)  # [B, Hkv, G, T, D]
  k_heads, v_heads = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, Hkv, S, D]
  chunks = _query_chunks(q_len, k_len, causal)
  row_bytes = 4 * heads * sum((stop - start) * keys for start, stop, keys in chunks)
  rows = jax.default_backend() == "cpu" and batch > 1 and row_bytes > XLA_ROW_BYTES
  if rows and mask.shape[0] != batch:
    mask = jnp.broadcast_to(mask, (batch,) + mask.shape[1:])
  out = _chunked_attention(q_heads, k_heads, v_heads, mask, chunks, rows)
  out = out.transpose(0, 3, 1, 2, 4).reshape(batch, q_len, heads, head_dim)
  return out * jnp.any(mask, axis=-1)[:, 0, :, None, None].astype(out.dtype)


def cudnn_native(q, k, *, causal, window, sinks, segment_ids) -> bool:
  """True when cuDNN can apply the mask itself: causal (T == S) with an optional window, no sinks or segments."""
  head_dim = q.shape[-1]
  if q.dtype not in CUDNN_DTYPES or head_dim > CUDNN_MAX_HEAD_DIM or head_dim % 8:
    return False
  if segment_ids is not None or (window is not None and (sinks or not causal)):
    return False
  return not causal or q.shape[1] == k.shape[1]  # cuDNN's causal diagonal starts at the top left


def cudnn(q, k, v, *, causal, window, sinks, segment_ids):
  """cuDNN flash attention (jax.nn.dot_product_attention(implementation='cudnn')); GPU, bf16/fp16."""
  if jax.default_backend() != "gpu":
    raise RuntimeError(f"attention impl='cudnn' needs a CUDA GPU backend; this process runs on "
                       f"'{jax.default_backend()}' (use impl='auto', 'xla' or 'blockwise')")
  if q.dtype not in CUDNN_DTYPES:
    raise ValueError(f"attention impl='cudnn' needs bfloat16 or float16 inputs, got {q.dtype}")
  if cudnn_native(q, k, causal=causal, window=window, sinks=sinks, segment_ids=segment_ids):
    local_window = None if window is None else (window - 1, 0)  # keys i - window < j <= i
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, local_window_size=local_window,
                                        implementation="cudnn")
  mask = attention_mask(q.shape[1], k.shape[1], causal=causal, window=window, sinks=sinks, segment_ids=segment_ids)
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
  return _zero_unseen_rows(out, mask)


def pallas_native(q, k, *, causal, window, sinks, segment_ids) -> bool:
  """True when splash attention fits: both lengths whole tiles of SPLASH_BLOCK."""
  del causal, window, sinks, segment_ids
  return q.shape[1] % SPLASH_BLOCK == 0 and k.shape[1] % SPLASH_BLOCK == 0


def _splash_mask(q_len: int, k_len: int, *, causal, window, sinks):
  """The reference mask as a lazy splash mask (bottom-right aligned when S > T)."""
  shape, offset = (q_len, k_len), k_len - q_len
  right = 0 if causal else None
  if window is not None:
    mask = masks.LocalMask(shape, window_size=(window - 1, right), offset=offset)
    return mask | _SinkMask(shape, sinks, causal=causal, offset=offset) if sinks else mask
  if causal:
    return masks.CausalMask(shape, offset=offset)
  return masks.FullMask(shape)


class _SinkMask(masks._ComputableMask):  # pylint: disable=protected-access
  """The first `sinks` keys (causal: only those at or before the query), evaluated per tile like
  splash's own CausalMask, so no [T, S] array is ever built."""

  def __init__(self, shape: tuple[int, int], sinks: int, *, causal: bool, offset: int):
    self.rule = (shape, sinks, causal, offset)

    def visible(q_ids, kv_ids):
      return (kv_ids < sinks) & ((kv_ids <= q_ids + offset) if causal else True)

    super().__init__(shape=shape, mask_function=visible)

  def __eq__(self, other):
    return isinstance(other, _SinkMask) and self.rule == other.rule

  def __hash__(self):
    return hash((_SinkMask, self.rule))


def pallas(q, k, v, *, causal, window, sinks, segment_ids, interpret: bool = False):
  """Pallas TPU splash attention (jax.experimental.pallas.ops.tpu), one MQA kernel per K/V head.

  `interpret=True` runs the kernel in the Pallas interpreter on any backend (slow; for tests).
  """
  if jax.default_backend() != "tpu" and not interpret:
    raise RuntimeError(f"attention impl='pallas' needs a TPU backend; this process runs on "
                       f"'{jax.default_backend()}' (use impl='auto', 'xla' or 'blockwise')")
  if not pallas_native(q, k, causal=causal, window=window, sinks=sinks, segment_ids=segment_ids):
    raise ValueError(f"attention impl='pallas' needs lengths that are multiples of {SPLASH_BLOCK}, "
                     f"got T={q.shape[1]}, S={k.shape[1]}")
  batch, q_len, heads, head_dim = q.shape
  k_len, kv_heads = k.shape[1], k.shape[2]
  group = heads // kv_heads
  mask = masks.MultiHeadMask([_splash_mask(q_len, k_len, causal=causal, window=window, sinks=sinks)] * group)
  kernel = splash.make_splash_mqa_single_device(mask, interpret=interpret)
  # Splash takes pre-scaled queries, head-major: q [Hkv, G, T, D], k/v [Hkv, S, D] per batch row.
  q_heads = (q * (1.0 / np.sqrt(head_dim))).astype(q.dtype).reshape(batch, q_len, kv_heads, group, head_dim)
  q_heads = q_heads.transpose(0, 2, 3, 1, 4)
  k_heads, v_heads = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

  def one_row(q_row, k_row, v_row, seg_row):
    segments = None if seg_row is None else splash.SegmentIds(q=seg_row[k_len - q_len:], kv=seg_row)
    return jax.vmap(lambda qh, kh, vh: kernel(qh, kh, vh, segment_ids=segments))(q_row, k_row, v_row)

  out = jax.vmap(one_row)(q_heads, k_heads, v_heads, segment_ids)  # [B, Hkv, G, T, D]
  return out.transpose(0, 3, 1, 2, 4).reshape(batch, q_len, heads, head_dim)
