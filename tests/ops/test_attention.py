"""Every attention impl against the materialized reference: outputs and gradients, masks, dispatch."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax import ops
from longjax.ops import backends
from longjax.ops.blockwise import DEFAULT_BLOCK, BlockSpec, block_pairs, blockwise_attention

# (batch, T, S, heads, kv_heads, head_dim, causal, window, sinks, segments, block)
CASES = {
    "causal_4096": (1, 4096, 4096, 2, 1, 16, True, None, 0, False, DEFAULT_BLOCK),
    "sliding_sinks_segments_4096": (1, 4096, 4096, 2, 1, 16, True, 300, 4, True, DEFAULT_BLOCK),
    "gqa_kv_cache_ragged_blocks": (2, 100, 130, 4, 2, 8, True, 20, 3, False, 32),
    "bidirectional_window_segments": (2, 64, 64, 2, 1, 8, False, 10, 2, True, 16),
    "causal_segments_ragged": (2, 77, 77, 4, 4, 8, True, 9, 0, True, 24),
    "more_queries_than_keys": (2, 50, 40, 2, 1, 8, True, None, 0, False, 16),
    # A decode step: one query whose own key opens a new key block (it sits on the causal block boundary).
    "decode_one_past_a_block": (2, 1, 17, 2, 1, 8, True, None, 0, False, 16),
    # flash's shapes: whole causal sequences, GQA, lengths that are not whole blocks
    "flash_gqa_unaligned": (2, 77, 77, 6, 2, 8, True, None, 0, False, 16),
    "flash_gqa_one_partial_block": (1, 300, 300, 9, 3, 64, True, None, 0, False, 256),
}
FLASH_CASES = ["causal_4096", "flash_gqa_unaligned", "flash_gqa_one_partial_block"]


def _inputs(batch, q_len, k_len, heads, kv_heads, head_dim, segments, seed=0):
  rng = np.random.default_rng(seed)  # NumPy: no compile per shape
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32))
  q, projection = normal(batch, q_len, heads, head_dim), normal(batch, q_len, heads, head_dim)
  k, v = normal(batch, k_len, kv_heads, head_dim), normal(batch, k_len, kv_heads, head_dim)
  segment_ids = None
  if segments:  # a few packed documents per row, boundaries at random
    segment_ids = jnp.asarray(np.cumsum(rng.random((batch, k_len)) < 8 / k_len, axis=1, dtype=np.int32))
  return q, k, v, segment_ids, projection


def _value_and_grads(fn, q, k, v, projection, *extra):
  """Output and the gradients of <output, projection> w.r.t. q, k, v (extra: non-differentiated args)."""

  @jax.jit
  def run(q, k, v, projection, *extra):
    out, pullback = jax.vjp(lambda q, k, v: fn(q, k, v, *extra), q, k, v)
    return out, pullback(projection.astype(out.dtype))

  return run(q, k, v, projection, *extra)


def _reference(q, k, v, projection, mask):
  # The mask goes in as an argument: as a closed-over constant XLA spends ~30 s constant-folding it at 4K.
  return _value_and_grads(ops.naive_attention, q, k, v, projection, mask)


@functools.cache
def _case(case):
  """Inputs and the reference output and gradients, computed once per case for every impl."""
  batch, q_len, k_len, heads, kv_heads, head_dim, causal, window, sinks, segments, block = CASES[case]
  q, k, v, segment_ids, projection = _inputs(batch, q_len, k_len, heads, kv_heads, head_dim, segments)
  rule = dict(causal=causal, window=window, sinks=sinks, segment_ids=segment_ids)
  expected = _reference(q, k, v, projection, ops.attention_mask(q_len, k_len, **rule))
  return (q, k, v, projection), rule, block, expected


@pytest.mark.parametrize("impl", ["blockwise", "xla"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(impl, case):
  inputs, rule, block, (expected, expected_grads) = _case(case)
  if impl == "blockwise":
    fn = functools.partial(blockwise_attention, **rule, block_q=block, block_k=block)
  else:
    fn = functools.partial(ops.attention, **rule, impl=impl)
  out, grads = _value_and_grads(fn, *inputs)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  for name, grad, expected_grad in zip("qkv", grads, expected_grads):
    np.testing.assert_allclose(grad, expected_grad, atol=1e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("case", FLASH_CASES)
def test_flash_matches_reference_and_blockwise(case):
  """The flash kernel (whole causal sequences) against the materialized reference and the blockwise kernel it
  replaces above AUTO_FLASH_AREA on CPU: outputs and gradients, GQA, lengths that are not whole blocks."""
  inputs, rule, block, (expected, expected_grads) = _case(case)
  out, grads = _value_and_grads(functools.partial(ops.attention, **rule, impl="flash", block_size=block), *inputs)
  old, old_grads = _value_and_grads(functools.partial(blockwise_attention, **rule, block_q=block, block_k=block),
                                    *inputs)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  np.testing.assert_allclose(out, old, atol=1e-5)
  for name, grad, expected_grad, old_grad in zip("qkv", grads, expected_grads, old_grads):
    np.testing.assert_allclose(grad, expected_grad, atol=1e-5, err_msg=f"d{name}")
    np.testing.assert_allclose(grad, old_grad, atol=1e-5, err_msg=f"d{name}")


def test_flash_default_block_and_bfloat16():
  """impl='auto' on CPU (the flash default block) against the reference; bfloat16 inputs keep their dtype."""
  q, k, v, _, _ = _inputs(1, 600, 600, 4, 2, 16, False, seed=3)
  expected = ops.naive_attention(q, k, v, ops.attention_mask(600, 600))
  np.testing.assert_allclose(jax.jit(ops.attention, static_argnames="impl")(q, k, v, impl="flash"), expected,
                             atol=1e-5)
  out = jax.jit(ops.attention, static_argnames="impl")(*(x.astype(jnp.bfloat16) for x in (q, k, v)), impl="flash")
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32), expected, atol=3e-2)


@pytest.mark.parametrize("case", ["causal_segments_ragged", "gqa_kv_cache_ragged_blocks", "more_queries_than_keys"])
def test_xla_one_row_at_a_time_matches_reference(case, monkeypatch):
  """The xla impl's path for large rows (lax.map over batch rows under remat), forced on small cases."""
  monkeypatch.setattr(backends, "XLA_ROW_BYTES", 0)
  inputs, rule, _, (expected, expected_grads) = _case(case)
  out, grads = _value_and_grads(functools.partial(ops.attention, **rule, impl="xla"), *inputs)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  for name, grad, expected_grad in zip("qkv", grads, expected_grads):
    np.testing.assert_allclose(grad, expected_grad, atol=1e-5, err_msg=f"d{name}")


