"""The schema: ConfigDict -> validated, frozen, typed configs; ConfigError.

`from_config_dict(cd)` is called once at the top of a run, `model_config_from_dict` reads a checkpoint's model,
and `merge_onto` applies a file's changed keys onto a loaded run. Modules receive their typed section
(`ModelConfig`, `RopeConfig`, `AttentionConfig`, ...), never the ConfigDict. `model.attention` and its per-type
sub-configs are `longjax.config.attention`; the attention types' code lives in `longjax.nn.attention` (a test
keeps the registry and ATTENTION_TYPES equal). Every error a user can cause is a `ConfigError` (`config.checks`)
whose one-line message names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable

import ml_collections

from longjax.config.attention import (ATTENTION_IMPLS, ATTENTION_TYPES, CONTEXT_PARALLEL,  # noqa: F401 - public names
                                      FLAT_KEYS, INFINI_UPDATES, SEQUENCE_PARALLEL_TYPES, SUB_CONFIGS,
                                      AttentionConfig, DcaConfig, InfiniConfig, LandmarkConfig, ReropeConfig,
                                      S2Config, SelfExtendConfig, SlidingConfig, from_flat_keys)
from longjax.config.checks import ConfigError, _check_keys, _choice, _positive, _require  # noqa: F401

DTYPES = ("float32", "bfloat16", "float16")
ROPE_TYPES = ("default", "linear", "ntk", "dynamic", "yarn", "dynamic_yarn", "llama3", "longrope")
# A registry's keys (tests/nn/test_registries.py keeps them equal): longjax.nn.BLOCKS owns the modules.
BLOCK_TYPES = ("llama", "megalodon")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "save_attention_out")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
# longjax.evaluate.tasks.TASKS (a test keeps them equal); the ones train.eval_every can run in training.
EVAL_TASKS = ("perplexity", "passkey", "needle", "needle_gkamradt", "loss_by_position", "kv_cache", "ruler")
MESH_AXES = ("data", "fsdp", "tensor", "sequence")
TOKENIZERS = ("byte", "sentencepiece", "hf")
RETRIEVAL_TASKS = ("passkey", "kv_recall", "passkey+kv_recall")
DISTRIBUTED_MODES = ("auto", "always", "never")
# Rope methods that scale relative to the pre-trained length L (rope.original_max_position_embeddings).
NEEDS_ORIGINAL_LENGTH = ("dynamic", "yarn", "dynamic_yarn", "llama3", "longrope")
TOKENIZER_FILES = {"sentencepiece": "the path of a .model file",
                   "hf": "the path of a tokenizer.json file or of the directory holding it"}


# YaRN's ramp boundaries in rotations (YaRN paper sec. 3.2: alpha = 1, beta = 32), as transformers defaults them.
YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0
# Llama 3.1's band edges (Meta's reference `apply_scaling`: low_freq_factor 1, high_freq_factor 4).
LLAMA3_LOW_FREQ_FACTOR, LLAMA3_HIGH_FREQ_FACTOR = 1.0, 4.0


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  rope_type: str = "default"
  rope_theta: float = 10000.0
  factor: float | None = None
  original_max_position_embeddings: int | None = None
  alpha: float | None = None
  beta_fast: float | None = None
  beta_slow: float | None = None
  mscale: float | None = None
  mscale_all_dim: float | None = None
  attention_factor: float | None = None
  truncate: bool | None = None
  low_freq_factor: float | None = None
  high_freq_factor: float | None = None
  short_factor: tuple[float, ...] | None = None
  long_factor: tuple[float, ...] | None = None
  partial_rotary_factor: float = 1.0

  def rotary_dim(self, head_dim: int) -> int:
    return int(head_dim * self.partial_rotary_factor)

  @property
  def yarn_betas(self) -> tuple[float, float]:
    """(beta_fast, beta_slow), the unset ones at their defaults."""
    return (YARN_BETA_FAST if self.beta_fast is None else self.beta_fast,
            YARN_BETA_SLOW if self.beta_slow is None else self.beta_slow)

  @property
  def llama3_freq_factors(self) -> tuple[float, float]:
    """(low_freq_factor, high_freq_factor), the unset ones at their defaults."""
    return (LLAMA3_LOW_FREQ_FACTOR if self.low_freq_factor is None else self.low_freq_factor,
            LLAMA3_HIGH_FREQ_FACTOR if self.high_freq_factor is None else self.high_freq_factor)

  def validate(self, head_dim: int, key: str = "model.rope") -> None:
    _choice(f"{key}.rope_type", self.rope_type, ROPE_TYPES)
    # theta <= 1 gives frequencies that do not decrease (and ln(theta) = 0 in YaRN's correction range).
    _require(isinstance(self.rope_theta, (int, float)) and self.rope_theta > 1, f"{key}.rope_theta",
             self.rope_theta, "must be > 1")
    p = self.partial_rotary_factor
    _require(0 < p <= 1, f"{key}.partial_rotary_factor", p, "must be in (0, 1]")
    rotary_dim = self.rotary_dim(head_dim)
    _require(rotary_dim >= 2 and rotary_dim % 2 == 0, f"{key}.partial_rotary_factor", p,
             f"int(head_dim={head_dim} * factor) = {rotary_dim} must be even and >= 2")
    needs_factor = ("linear", "dynamic", "yarn", "llama3")
    if self.rope_type in needs_factor:
      _require(self.factor is not None, f"{key}.factor", self.factor, f"rope_type={self.rope_type} needs a factor >= 1")
    if self.factor is not None:
      _require(self.factor >= 1, f"{key}.factor", self.factor, "must be >= 1")
    if self.rope_type in NEEDS_ORIGINAL_LENGTH:
      _require(self.original_max_position_embeddings is not None and self.original_max_position_embeddings > 0,
               f"{key}.original_max_position_embeddings", self.original_max_position_embeddings,
               f"rope_type={self.rope_type} needs the pre-trained context length (a positive int)")
    if self.rope_type == "ntk":
      _require(self.alpha is not None and self.alpha >= 1, f"{key}.alpha", self.alpha,
               "rope_type=ntk needs alpha >= 1")
    if self.rope_type in ("yarn", "dynamic_yarn"):
      fast, slow = self.yarn_betas
      _require(slow > 0, f"{key}.beta_slow", slow, "must be > 0 (a number of rotations)")
      _require(fast > slow, f"{key}.beta_fast", fast, f"must be > beta_slow={slow}")
    if self.rope_type == "llama3":
      low, high = self.llama3_freq_factors
      _require(low > 0, f"{key}.low_freq_factor", low, "must be > 0")
      _require(high > low, f"{key}.high_freq_factor", high, f"must be > low_freq_factor={low}")
    if self.rope_type == "longrope":
      for name in ("short_factor", "long_factor"):
        value = getattr(self, name)
        ok = value is not None and len(value) == rotary_dim // 2 and all(v > 0 for v in value)
        _require(ok, f"{key}.{name}",
                 None if value is None else f"<{len(value)} values>",
                 f"rope_type=longrope needs {rotary_dim // 2} positive values (rotary_dim / 2)")
    if self.attention_factor is not None:
      _positive(f"{key}.attention_factor", self.attention_factor)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 0
  alpha: float = 16.0
  targets: tuple[str, ...] = ("q", "k", "v", "o")
  train_embeddings: bool = True
  train_norms: bool = True

  @property
  def enabled(self) -> bool:
    return self.rank > 0

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def validate(self, key: str = "model.lora") -> None:
    _require(self.rank >= 0, f"{key}.rank", self.rank, "must be >= 0 (0 disables LoRA)")
    if self.rank:
      _positive(f"{key}.alpha", self.alpha)
    for target in self.targets:
      _choice(f"{key}.targets", target, LORA_TARGETS)


@dataclasses.dataclass(frozen=True)
class MegalodonConfig:
  """Sizes of the MEGALODON block (Ma et al. 2024; XuezheMax/megalodon `ModelConf`); heads are model.num_heads,
  the FFN width model.intermediate_size, the width model.hidden_size."""

  z_dim: int = 256
  value_dim: int = 512
  ema_dim: int = 16
  chunk_size: int = 2048
  norm_groups: int = 32
  swiglu: bool = True
  norm_eps: float = 1e-5
  cema_method: str = "fft"

  def validate(self, hidden_size: int, num_heads: int, key: str = "model.megalodon") -> None:
    for name in ("z_dim", "value_dim", "ema_dim", "chunk_size", "norm_groups", "norm_eps"):
      _positive(f"{key}.{name}", getattr(self, name))
    _require(self.z_dim % num_heads == 0 and (self.z_dim // num_heads) % 2 == 0, f"{key}.z_dim", self.z_dim,
             f"must split into model.num_heads={num_heads} heads of an even size (RoPE)")
    _require(self.value_dim % num_heads == 0, f"{key}.value_dim", self.value_dim,
             f"must be a multiple of model.num_heads={num_heads}")
    _require(hidden_size % self.norm_groups == 0, f"{key}.norm_groups", self.norm_groups,
             f"must divide model.hidden_size={hidden_size}")
    _choice(f"{key}.cema_method", self.cema_method, ("fft", "scan"))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  block: str = "llama"
  vocab_size: int = 259
  hidden_size: int = 256
  intermediate_size: int = 688
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 4
  head_dim: int | None = None
  max_position_embeddings: int = 1024
  rms_norm_eps: float = 1e-5
  tie_embeddings: bool = False
  initializer_range: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = False
  remat_policy: str = "none"
  loss_chunk: int = 0
  rope: RopeConfig = RopeConfig()
  attention: AttentionConfig = AttentionConfig()
  lora: LoraConfig = LoraConfig()
  megalodon: MegalodonConfig = MegalodonConfig()

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

  def validate(self, key: str = "model") -> None:
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                 "max_position_embeddings", "rms_norm_eps", "initializer_range"):
      _positive(f"{key}.{name}", getattr(self, name))
    _require(self.num_heads % self.num_kv_heads == 0, f"{key}.num_kv_heads", self.num_kv_heads,
             f"must divide num_heads={self.num_heads}")
    if self.head_dim is None:
      _require(self.hidden_size % self.num_heads == 0, f"{key}.hidden_size", self.hidden_size,
               f"must be divisible by num_heads={self.num_heads} (or set model.head_dim)")
    else:
      _positive(f"{key}.head_dim", self.head_dim)
    _require(self.resolved_head_dim % 2 == 0, f"{key}.head_dim", self.resolved_head_dim, "must be even for RoPE")
    _choice(f"{key}.block", self.block, BLOCK_TYPES)
    _choice(f"{key}.dtype", self.dtype, DTYPES)
    _choice(f"{key}.param_dtype", self.param_dtype, DTYPES)
    _choice(f"{key}.remat_policy", self.remat_policy, REMAT_POLICIES)
    _require(isinstance(self.loss_chunk, int) and self.loss_chunk >= 0, f"{key}.loss_chunk", self.loss_chunk,
             "must be an int >= 0 (0: the plain loss over all logits)")
    self.rope.validate(self.resolved_head_dim, f"{key}.rope")
    self.attention.validate(f"{key}.attention")
    if self.attention.type == "landmark":
      landmark_id = self.attention.landmark.id
      _require(landmark_id < self.vocab_size, f"{key}.attention.landmark.id", landmark_id,
               f"must be < model.vocab_size={self.vocab_size} (reserve a row of the embedding for it)")
    self.lora.validate(f"{key}.lora")
    if self.block == "megalodon":
      self.megalodon.validate(self.hidden_size, self.num_heads, f"{key}.megalodon")
      _require(self.attention.type == "full", f"{key}.attention.type", self.attention.type,
               "model.block=megalodon brings its own chunked attention; allowed: full")
      _require(self.attention.context_parallel == "none", f"{key}.attention.context_parallel",
               self.attention.context_parallel, "model.block=megalodon (CEMA is a recurrence over the sequence) "
               "runs no context parallelism; allowed: none")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  source: str = "textdir"
  text_dir: str = ""
  text_glob: str = "**/*.py"
  validation_fraction: float = 0.05
  tfds_name: str = ""
  tfds_text_key: str = "text"
  data_dir: str = ""
  train_split: str = "train"
  eval_split: str = "validation"
  tokenizer: str = "byte"
  tokenizer_path: str = ""
  add_bos: bool = True
  add_eos: bool = True
  shuffle: bool = True
  shuffle_buffer: int = 256
  retrieval_rate: float = 0.0
  retrieval_task: str = "passkey"
  retrieval_digits: int = 5
  retrieval_pairs: int = 8
  retrieval_queries: int = 4
  retrieval_rows: bool = False
  retrieval_loss: str = "all"
  retrieval_answer_weight: float = 1.0
  pose_target_length: int = 0
  pose_chunks: int = 2

  def validate(self, key: str = "data") -> None:
    _choice(f"{key}.source", self.source, ("textdir", "tfds"))
    _choice(f"{key}.tokenizer", self.tokenizer, TOKENIZERS)
    if self.source == "tfds":
      _require(bool(self.tfds_name), f"{key}.tfds_name", self.tfds_name, "source=tfds needs a dataset name")
    if self.tokenizer in TOKENIZER_FILES:
      _require(bool(self.tokenizer_path), f"{key}.tokenizer_path", self.tokenizer_path,
               f"tokenizer={self.tokenizer} needs {TOKENIZER_FILES[self.tokenizer]}")
    _require(0 <= self.validation_fraction < 1, f"{key}.validation_fraction", self.validation_fraction,
             "must be in [0, 1)")
    _require(isinstance(self.shuffle_buffer, int) and self.shuffle_buffer >= 0, f"{key}.shuffle_buffer",
             self.shuffle_buffer, "must be an integer >= 0 (0 disables the row shuffle)")
    _require(isinstance(self.retrieval_rate, (int, float)) and 0 <= self.retrieval_rate <= 1,
             f"{key}.retrieval_rate", self.retrieval_rate, "must be in [0, 1]")
    _choice(f"{key}.retrieval_task", self.retrieval_task, RETRIEVAL_TASKS)
    _require(isinstance(self.retrieval_digits, int) and 1 <= self.retrieval_digits <= 18, f"{key}.retrieval_digits",
             self.retrieval_digits, "must be an integer in [1, 18]")
    _require(isinstance(self.retrieval_pairs, int) and 1 <= self.retrieval_pairs <= 676, f"{key}.retrieval_pairs",
             self.retrieval_pairs, "must be an integer in [1, 676] (keys are distinct two-letter names)")
    _require(isinstance(self.retrieval_queries, int) and 1 <= self.retrieval_queries <= self.retrieval_pairs,
             f"{key}.retrieval_queries", self.retrieval_queries,
             f"must be an integer in [1, retrieval_pairs={self.retrieval_pairs}]")
    _require(isinstance(self.retrieval_rows, bool), f"{key}.retrieval_rows", self.retrieval_rows,
             "must be True or False")
    _choice(f"{key}.retrieval_loss", self.retrieval_loss, ("all", "answer"))
    _require(isinstance(self.retrieval_answer_weight, (int, float)) and self.retrieval_answer_weight > 0,
             f"{key}.retrieval_answer_weight", self.retrieval_answer_weight, "must be > 0")
    _require(isinstance(self.pose_target_length, int) and self.pose_target_length >= 0, f"{key}.pose_target_length",
             self.pose_target_length, "must be 0 (off) or the target context length > train.seq_len")
    _require(isinstance(self.pose_chunks, int) and self.pose_chunks >= 2, f"{key}.pose_chunks", self.pose_chunks,
             "must be an integer >= 2")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  seq_len: int = 256
  global_batch_size: int = 8
  grad_accum_steps: int = 1
  num_steps: int = 100
  learning_rate: float = 1e-3
  schedule: str = "cosine"
  warmup_steps: int = 10
  end_learning_rate_ratio: float = 0.1
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  grad_clip: float = 1.0
  gate_learning_rate: float = 1e-2
  init_from: str = ""
  log_every: int = 10
  eval_every: int = 0
  eval_batches: int = 4
  checkpoint_every: int = 50
  max_to_keep: int = 3
  async_checkpointing: bool = True

  def validate(self, key: str = "train") -> None:
    for name in ("seq_len", "global_batch_size", "grad_accum_steps", "num_steps", "log_every", "max_to_keep",
                 "checkpoint_every", "eval_batches"):
      _positive(f"{key}.{name}", getattr(self, name))
    _require(self.learning_rate >= 0, f"{key}.learning_rate", self.learning_rate, "must be >= 0")
    _require(self.warmup_steps >= 0, f"{key}.warmup_steps", self.warmup_steps, "must be >= 0")
    _choice(f"{key}.schedule", self.schedule, ("cosine", "linear", "constant"))
    _require(self.global_batch_size % self.grad_accum_steps == 0, f"{key}.grad_accum_steps",
             self.grad_accum_steps, f"must divide global_batch_size={self.global_batch_size}")
    _require(self.weight_decay >= 0, f"{key}.weight_decay", self.weight_decay, "must be >= 0")
    _require(self.grad_clip >= 0, f"{key}.grad_clip", self.grad_clip, "must be >= 0 (0 disables)")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  sequence: int = 1

  def validate(self, key: str = "mesh") -> None:
    filled = [name for name in MESH_AXES if getattr(self, name) == -1]
    _require(len(filled) <= 1, f"{key}.{filled[-1] if filled else 'data'}", -1, "at most one mesh axis may be -1")
    for name in MESH_AXES:
      value = getattr(self, name)
      _require(value == -1 or value >= 1, f"{key}.{name}", value, "must be a positive size or -1 (fill the rest)")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  lengths: tuple[int, ...] = (128, 256, 512, 1024)
  stride: int = 256
  max_documents: int = 16
  max_document_tokens: int = 8192
  tasks: tuple[str, ...] = ()
  task_lengths: tuple[int, ...] = ()
  task_trials: int = 2

  def validate(self, key: str = "eval") -> None:
    for length in self.lengths:
      _positive(f"{key}.lengths", length)
    for task in self.tasks:
      _choice(f"{key}.tasks", task, EVAL_TASKS)
    for length in self.task_lengths:
      _positive(f"{key}.task_lengths", length)
    _positive(f"{key}.task_trials", self.task_trials)
    _positive(f"{key}.stride", self.stride)
    _positive(f"{key}.max_documents", self.max_documents)
    _require(self.max_document_tokens > max(self.lengths, default=0), f"{key}.max_document_tokens",
             self.max_document_tokens, f"must exceed the longest evaluation length {max(self.lengths, default=0)}")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  initialize: str = "auto"
  coordinator_address: str = ""
  num_processes: int = 0
  process_id: int = -1
  initialization_timeout: int = 300

  def validate(self, key: str = "distributed") -> None:
    _choice(f"{key}.initialize", self.initialize, DISTRIBUTED_MODES)
    address = self.coordinator_address
    _require(not address or address.rpartition(":")[2].isdigit(), f"{key}.coordinator_address", address,
             "expected host:port (or \"\" for JAX_COORDINATOR_ADDRESS or the cluster's own)")
    _require(self.num_processes >= 0, f"{key}.num_processes", self.num_processes,
             "must be >= 1, or 0 for JAX_NUM_PROCESSES or the cluster's own")
    _require(self.process_id >= -1 and (not self.num_processes or self.process_id < self.num_processes),
             f"{key}.process_id", self.process_id,
             f"must be in [0, num_processes={self.num_processes}), or -1 for JAX_PROCESS_ID or the cluster's own")
    _positive(f"{key}.initialization_timeout", self.initialization_timeout)


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0
  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  train: TrainConfig = TrainConfig()
  mesh: MeshConfig = MeshConfig()
  eval: EvalConfig = EvalConfig()
  distributed: DistributedConfig = DistributedConfig()

  def validate(self) -> None:
    self.model.validate()
    self.data.validate()
    self.train.validate()
    self.mesh.validate()
    self.eval.validate()
    self.distributed.validate()
    self._validate_mesh_fit()
    if self.model.attention.type == "s2":
      ratio = self.model.attention.s2.group_size_ratio
      group = ratio * self.train.seq_len
      _require(group == int(group) and int(group) % 2 == 0 and self.train.seq_len % int(group) == 0,
               "model.attention.s2.group_size_ratio", ratio,
               f"group_size_ratio * train.seq_len={self.train.seq_len} must be an even divisor of seq_len")
    if self.data.pose_target_length:
      _require(self.data.pose_target_length > self.train.seq_len and self.data.pose_chunks <= self.train.seq_len,
               "data.pose_target_length", self.data.pose_target_length,
               f"must exceed train.seq_len={self.train.seq_len}, with data.pose_chunks={self.data.pose_chunks} "
               "at most seq_len")

  def _validate_mesh_fit(self) -> None:
    """The mesh axes given explicitly (not -1) must divide what they shard."""
    sequence, tensor, attention = self.mesh.sequence, self.mesh.tensor, self.model.attention
    if sequence > 1:
      balanced = attention.context_parallel != "none" and attention.load_balance
      chunks = sequence * (2 if balanced else 1)
      _require(self.train.seq_len % chunks == 0, "train.seq_len", self.train.seq_len,
               f"must divide into mesh.sequence={sequence} shards" +
               (" of two chunks each (model.attention.load_balance)" if balanced else ""))
    if tensor > 1:
      for name in ("num_heads", "num_kv_heads"):
        _require(getattr(self.model, name) % tensor == 0, f"model.{name}", getattr(self.model, name),
                 f"must be divisible by mesh.tensor={tensor}")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "mesh": MeshConfig, "eval": EvalConfig,
             "distributed": DistributedConfig}
_TUPLE_FIELDS = {"short_factor", "long_factor", "targets", "lengths", "tasks", "task_lengths"}


def _plain(value: Any) -> Any:
  if isinstance(value, (ml_collections.ConfigDict, dict)):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(value)
  return value


def _build(cls: type, given: dict, section: str):
  """`cls` from a plain dict, its dataclass-valued fields (model.rope, model.attention.sliding, ...) built alike."""
  if cls is AttentionConfig:
    given = from_flat_keys(given)
  _check_keys(section, given, cls)
  nested = {f.name: type(f.default) for f in dataclasses.fields(cls) if dataclasses.is_dataclass(f.default)}
  kwargs = {}
  for key, value in given.items():
    if key in nested and not dataclasses.is_dataclass(value):
      _require(isinstance(value, dict), f"{section}.{key}", value, "must be a section of keys")
      value = _build(nested[key], dict(value), f"{section}.{key}")
    elif key in _TUPLE_FIELDS and value is not None:
      value = tuple(float(v) if key.endswith("factor") else v for v in value)
    kwargs[key] = value
  try:
    return cls(**kwargs)
  except TypeError as e:  # pragma: no cover - keys were checked above
    raise ConfigError(f"{section}: {e}") from None


def model_config_from_dict(given: dict, section: str = "model") -> ModelConfig:
  """A validated ModelConfig from a plain dict (a ConfigDict's `model`, or JSON from a checkpoint)."""
  model = _build(ModelConfig, _plain(given), section)
  model.validate(section)
  return model


def from_config_dict(config: ml_collections.ConfigDict | dict) -> Config:
  """Validate a whole config tree (a ConfigDict or the dict of `Config.to_dict`) into a frozen `Config`."""
  given = _plain(config)
  _check_keys("config", given, Config)
  kwargs: dict[str, Any] = {}
  for key, value in given.items():
    if key in _SECTIONS:
      kwargs[key] = _build(_SECTIONS[key], value, key)
    else:
      kwargs[key] = value
  result = Config(**kwargs)
  result.validate()
  return result


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  """{"model": {"rope": {"factor": 2.0}}} -> {"model.rope.factor": 2.0}."""
  flat: dict[str, Any] = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def reset_other_types(attention: dict, kept: Iterable[str] = ()) -> None:
  """Put the sub-configs of the types other than attention["type"] (a plain `model.attention` dict) back to their
  defaults, but those that a dotted key of `kept` ("model.attention.sliding.window") sets: when a run's type
  changes, the settings of its old type no longer apply."""
  for name, sub_config in SUB_CONFIGS.items():
    if name != attention.get("type", "full") and not any(key.startswith(f"model.attention.{name}.") for key in kept):
      attention[name] = dataclasses.asdict(sub_config())


def merge_onto(base: Config | dict, override: ml_collections.ConfigDict | dict, sections: tuple[str, ...], *,
               explicit: Iterable[str] = (), trained_length: int | None = None) -> Config:
  """`base` with the keys in or under `sections` ("model.rope", "data.tokenizer") that `override` sets; validated.

  An override sets a key when its value differs from the default (configs/base.py, which holds the dataclass
  defaults) or when `explicit` names it (a main's --config.KEY flags, which count even when they equal the
  default). A config file states a whole tree, so comparing it with the defaults is what recovers the keys it
  changes; every other key keeps `base`'s value: a file that leaves rope_theta at 10000 applied to an imported
  model keeps the model's 100000. A rope method that needs the pre-trained length L and gets none from either
  takes `trained_length` (the model's max_position_embeddings by default). When the override changes
  model.attention.type, the sub-configs of the other types that it does not set go back to their defaults (a run
  trained with sliding.window=64 evaluates with type=full).
  """
  merged = base.to_dict() if isinstance(base, Config) else _plain(base)
  base_type = merged["model"]["attention"].get("type", "full")
  defaults = _flatten(Config().to_dict())
  for flat, owners in FLAT_KEYS.items():  # an old file's flat keys at their defaults set nothing either
    kind, key = next(iter(owners.items()))
    defaults[f"model.attention.{flat}"] = getattr(SUB_CONFIGS[kind](), key)
  explicit = set(explicit)
  changed = []
  for key, value in _flatten(_plain(override)).items():
    in_sections = any(key == section or key.startswith(f"{section}.") for section in sections)
    if in_sections and (key in explicit or value != defaults.get(key)):
      *parents, name = key.split(".")
      tree = merged
      for parent in parents:
        tree = tree.setdefault(parent, {})
      tree[name] = value
      changed.append(key)
  if merged["model"]["attention"].get("type", "full") != base_type:
    reset_other_types(merged["model"]["attention"], changed)
  rope = merged["model"]["rope"]
  if rope["rope_type"] in NEEDS_ORIGINAL_LENGTH and rope.get("original_max_position_embeddings") is None:
    rope["original_max_position_embeddings"] = trained_length or merged["model"]["max_position_embeddings"]
  return from_config_dict(merged)
