"""KV-cache policies by name: how much of the cache generation keeps, and how (`generate(..., kv_policy=, kv_budget=)`).

  full       every token's K/V (`longjax.nn.init_cache`, the attention type's own cache).
  streaming  StreamingLLM: `sinks` first tokens plus a rolling window, budget = sinks + window, positions
             inside the cache (decode: `ops.sink_cache_attention`, one token at a time; a prefill chunk at
             once: `ops.kv_compress.sink_chunk_attention`).
  h2o        H2O: the budget // 2 newest tokens plus the heavy hitters (largest accumulated attention).
  snapkv     SnapKV: the observation window plus the positions it attends to most, max-pooled.
  int8, int4 KIVI-style quantized K/V (keys per channel in groups of `group` tokens, values per token); every
             token is kept, so they take no token budget.

The budget is tokens per sequence per layer (per kv head for h2o and snapkv, which choose per head), or bytes
per sequence (`budget_for_bytes`: the largest token budget whose `state_bytes` over all layers fit); the
cache never holds more between calls (`longjax.ops.kv_compress` says how prefill chunks and decode steps
are compressed). Each entry validates its options, builds one layer's state, says its `state_bytes` (what
the KV-cache calculator reports) and attends (`attend`, called by the full attention type when the cache
it is given is an `ops.CompressedCache`). Compression applies to `model.attention.type=full` with a static
positional method (keys are kept after RoPE at their own positions).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from longjax import ops, positional
from longjax.ops import kv_compress
from longjax.config import ConfigError, ModelConfig, RopeConfig
from longjax.nn import ATTENTION_TYPES
from longjax.nn import init_cache as init_full_cache

_FLOAT32, _INT32 = 4, 4
STREAMING_SINKS = 4  # StreamingLLM (Xiao et al. 2023) sec. 3.2: four initial tokens as attention sinks
SNAPKV_WINDOW = 32  # SnapKV (Li et al. 2024): observation window
SNAPKV_KERNEL = 7  # SnapKV: pooling kernel (max pooling)
KIVI_GROUP = 32  # KIVI (Liu et al. 2024) sec. 4: keys grouped over 32 tokens per channel


def _kv_bytes_per_token(model_config: ModelConfig, dtype) -> int:
  """K plus V of one token in one layer (one sequence)."""
  return 2 * model_config.num_kv_heads * model_config.resolved_head_dim * jnp.dtype(dtype).itemsize


def _rotate(rope: RopeConfig, q, k, positions):
  freqs = positional.frequencies(rope, q.shape[-1])
  return positional.apply_rope(q, positions, freqs), positional.apply_rope(k, positions, freqs)


def _check_budget(name: str, budget, max_length: int | None, least: int = 1) -> None:
  """A budget of `least` to `max_length` tokens (None: not known yet, e.g. a main checking its flags)."""
  most = max_length if max_length is not None else budget
  if not isinstance(budget, int) or isinstance(budget, bool) or not least <= budget <= most:
    longest = "" if max_length is None else f" and at most the cache length {max_length}"
    raise ConfigError(f"kv_budget={budget!r} is invalid: kv_policy={name} needs a whole number of tokens, at least "
                      f"{least}{longest}")


@dataclasses.dataclass(frozen=True)
class Full:
  """Every token (the budget, if given, must be at least the cache length)."""

  budget: int | None = None
  name = "full"

  def validate(self, max_length: int | None) -> None:
    if self.budget is not None and self.budget != max_length:
      _check_budget(self.name, self.budget, max_length, least=max_length or 1)

  def cached_tokens(self, length: int) -> int:
    return length

  def state_bytes(self, model_config: ModelConfig, length: int, dtype="float16") -> int:
    return length * _kv_bytes_per_token(model_config, dtype)


@dataclasses.dataclass(frozen=True)
class Streaming:
  """StreamingLLM: `sinks` first tokens plus a window of budget - sinks."""

  budget: int
  sinks: int = STREAMING_SINKS
  name = "streaming"

  @property
  def least_budget(self) -> int:
    return self.sinks + 1

  def validate(self, max_length: int | None) -> None:
    _check_budget(self.name, self.budget, max_length, least=self.least_budget)

  def init(self, model_config: ModelConfig, batch: int, max_length: int, dtype):
    del max_length
    return ops.init_sink_cache(batch, model_config.num_kv_heads, model_config.resolved_head_dim,
                               window=self.budget - self.sinks, sinks=self.sinks, dtype=dtype)

  def attend(self, rope, q, k, v, positions, valid, cache: ops.CompressedCache):
    del positions  # StreamingLLM assigns positions inside the cache
    # A chunk (T > 1) is read at once (`ops.kv_compress.sink_chunk_attention`: kept tokens plus the chunk's own,
    # then compressed, as the evicting caches do); a decode step, or any call under a dynamic RoPE, one token at
    # a time, each key turned with the frequencies of its own step's length.
    window = self.budget - self.sinks
    if q.shape[1] == 1 or positional.is_dynamic(rope):
      out, state = ops.sink_cache_attention(q, k, v, cache.state, valid, window=window, sinks=self.sinks,
                                            frequencies_at=lambda n: positional.frequencies_per_row(
                                                rope, q.shape[-1], n))
    else:
      out, state = kv_compress.sink_chunk_attention(q, k, v, cache.state, valid, window=window, sinks=self.sinks,
                                                    freqs=positional.frequencies(rope, q.shape[-1]))
    return out, cache.replace(state=state)

  def cached_tokens(self, length: int) -> int:
    return min(length, self.budget)

  def state_bytes(self, model_config: ModelConfig, length: int, dtype="float16") -> int:
    return self.cached_tokens(length) * _kv_bytes_per_token(model_config, dtype)


@dataclasses.dataclass(frozen=True)
class H2O:
  """H2O: `recent` = budget // 2 newest tokens plus budget - recent heavy hitters, per kv head."""

  budget: int
  name = "h2o"
  least_budget = 1

  @property
  def recent(self) -> int:
    return self.budget // 2  # H2O sec. 5: heavy hitters and recent tokens in equal parts

  def validate(self, max_length: int | None) -> None:
    _check_budget(self.name, self.budget, max_length)

  def init(self, model_config: ModelConfig, batch: int, max_length: int, dtype):
    del max_length
    return ops.init_evicting_cache(batch, model_config.num_heads, model_config.num_kv_heads,
                                   model_config.resolved_head_dim, budget=self.budget, dtype=dtype)

  def attend(self, rope, q, k, v, positions, valid, cache: ops.CompressedCache):
    q, k = _rotate(rope, q, k, positions)
    out, state = ops.evicting_attention(q, k, v, positions, valid, cache.state, rule="h2o", protect=self.recent)
    return out, cache.replace(state=state)

  def cached_tokens(self, length: int) -> int:
    return min(length, self.budget)

  def state_bytes(self, model_config: ModelConfig, length: int, dtype="float16") -> int:
    # per kept token and kv head: its position (int32) and accumulated attention (float32)
    return self.cached_tokens(length) * (_kv_bytes_per_token(model_config, dtype)
                                         + model_config.num_kv_heads * (_INT32 + _FLOAT32))


