"""Config keys of the remapping attention types and log-n scaling: valid settings load, bad ones name the key."""

import pytest
from repo_configs import load_config

from longjax.config import ConfigError, from_config_dict


def _with(**overrides):
  """tiny.py with model.attention's shared keys, and those of the type's own section, set."""
  config = load_config("tiny.py")
  kind = overrides.get("type", "full")
  for key, value in overrides.items():
    section = config.model.attention if key in ("type", "logn_length") else config.model.attention[kind]
    section[key] = value
  return from_config_dict(config)


@pytest.mark.parametrize("overrides", [
    dict(type="self_extend", group_size=8, window=64),
    dict(type="dca", chunk_size=192, local_window=64),
    dict(type="rerope", window=64, logn_length=256),
    dict(type="full", logn_length=256),
])
def test_valid_settings_load(overrides):
  assert _with(**overrides).model.attention.type == overrides["type"]


@pytest.mark.parametrize("overrides, message", [
    (dict(type="self_extend"), r"model\.attention\.self_extend\.window=None is invalid: type=self_extend needs a "),
    (dict(type="rerope", window=0), r"model\.attention\.rerope\.window=0 is invalid: type=rerope needs a positive"),
    (dict(type="self_extend", window=8, group_size=0),
     r"model\.attention\.self_extend\.group_size=0 is invalid: must be an int"),
    (dict(type="dca"), r"model\.attention\.dca\.chunk_size=0 is invalid: type=dca needs a positive chunk_size"),
    (dict(type="dca", chunk_size=16, local_window=16),
     r"model\.attention\.dca\.local_window=16 is invalid: must be in"),
    (dict(logn_length=1), r"model\.attention\.logn_length=1 is invalid: must be 0 \(off\)"),
    (dict(logn_length=-4), r"model\.attention\.logn_length=-4 is invalid"),
])
def test_bad_values_name_the_key(overrides, message):
  with pytest.raises(ConfigError, match=message) as info:
    _with(**overrides)
  assert "\n" not in str(info.value)