def test_rows_without_keys_are_zero_not_nan():
  # With more queries than keys, the first causal queries precede every key.
  q, k, v, _, projection = _inputs(1, 48, 16, 2, 1, 8, False)
  for impl in ("blockwise", "xla"):
    out, grads = _value_and_grads(functools.partial(ops.attention, impl=impl), q, k, v, projection)
    assert np.all(out[:, :32] == 0), impl
    assert all(np.isfinite(g).all() for g in grads), impl


def test_blockwise_visits_only_reachable_blocks():
  geometry = dict(q_len=16384, k_len=16384, block_q=512, block_k=512)
  full = block_pairs(BlockSpec(causal=False, window=None, sinks=0, **geometry))
  causal = block_pairs(BlockSpec(causal=True, window=None, sinks=0, **geometry))
  sliding = block_pairs(BlockSpec(causal=True, window=1024, sinks=4, **geometry))
  assert len(full) == 32 * 32
  assert len(causal) == 32 * 33 // 2
  # Window 1024 reaches the query's own block and two before it, plus the sink block.
  assert len(sliding) <= 32 * 4


def _reachable_pairs(mask: np.ndarray, block_q: int, block_k: int) -> np.ndarray:
  """int32[P, 2]: the block pairs where a dense mask bool[T, S] has a True entry (key block 0 for a query
  block that sees no key), query-block major like block_pairs."""
  q_len, k_len = mask.shape
  q_blocks, k_blocks = -(-q_len // block_q), -(-k_len // block_k)
  padded = np.zeros((q_blocks * block_q, k_blocks * block_k), bool)
  padded[:q_len, :k_len] = mask
  reach = padded.reshape(q_blocks, block_q, k_blocks, block_k).any(axis=(1, 3))
  reach[~reach.any(axis=1), 0] = True
  return np.argwhere(reach)


def test_block_pairs_are_exactly_the_blocks_the_mask_reaches():
  # Unaligned lengths put query and key block edges anywhere, including exactly on the causal diagonal.
  # The mask is jitted whole: one compilation per shape costs ~10x less than compiling each eager op.
  dense_mask = jax.jit(ops.attention_mask, static_argnums=(0, 1), static_argnames=("causal", "window", "sinks"))
  rng = np.random.default_rng(0)
  for _ in range(50):
    q_len, k_len = (int(n) for n in rng.integers(1, 64, 2))
    window = None if rng.random() < 0.3 else int(rng.integers(1, 32))
    rule = dict(causal=bool(rng.random() < 0.8), window=window, sinks=int(rng.integers(0, 6)) if window else 0)
    mask = np.asarray(dense_mask(q_len, k_len, **rule))[0, 0]
    for _ in range(4):
      block_q, block_k = (int(n) for n in rng.integers(1, 20, 2))
      spec = BlockSpec(**rule, q_len=q_len, k_len=k_len, block_q=min(block_q, q_len), block_k=min(block_k, k_len))
      np.testing.assert_array_equal(block_pairs(spec), _reachable_pairs(mask, spec.block_q, spec.block_k),
                                    err_msg=str(spec))


def test_auto_rule_on_cpu():
  if jax.default_backend() != "cpu":
    pytest.skip("the CPU rule")
  short = jax.ShapeDtypeStruct((1, 2048, 4, 64), jnp.float32)
  medium = jax.ShapeDtypeStruct((1, 4096, 4, 64), jnp.float32)
  long = jax.ShapeDtypeStruct((1, 8192, 4, 64), jnp.float32)
  one_query = jax.ShapeDtypeStruct((1, 1, 4, 64), jnp.float32)
  assert ops.choose_impl(short, short) == "xla"
  assert ops.choose_impl(medium, medium) == "flash"
  assert ops.choose_impl(long, long) == "flash"
  assert ops.choose_impl(medium, medium, window=256) == "xla"
  assert ops.choose_impl(long, long, window=256) == "blockwise"  # flash takes plain causal masks only
  assert ops.choose_impl(long, long, segment_ids=jnp.ones((1, 8192), jnp.int32)) == "blockwise"
  assert ops.choose_impl(long, long, causal=False) == "blockwise"
  assert ops.choose_impl(medium, long) == "blockwise"  # queries at the end of a longer key sequence
  assert ops.choose_impl(one_query, long) == "xla"


def test_auto_rule_on_gpu_and_tpu(monkeypatch):
  """impl='auto' picks cuDNN flash on a GPU when it applies the mask itself, splash on a TPU on whole tiles."""
  bf16 = jax.ShapeDtypeStruct((1, 2048, 8, 64), jnp.bfloat16)
  f32 = jax.ShapeDtypeStruct((1, 2048, 8, 64), jnp.float32)
  ragged = jax.ShapeDtypeStruct((1, 1000, 8, 64), jnp.bfloat16)
  segments = jnp.ones((1, 2048), jnp.int32)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert ops.choose_impl(bf16, bf16) == "cudnn"
  assert ops.choose_impl(bf16, bf16, window=256) == "cudnn"
  assert ops.choose_impl(f32, f32) == "xla"  # cuDNN takes half precision only
  assert ops.choose_impl(bf16, bf16, segment_ids=segments) == "xla"
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert ops.choose_impl(bf16, bf16, segment_ids=segments) == "pallas"
  assert ops.choose_impl(ragged, ragged) == "xla"


def test_unknown_impl_and_bad_heads_raise():
  q, k, v, _, _ = _inputs(1, 8, 8, 3, 2, 4, False)
  with pytest.raises(ValueError, match="multiple of key/value heads"):
    ops.attention(q, k, v)
  q, k, v, _, _ = _inputs(1, 8, 8, 2, 1, 4, False)
  with pytest.raises(ValueError, match="impl='splash'"):
    ops.attention(q, k, v, impl="splash")
  with pytest.raises(ValueError, match="impl='flash' needs a plain causal mask"):
    ops.attention(q, k, v, impl="flash", window=4)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the error without a GPU")
def test_cudnn_needs_gpu():
  q, k, v, _, _ = _inputs(1, 8, 8, 2, 1, 8, False)
  with pytest.raises(RuntimeError, match="impl='cudnn' needs a CUDA GPU"):
    ops.attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), impl="cudnn")


