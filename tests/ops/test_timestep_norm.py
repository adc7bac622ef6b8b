"""Timestep norm against a float64 NumPy definition: all real elements of a group up to each step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax import ops

EPS = 1e-5


def _reference(x, weight, bias, num_groups, mask=None):
  """For every t, the mean and population variance of the group's elements at real positions <= t."""
  x = np.asarray(x, np.float64)
  batch, length, dim = x.shape
  size = dim // num_groups
  mask = np.ones((batch, length), bool) if mask is None else np.asarray(mask, bool)
  y = np.zeros_like(x)
  count = np.zeros(batch, np.int64)
  mean = np.zeros((batch, num_groups))
  var = np.zeros((batch, num_groups))
  for b in range(batch):
    for t in range(length):
      if not mask[b, t]:
        continue
      seen = x[b, :t + 1][mask[b, :t + 1]].reshape(-1, num_groups, size)  # [real steps, G, D/G]
      mean[b], var[b] = seen.mean(axis=(0, 2)), seen.var(axis=(0, 2))
      normed = (x[b, t].reshape(num_groups, size) - mean[b, :, None]) / np.sqrt(var[b, :, None] + EPS)
      y[b, t] = normed.reshape(dim) * (1.0 + weight) + bias
      count[b] += 1
  return y, (count, mean, var)


def _inputs(seed, batch=2, length=96, dim=32, offset=3.0):
  rng = np.random.default_rng(seed)
  scale = np.exp(rng.normal(size=(1, length, 1)) * 0.5) * np.exp(rng.normal(size=(1, 1, dim)) * 0.3)
  x = (rng.normal(size=(batch, length, dim)) * scale + offset).astype(np.float32)
  weight = (rng.normal(size=dim) * 0.2).astype(np.float32)
  bias = (rng.normal(size=dim) * 0.2).astype(np.float32)
  return x, weight, bias


def _padding(batch, length, seed=0):
  """A masked prefix on row 0, a masked tail on row 1, scattered holes on both."""
  rng = np.random.default_rng(seed)
  mask = rng.random((batch, length)) > 0.2
  mask[0, :7] = False
  mask[1, -11:] = False
  return mask


def _check_state(state, expected, rtol):
  count, mean, var = state
  np.testing.assert_array_equal(np.asarray(count), expected[0])
  np.testing.assert_allclose(np.asarray(mean), expected[1], rtol=rtol, atol=rtol)
  np.testing.assert_allclose(np.asarray(var), expected[2], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("num_groups", [1, 4, 32])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_definition(num_groups, masked):
  x, weight, bias = _inputs(num_groups)
  mask = _padding(*x.shape[:2]) if masked else None
  y, state = ops.timestep_norm(x, weight, bias, num_groups=num_groups, mask=mask)
  expected_y, expected_state = _reference(x, weight, bias, num_groups, mask)
  assert y.dtype == jnp.float32 and state[0].dtype == jnp.int32 and state[1].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y), expected_y, rtol=1e-5, atol=2e-5)
  _check_state(state, expected_state, 1e-5)


def test_large_offset_is_not_cancelled():
  """Mean 1000, std ~1: E[x^2] - E[x]^2 about a pivot keeps float32 variance accurate."""
  x, weight, bias = _inputs(7, length=128, dim=16, offset=1000.0)
  y, state = jax.jit(functools.partial(ops.timestep_norm, num_groups=4))(x, weight, bias)
  expected_y, expected_state = _reference(x, weight, bias, 4)
  np.testing.assert_allclose(np.asarray(y), expected_y, rtol=1e-3, atol=1e-3)
  _check_state(state, expected_state, 1e-4)


@pytest.mark.parametrize("masked", [False, True])
def test_state_carry_equals_one_call(masked):
  x, weight, bias = _inputs(3, length=128)
  mask = _padding(*x.shape[:2], seed=1) if masked else None
  split = 45
  y, state = ops.timestep_norm(x, weight, bias, num_groups=8, mask=mask)
  first, carried = ops.timestep_norm(x[:, :split], weight, bias, num_groups=8,
                                     mask=None if mask is None else mask[:, :split])
  second, final = ops.timestep_norm(x[:, split:], weight, bias, num_groups=8, state=carried,
                                    mask=None if mask is None else mask[:, split:])
  np.testing.assert_allclose(np.concatenate([first, second], axis=1), y, rtol=1e-5, atol=2e-5)
  _check_state(final, [np.asarray(s) for s in state], 1e-5)
  _, expected_state = _reference(x, weight, bias, 8, mask)
  _check_state(final, expected_state, 1e-5)


def test_all_padding_keeps_state_and_outputs_zero():
  x, weight, bias = _inputs(4, length=16)
  _, state = ops.timestep_norm(x, weight, bias, num_groups=4)
  y, after = ops.timestep_norm(x, weight, bias, num_groups=4, state=state, mask=np.zeros(x.shape[:2], np.float32))
  assert not np.asarray(y).any()
  for kept, before in zip(after, state):
    np.testing.assert_array_equal(np.asarray(kept), np.asarray(before))


def test_bfloat16_input_has_float32_statistics():
  x, weight, bias = _inputs(5, length=64)
  x16 = jnp.asarray(x, jnp.bfloat16)
  mask = _padding(*x.shape[:2], seed=2)
  y, state = ops.timestep_norm(x16, weight, bias, num_groups=4, mask=mask)
  # The reference sees the same bf16-rounded inputs, so only the output rounding differs.
  expected_y, expected_state = _reference(np.asarray(x16, np.float32), weight, bias, 4, mask)
  assert y.dtype == jnp.bfloat16 and state[1].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y, np.float32), expected_y, rtol=1e-2, atol=2e-2)
  _check_state(state, expected_state, 1e-5)


def test_gradients_are_finite_with_a_masked_prefix():
  x, weight, bias = _inputs(6, length=32)
  mask = _padding(*x.shape[:2], seed=3)

  def loss(x, weight, bias):
    y, state = ops.timestep_norm(x, weight, bias, num_groups=4, mask=mask)
    return jnp.sum(jnp.sin(y)) + jnp.sum(state.mean) + jnp.sum(state.var)

  grads = jax.grad(loss, argnums=(0, 1, 2))(x, weight, bias)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)
  assert not np.asarray(grads[0])[~mask].any()


@pytest.mark.parametrize("num_groups", [5, 0])
def test_bad_num_groups(num_groups):
  x, weight, bias = _inputs(0, length=4)
  with pytest.raises(ValueError, match=r"num_groups=.*32$"):
    ops.timestep_norm(x, weight, bias, num_groups=num_groups)