@dataclasses.dataclass(frozen=True)
class SnapKV:
  """SnapKV: the last `window` tokens plus budget - window tokens by the window's pooled attention, per kv head."""

  budget: int
  window: int = SNAPKV_WINDOW
  kernel: int = SNAPKV_KERNEL
  name = "snapkv"

  def validate(self, max_length: int | None) -> None:
    if not isinstance(self.kernel, int) or self.kernel < 1 or self.kernel % 2 == 0:
      raise ConfigError(f"kv_options.kernel={self.kernel!r} is invalid: snapkv pools with an odd kernel >= 1")
    if not isinstance(self.window, int) or self.window < 1:
      raise ConfigError(f"kv_options.window={self.window!r} is invalid: snapkv needs an observation window >= 1")
    _check_budget(self.name, self.budget, max_length, least=self.least_budget)

  @property
  def least_budget(self) -> int:
    return self.window + 1

  def init(self, model_config: ModelConfig, batch: int, max_length: int, dtype):
    del max_length
    return ops.init_evicting_cache(batch, model_config.num_heads, model_config.num_kv_heads,
                                   model_config.resolved_head_dim, budget=self.budget, window=self.window,
                                   dtype=dtype)

  def attend(self, rope, q, k, v, positions, valid, cache: ops.CompressedCache):
    q, k = _rotate(rope, q, k, positions)
    out, state = ops.evicting_attention(q, k, v, positions, valid, cache.state, rule="snapkv", protect=self.window,
                                        kernel=self.kernel)
    return out, cache.replace(state=state)

  def cached_tokens(self, length: int) -> int:
    return min(length, self.budget)

  def state_bytes(self, model_config: ModelConfig, length: int, dtype="float16") -> int:
    # per kept token and kv head its position (int32); the window's queries (all heads) and positions
    itemsize = jnp.dtype(dtype).itemsize
    window = self.window * (model_config.num_heads * model_config.resolved_head_dim * itemsize + _INT32)
    return (self.cached_tokens(length) * (_kv_bytes_per_token(model_config, dtype)
                                          + model_config.num_kv_heads * _INT32) + window)


