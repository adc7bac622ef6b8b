"""Every positional method against Hugging Face transformers (or, where it has none, an independent NumPy float64
implementation of the formula), plus worked values from the papers and the one-compile property of dynamic methods.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.phi.modeling_phi import PhiRotaryEmbedding

from longjax.config import RopeConfig
from longjax.positional import frequencies

RTOL = 1e-6
L = 4096  # original_max_position_embeddings
GRID = list(itertools.product((64, 128), (1e4, 5e5), (2.0, 8.0, 16.0), (1.0, 0.5)))  # head_dim, theta, factor, p
GRID_IDS = [f"hd{h}-theta{t:g}-s{s:g}-p{p:g}" for h, t, s, p in GRID]


def hf_config(head_dim, rope_parameters, max_position_embeddings, partial_rotary_factor=1.0):
  """A transformers 5.x LlamaConfig; partial_rotary_factor goes in as a config attribute and lands in rope_parameters."""
  kwargs = {} if partial_rotary_factor == 1.0 else {"partial_rotary_factor": partial_rotary_factor}
  config = transformers.LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                                    max_position_embeddings=max_position_embeddings,
                                    rope_parameters=dict(rope_parameters), **kwargs)
  assert config.rope_parameters.get("partial_rotary_factor", 1.0) == partial_rotary_factor
  return config


def hf_init(head_dim, rope_parameters, max_position_embeddings, partial_rotary_factor=1.0, seq_len=None):
  """transformers' ROPE_INIT_FUNCTIONS[rope_type] -> (inv_freq float64 numpy, attention_factor float)."""
  config = hf_config(head_dim, rope_parameters, max_position_embeddings, partial_rotary_factor)
  inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[rope_parameters["rope_type"]](config, "cpu", seq_len=seq_len)
  return inv_freq.double().numpy(), float(attention_factor)


def hf_module_at(config, seq_len):
  """What LlamaRotaryEmbedding uses after a forward whose largest position is seq_len - 1 (the dynamic path:
  transformers passes seq_len = max(position_ids) + 1, a tensor, to the init function)."""
  rotary = LlamaRotaryEmbedding(config)
  rotary(torch.zeros(1, dtype=torch.float32), torch.tensor([[seq_len - 1]]))
  return rotary.inv_freq.double().numpy(), float(rotary.attention_scaling)


