"""Complex exponential moving average, the CEMA of MEGALODON (Ma et al. 2024, arXiv 2404.08801, eqs. 5-6).

Per channel d and EMA dimension n, with h_{-1} = h0 (zeros when None):
  h_t = p x_t + q h_{t-1},   y_t = Re(sum_n gamma_n h_{t,n}) + omega x_t.
Reference: XuezheMax/megalodon `megalodon/modules/complex_exponential_moving_average.py` (which
convolves by FFT over the whole sequence). Two parallel forms compute the same thing:
  fft:  y = causal_conv(x, K) + Re(sum_n gamma q^(t+1) h0) + omega x,  K[d, j] = Re(sum_n gamma p q^j);
  scan: jax.lax.associative_scan over the affine maps h -> q h + p x_t.
Powers are exp(j log q) with log q = log|q| + i angle(q), never repeated products, and log|q| is
taken from exact products (see _log_abs). What remains is the float32 rounding of angle(q), a phase
error ~ j * 1e-7 at step j: measured against a float64 loop (relative to max |y|), fft is 2e-5 at
T = 4096, |q| = 0.999 and 7e-4 at T = 32768, |q| = 0.9999, where scan is 2e-5. Everything is float32 /
complex64 whatever the input dtypes; y is float32 and the state h complex64.
"""

import math

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST  # TF32 matmuls on GPU would cost ~3 digits of the kernel sums


def _split(value):
  """Veltkamp split of float32: value = high + low, each with at most 12 significant bits, so products are exact."""
  scaled = value * 4097.0
  high = scaled - (scaled - value)
  return high, value - high


def _log_abs(q):
  """log|q| to float32 relative accuracy as 0.5 log1p(|q|^2 - 1), with |q|^2 - 1 summed from exact products.

  jnp.log(jnp.abs(q)) rounds |q| first: an absolute error ~6e-8 in log|q| that j = 3e4 steps turn into
  a 2e-3 error of |q|^j. Here the larger component's squared high part minus 1 is exact (Sterbenz) and
  so is adding the other's squared high part, which nearly cancels it when |q| is near 1.
  """
  real, imag = jnp.abs(q.real), jnp.abs(q.imag)
  larger, smaller = jnp.maximum(real, imag), jnp.minimum(real, imag)
  (larger_high, larger_low), (smaller_high, smaller_low) = _split(larger), _split(smaller)
  square_minus_one = ((larger_high * larger_high - 1.0) + smaller_high * smaller_high
                      + 2.0 * (larger_high * larger_low + smaller_high * smaller_low)
                      + (larger_low * larger_low + smaller_low * smaller_low))
  return 0.5 * jnp.log1p(square_minus_one)


def _powers(q, count: int):
  """q complex64 [D, N] -> q^j for j = 0..count-1, complex64 [D, N, count], as exp(j log q)."""
  return _powers_at(q, jnp.arange(count, dtype=jnp.float32))


def _powers_at(q, steps):
  """q^j for the float32 exponents `steps` [S]: complex64 [D, N, S]."""
  magnitude = jnp.exp(_log_abs(q)[..., None] * steps)
  phase = jnp.angle(q)[..., None] * steps
  return jax.lax.complex(magnitude * jnp.cos(phase), magnitude * jnp.sin(phase))


def _real_times_complex(spec: str, real, cplx):
  """einsum of a real and a complex operand as two real einsums (no complex cast of the real one)."""
  return jax.lax.complex(jnp.einsum(spec, real, cplx.real, precision=HIGHEST),
                         jnp.einsum(spec, real, cplx.imag, precision=HIGHEST))


KERNEL_BLOCK = 1024  # time steps of the EMA kernel built at once