@dataclasses.dataclass(frozen=True)
class Quantized:
  """KIVI: every token, keys per channel over groups of `group` tokens, values per token, `bits` 8 or 4."""

  bits: int
  budget: int | None = None
  group: int = KIVI_GROUP

  @property
  def name(self) -> str:
    return f"int{self.bits}"

  def validate(self, max_length: int | None) -> None:
    del max_length
    if self.budget is not None:
      raise ConfigError(f"kv_budget={self.budget!r} is invalid: kv_policy={self.name} keeps every token (quantized); "
                        f"leave kv_budget unset")
    if not isinstance(self.group, int) or self.group < 1:
      raise ConfigError(f"kv_options.group={self.group!r} is invalid: {self.name} needs a key group of >= 1 tokens")

  def init(self, model_config: ModelConfig, batch: int, max_length: int, dtype):
    if model_config.resolved_head_dim % 2:
      raise ConfigError(f"model.head_dim={model_config.resolved_head_dim} is invalid: {self.name} needs it even")
    return ops.init_quant_cache(batch, model_config.num_kv_heads, model_config.resolved_head_dim,
                                max_length=max_length, bits=self.bits, group=self.group, dtype=dtype)

  def attend(self, rope, q, k, v, positions, valid, cache: ops.CompressedCache):
    q, k = _rotate(rope, q, k, positions)
    out, state = ops.quantized_attention(q, k, v, valid, cache.state, bits=self.bits, key_block=512)
    return out, cache.replace(state=state)

  def cached_tokens(self, length: int) -> int:
    return length

  def state_bytes(self, model_config: ModelConfig, length: int, dtype="float16") -> int:
    kv_heads, head_dim = model_config.num_kv_heads, model_config.resolved_head_dim
    codes = kv_heads * head_dim * self.bits // 8
    closed = length // self.group
    keys = closed * self.group * codes + closed * 2 * kv_heads * head_dim * _FLOAT32  # codes, scale and minimum
    keys += (length - closed * self.group) * kv_heads * head_dim * jnp.dtype(dtype).itemsize  # the open group
    values = length * (codes + 2 * kv_heads * _FLOAT32)
    return keys + values


EVICTING = ("streaming", "h2o", "snapkv")  # the entries that keep a budget of tokens (and evict the rest)

KV_POLICIES = {
    "full": Full,
    "streaming": Streaming,
    "h2o": H2O,
    "snapkv": SnapKV,
    "int8": lambda budget=None, **options: Quantized(8, budget, **options),
    "int4": lambda budget=None, **options: Quantized(4, budget, **options),
}


def make_policy(name: str, budget: int | None = None, max_length: int | None = None, **options):
  """The entry `name` with its budget (tokens) and options, validated against a cache of `max_length` tokens (None:
  the checks that need no length)."""
  if name not in KV_POLICIES:
    raise ConfigError(f"kv_policy={name!r} is invalid: allowed {', '.join(KV_POLICIES)}")
  if budget is None and name in EVICTING:
    raise ConfigError(f"kv_budget=None is invalid: kv_policy={name} needs a budget in tokens")
  try:
    policy = KV_POLICIES[name](budget=budget, **options)
  except TypeError:
    raise ConfigError(f"kv_options={options!r} is invalid for kv_policy={name}") from None
  policy.validate(max_length)
  return policy