def ours(rope, head_dim, seq_len=None):
  rope.validate(head_dim)
  freqs = frequencies(rope, head_dim, seq_len)
  assert freqs.inv_freq.dtype == jnp.float32 and freqs.inv_freq.shape == (rope.rotary_dim(head_dim) // 2,)
  assert freqs.attention_factor.dtype == jnp.float32 and freqs.attention_factor.shape == ()
  return np.asarray(freqs.inv_freq, np.float64), float(freqs.attention_factor)


def assert_match(got, want, what=""):
  (inv, factor), (inv_ref, factor_ref) = got, want
  assert inv.shape == inv_ref.shape, what
  np.testing.assert_allclose(inv, inv_ref, rtol=RTOL, atol=0, err_msg=f"inv_freq {what}")
  np.testing.assert_allclose(factor, factor_ref, rtol=RTOL, atol=0, err_msg=f"attention_factor {what}")


# ---- methods that transformers has ----

@pytest.mark.parametrize("head_dim,theta,factor,partial", GRID, ids=GRID_IDS)
def test_default_and_linear_match_transformers(head_dim, theta, factor, partial):
  config = hf_config(head_dim, {"rope_type": "default", "rope_theta": theta}, L, partial)
  inv_ref, _ = PhiRotaryEmbedding.compute_default_rope_parameters(config)  # Llama's ignores partial_rotary_factor
  default = RopeConfig(rope_theta=theta, partial_rotary_factor=partial)
  assert_match(ours(default, head_dim), (inv_ref.double().numpy(), 1.0))
  linear = RopeConfig(rope_type="linear", rope_theta=theta, factor=factor, partial_rotary_factor=partial)
  assert_match(ours(linear, head_dim),
               hf_init(head_dim, {"rope_type": "linear", "rope_theta": theta, "factor": factor}, L, partial))


@pytest.mark.parametrize("head_dim,theta,factor,partial", GRID, ids=GRID_IDS)
def test_dynamic_ntk_matches_transformers_below_and_above_original_length(head_dim, theta, factor, partial):
  # transformers' L is max_position_embeddings; ours is original_max_position_embeddings.
  config = hf_config(head_dim, {"rope_type": "dynamic", "rope_theta": theta, "factor": factor}, L, partial)
  rope = RopeConfig(rope_type="dynamic", rope_theta=theta, factor=factor, original_max_position_embeddings=L,
                    partial_rotary_factor=partial)
  default = ours(RopeConfig(rope_theta=theta, partial_rotary_factor=partial), head_dim)
  for seq_len in (1, 1000, L, L + 1, 3 * L + 7, 40 * L):
    want = hf_module_at(config, seq_len)
    assert_match(ours(rope, head_dim, seq_len), want, f"seq_len={seq_len}")
    if seq_len <= L:
      assert_match(want, default, f"seq_len={seq_len}")  # the reference really is unscaled here
  assert_match(ours(rope, head_dim, None), default, "seq_len=None")
  assert not np.allclose(ours(rope, head_dim, 2 * L)[0], default[0], rtol=1e-3)


YARN_VARIANTS = {
    "plain": {},
    "no_truncate": {"truncate": False},
    "truncate": {"truncate": True},
    "betas": {"beta_fast": 16.0, "beta_slow": 2.0},
    "mscale_pair": {"mscale": 0.707, "mscale_all_dim": 1.0},
    "mscale_pair_equal": {"mscale": 1.0, "mscale_all_dim": 1.0},
    "mscale_only": {"mscale": 0.707},  # transformers ignores a lone mscale: 0.1 ln s + 1
    "explicit_attention_factor": {"attention_factor": 1.5, "mscale": 0.707, "mscale_all_dim": 1.0},
}


@pytest.mark.parametrize("variant", sorted(YARN_VARIANTS))
@pytest.mark.parametrize("head_dim,theta,factor,partial", GRID, ids=GRID_IDS)
def test_yarn_matches_transformers(head_dim, theta, factor, partial, variant):
  extra = YARN_VARIANTS[variant]
  params = {"rope_type": "yarn", "rope_theta": theta, "factor": factor, "original_max_position_embeddings": L, **extra}
  want = hf_init(head_dim, params, int(L * factor), partial)
  assert_match(ours(RopeConfig(partial_rotary_factor=partial, **params), head_dim), want, variant)


@pytest.mark.parametrize("theta,original,partial", [(1e4, 131072, 1.0), (1e4, 131072, 0.5), (100.0, 2**21, 1.0)])
def test_yarn_correction_range_edges_match_transformers(theta, original, partial):
  """A long L over a small base puts high beyond d/2 - 1 (clamp at d - 1, not d/2 - 1); the last case clamps
  low and high to the same dimension (the + 0.001 guard)."""
  params = {"rope_type": "yarn", "rope_theta": theta, "factor": 4.0, "original_max_position_embeddings": original}
  for extra in ({}, {"truncate": False}):
    want = hf_init(64, {**params, **extra}, 4 * original, partial)
    assert_match(ours(RopeConfig(partial_rotary_factor=partial, **params, **extra), 64), want, str(extra))


def test_yarn_mscale_semantics():
  """The attention factors themselves, so that a wrong rule cannot pass by agreeing with itself."""
  base = dict(rope_type="yarn", factor=16.0, original_max_position_embeddings=L)
  get_mscale = lambda s, m=1.0: 0.1 * m * math.log(s) + 1.0  # noqa: E731
  assert ours(RopeConfig(**base), 128)[1] == pytest.approx(get_mscale(16), rel=RTOL)
  assert ours(RopeConfig(mscale=0.707, **base), 128)[1] == pytest.approx(get_mscale(16), rel=RTOL)
  assert ours(RopeConfig(mscale=0.707, mscale_all_dim=1.0, **base), 128)[1] == pytest.approx(
      get_mscale(16, 0.707) / get_mscale(16, 1.0), rel=RTOL)
  assert ours(RopeConfig(mscale=1.0, mscale_all_dim=1.0, **base), 128)[1] == 1.0
  assert ours(RopeConfig(attention_factor=0.9, mscale=2.0, mscale_all_dim=1.0, **base), 128)[1] == pytest.approx(0.9)
  assert ours(RopeConfig(**{**base, "factor": 1.0}), 128)[1] == 1.0


@pytest.mark.parametrize("low_high", [(1.0, 4.0), (2.0, 8.0)])
@pytest.mark.parametrize("head_dim,theta,factor,partial", GRID, ids=GRID_IDS)
def test_llama3_matches_transformers(head_dim, theta, factor, partial, low_high):
  low, high = low_high
  params = {"rope_type": "llama3", "rope_theta": theta, "factor": factor, "original_max_position_embeddings": L,
            "low_freq_factor": low, "high_freq_factor": high}
  want = hf_init(head_dim, params, int(L * factor), partial)
  assert_match(ours(RopeConfig(partial_rotary_factor=partial, **params), head_dim), want)
  if (low, high) == (1.0, 4.0):  # our defaults are Meta's
    defaults = RopeConfig(rope_type="llama3", rope_theta=theta, factor=factor, original_max_position_embeddings=L,
                          partial_rotary_factor=partial)
    assert_match(ours(defaults, head_dim), want, "defaults")


def test_llama3_keeps_high_and_divides_low_frequencies():
  rope = RopeConfig(rope_type="llama3", rope_theta=5e5, factor=8.0, original_max_position_embeddings=8192)
  inv, _ = ours(rope, 128)
  default, _ = ours(RopeConfig(rope_theta=5e5), 128)
  wavelength = 2 * np.pi / default
  keep, divide = wavelength < 8192 / 4, wavelength > 8192 / 1
  assert keep.sum() > 10 and divide.sum() > 10 and (~keep & ~divide).sum() > 0
  np.testing.assert_allclose(inv[keep], default[keep], rtol=RTOL)
  np.testing.assert_allclose(inv[divide], default[divide] / 8, rtol=RTOL)


def _longrope_params(head_dim, theta, partial, seed):
  rng = np.random.default_rng(seed)
  half = int(head_dim * partial) // 2
  short = [float(x) for x in rng.uniform(1.0, 1.5, half)]
  long = [float(x) for x in np.sort(rng.uniform(1.0, 40.0, half))]
  return {"rope_type": "longrope", "rope_theta": theta, "short_factor": short, "long_factor": long,
          "original_max_position_embeddings": L}


@pytest.mark.parametrize("extra", [{}, {"attention_factor": 1.25}], ids=["paper_factor", "explicit"])
@pytest.mark.parametrize("head_dim,theta,factor,partial", GRID, ids=GRID_IDS)
def test_longrope_matches_transformers_both_sides_of_original_length(head_dim, theta, factor, partial, extra):
  params = {**_longrope_params(head_dim, theta, partial, seed=head_dim), "factor": factor, **extra}
  config = hf_config(head_dim, params, int(L * factor), partial)
  rope = RopeConfig(partial_rotary_factor=partial, **{k: tuple(v) if isinstance(v, list) else v
                                                       for k, v in params.items()})
  short_ref = hf_module_at(config, 10)
  long_ref = hf_module_at(config, L + 1)
  assert not np.allclose(short_ref[0], long_ref[0])
  assert_match(ours(rope, head_dim, None), short_ref, "seq_len=None")
  for seq_len in (1, L):
    assert_match(ours(rope, head_dim, seq_len), short_ref, f"seq_len={seq_len}")
  for seq_len in (L + 1, 8 * L):
    assert_match(ours(rope, head_dim, seq_len), long_ref, f"seq_len={seq_len}")
  if not extra:
    assert long_ref[1] == pytest.approx(math.sqrt(1 + math.log(factor) / math.log(L)), rel=1e-12)


def test_longrope_without_factor_has_attention_factor_one():
  """No factor and max_position_embeddings == L in transformers: both give 1 (ours cannot see max_position)."""
  params = _longrope_params(128, 1e4, 1.0, seed=0)
  want = hf_init(128, params, L)
  rope = RopeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
  assert_match(ours(rope, 128), want)
  assert want[1] == 1.0


# ---- methods that transformers does not have: independent float64 NumPy references ----

def numpy_inv_freq(theta, dim):
  return theta ** -(np.arange(0, dim, 2, dtype=np.float64) / dim)


def numpy_yarn(theta, dim, factor, original, beta_fast=32.0, beta_slow=1.0):
  """YaRN (arXiv 2309.00071 sec. 3.2-3.4), float64, truncate=True."""
  def correction_dim(rotations):
    return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))
  low = max(math.floor(correction_dim(beta_fast)), 0)
  high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
  if low == high:
    high += 0.001
  ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
  inv = numpy_inv_freq(theta, dim)
  attention = 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1
  return inv / factor * ramp + inv * (1 - ramp), attention


