"""Config validation: one-line ConfigErrors naming the key, the value and what is allowed."""

import json

import pytest
from repo_configs import load_config

from longjax.config import ConfigError, from_config_dict, parse_arg


def _with(**overrides):
  config = load_config("tiny.py")
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


@pytest.mark.parametrize("key, value, message", [
    ("model.num_kv_heads", 3, r"model\.num_kv_heads=3 is invalid: must divide num_heads=4"),
    ("model.hidden_size", 66, r"model\.hidden_size=66 is invalid: must be divisible by num_heads=4"),
    ("model.num_layers", 0, r"model\.num_layers=0 is invalid: must be > 0"),
    ("model.dtype", "float8", r"model\.dtype='float8' is invalid: allowed: float32, bfloat16, float16"),
    ("model.remat_policy", "some", r"model\.remat_policy='some'.*allowed: none, full"),
    ("model.attention.type", "ring", r"model\.attention\.type='ring'.*allowed: full, s2, sliding, infini"),
    ("train.grad_accum_steps", 3, r"train\.grad_accum_steps=3 is invalid: must divide global_batch_size=8"),
    ("mesh.fsdp", 0, r"mesh\.fsdp=0 is invalid"),
])
def test_bad_values_name_key_value_and_allowed(key, value, message):
  with pytest.raises(ConfigError, match=message) as info:
    from_config_dict(_with(**{key: value}))
  assert "\n" not in str(info.value)


def test_document_masking_needs_an_attention_type_that_supports_it():
  from_config_dict(_with(**{"model.attention.cross_documents": False}))
  with pytest.raises(ConfigError, match=r"model\.attention\.cross_documents=False.*not s2"):
    from_config_dict(_with(**{"model.attention.type": "s2", "model.attention.cross_documents": False}))


def test_head_dim_consistency():
  config = _with(**{"model.hidden_size": 66, "model.head_dim": 16})  # explicit head_dim frees hidden_size
  assert from_config_dict(config).model.resolved_head_dim == 16
  with pytest.raises(ConfigError, match=r"model\.head_dim=15 is invalid: must be even"):
    from_config_dict(_with(**{"model.head_dim": 15}))


def test_unknown_keys_are_rejected():
  config = load_config("base.py")
  with pytest.raises(AttributeError):
    config.model.no_such_key = 1  # the ConfigDict is locked
  with pytest.raises(ConfigError, match=r"model\.no_such_key.*unknown key"):
    from_config_dict({"model": {"no_such_key": 1}})


def test_placeholders_are_typed():
  config = load_config("base.py")
  config.model.rope.factor = 4.0
  with pytest.raises(TypeError):
    config.model.rope.factor = "four"


def test_round_trip_through_json():
  config = from_config_dict(load_config("tiny.py:rope=longrope,attention=sliding"))
  assert from_config_dict(config.to_dict()) == config


def test_parse_arg():
  args = parse_arg("rope=yarn,steps=7,flag=true", rope="default", steps=1, flag=False)
  assert (args.rope, args.steps, args.flag) == ("yarn", 7, True)
  with pytest.raises(ConfigError, match="config argument nope"):
    parse_arg("nope=1", rope="default")
  with pytest.raises(ConfigError, match="steps='x'.*int"):
    parse_arg("steps=x", steps=1)


@pytest.mark.parametrize("arg", ["", "rope=yarn", "rope=dynamic", "rope=llama3", "rope=ntk", "rope=longrope",
                                 "attention=s2", "attention=sliding", "attention=infini"])
def test_tiny_variants_validate(arg):
  from_config_dict(load_config(f"tiny.py:{arg}"))


def test_a_run_written_with_retired_keys_still_opens(tmp_path):
  from longjax import checkpoint  # Orbax: imported only here

  written = from_config_dict(load_config("tiny.py")).to_dict()
  written["eval"]["passkey_trials"] = 5  # written by versions before passkey evaluation had its own keys
  (tmp_path / "config.json").write_text(json.dumps(written))
  assert checkpoint.read_config(str(tmp_path)) == from_config_dict(load_config("tiny.py"))
