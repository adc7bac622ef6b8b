"""The training-free methods by name: each (rope, attention) pair as its paper sets it for a model trained at L
tokens and read at factor x L, the trained rope's other fields kept, and the remapping settings keeping every
relative position below L up to factor x L (the rule the module states)."""

import dataclasses

import pytest

from longjax.config import AttentionConfig, RopeConfig
from longjax.config.attention import DcaConfig, ReropeConfig, SelfExtendConfig
from longjax.evaluate.extension import BASELINE, training_free_methods

BASE = RopeConfig(rope_theta=1e5, partial_rotary_factor=0.5)  # a trained rope that is not the default


# 1002: not a multiple of 4, so a true division (250.5, 751.5) differs from the floor
@pytest.mark.parametrize("length, factor", [(512, 4.0), (1000, 2.5), (1002, 3.0)])
def test_every_method_as_configured(length, factor):
  methods = training_free_methods(length, factor, BASE)
  rope = lambda **fields: dataclasses.replace(BASE, **fields)  # noqa: E731
  plain = AttentionConfig()
  name = f"{factor:g}"
  want = {
      BASELINE: (BASE, plain),
      f"PI x{name}": (rope(rope_type="linear", factor=factor), plain),
      f"NTK-aware alpha {name}": (rope(rope_type="ntk", alpha=factor), plain),
      "Dynamic NTK": (rope(rope_type="dynamic", factor=2.0, original_max_position_embeddings=length), plain),
      f"YaRN x{name}": (rope(rope_type="yarn", factor=factor, original_max_position_embeddings=length), plain),
      "Dynamic YaRN": (rope(rope_type="dynamic_yarn", original_max_position_embeddings=length), plain),
      f"Self-Extend G{2 * factor:g}": (BASE, AttentionConfig(
          type="self_extend", self_extend=SelfExtendConfig(group_size=int(2 * factor), window=length // 4))),
      "DCA": (BASE, AttentionConfig(type="dca", dca=DcaConfig(chunk_size=3 * length // 4,
                                                                      local_window=length // 4))),
      "ReRoPE + log-n": (BASE, AttentionConfig(type="rerope", rerope=ReropeConfig(window=length // 2),
                                                    logn_length=length)),
  }
  assert list(methods) == list(want)  # the order plots and tables use
  for key, value in want.items():
    assert methods[key] == value, key
  assert all(r.rope_theta == 1e5 and r.partial_rotary_factor == 0.5 for r, _ in methods.values())
  remapping = [methods[f"Self-Extend G{2 * factor:g}"][1].self_extend.window, methods["DCA"][1].dca.chunk_size,
               methods["DCA"][1].dca.local_window, methods["ReRoPE + log-n"][1].rerope.window]
  assert all(type(n) is int for n in remapping), remapping  # token counts, not 250.5


@pytest.mark.parametrize("length, factor", [(512, 4.0), (1000, 2.5), (4096, 8.0)])
def test_remapped_relative_positions_stay_below_the_trained_length(length, factor):
  methods = training_free_methods(length, factor)
  self_extend = next(a for name, (_, a) in methods.items() if name.startswith("Self-Extend"))
  group, window = self_extend.self_extend.group_size, self_extend.self_extend.window
  longest = int(factor * length) - 1
  assert (longest // group + window - window // group) < length  # Self-Extend's largest relative position
  assert methods["DCA"][1].dca.chunk_size - 1 < length
  assert methods["ReRoPE + log-n"][1].rerope.window < length


def test_the_default_base_is_the_default_rope():
  methods = training_free_methods(256, 2.0)
  assert methods[BASELINE] == (RopeConfig(), AttentionConfig())
  assert methods["PI x2"][0] == RopeConfig(rope_type="linear", factor=2.0)