def _kernel(weights, q, length: int):
  """K[t, d] = Re(sum_n weights q^t), float32 [T, D], built KERNEL_BLOCK steps at a time under remat, so
  neither pass holds the [D, N, T] powers (they dominated training memory: 32 KiB a token a layer at D=256)."""
  blocks = -(-length // KERNEL_BLOCK)

  @jax.checkpoint
  def block(start):
    steps = start + jnp.arange(KERNEL_BLOCK, dtype=jnp.float32)
    return jnp.einsum("DN,DNT->TD", weights, _powers_at(q, steps), precision=HIGHEST).real

  starts = jnp.arange(blocks, dtype=jnp.float32) * KERNEL_BLOCK
  return jax.lax.map(block, starts).reshape(blocks * KERNEL_BLOCK, -1)[:length]


def _cema_fft(x, p, q, gamma, h0):
  """FFT causal convolution with K[d, j] = Re(sum_n gamma p q^j); h_T from a power-weighted sum."""
  length = x.shape[1]
  kernel = _kernel(gamma * p, q, length)
  fft_len = 2 ** math.ceil(math.log2(2 * length))  # >= 2T: the circular convolution is a causal one
  y = jnp.fft.irfft(jnp.fft.rfft(x, fft_len, axis=1) * jnp.fft.rfft(kernel, fft_len, axis=0), fft_len,
                    axis=1)[:, :length]
  # h_T = sum_j q^(T-1-j) p x_j + q^T h0 (in training nothing reads it, and XLA drops it)
  powers = _powers(q, length + 1)  # [D, N, T+1]: q^0 .. q^T
  h_last = p * _real_times_complex("BTD,DNT->BDN", x, powers[..., length - 1::-1])
  if h0 is not None:
    y = y + jnp.einsum("BDN,DNT->BTD", gamma * h0, powers[..., 1:], precision=HIGHEST).real
    h_last = h_last + powers[..., length] * h0
  return y, h_last


def _cema_scan(x, p, q, gamma, h0):
  """Associative scan over (a, b) pairs, (a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2)."""
  batch, length, _ = x.shape
  inputs = p * x[..., None].astype(jnp.complex64)  # [B, T, D, N]
  if h0 is not None:
    inputs = inputs.at[:, 0].add(q * h0)
  decays = jnp.broadcast_to(q, (batch, length) + q.shape)

  def combine(earlier, later):
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2

  _, states = jax.lax.associative_scan(combine, (decays, inputs), axis=1)
  y = jnp.einsum("DN,BTDN->BTD", gamma, states, precision=HIGHEST).real
  return y, states[:, -1]


METHODS = {"fft": _cema_fft, "scan": _cema_scan}


def _check_shape(name: str, array, expected: tuple[int, ...], layout: str):
  if array.shape != expected:
    raise ValueError(f"cema: {name} must have shape {layout} = {list(expected)}, got {list(array.shape)}")


def cema(x, p, q, gamma, omega, h0=None, *, method: str = "fft"):
  """Complex EMA over time (MEGALODON, arXiv 2404.08801); returns (y float32 [B,T,D], h_T complex64 [B,D,N]).

  x [B, T, D] real; p [D, N] real; q [D, N] complex (0 < |q| < 1); gamma [D, N] complex (already scaled);
  omega [D] real; h0 [B, D, N] complex state before step 0, or None for zeros. method: "fft" or "scan".
  """
  if x.ndim != 3:
    raise ValueError(f"cema: x must be [B, T, D], got shape {list(x.shape)}")
  batch, length, channels = x.shape
  if length < 1:
    raise ValueError("cema: x must have at least one time step, got T = 0")
  if p.ndim != 2:
    raise ValueError(f"cema: p must be [D, N], got shape {list(p.shape)}")
  dims = (channels, p.shape[1])
  _check_shape("p", p, dims, "[D, N]")
  _check_shape("q", q, dims, "[D, N]")
  _check_shape("gamma", gamma, dims, "[D, N]")
  _check_shape("omega", omega, (channels,), "[D]")
  if h0 is not None:
    _check_shape("h0", h0, (batch,) + dims, "[B, D, N]")
  if method not in METHODS:
    raise ValueError(f"cema: method={method!r} is not known; allowed: {', '.join(METHODS)}")
  x, p, omega = (jnp.asarray(a, jnp.float32) for a in (x, p, omega))
  q, gamma = jnp.asarray(q, jnp.complex64), jnp.asarray(gamma, jnp.complex64)
  h0 = None if h0 is None else jnp.asarray(h0, jnp.complex64)
  y, h_last = METHODS[method](x, p, q, gamma, h0)
  return y + omega * x, h_last