@pytest.mark.skipif(jax.default_backend() == "tpu", reason="checks the error without a TPU")
def test_pallas_needs_tpu():
  q, k, v, _, _ = _inputs(1, 128, 128, 2, 1, 8, False)
  with pytest.raises(RuntimeError, match="impl='pallas' needs a TPU"):
    ops.attention(q, k, v, impl="pallas")


def test_pallas_splash_mask_in_interpreter():
  # The splash wrapper (GQA, KV-cache offset, window, sinks, segments) run by the Pallas interpreter;
  # forward only, since the backward kernels are splash's own.
  q, k, v, segment_ids, _ = _inputs(1, 128, 256, 4, 2, 32, True)
  rule = dict(causal=True, window=100, sinks=4, segment_ids=segment_ids)
  expected = ops.naive_attention(q, k, v, ops.attention_mask(128, 256, **rule))
  out = jax.jit(functools.partial(backends.pallas, **rule, interpret=True))(q, k, v)
  np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a CUDA GPU")
@pytest.mark.parametrize("window", [None, 256])
def test_cudnn_matches_reference_bf16(window):
  q, k, v, _, projection = _inputs(2, 1024, 1024, 8, 2, 64, False)
  q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
  expected, expected_grads = _reference(q, k, v, projection, ops.attention_mask(1024, 1024, causal=True, window=window))
  out, grads = _value_and_grads(functools.partial(ops.attention, window=window, impl="cudnn"), q, k, v, projection)
  # bf16 keeps 8 bits of mantissa: compare at a few ulps of outputs of size ~1.
  np.testing.assert_allclose(out.astype(jnp.float32), expected.astype(jnp.float32), atol=2e-2)
  for grad, expected_grad in zip(grads, expected_grads):
    np.testing.assert_allclose(grad.astype(jnp.float32), expected_grad.astype(jnp.float32), atol=5e-2, rtol=5e-2)


