"""The MEGALODON block against a NumPy reference of its equations, written from XuezheMax/megalodon
(`modules/complex_exponential_moving_average.py`, `modules/timestep_norm.py`, `modules/moving_average_gated_attention.py`,
`modules/normalized_feedforward_network.py`, `model/mega.py`), with every parameter random (norm offsets and biases
too, so no term hides behind a zero init). RoPE is rotate-half here (the reference pairs adjacent coordinates).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax.config import MegalodonConfig, ModelConfig
from longjax.nn import megalodon as megalodon_lib
from longjax.ops import megalodon as megalodon_ops

WIDTH, HEADS, Z_DIM, VALUE_DIM, EMA_DIM, CHUNK, GROUPS, FFN = 32, 2, 16, 24, 4, 8, 4, 48
EPS = 1e-5
THETA = 10000.0


def _config(swiglu=True):
  return ModelConfig(block="megalodon", vocab_size=64, hidden_size=WIDTH, intermediate_size=FFN, num_layers=1,
                     num_heads=HEADS, num_kv_heads=HEADS,
                     megalodon=MegalodonConfig(z_dim=Z_DIM, value_dim=VALUE_DIM, ema_dim=EMA_DIM, chunk_size=CHUNK,
                                               norm_groups=GROUPS, swiglu=swiglu))


def _random_params(config, seed):
  """The block's parameters, every leaf drawn afresh: kernels ~ N(0, 1/fan_in), the rest ~ N(0, 0.3^2)
  (theta ~ N(0, 1): sigmoid(theta) spread over (0, 1))."""
  x = jnp.zeros((1, 4, WIDTH))
  shapes = jax.eval_shape(lambda: megalodon_lib.MegalodonBlock(config).init(jax.random.key(0), x, None, None, None))
  params = nn.unbox(shapes)["params"]
  leaves, tree = jax.tree_util.tree_flatten_with_path(params)
  rng = np.random.default_rng(seed)
  drawn = []
  for path, leaf in leaves:
    name = path[-1].key
    scale = 1.0 / math.sqrt(leaf.shape[0]) if name == "kernel" else 1.0 if name == "theta" else 0.3
    drawn.append(jnp.asarray(scale * rng.standard_normal(leaf.shape), jnp.float32))
  return jax.tree_util.tree_unflatten(tree, drawn)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _silu(x):
  return x * _sigmoid(x)


def _timestep_norm(x, weight, bias):
  """timestep_norm.py: group statistics over every element of the group at positions <= t (population)."""
  batch, length, width = x.shape
  groups = x.reshape(batch, length, GROUPS, width // GROUPS)
  count = np.arange(1, length + 1)[None, :, None] * (width // GROUPS)
  mean = np.cumsum(groups.sum(-1), axis=1) / count
  var = np.cumsum((groups ** 2).sum(-1), axis=1) / count - mean ** 2
  normed = (groups - mean[..., None]) / np.sqrt(var[..., None] + EPS)
  return normed.reshape(x.shape) * (weight + 1.0) + bias


def _cema(x, alpha, delta, theta, gamma, omega):
  """complex_exponential_moving_average.py `_calc_coeffs`, as the recurrence its FFT kernel sums:
  h_t = p x_t + q h_{t-1}, y_t = Re(sum_n gamma_n h_t,n) + omega x_t."""
  n = alpha.shape[-1]
  p = _sigmoid(alpha)
  phase = np.arange(1, n + 1)[None, :] * (2 * math.pi / n) * _sigmoid(theta)[:, None]
  q = (1.0 - _sigmoid(alpha) * _sigmoid(delta)) * np.exp(1j * phase)
  gamma_c = (gamma[..., 0] + 1j * gamma[..., 1]) * math.sqrt(1.0 / n)
  h = np.zeros((x.shape[0], x.shape[2], n), complex)
  out = []
  for t in range(x.shape[1]):
    h = p * x[:, t, :, None] + q * h
    out.append(np.real(np.sum(gamma_c * h, axis=-1)) + omega * x[:, t])
  return np.stack(out, axis=1)


def _rms_norm(x, weight=None):
  y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS)
  return y if weight is None else y * (weight + 1.0)


def _layer_norm(x, weight, bias):
  centered = x - x.mean(-1, keepdims=True)
  return centered / np.sqrt(np.mean(centered ** 2, axis=-1, keepdims=True) + EPS) * (weight + 1.0) + bias


def _rope(x, positions):
  """Rotate-half RoPE of x [B, T, H, d] at positions [T]."""
  dim = x.shape[-1]
  angle = positions[:, None] / THETA ** (np.arange(0, dim, 2) / dim)
  cos, sin = np.concatenate([np.cos(angle)] * 2, -1)[:, None], np.concatenate([np.sin(angle)] * 2, -1)[:, None]
  rotated = np.concatenate([-x[..., dim // 2:], x[..., :dim // 2]], axis=-1)
  return x * cos + rotated * sin


def reference_block(x, params, swiglu=True):
  """The MEGALODON layer (mega.py `MegaBlock.forward`: nffn(mega(x), x)) in float64."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  batch, length, _ = x.shape
  z_head, v_head = Z_DIM // HEADS, VALUE_DIM // HEADS
  residual = x
  x_n = _timestep_norm(x, p["timestep_norm"]["weight"], p["timestep_norm"]["bias"])
  cema = p["cema"]
  mx = _rms_norm(_cema(x_n, cema["alpha"], cema["delta"], cema["theta"], cema["gamma"], cema["omega"]),
                 p["ema_norm"]["weight"])
  z = _rms_norm((mx @ p["z_proj"]["kernel"] + p["z_bias"]).reshape(batch, length, HEADS, z_head))
  scale = ((p["qk_scale"] + 1.0) / math.sqrt(z_head)).reshape(2, HEADS, z_head)
  shift = p["qk_shift"].reshape(2, HEADS, z_head)
  q, k = z * scale[0] + shift[0], z * scale[1] + shift[1]
  v = _silu(x_n @ p["v_proj"]["kernel"] + p["v_bias"]).reshape(batch, length, HEADS, v_head)
  r = _silu(mx @ p["r_proj"]["kernel"] + p["r_bias"])
  attn = np.zeros((batch, length, HEADS, v_head))
  for start in range(0, length, CHUNK):  # causal softmax inside each chunk, scale 1, RoPE restarting per chunk
    stop = min(start + CHUNK, length)
    positions = np.arange(stop - start)
    qc, kc = _rope(q[:, start:stop], positions), _rope(k[:, start:stop], positions)
    scores = np.einsum("BTHD,BSHD->BHTS", qc, kc)
    scores = np.where(positions[:, None] >= positions[None, :], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attn[:, start:stop] = np.einsum("BHTS,BSHE->BTHE", probs, v[:, start:stop])
  h = mx @ p["h1_proj"]["kernel"] + p["h1_bias"] + (attn.reshape(batch, length, VALUE_DIM) * r) @ p["h2_proj"][
      "kernel"]
  h = h + residual  # moving_average_gated_attention.py: out = h + residual
  u = _layer_norm(h, p["ffn_norm"]["weight"], p["ffn_norm"]["bias"])
  hidden = _silu(u @ p["fc1"]["kernel"])
  if swiglu:
    hidden = hidden * (u @ p["fc3"]["kernel"])
  return hidden @ p["fc2"]["kernel"] + residual  # normalized_feedforward_network.py: the BLOCK input, not h


def _apply(config, params, x):
  """One compiled call (op by op, the block's hundred-odd ops each compile on their own: ten times slower)."""
  out, state = jax.jit(lambda p, x: megalodon_lib.MegalodonBlock(config).apply({"params": p}, x, None, None, None))(
      params, x)
  assert state is None
  return out


@pytest.mark.parametrize("swiglu", [True, False], ids=["swiglu", "silu"])
def test_block_matches_the_reference_equations(swiglu):
  """2 rows of 20 steps: two whole chunks of 8 and a partial one."""
  config = _config(swiglu)
  params = _random_params(config, seed=3)
  x = np.random.default_rng(4).standard_normal((2, 20, WIDTH)).astype(np.float32)
  np.testing.assert_allclose(_apply(config, params, jnp.asarray(x)), reference_block(np.float64(x), params, swiglu),
                             rtol=2e-4, atol=2e-4)


def test_with_the_ffn_output_zeroed_the_block_returns_its_input():
  """The two-hop residual: the FFN adds to the block's input x, not to h = attention + x, so with fc2 = 0 the
  block is the identity (bit for bit), whatever the attention half computed."""
  config = _config()
  params = _random_params(config, seed=5)
  params["fc2"]["kernel"] = jnp.zeros_like(params["fc2"]["kernel"])
  x = jnp.asarray(np.random.default_rng(6).standard_normal((2, 20, WIDTH)), jnp.float32)
  np.testing.assert_array_equal(_apply(config, params, x), x)


def test_cema_coefficients_follow_the_reference():
  """|q| = 1 - sigmoid(alpha) sigmoid(delta), angle(q) = (j + 1) 2 pi / N sigmoid(theta) (one theta per channel),
  p = sigmoid(alpha) (real), gamma = (real + i imag) sqrt(1/N): `_calc_coeffs` of the reference."""
  width, n = 6, 8
  rng = np.random.default_rng(8)
  alpha, delta = (2.0 * rng.standard_normal((width, n)).astype(np.float32) for _ in range(2))
  theta = 2.0 * rng.standard_normal(width).astype(np.float32)
  gamma = rng.standard_normal((width, n, 2)).astype(np.float32)
  # NumPy in, not traced: an index past the (real, imag) axis raises instead of being clamped as under jit
  p, q, gamma_c = (np.asarray(a) for a in megalodon_ops.cema_coefficients(alpha, delta, theta, gamma))
  alpha, delta, theta, gamma = (np.asarray(a, np.float64) for a in (alpha, delta, theta, gamma))
  assert p.dtype == np.float32 and q.dtype == gamma_c.dtype == np.complex64
  np.testing.assert_allclose(p, _sigmoid(alpha), rtol=1e-6)
  np.testing.assert_allclose(np.abs(q), 1.0 - _sigmoid(alpha) * _sigmoid(delta), rtol=1e-5, atol=1e-7)
  phase = np.arange(1, n + 1)[None, :] * (2 * math.pi / n) * _sigmoid(theta)[:, None]
  # angle(q) compared on the unit circle: the phase reaches past pi
  np.testing.assert_allclose(q / np.abs(q), np.exp(1j * phase), atol=1e-5)
  np.testing.assert_allclose(gamma_c, (gamma[..., 0] + 1j * gamma[..., 1]) / math.sqrt(n), rtol=1e-6)


def test_cema_coefficients_of_bfloat16_parameters_are_computed_in_float32():
  """Parameters stored in bfloat16: the sigmoids and the phase run in float32 (DESIGN: coefficients in float32),
  so the coefficients equal those of the same values held in float32."""
  rng = np.random.default_rng(9)
  width, n = 6, 8
  params = [jnp.asarray(2.0 * rng.standard_normal(shape), jnp.bfloat16)
            for shape in ((width, n), (width, n), (width,), (width, n, 2))]
  low = megalodon_ops.cema_coefficients(*params)
  full = megalodon_ops.cema_coefficients(*(x.astype(jnp.float32) for x in params))
  assert [x.dtype for x in low] == [jnp.float32, jnp.complex64, jnp.complex64]
  for a, b in zip(low, full):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("center", [False, True])
def test_offset_norms_of_small_inputs_feel_eps(center):
  """Inputs of mean square ~1e-5: eps moves the result by ~30%, so its sign and place show."""
  rng = np.random.default_rng(5)
  x = (3e-3 * rng.normal(size=(2, 3, WIDTH))).astype(np.float32)
  weight, bias = (0.3 * rng.normal(size=WIDTH)).astype(np.float32), (0.3 * rng.normal(size=WIDTH)).astype(np.float32)
  got = megalodon_ops.offset_norm(jnp.asarray(x), jnp.asarray(weight), jnp.asarray(bias) if center else None, EPS,
                                  center=center)
  want = _layer_norm(x, weight, bias) if center else _rms_norm(x, weight)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("center", [False, True])
def test_offset_norms_return_the_input_dtype(center):
  """Computed in float32, returned in the input's dtype: bfloat16 in, bfloat16 out (within its rounding)."""
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(2, 3, WIDTH)), jnp.bfloat16)
  weight, bias = (jnp.asarray(0.3 * rng.normal(size=WIDTH), jnp.float32) for _ in range(2))
  got = megalodon_ops.offset_norm(x, weight, bias if center else None, EPS, center=center)
  x64 = np.asarray(x.astype(jnp.float32), np.float64)
  want = _layer_norm(x64, np.asarray(weight), np.asarray(bias)) if center else _rms_norm(x64, np.asarray(weight))
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2, atol=1e-2)  # bfloat16: 8 bits