@pytest.mark.parametrize("alpha", [1.0, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("head_dim,theta,_,partial", GRID[::3], ids=GRID_IDS[::3])
def test_ntk_matches_numpy_formula(head_dim, theta, _, partial, alpha):
  dim = int(head_dim * partial)
  inv, attention = ours(RopeConfig(rope_type="ntk", rope_theta=theta, alpha=alpha, partial_rotary_factor=partial),
                        head_dim)
  want = numpy_inv_freq(theta * alpha ** (dim / (dim - 2)), dim)
  np.testing.assert_allclose(inv, want, rtol=RTOL, atol=0)
  assert attention == 1.0
  default = numpy_inv_freq(theta, dim)
  np.testing.assert_allclose(inv[0], default[0], rtol=1e-5)  # highest frequency unchanged
  np.testing.assert_allclose(inv[-1], default[-1] / alpha, rtol=1e-5)  # lowest exactly divided by alpha


def test_ntk_alpha_2_gives_theta_20k():
  """The 'NTK theta=20k' row of the YaRN paper's Table 1: alpha = 2, d = 128."""
  inv, _ = ours(RopeConfig(rope_type="ntk", rope_theta=1e4, alpha=2.0), 128)
  base = inv[-1] ** (-128 / 126)  # inv_freq_{d/2-1} = base^(-(d-2)/d)
  assert abs(base - 20221) < 1, base


@pytest.mark.parametrize("beta_fast,beta_slow", [(32.0, 1.0), (16.0, 2.0)])
@pytest.mark.parametrize("head_dim,theta,_,partial", GRID[::3], ids=GRID_IDS[::3])
def test_dynamic_yarn_matches_numpy_formula(head_dim, theta, _, partial, beta_fast, beta_slow):
  rope = RopeConfig(rope_type="dynamic_yarn", rope_theta=theta, original_max_position_embeddings=L,
                    factor=16.0, beta_fast=beta_fast, beta_slow=beta_slow, partial_rotary_factor=partial)
  dim = int(head_dim * partial)
  for seq_len in (None, 1, 1000, L, L + 1, 2 * L, 5 * L + 123, 32 * L):
    factor = max(1.0, (L if seq_len is None else seq_len) / L)  # the configured factor (16) plays no part
    inv_want, attention_want = numpy_yarn(theta, dim, factor, L, beta_fast, beta_slow)
    inv, attention = ours(rope, head_dim, seq_len)
    np.testing.assert_allclose(inv, inv_want, rtol=RTOL, atol=0, err_msg=f"seq_len={seq_len}")
    np.testing.assert_allclose(attention, attention_want, rtol=RTOL, err_msg=f"seq_len={seq_len}")


@pytest.mark.parametrize("seq_len", [L + 1, 3 * L, 16 * L])
def test_dynamic_yarn_is_transformers_yarn_at_the_current_factor(seq_len):
  rope = RopeConfig(rope_type="dynamic_yarn", rope_theta=1e4, original_max_position_embeddings=L)
  params = {"rope_type": "yarn", "rope_theta": 1e4, "factor": seq_len / L, "original_max_position_embeddings": L}
  assert_match(ours(rope, 128, seq_len), hf_init(128, params, seq_len))


# ---- worked values ----

def test_yarn_llama2_worked_values():
  """Llama-2 (d 128, b 1e4, L 4096, beta 32/1): ramp from dimension 20 to 46; s = 16 -> attention factor 1.2773."""
  rope = RopeConfig(rope_type="yarn", rope_theta=1e4, factor=16.0, original_max_position_embeddings=4096)
  inv, attention = ours(rope, 128)
  ratio = inv / numpy_inv_freq(1e4, 128)
  np.testing.assert_allclose(ratio[:21], 1.0, rtol=RTOL)  # i <= low = 20: extrapolated, untouched
  np.testing.assert_allclose(ratio[46:], 1 / 16, rtol=RTOL)  # i >= high = 46: interpolated, divided by s
  assert np.all((ratio[21:46] < 1) & (ratio[21:46] > 1 / 16)) and np.all(np.diff(ratio[20:47]) < 0)
  assert round(attention, 4) == 1.2773


# ---- one compile for every length ----

@pytest.mark.parametrize("rope", [
    RopeConfig(rope_type="dynamic", factor=4.0, original_max_position_embeddings=L),
    RopeConfig(rope_type="dynamic_yarn", original_max_position_embeddings=L),
    RopeConfig(rope_type="longrope", original_max_position_embeddings=L, factor=8.0,
               short_factor=(1.0,) * 64, long_factor=tuple(np.linspace(1, 20, 64).tolist())),
], ids=lambda rope: rope.rope_type)
def test_dynamic_methods_compile_once(rope):
  traces = 0

  @jax.jit
  def freqs_at(seq_len):
    nonlocal traces
    traces += 1
    return frequencies(rope, 128, seq_len)

  short, long = freqs_at(jnp.int32(1000)), freqs_at(jnp.int32(5 * L))
  assert traces == 1
  assert not np.allclose(short.inv_freq, long.inv_freq)
  for got, seq_len in ((short, 1000), (long, 5 * L)):
    want = frequencies(rope, 128, seq_len)
    np.testing.assert_allclose(got.inv_freq, want.inv_freq, rtol=RTOL)
    np.testing.assert_allclose(got.attention_factor, want.attention_factor, rtol=RTOL)


@pytest.mark.parametrize("rope_type", ["default", "linear", "ntk", "yarn", "llama3"])
def test_static_methods_trace_with_a_traced_length(rope_type):
  rope = RopeConfig(rope_type=rope_type, factor=4.0, alpha=4.0, original_max_position_embeddings=L)
  jitted = jax.jit(lambda seq_len: frequencies(rope, 128, seq_len))(jnp.int32(3 * L))
  np.testing.assert_allclose(jitted.inv_freq, frequencies(rope, 128).inv_freq, rtol=RTOL)
