"""model.attention's per-type sections: a key of another type or an unknown key is one line naming it; the flat keys
of earlier versions (old files, old --config overrides, older runs' config.json) map onto the picked type's section."""

import dataclasses
import json

import ml_collections
import pytest
from repo_configs import load_config

from longjax.config import (FLAT_KEYS, SUB_CONFIGS, AttentionConfig, Config, ConfigError, from_config_dict,
                            from_flat_keys, merge_onto)

# Every flat key of earlier versions, a value for it, and where that value lands for a type that has the key.
FLAT_VALUES = {"window": 48, "sinks": 3, "group_size_ratio": 0.5, "s2_at_eval": True, "segment_len": 32,
               "update": "delta", "landmark_block": 15, "landmark_topk": 2, "landmark_id": 300, "group_size": 4,
               "chunk_size": 96, "local_window": 16}


def test_every_flat_key_is_covered_and_lands_on_a_real_key():
  assert set(FLAT_VALUES) == set(FLAT_KEYS)
  for owners in FLAT_KEYS.values():
    for kind, key in owners.items():
      assert key in {f.name for f in dataclasses.fields(SUB_CONFIGS[kind])}


@pytest.mark.parametrize("kind", sorted(SUB_CONFIGS))
def test_flat_keys_go_to_the_picked_type_and_others_are_dropped(kind):
  given = {"type": kind, "impl": "xla", **FLAT_VALUES, "sliding": {"window": 7}}
  mapped = from_flat_keys(given)
  assert not set(FLAT_KEYS) & set(mapped) and mapped["impl"] == "xla"
  expected = {key: FLAT_VALUES[flat] for flat, owners in FLAT_KEYS.items() for k, key in owners.items() if k == kind}
  assert {key: mapped[kind][key] for key in expected} == expected
  assert all(name == kind or name not in mapped or name == "sliding" for name in SUB_CONFIGS)
  if kind != "sliding":
    assert mapped["sliding"] == {"window": 7}  # a section it had stays (validation then refuses it)
  assert from_flat_keys({"type": kind, "window": None}) == {"type": kind}  # an unset placeholder is no setting


def _old_style(config: dict, attention: dict) -> dict:
  """`config` (a Config.to_dict()) with model.attention as earlier versions wrote it: every flat key, no sections."""
  old = json.loads(json.dumps(config))
  old["model"]["attention"] = {"type": "full", "impl": "auto", "kernel_block": 512, "window": None, "sinks": 0,
                               "group_size_ratio": 0.25, "s2_at_eval": False, "segment_len": 256,
                               "update": "linear", "cross_documents": True, "context_parallel": "none",
                               "load_balance": True, "landmark_block": 63, "landmark_topk": 4, "landmark_id": None,
                               "group_size": 8, "chunk_size": 0, "local_window": 0, "logn_length": 0, **attention}
  return old


@pytest.mark.parametrize("arg, old", [
    ("attention=full", {"segment_len": 64}),  # tiny.py set segment_len whatever the type: ignored, as before
    ("attention=sliding", {"type": "sliding", "window": 64, "sinks": 4, "segment_len": 64}),
    ("attention=infini", {"type": "infini", "segment_len": 64}),
])
def test_an_older_runs_config_json_still_opens(tmp_path, arg, old):
  from longjax import checkpoint  # Orbax: imported only here

  new = from_config_dict(load_config(f"tiny.py:{arg}"))
  (tmp_path / "config.json").write_text(json.dumps(_old_style(new.to_dict(), old)))
  assert checkpoint.read_config(str(tmp_path)) == new


def test_an_old_flat_override_still_finds_its_key_on_a_locked_config():
  """load_file adds the flat keys a file lacks, unset, so `--config.model.attention.window=32` (an absl override
  sets the locked ConfigDict's key) still works."""
  config = load_config("tiny.py:attention=sliding")
  config.lock()
  config.model.attention.window = 32
  config.model.attention.sinks = 1
  assert from_config_dict(config).model.attention.sliding == dataclasses.replace(
      from_config_dict(load_config("tiny.py:attention=sliding")).model.attention.sliding, window=32, sinks=1)
  with pytest.raises(AttributeError):
    config.model.attention.windw = 32  # a misspelled key still fails


