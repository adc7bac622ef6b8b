"""Dot-product attention and its dispatch: `attention(q, k, v, *, causal, impl, window, sinks, segment_ids)`.

Shapes: q [B, T, H, D]; k, v [B, S, Hkv, D] with H % Hkv == 0; scale 1/sqrt(D).
When S > T the queries are the last T positions (a query at row t sits at key
position S - T + t), which is what a KV cache needs. Every impl computes the
mask of `attention_mask`; a query that may see no key gets 0.

impl='auto' picks, in order:
  GPU: 'cudnn' when cuDNN applies the mask itself (bf16/fp16, head_dim <= 128 and a multiple of 8,
       causal with T == S, optional window, no sinks, no segment ids);
  TPU: 'pallas' (splash attention) when T and S are multiples of 128;
  CPU: 'flash' for a plain causal mask over one whole sequence (T == S, no window, sinks or segment ids)
       above AUTO_FLASH_AREA (2048 * 2048 logits per head): linear memory, and on the SmolLM2-135M
       attention shape 2-4x faster than 'blockwise' (8K) and 1.5x faster than 'xla' (4K), forward
       (benchmarks/README.md); below it 'xla', whose hand-written backward trains small shapes fastest;
  otherwise 'xla' while T * S <= AUTO_BLOCKWISE_AREA (4096 * 4096 logits per head), else
  'blockwise', whose memory is linear in length where XLA's is quadratic.

`block_size` sets the blocks of 'blockwise', and of 'flash' when that impl is asked for by name; under
'auto', 'flash' keeps its own measured block (`flash.DEFAULT_BLOCK`).
"""

import jax

from longjax.ops import backends, flash
from longjax.ops.blockwise import blockwise_attention
from longjax.ops.reference import attention_mask, naive_attention

AUTO_BLOCKWISE_AREA = 4096 * 4096
AUTO_FLASH_AREA = 2048 * 2048


def _naive(q, k, v, *, causal, window, sinks, segment_ids):
  mask = attention_mask(q.shape[1], k.shape[1], causal=causal, window=window, sinks=sinks, segment_ids=segment_ids)
  return naive_attention(q, k, v, mask)


def _flash(q, k, v, *, causal, window, sinks, segment_ids, block: int = flash.DEFAULT_BLOCK):
  if not flash_native(q, k, causal=causal, window=window, sinks=sinks, segment_ids=segment_ids):
    raise ValueError(f"attention impl='flash' needs a plain causal mask over one whole sequence (T == S, no window, "
                     f"sinks or segment ids); got T={q.shape[1]}, S={k.shape[1]}, causal={causal}, window={window}, "
                     f"sinks={sinks}, segment_ids {'given' if segment_ids is not None else 'None'}")
  return flash.flash_attention(q, k, v, block=block)


def flash_native(q, k, *, causal, window, sinks, segment_ids) -> bool:
  """True when 'flash' applies: causal over one whole sequence, no window, sinks or segment ids."""
  return causal and window is None and not sinks and segment_ids is None and q.shape[1] == k.shape[1]


IMPLS = {
    "naive": _naive,
    "xla": backends.xla,
    "cudnn": backends.cudnn,
    "pallas": backends.pallas,
    "blockwise": blockwise_attention,
    "flash": _flash,
}


def choose_impl(q, k, *, causal: bool = True, window: int | None = None, sinks: int = 0,
                segment_ids: jax.Array | None = None) -> str:
  """The impl that impl='auto' runs for these shapes, dtype, mask and backend (see the module docstring)."""
  mask_rule = dict(causal=causal, window=window, sinks=sinks, segment_ids=segment_ids)
  backend = jax.default_backend()
  if backend == "gpu" and backends.cudnn_native(q, k, **mask_rule):
    return "cudnn"
  if backend == "tpu" and backends.pallas_native(q, k, **mask_rule):
    return "pallas"
  if backend == "cpu" and flash_native(q, k, **mask_rule) and q.shape[1] * k.shape[1] > AUTO_FLASH_AREA:
    return "flash"
  return "xla" if q.shape[1] * k.shape[1] <= AUTO_BLOCKWISE_AREA else "blockwise"


def attention(q, k, v, *, causal: bool = True, impl: str = "auto", window: int | None = None, sinks: int = 0,
              segment_ids: jax.Array | None = None, block_size: int | None = None):
  """Masked softmax attention, q [B, T, H, D], k/v [B, S, Hkv, D] -> [B, T, H, D].

  `block_size` sets the query and key blocks of the blockwise kernel, and of flash asked for by name (their
  defaults when None).
  """
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"attention: query heads {q.shape[2]} must be a multiple of key/value heads {k.shape[2]}")
  if window is not None and window < 1:
    raise ValueError(f"attention: window must be >= 1 or None, got {window}")
  mask_rule = dict(causal=causal, window=window, sinks=sinks, segment_ids=segment_ids)
  name = choose_impl(q, k, **mask_rule) if impl == "auto" else impl
  if name not in IMPLS:
    raise ValueError(f"attention: impl={impl!r} is not available; allowed: auto, {', '.join(IMPLS)}")
  if name == "blockwise" and block_size is not None:
    return blockwise_attention(q, k, v, **mask_rule, block_q=block_size, block_k=block_size)
  if name == "flash" and impl == "flash" and block_size is not None:
    return _flash(q, k, v, **mask_rule, block=block_size)
  return IMPLS[name](q, k, v, **mask_rule)
