"""RopeConfig.validate: every error a user can cause is one ConfigError line naming the key."""

import pytest

from longjax.config import ROPE_TYPES, ConfigError, RopeConfig
from longjax.positional import METHODS

L = 4096
VALID = {
    "default": {},
    "linear": {"factor": 4.0},
    "ntk": {"alpha": 2.0},
    "dynamic": {"factor": 2.0, "original_max_position_embeddings": L},
    "yarn": {"factor": 16.0, "original_max_position_embeddings": L},
    "dynamic_yarn": {"original_max_position_embeddings": L},
    "llama3": {"factor": 8.0, "original_max_position_embeddings": L},
    "longrope": {"original_max_position_embeddings": L, "short_factor": (1.0,) * 64, "long_factor": (2.0,) * 64},
}


def error(head_dim=128, **kwargs) -> str:
  with pytest.raises(ConfigError) as raised:
    RopeConfig(**kwargs).validate(head_dim)
  message = str(raised.value)
  assert "\n" not in message
  return message


def test_every_rope_type_has_a_method_and_a_valid_example():
  assert set(METHODS) == set(ROPE_TYPES) == set(VALID)
  for rope_type, kwargs in VALID.items():
    RopeConfig(rope_type=rope_type, **kwargs).validate(128)


def test_unknown_rope_type_lists_the_valid_ones():
  message = error(rope_type="rotary")
  assert message.startswith("model.rope.rope_type='rotary'")
  assert all(name in message for name in ROPE_TYPES)


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "llama3", "longrope"])
def test_factor_below_one(rope_type):
  assert "model.rope.factor=0.5" in error(rope_type=rope_type, **{**VALID[rope_type], "factor": 0.5})


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "llama3"])
def test_missing_factor(rope_type):
  kwargs = {k: v for k, v in VALID[rope_type].items() if k != "factor"}
  assert "model.rope.factor=None" in error(rope_type=rope_type, **kwargs)


@pytest.mark.parametrize("rope_type", ["dynamic", "yarn", "dynamic_yarn", "llama3", "longrope"])
@pytest.mark.parametrize("value", [None, 0])
def test_missing_original_max_position_embeddings(rope_type, value):
  kwargs = {**VALID[rope_type], "original_max_position_embeddings": value}
  assert f"model.rope.original_max_position_embeddings={value}" in error(rope_type=rope_type, **kwargs)


@pytest.mark.parametrize("name", ["short_factor", "long_factor"])
@pytest.mark.parametrize("value", [None, (1.0,) * 63, (1.0,) * 128, (1.0,) * 63 + (0.0,)])
def test_longrope_factor_lists_need_rotary_dim_over_two_positive_values(name, value):
  message = error(rope_type="longrope", **{**VALID["longrope"], name: value})
  assert f"model.rope.{name}=" in message and "64" in message


def test_longrope_lengths_follow_partial_rotary():
  RopeConfig(rope_type="longrope", original_max_position_embeddings=L, short_factor=(1.0,) * 32,
             long_factor=(2.0,) * 32, partial_rotary_factor=0.5).validate(128)
  assert "model.rope.short_factor" in error(rope_type="longrope", partial_rotary_factor=0.5, **VALID["longrope"])


@pytest.mark.parametrize("rope_type", ["yarn", "dynamic_yarn"])
@pytest.mark.parametrize("fast,slow", [(1.0, 1.0), (1.0, 2.0), (None, 32.0), (0.5, None)])
def test_beta_fast_must_exceed_beta_slow(rope_type, fast, slow):
  assert "model.rope.beta_fast=" in error(rope_type=rope_type, beta_fast=fast, beta_slow=slow, **VALID[rope_type])


def test_beta_slow_must_be_positive():
  assert "model.rope.beta_slow=0" in error(rope_type="yarn", beta_slow=0.0, **VALID["yarn"])


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5])
def test_partial_rotary_factor_outside_zero_one(value):
  assert f"model.rope.partial_rotary_factor={value}" in error(partial_rotary_factor=value)


@pytest.mark.parametrize("head_dim,value", [(64, 0.3), (6, 0.5), (128, 0.01)])
def test_odd_or_empty_rotary_dim(head_dim, value):
  message = error(head_dim=head_dim, partial_rotary_factor=value)
  assert f"model.rope.partial_rotary_factor={value}" in message and "even" in message


def test_other_method_parameters():
  assert "model.rope.alpha=None" in error(rope_type="ntk")
  assert "model.rope.alpha=0.5" in error(rope_type="ntk", alpha=0.5)
  assert "model.rope.high_freq_factor=1.0" in error(rope_type="llama3", high_freq_factor=1.0, **VALID["llama3"])
  assert "model.rope.low_freq_factor=0.0" in error(rope_type="llama3", low_freq_factor=0.0, **VALID["llama3"])
  assert "model.rope.attention_factor=-1.0" in error(rope_type="yarn", attention_factor=-1.0, **VALID["yarn"])
  assert "model.rope.rope_theta=1.0" in error(rope_theta=1.0)


def test_key_prefix_follows_the_caller():
  with pytest.raises(ConfigError, match=r"^student\.rope\.factor="):
    RopeConfig(rope_type="linear").validate(128, key="student.rope")