def budget_for_bytes(name: str, model_config: ModelConfig, max_bytes: int, dtype="float16", **options) -> int:
  """The largest token budget of the evicting policy `name` whose cache, all layers of one sequence as the KV-cache
  calculator counts it (`state_bytes` x layers), fits in `max_bytes`; one clear line if none fits."""
  if name not in KV_POLICIES:
    make_policy(name)  # the unknown-policy line
  if name not in EVICTING:
    raise ConfigError(f"kv_budget_bytes is invalid for kv_policy={name}: it keeps every token; a bytes budget "
                      f"applies to {', '.join(EVICTING)}")
  if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
    raise ConfigError(f"kv_budget_bytes={max_bytes!r} is invalid: a positive whole number of bytes per sequence")
  least = KV_POLICIES[name](budget=1, **options).least_budget  # the policy's own smallest budget
  size = lambda budget: model_config.num_layers * KV_POLICIES[name](budget=budget, **options).state_bytes(  # noqa: E731
      model_config, budget, dtype)
  if size(least) > max_bytes:
    raise ConfigError(f"kv_budget_bytes={max_bytes} is invalid: kv_policy={name} needs at least {size(least)} bytes "
                      f"per sequence here (its smallest budget, {least} tokens, in {jnp.dtype(dtype).name})")
  low, high = least, max(least, max_bytes)  # size grows with the budget: the largest budget that fits
  while low < high:
    middle = (low + high + 1) // 2
    low, high = (middle, high) if size(middle) <= max_bytes else (low, middle - 1)
  return low


def resolve_budget(name: str, budget: int | None, budget_bytes: int | None, model_config: ModelConfig) -> int | None:
  """The command line's --kv_budget or --kv_budget_bytes (converted in the model's dtype, the dtype generation's
  cache is allocated in) as tokens, validated by `make_policy`; one clear line for both or a bad one."""
  if budget_bytes is not None:
    if budget is not None:
      raise ConfigError(f"--kv_budget={budget} and --kv_budget_bytes={budget_bytes}: give one of them, not both")
    budget = budget_for_bytes(name, model_config, budget_bytes, model_config.dtype)
  make_policy(name, budget)
  return budget


def init_cache(model_config: ModelConfig, batch_size: int, max_length: int, dtype=None, policy=None) -> dict:
  """`longjax.nn.init_cache`, or under a compressing policy one `ops.CompressedCache` per layer."""
  if policy is None or isinstance(policy, Full):
    return init_full_cache(model_config, batch_size, max_length, dtype)
  policy.validate(max_length)
  if model_config.block != "llama" or not ATTENTION_TYPES[model_config.attention.type].compressible:
    raise ConfigError(f"kv_policy={policy.name} is invalid here: KV-cache compression needs model.block=llama and "
                      f"model.attention.type=full (got {model_config.block}, {model_config.attention.type})")
  if not isinstance(policy, Streaming) and positional.is_dynamic(model_config.rope):
    raise ConfigError(f"kv_policy={policy.name} is invalid here: it keeps keys after RoPE, which needs a static "
                      f"model.rope.rope_type (got {model_config.rope.rope_type})")
  dtype = jnp.dtype(model_config.dtype if dtype is None else dtype)
  layer = lambda: ops.CompressedCache(policy, policy.init(model_config, batch_size, max_length, dtype))  # noqa: E731
  if model_config.scan_layers:
    state = layer()
    return {"layers": jax.tree.map(lambda x: jnp.broadcast_to(x, (model_config.num_layers,) + x.shape), state)}
  return {"layers": [layer() for _ in range(model_config.num_layers)]}


__all__ = ["EVICTING", "Full", "H2O", "KV_POLICIES", "Quantized", "SnapKV", "Streaming", "budget_for_bytes", "init_cache",
           "make_policy", "resolve_budget"]