def test_block_size_reaches_the_blockwise_kernel():
  q = jax.random.normal(jax.random.key(0), (1, 96, 2, 8))
  ref = ops.attention(q, q, q, impl="naive")
  for block in (16, 32, 96):
    np.testing.assert_allclose(ops.attention(q, q, q, impl="blockwise", block_size=block), ref, atol=1e-5)
  jaxpr = str(jax.make_jaxpr(lambda q: ops.attention(q, q, q, impl="blockwise", block_size=16))(q))
  assert "length=21" in jaxpr  # 96 / 16 = 6 blocks: the 6 * 7 / 2 causal block pairs are scanned


@pytest.mark.parametrize("rows", [False, True])
def test_xla_in_bfloat16_keeps_dtypes_and_tracks_float32(rows, monkeypatch):
  """The hand-written VJP of the xla impl in bfloat16 (the accelerator compute dtype), batch rows at once and
  one at a time: outputs and gradients stay bfloat16 and within bfloat16 error of the float32 computation."""
  monkeypatch.setattr(backends, "XLA_ROW_BYTES", 0 if rows else 1 << 40)
  inputs, rule, _, _ = _case("causal_segments_ragged")
  f32 = _value_and_grads(functools.partial(ops.attention, **rule, impl="xla"), *inputs)
  bf16_inputs = [x.astype(jnp.bfloat16) for x in inputs[:3]] + [inputs[3].astype(jnp.bfloat16)]
  out, grads = _value_and_grads(functools.partial(ops.attention, **rule, impl="xla"), *bf16_inputs)
  assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
  np.testing.assert_allclose(out.astype(np.float32), f32[0], atol=3e-2, rtol=3e-2)
  for grad, expected in zip(grads, f32[1]):
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(grad.astype(np.float32) / scale, np.asarray(expected) / scale, atol=3e-2)
