"""S2-Attn against a mask built from LongLoRA's group definition, and its causality (no roll leak)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax import ops


def _inputs(batch, length, heads, kv_heads, head_dim, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.standard_normal((batch, length, h, head_dim), np.float32))
               for h in (heads, kv_heads, kv_heads))


@jax.jit(static_argnums=0)
def _value_and_grads(fn, q, k, v, projection, *extra):
  """Output and the gradients of <output, projection> w.r.t. q, k, v (extra: non-differentiated args)."""
  out, pullback = jax.vjp(lambda q, k, v: fn(q, k, v, *extra), q, k, v)
  return out, pullback(projection)


def _s2_mask(length, heads, group_size):
  """bool[1, H, T, T]: causal and in the same group; heads [H/2, H) use groups shifted by G/2."""
  position = np.arange(length)
  plain_group = position // group_size  # [0, G), [G, 2G), ...
  shifted_group = (position + group_size // 2) // group_size  # [0, G/2), [G/2, 3G/2), ..., [T - G/2, T)
  causal = position[None, :] <= position[:, None]
  masks = [causal & (groups[:, None] == groups[None, :])
           for groups in [plain_group] * (heads // 2) + [shifted_group] * (heads // 2)]
  return jnp.asarray(np.stack(masks)[None])


@pytest.mark.parametrize("length,group_size,heads,kv_heads", [
    (64, 16, 4, 2),  # grouped-query heads split evenly between the halves
    (64, 16, 4, 1),  # one key/value head serves both halves
    (48, 8, 2, 2),
    (16, 16, 2, 1),  # one group: the shifted half is just the two half groups
    (4096, 1024, 2, 1),  # LongLoRA's G = T/4
])
def test_matches_group_definition(length, group_size, heads, kv_heads):
  q, k, v = _inputs(2 if length < 4096 else 1, length, heads, kv_heads, 8)
  mask = _s2_mask(length, heads, group_size)
  projection = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape, np.float32))
  out, grads = _value_and_grads(lambda q, k, v: ops.s2_attention(q, k, v, group_size=group_size), q, k, v, projection)
  expected, expected_grads = _value_and_grads(ops.naive_attention, q, k, v, projection, mask)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  for grad, expected_grad in zip(grads, expected_grads):
    np.testing.assert_allclose(grad, expected_grad, atol=1e-5)


def test_future_tokens_never_change_the_past():
  # LongLoRA's torch.roll version lets the first G/2 tokens of the shifted heads see the last G/2.
  length, group_size, heads = 64, 16, 4
  q, k, v = _inputs(1, length, heads, 2, 8)
  noise = _inputs(1, length, heads, 2, 8, seed=7)
  s2 = jax.jit(lambda q, k, v: ops.s2_attention(q, k, v, group_size=group_size))
  out = s2(q, k, v)
  half = group_size // 2
  for i in (0, 3, half - 1, half, group_size - 1, group_size, length - half - 1, length - half, length - 2):
    later = np.arange(length) > i
    perturbed = [jnp.where(later[None, :, None, None], x + n, x) for x, n in zip((q, k, v), noise)]
    out_perturbed = s2(*perturbed)
    np.testing.assert_array_equal(out_perturbed[:, :i + 1], out[:, :i + 1], err_msg=f"position {i}")
    assert not np.allclose(out_perturbed[:, i + 1:], out[:, i + 1:])


@pytest.mark.parametrize("length,group_size", [(64, 12), (64, 7), (60, 16)])
def test_bad_group_size_raises(length, group_size):
  q, k, v = _inputs(1, length, 2, 1, 8)
  with pytest.raises(ValueError, match="group_size"):
    ops.s2_attention(q, k, v, group_size=group_size)
