"""`model.attention`: the keys every attention type reads, and one sub-config a type for the keys of its own.

`model.attention.type` picks the type (its code: `longjax.nn.attention`, whose registry entry names the sub-config
here as its `config`). A type's keys sit under its name (`model.attention.sliding.window`); setting a key of
another type than the one picked is a ConfigError. The flat keys of earlier versions (`model.attention.window`,
`.landmark_id`, ...) are read by `from_flat_keys`, the one place that maps them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from longjax.config.checks import _choice, _positive, _require

# The registry's keys (tests/nn/test_registries.py keeps them equal to longjax.nn.ATTENTION_TYPES).
ATTENTION_TYPES = ("full", "s2", "sliding", "infini", "landmark", "self_extend", "dca", "rerope")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "pallas", "blockwise", "naive")
INFINI_UPDATES = ("linear", "delta")
CONTEXT_PARALLEL = ("none", "all_gather", "ring")  # longjax.ops.context_parallel.STRATEGIES, and none
# The attention types whose AttentionType.sequence_parallel is True (a test keeps them equal).
SEQUENCE_PARALLEL_TYPES = ("full", "sliding")
# The types that can mask packed documents from each other (cross_documents=False).
DOCUMENT_MASKING_TYPES = ("full", "sliding", "landmark")


def _positive_int(key: str, value: Any, needs: str = "must be a positive integer") -> None:
  _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, key, value, needs)


@dataclasses.dataclass(frozen=True)
class S2Config:
  """LongLoRA's shifted sparse attention (Chen et al. 2023)."""

  group_size_ratio: float = 0.25  # group size = ratio x sequence length
  at_eval: bool = False  # evaluate as it trains; False: full attention at evaluation (LongLoRA's)

  def validate(self, key: str = "model.attention.s2") -> None:
    _require(isinstance(self.group_size_ratio, (int, float)) and 0 < self.group_size_ratio <= 1,
             f"{key}.group_size_ratio", self.group_size_ratio, "must be in (0, 1]")
    _require(isinstance(self.at_eval, bool), f"{key}.at_eval", self.at_eval, "must be True or False")


@dataclasses.dataclass(frozen=True)
class SlidingConfig:
  """A window of keys plus the first `sinks` keys (StreamingLLM, Xiao et al. 2023)."""

  window: int | None = None  # keys j with i - window < j <= i
  sinks: int = 0

  def validate(self, key: str = "model.attention.sliding") -> None:
    _positive_int(f"{key}.window", self.window, "type=sliding needs a positive window")
    _require(isinstance(self.sinks, int) and self.sinks >= 0, f"{key}.sinks", self.sinks, "must be an integer >= 0")


@dataclasses.dataclass(frozen=True)
class InfiniConfig:
  """Infini-attention (Munkhdalai et al. 2024)."""

  segment_len: int = 256  # tokens per segment
  update: str = "linear"  # the memory update: linear | delta

  def validate(self, key: str = "model.attention.infini") -> None:
    _positive_int(f"{key}.segment_len", self.segment_len)
    _choice(f"{key}.update", self.update, INFINI_UPDATES)


@dataclasses.dataclass(frozen=True)
class LandmarkConfig:
  """Landmark attention (Mohtashami & Jaggi 2023)."""

  block: int = 63  # ordinary tokens a block; packing and generation add a landmark after each
  topk: int = 4  # blocks each head retrieves at inference (the paper's k = 4)
  id: int | None = None  # the reserved token id of the landmark, one the tokenizer never makes

  def validate(self, key: str = "model.attention.landmark") -> None:
    _positive_int(f"{key}.block", self.block)
    _positive_int(f"{key}.topk", self.topk)
    _require(isinstance(self.id, int) and self.id >= 0, f"{key}.id", self.id,
             "type=landmark needs the reserved token id of the landmark (>= 0)")


@dataclasses.dataclass(frozen=True)
class SelfExtendConfig:
  """Self-Extend (Jin et al. 2024): beyond the window, query i // G + window - window // G, key j // G."""

  group_size: int = 8
  window: int | None = None  # neighbours i - j < window keep their positions

  def validate(self, key: str = "model.attention.self_extend") -> None:
    _positive_int(f"{key}.group_size", self.group_size, "must be an integer >= 1")
    _positive_int(f"{key}.window", self.window, "type=self_extend needs a positive window (the neighbour window, "
                  "in tokens)")


@dataclasses.dataclass(frozen=True)
class DcaConfig:
  """Dual Chunk Attention (An et al. 2024)."""

  chunk_size: int = 0  # c <= the pre-trained length; chunks of c - local_window tokens
  local_window: int = 0  # the successive-chunk window w

  def validate(self, key: str = "model.attention.dca") -> None:
    _positive_int(f"{key}.chunk_size", self.chunk_size,
                  "type=dca needs a positive chunk_size (at most the pre-trained length)")
    _require(isinstance(self.local_window, int) and 0 <= self.local_window < self.chunk_size,
             f"{key}.local_window", self.local_window, f"must be in [0, chunk_size={self.chunk_size})")


@dataclasses.dataclass(frozen=True)
class ReropeConfig:
  """ReRoPE (Su 2023): farther keys than the window sit at distance window."""

  window: int | None = None

  def validate(self, key: str = "model.attention.rerope") -> None:
    _positive_int(f"{key}.window", self.window, "type=rerope needs a positive window (the neighbour window, in "
                  "tokens)")