def test_a_key_of_another_type_is_one_line_naming_it():
  config = load_config("tiny.py")
  config.model.attention.sliding.window = 64
  with pytest.raises(ConfigError, match=r"^model\.attention\.sliding\.window=64 is invalid: a key of type sliding, "
                     r"but model\.attention\.type=full; set type=sliding, or leave it at None$"):
    from_config_dict(config)


def test_an_unknown_key_in_a_section_is_one_line_naming_it():
  given = from_config_dict(load_config("tiny.py:attention=sliding")).to_dict()
  given["model"]["attention"]["sliding"]["windw"] = 8
  with pytest.raises(ConfigError, match=r"^model\.attention\.sliding\.windw=8 is invalid: unknown key; known: sinks, "
                     r"window$"):
    from_config_dict(given)
  given = from_config_dict(load_config("tiny.py")).to_dict()
  given["model"]["attention"]["full"] = {"window": 8}
  with pytest.raises(ConfigError, match=r"^model\.attention\.full=.* is invalid: unknown key; known: context_par"):
    from_config_dict(given)


def test_of_puts_shared_keys_on_attention_and_the_rest_in_the_section():
  attention = AttentionConfig.of("sliding", window=8, sinks=2, kernel_block=64)
  assert (attention.kernel_block, attention.sliding.window, attention.sliding.sinks) == (64, 8, 2)
  assert attention.own is attention.sliding and AttentionConfig().own is None
  with pytest.raises(ConfigError, match=r"^model\.attention\.full=.* is invalid: type=full has no keys of its own"):
    AttentionConfig.of("full", window=8)


def test_merge_onto_a_new_type_drops_the_old_types_settings():
  """A run trained with a sliding window, evaluated with type=full, or with rerope and an old flat window."""
  trained = from_config_dict(load_config("tiny.py:attention=sliding"))
  override = load_config("tiny.py")
  override.model.attention.type = "full"
  merged = merge_onto(trained, override, ("model.attention",), explicit=["model.attention.type"])
  assert merged.model.attention == AttentionConfig()
  override.model.attention.type, override.model.attention.window = "rerope", 32
  merged = merge_onto(trained, override, ("model.attention",), explicit=["model.attention.type"])
  assert merged.model.attention == AttentionConfig.of("rerope", window=32)
  same = merge_onto(trained, load_config("tiny.py"), ("model.attention",))  # the type unchanged: all kept
  assert same.model.attention == trained.model.attention
  old_file = ml_collections.ConfigDict(_old_style(Config().to_dict(), {}))  # flat keys at their defaults
  assert merge_onto(trained, old_file, ("model.attention",)).model.attention == trained.model.attention


def test_plan_searches_other_types_with_their_own_keys():
  from longjax import plan

  config = load_config("tiny.py")
  config.model.attention.sliding.window = 16
  config.model.attention.window = 24  # an old flat key serves rerope (the new sliding key wins for sliding)
  given, settings = plan.type_settings(config.to_dict())
  base = from_config_dict(ml_collections.ConfigDict(given))
  assert base.model.attention == AttentionConfig() and base == from_config_dict(load_config("tiny.py"))
  sliding = plan.with_values(base, plan.attention_values("sliding/xla", settings))
  assert (sliding.model.attention.sliding.window, sliding.model.attention.impl) == (16, "xla")
  rerope = plan.with_values(base, plan.attention_values("rerope", settings))
  assert rerope.model.attention.rerope.window == 24
  assert plan.with_values(sliding, {"model.attention.type": "full"}).model.attention == dataclasses.replace(
      AttentionConfig(), impl="xla")


def test_the_defaults_equal_configs_base():
  assert from_config_dict(load_config("base.py")) == Config()
