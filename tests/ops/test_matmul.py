"""ops.dense: the projection contraction whose CPU backward is written by hand; value and gradients against
plain dot_general autodiff and a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax.ops import dense
from longjax.ops import matmul


@pytest.mark.parametrize("x_shape,kernel_shape,n_in", [
    ((2, 5, 8), (8, 6), 1),            # [B, T, E] x [E, F]: MLP, lm head
    ((2, 5, 8), (8, 3, 4), 1),          # [B, T, E] x [E, H, D]: q/k/v projections
    ((2, 5, 3, 4), (3, 4, 8), 2),       # [B, T, H, D] x [H, D, E]: the output projection
    ((7, 8), (8, 6), 1),                # no batch dim
])
def test_dense_value_and_gradients_equal_dot_general_and_numpy(x_shape, kernel_shape, n_in):
  x = jax.random.normal(jax.random.key(0), x_shape)
  kernel = jax.random.normal(jax.random.key(1), kernel_shape)
  out_shape = x_shape[:len(x_shape) - n_in] + kernel_shape[n_in:]
  weights = jax.random.normal(jax.random.key(2), out_shape)
  contract = ((tuple(range(len(x_shape) - n_in, len(x_shape))), tuple(range(n_in))), ((), ()))

  def loss(fn):
    return lambda x, kernel: jnp.sum(jnp.sin(fn(x, kernel)) * weights)

  ours = jax.value_and_grad(loss(lambda x, k: dense(x, k, n_in)), argnums=(0, 1))(x, kernel)
  plain = jax.value_and_grad(loss(lambda x, k: jax.lax.dot_general(x, k, contract)), argnums=(0, 1))(x, kernel)
  assert jax.default_backend() == "cpu"  # the hand-written backward is the one under test
  np.testing.assert_allclose(ours[0], plain[0], rtol=1e-6)
  for a, b in zip(ours[1], plain[1]):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # NumPy: y = x2 @ k2 over flattened dims; dL/dy = cos(y) * weights; dx = dy @ k2^T, dk = x2^T @ dy
  x2 = np.asarray(x).reshape(-1, int(np.prod(kernel_shape[:n_in])))
  k2 = np.asarray(kernel).reshape(x2.shape[1], -1)
  dy = (np.cos(x2 @ k2) * np.asarray(weights).reshape(x2.shape[0], -1))
  np.testing.assert_allclose(ours[1][0], (dy @ k2.T).reshape(x_shape), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ours[1][1], (x2.T @ dy).reshape(kernel_shape), rtol=1e-4, atol=1e-5)


def test_dense_keeps_dtypes_in_bfloat16_and_under_remat_and_vmap():
  x = jax.random.normal(jax.random.key(0), (3, 4, 8), jnp.bfloat16)
  kernel = jax.random.normal(jax.random.key(1), (8, 5), jnp.bfloat16)
  grads = jax.grad(lambda x, k: jnp.sum(dense(x, k).astype(jnp.float32)), argnums=(0, 1))(x, kernel)
  assert grads[0].dtype == grads[1].dtype == jnp.bfloat16
  step = lambda x, k: jnp.sum(jnp.tanh(dense(x, k)))
  for transform in (jax.checkpoint, lambda f: jax.vmap(f, in_axes=(0, None))):
    f32 = x.astype(jnp.float32), kernel.astype(jnp.float32)
    got = jax.grad(lambda x, k: jnp.sum(transform(step)(x, k)), argnums=(0, 1))(*f32)
    want = jax.grad(lambda x, k: jnp.sum(transform(lambda x, k: jnp.sum(jnp.tanh(x @ k)))(x, k)),
                    argnums=(0, 1))(*f32)
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_dense_off_cpu_is_plain_dot_general(monkeypatch):
  monkeypatch.setattr(matmul.jax, "default_backend", lambda: "gpu")
  jaxpr = jax.make_jaxpr(lambda x, k: dense(x, k))(jnp.ones((2, 3)), jnp.ones((3, 4)))
  assert [e.primitive.name for e in jaxpr.eqns] == ["dot_general"]