# The types with keys of their own, and their sub-configs (each registry entry's `config`; a test keeps them equal).
SUB_CONFIGS: dict[str, type] = {"s2": S2Config, "sliding": SlidingConfig, "infini": InfiniConfig,
                                "landmark": LandmarkConfig, "self_extend": SelfExtendConfig, "dca": DcaConfig,
                                "rerope": ReropeConfig}


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """What every type reads, then one sub-config a type (only the picked type's may differ from its defaults)."""

  type: str = "full"
  impl: str = "auto"
  kernel_block: int = 512
  context_parallel: str = "none"
  load_balance: bool = True
  cross_documents: bool = True
  logn_length: int = 0
  s2: S2Config = S2Config()
  sliding: SlidingConfig = SlidingConfig()
  infini: InfiniConfig = InfiniConfig()
  landmark: LandmarkConfig = LandmarkConfig()
  self_extend: SelfExtendConfig = SelfExtendConfig()
  dca: DcaConfig = DcaConfig()
  rerope: ReropeConfig = ReropeConfig()

  @classmethod
  def of(cls, type: str = "full", **keys: Any) -> "AttentionConfig":  # noqa: A002 - the config key's name
    """`of("sliding", window=8, sinks=2, kernel_block=64)`: shared keys by name, the rest into `type`'s sub-config."""
    shared = {name: keys.pop(name) for name in list(keys) if name in _SHARED_KEYS}
    if keys:
      _require(type in SUB_CONFIGS, f"model.attention.{type}", keys, f"type={type} has no keys of its own")
      shared[type] = SUB_CONFIGS[type](**keys)
    return cls(type=type, **shared)

  @property
  def own(self) -> Any:
    """The picked type's sub-config, or None for a type without keys of its own (full)."""
    return getattr(self, self.type) if self.type in SUB_CONFIGS else None

  def validate(self, key: str = "model.attention") -> None:
    _choice(f"{key}.type", self.type, ATTENTION_TYPES)
    _choice(f"{key}.impl", self.impl, ATTENTION_IMPLS)
    _positive(f"{key}.kernel_block", self.kernel_block)
    _require(isinstance(self.logn_length, int) and self.logn_length >= 0 and self.logn_length != 1,
             f"{key}.logn_length", self.logn_length, "must be 0 (off) or the pre-trained length >= 2")
    _require(self.cross_documents or self.type in DOCUMENT_MASKING_TYPES, f"{key}.cross_documents",
             self.cross_documents, f"False (documents masked from each other) needs type "
             f"{', '.join(DOCUMENT_MASKING_TYPES)}, not {self.type}")
    _choice(f"{key}.context_parallel", self.context_parallel, CONTEXT_PARALLEL)
    _require(self.context_parallel == "none" or self.type in SEQUENCE_PARALLEL_TYPES, f"{key}.type", self.type,
             f"context_parallel={self.context_parallel} needs a type that runs sequence-parallel: "
             f"{', '.join(SEQUENCE_PARALLEL_TYPES)} (infini is a recurrence over segments, s2 trains on shifted "
             f"groups)")
    for name, sub_config in SUB_CONFIGS.items():
      given = getattr(self, name)
      if name == self.type:
        given.validate(f"{key}.{name}")
        continue
      for field in dataclasses.fields(sub_config):
        value, default = getattr(given, field.name), field.default
        _require(value == default, f"{key}.{name}.{field.name}", value,
                 f"a key of type {name}, but {key}.type={self.type}; set type={name}, or leave it at {default!r}")


_SHARED_KEYS = tuple(f.name for f in dataclasses.fields(AttentionConfig) if f.name not in SUB_CONFIGS)

# The flat keys of earlier versions: flat key -> {type: its key in that type's sub-config}.
FLAT_KEYS: dict[str, dict[str, str]] = {
    "window": {"sliding": "window", "self_extend": "window", "rerope": "window"},
    "sinks": {"sliding": "sinks"},
    "group_size_ratio": {"s2": "group_size_ratio"},
    "s2_at_eval": {"s2": "at_eval"},
    "segment_len": {"infini": "segment_len"},
    "update": {"infini": "update"},
    "landmark_block": {"landmark": "block"},
    "landmark_topk": {"landmark": "topk"},
    "landmark_id": {"landmark": "id"},
    "group_size": {"self_extend": "group_size"},
    "chunk_size": {"dca": "chunk_size"},
    "local_window": {"dca": "local_window"},
}
# Their value types: `longjax.config.load_file` adds each flat key missing from a file as an unset placeholder of
# this type, so that an old `--config.model.attention.window=4096` override still finds its key.
FLAT_KEY_TYPES: dict[str, type] = {"window": int, "sinks": int, "group_size_ratio": float, "s2_at_eval": bool,
                                   "segment_len": int, "update": str, "landmark_block": int, "landmark_topk": int,
                                   "landmark_id": int, "group_size": int, "chunk_size": int, "local_window": int}


def from_flat_keys(given: dict) -> dict:
  """`model.attention` (a plain dict) with the flat keys of earlier versions moved into the sub-config of its type.

  Old config files, old `--config.model.attention.KEY` overrides and the config.json of older runs hold flat keys
  (`window`, `sinks`, `segment_len`, `landmark_id`, ...). A flat key set (not None) for the picked type becomes
  that type's key, over what the sub-config held; one for another type is dropped, as earlier versions ignored it
  (their files set `segment_len` whatever the type).
  """
  given = dict(given)
  kind = given.get("type", "full")
  for flat, owners in FLAT_KEYS.items():
    if flat not in given:
      continue
    value = given.pop(flat)
    if value is None or kind not in owners:
      continue
    given[kind] = {**dict(given.get(kind) or {}), owners[kind]: value}
  return given
