"""CEMA (MEGALODON, arXiv 2404.08801) against a float64 NumPy loop of the recurrence: both methods, state carry, grads.

Errors are measured relative to max |y| of the reference (per output tensor), since y passes through zero.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax import ops

METHODS = ("fft", "scan")
BATCH, LENGTH, CHANNELS, STATES = 2, 4096, 8, 4
TOLERANCE = 1e-4  # max |error| / max |reference|
cema = jax.jit(ops.cema, static_argnames="method")


def _reference(x, p, q, gamma, omega, h0=None):
  """h_t = p x_t + q h_{t-1}; y_t = Re(sum_n gamma h_t) + omega x_t, step by step in float64 / complex128."""
  x, p, omega = (np.asarray(a, np.float64) for a in (x, p, omega))
  q, gamma = np.asarray(q, np.complex128), np.asarray(gamma, np.complex128)
  batch, length, channels = x.shape
  state = np.zeros((batch,) + p.shape, np.complex128) if h0 is None else np.asarray(h0, np.complex128)
  y = np.empty((batch, length, channels))
  for t in range(length):
    state = p * x[:, t, :, None] + q * state
    y[:, t] = (gamma * state).sum(-1).real + omega * x[:, t]
  return y, state


def _inputs(seed=0, batch=BATCH, length=LENGTH, channels=CHANNELS, states=STATES, max_radius=0.999):
  """Random inputs with |q| in [0.5, max_radius] (max_radius reached on one entry) and any phase."""
  rng = np.random.default_rng(seed)
  radius = rng.uniform(0.5, max_radius, (channels, states))
  radius[0, 0] = max_radius
  theta = rng.uniform(-np.pi, np.pi, (channels, states))
  q = (radius * np.exp(1j * theta)).astype(np.complex64)
  p = rng.uniform(0.1, 1.0, (channels, states)).astype(np.float32)
  gamma = ((rng.normal(size=(channels, states)) + 1j * rng.normal(size=(channels, states))) / np.sqrt(states))
  omega = rng.uniform(-1, 1, channels).astype(np.float32)
  x = rng.normal(size=(batch, length, channels)).astype(np.float32)
  h0 = (rng.normal(size=(batch, channels, states)) + 1j * rng.normal(size=(batch, channels, states))) * 5
  return x, p, q, gamma.astype(np.complex64), omega, h0.astype(np.complex64)


def _relative_error(actual, expected):
  return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


@pytest.fixture(scope="module")
def problem():
  x, p, q, gamma, omega, h0 = _inputs()
  return (x, p, q, gamma, omega, h0), {False: _reference(x, p, q, gamma, omega), True: _reference(
      x, p, q, gamma, omega, h0)}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_loop_at_4096_steps(problem, method, with_state):
  (x, p, q, gamma, omega, h0), references = problem
  y_expected, h_expected = references[with_state]
  y, h_last = cema(x, p, q, gamma, omega, h0 if with_state else None, method=method)
  assert y.dtype == jnp.float32 and y.shape == x.shape
  assert h_last.dtype == jnp.complex64 and h_last.shape == h0.shape
  assert _relative_error(y, y_expected) <= TOLERANCE
  assert _relative_error(h_last, h_expected) <= TOLERANCE


@pytest.mark.parametrize("method", METHODS)
def test_two_calls_with_carried_state_equal_one(method):
  x, p, q, gamma, omega, h0 = _inputs(seed=1, length=600)
  split = 377
  y_whole, h_whole = cema(x, p, q, gamma, omega, h0, method=method)
  y_first, h_first = cema(x[:, :split], p, q, gamma, omega, h0, method=method)
  y_second, h_second = cema(x[:, split:], p, q, gamma, omega, h_first, method=method)
  y_split = np.concatenate([y_first, y_second], axis=1)
  assert _relative_error(y_split, np.asarray(y_whole, np.float64)) <= TOLERANCE
  assert _relative_error(h_second, np.asarray(h_whole, np.complex128)) <= TOLERANCE


def test_bfloat16_inputs_compute_in_float32():
  x, p, q, gamma, omega, _ = _inputs(seed=2, length=256)
  x_bf16 = jnp.asarray(x, jnp.bfloat16)
  y, h_last = cema(x_bf16, jnp.asarray(p, jnp.bfloat16), q, gamma, jnp.asarray(omega, jnp.bfloat16))
  assert y.dtype == jnp.float32 and h_last.dtype == jnp.complex64
  y_expected, _ = _reference(np.asarray(x_bf16.astype(jnp.float32)), np.asarray(jnp.asarray(p, jnp.bfloat16),
                             np.float32), q, gamma, np.asarray(jnp.asarray(omega, jnp.bfloat16), np.float32))
  assert _relative_error(y, y_expected) <= TOLERANCE


def test_gradients_flow_and_agree_between_methods():
  x, p, q, gamma, omega, h0 = _inputs(seed=3, length=256)
  weight = np.random.default_rng(4).normal(size=x.shape).astype(np.float32)

  def loss(x, p, q_real, q_imag, gamma, omega, method):
    y, h_last = ops.cema(x, p, jax.lax.complex(q_real, q_imag), gamma, omega, h0, method=method)
    return jnp.sum(y * weight) + jnp.sum(jnp.abs(h_last) ** 2) * 1e-3

  args = (x, p, q.real, q.imag, gamma, omega)
  grads = {method: jax.jit(jax.grad(loss, argnums=range(6)), static_argnums=6)(*args, method) for method in METHODS}
  for name, from_fft, from_scan in zip(("x", "p", "q.real", "q.imag", "gamma", "omega"), grads["fft"],
                                       grads["scan"]):
    assert np.all(np.isfinite(from_fft)) and np.all(np.isfinite(from_scan)), name
    assert np.max(np.abs(from_fft)) > 0, name
    assert _relative_error(from_fft, np.asarray(from_scan)) <= 1e-4, name


@pytest.mark.parametrize("argument, shape", [("p", (CHANNELS + 1, STATES)), ("q", (CHANNELS, STATES + 1)),
                                             ("gamma", (STATES,)), ("omega", (CHANNELS, 1)),
                                             ("h0", (1, CHANNELS, STATES))])
def test_bad_shape_names_the_argument(argument, shape):
  x, p, q, gamma, omega, h0 = _inputs(seed=5, length=16)
  kwargs = dict(x=x, p=p, q=q, gamma=gamma, omega=omega, h0=h0)
  kwargs[argument] = np.zeros(shape, kwargs[argument].dtype)
  with pytest.raises(ValueError, match=f"cema: {argument} ") as error:
    ops.cema(**kwargs)
  assert "\n" not in str(error.value)


def test_bad_x_rank_and_method_raise():
  x, p, q, gamma, omega, _ = _inputs(seed=6, length=16)
  with pytest.raises(ValueError, match="cema: x "):
    ops.cema(x[0], p, q, gamma, omega)
  with pytest.raises(ValueError, match="method"):
    ops.cema(x, p, q, gamma, omega, method="loop")
