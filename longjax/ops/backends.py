"""Attention through library kernels: XLA's fused softmax, cuDNN flash attention, Pallas TPU splash.

Each takes q [B, T, H, D], k/v [B, S, Hkv, D] and the mask rule of `reference.attention_mask`.
`*_native` says whether a kernel can take the mask without materializing it; where it cannot,
the kernel still runs, with an explicit [B, 1, T, S] mask, which is exact but quadratic in memory.
"""

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
# 10-15% more, 32 the same as 64); a hand-written softmax backward measured slower than autodiff's.
XLA_QUERY_CHUNK = 64
XLA_MAX_CHUNKS = 16
# On CPU, above this many bytes of float32 probabilities per batch row (about a core's L2), rows go one at a
# time. Measured on the benchmark shapes (8 x 256 and 8 x 512): 8-20% less step time than all rows at once.
XLA_ROW_BYTES = 256 << 10


def _query_chunks(q_len: int, k_len: int, causal: bool) -> list[tuple[int, int, int]]:
  """(start, stop, keys) per query chunk: queries [start, stop) see at most the first `keys` keys."""
  if not causal:
    return [(0, q_len, k_len)]
  chunk = max(XLA_QUERY_CHUNK, -(-q_len // XLA_MAX_CHUNKS))
  chunks = []
  for start in range(0, q_len, chunk):
    stop = min(start + chunk, q_len)
    # query stop - 1 sits at key position S - T + stop - 1; a chunk before every key keeps one (masked) key
    chunks.append((start, stop, max(1, min(k_len, k_len - q_len + stop))))
  return chunks


def _chunked_softmax(q, k, v, mask, chunks):
  """q [B, Hkv, G, T, D] (pre-scaled), k/v [B, Hkv, S, D], mask bool[B|1, 1, T, S] -> [B, Hkv, G, T, D]."""
  outs = []
  for start, stop, keys in chunks:
    logits = jnp.einsum("BKGTD,BKSD->BKGTS", q[:, :, :, start:stop], k[:, :, :keys],
                        preferred_element_type=jnp.float32)
    # A finite fill: a row that sees no key averages the values and is zeroed by the caller, with no NaN in its
    # gradient.
    logits = jnp.where(mask[:, :, None, start:stop, :keys], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    outs.append(jnp.einsum("BKGTS,BKSD->BKGTD", probs, v[:, :, :keys]))
  return jnp.concatenate(outs, axis=3)


def xla(q, k, v, *, causal, window, sinks, segment_ids):
  """Materialized float32 softmax in head-major layout [B, Hkv, G, T, S] (no transposes of the logits), GQA
  without repeating K/V; causal queries in chunks that skip the keys after them.

  On CPU, when one batch row's probabilities pass XLA_ROW_BYTES, rows run one at a time (lax.map) under remat:
  the backward pass recomputes a row's probabilities while they are in cache instead of reading back all rows'
  (an accelerator keeps every row at once: a loop over rows would leave it idle).
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
  if jax.default_backend() == "cpu" and batch > 1 and row_bytes > XLA_ROW_BYTES:
    row_mask = mask if mask.shape[0] == batch else jnp.broadcast_to(mask, (batch,) + mask.shape[1:])
    one_row = jax.checkpoint(lambda row: _chunked_softmax(*(x[None] for x in row), chunks)[0])
    out = jax.lax.map(one_row, (q_heads, k_heads, v_heads, row_mask))
  else:
    out = _chunked_softmax(q_heads, k_heads, v_heads, mask, chunks)
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
