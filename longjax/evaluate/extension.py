"""The training-free context-extension methods by name, each a (rope, attention) pair derived from a trained model's
rope: RoPE scaling (PI, NTK-aware, Dynamic NTK, YaRN, Dynamic YaRN) and position remapping inside attention
(Self-Extend, DCA, ReRoPE + log-n). `make demo` and `make real-model` evaluate the same set."""

from __future__ import annotations

import dataclasses

from longjax.config import AttentionConfig, RopeConfig

BASELINE = "RoPE (no scaling)"


def training_free_methods(pretrain_length: int, factor: float,
                          base: RopeConfig = RopeConfig()) -> dict[str, tuple[RopeConfig, AttentionConfig]]:
  """Name -> (rope, attention) of each training-free method: RoPE scaling, then position remapping in attention.

  Each rope is `base` (the trained model's: rope_theta, partial rotary) with the method's fields set, so a model
  trained with rope_theta 1e5 keeps it under every method."""
  def rope(**fields) -> RopeConfig:
    return dataclasses.replace(base, **fields)

  common = dict(original_max_position_embeddings=pretrain_length)
  plain = AttentionConfig()
  # Remapping settings keep every relative position below the trained length up to `factor` x that length:
  # Self-Extend's largest is (factor * L - 1) // G + W - W // G, DCA's chunk_size - 1, ReRoPE's the window.
  window = pretrain_length // 4
  return {
      BASELINE: (rope(), plain),
      f"PI x{factor:g}": (rope(rope_type="linear", factor=factor), plain),
      f"NTK-aware alpha {factor:g}": (rope(rope_type="ntk", alpha=factor), plain),
      "Dynamic NTK": (rope(rope_type="dynamic", factor=2.0, **common), plain),
      f"YaRN x{factor:g}": (rope(rope_type="yarn", factor=factor, **common), plain),
      "Dynamic YaRN": (rope(rope_type="dynamic_yarn", **common), plain),
      f"Self-Extend G{2 * factor:g}": (rope(), AttentionConfig.of("self_extend", group_size=int(2 * factor),
                                                                 window=window)),
      "DCA": (rope(), AttentionConfig.of("dca", chunk_size=3 * pretrain_length // 4, local_window=window)),
      "ReRoPE + log-n": (rope(), AttentionConfig.of("rerope", window=pretrain_length // 2,
                                                   logn_length=pretrain_length)),
  }
