"""Memory planner: XLA's per-device memory of the compiled train step on a mesh, and the longest seq_len that fits.

  python -m longjax.plan --config configs/llama2_7b.py --mesh fsdp=8 --device_memory 16GiB

The train step is the Trainer's own (longjax/train/loop.py), lowered and compiled for abstract
inputs on fake CPU devices (`use_fake_devices`) and never run, so a laptop can say whether a
mesh of accelerators will hold a length before anyone pays for them. The figures are XLA's CPU
compiler's; an accelerator's compiler fuses differently, so treat a fit within a few percent of
the limit as uncertain.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
import tempfile
from collections.abc import Callable

import jax
import jax.numpy as jnp

from longjax import sharding
from longjax.config import (FLAT_KEYS, MESH_AXES, SUB_CONFIGS, Config, ConfigError, from_config_dict,
                            reset_other_types)

# Keys and dtypes of a packed training batch (longjax.data), each [global_batch_size, seq_len].
BATCH_DTYPES = {"inputs": jnp.int32, "targets": jnp.int32, "positions": jnp.int32, "segment_ids": jnp.int32,
                "loss_mask": jnp.float32}
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """XLA's bytes per device for one compiled train step (the state is donated: outputs alias arguments)."""

  state: int  # parameters and optimizer state held by one device (their shard shapes)
  arguments: int  # state + the batch
  outputs: int
  aliased: int  # outputs written in place of donated arguments
  temporaries: int

  @property
  def total(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries


@dataclasses.dataclass(frozen=True)
class Search:
  """The longest multiple of `step` that fits (0: not even `step`), the first that did not (None: none tried
  failed up to the limit), and the memory of every length compiled."""

  longest: int
  first_failing: int | None
  tried: dict[int, StepMemory]


def parse_bytes(text: str) -> int:
  """'16GiB', '80 GB', '512MiB', '1e9' -> bytes (binary and decimal units)."""
  match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
  if not match or match.group(2).lower() not in _UNITS:
    raise ConfigError(f"--device_memory={text!r} is invalid: expected a size such as 16GiB, 80GB or 512MiB")
  return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_mesh(text: str) -> dict[str, int]:
  """'fsdp=4,sequence=2' -> {'data': 1, 'fsdp': 4, 'tensor': 1, 'sequence': 2}: unnamed axes are 1, one may be -1."""
  sizes = dict.fromkeys(MESH_AXES, 1)
  for item in filter(None, text.split(",")):
    name, sep, value = item.partition("=")
    if not sep or name.strip() not in MESH_AXES or not re.fullmatch(r"\s*(-1|[1-9][0-9]*)\s*", value):
      raise ConfigError(f"--mesh={text!r} is invalid: expected axis=size pairs with axes {', '.join(MESH_AXES)} "
                        "and sizes >= 1 (one may be -1), e.g. fsdp=4,sequence=2")
    sizes[name.strip()] = int(value)
  return sizes


def use_fake_devices(count: int) -> None:
  """Make this process's JAX see `count` CPU devices (as XLA_FLAGS=--xla_force_host_platform_device_count does);
  only possible before JAX starts its backend."""
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", count)
  if jax.device_count() != count:
    raise RuntimeError(f"JAX already started with {jax.device_count()} devices; the plan needs {count}: run it in "
                       "a fresh process")


def with_values(config: Config, values: dict) -> Config:
  """`config` with dotted keys replaced ({'train.seq_len': 8192, 'model.remat_policy': 'full'}), validated again;
  a new model.attention.type drops the old type's settings (`config.reset_other_types`)."""
  tree = config.to_dict()
  old_type = config.model.attention.type
  for key, value in values.items():
    *parents, name = key.split(".")
    node = tree
    for parent in parents:
      node = node[parent]
    if name not in node:
      raise ConfigError(f"{key} is not a config key; every key is listed, with a comment, in configs/base.py")
    node[name] = value
  if tree["model"]["attention"]["type"] != old_type:
    reset_other_types(tree["model"]["attention"], values)
  return from_config_dict(tree)


def type_settings(given: dict) -> tuple[dict, dict[str, dict]]:
  """(`given`, a plain config tree, without the settings of the attention types other than its own; those settings
  as {type: {"model.attention.sliding.window": 4096}}), so that one config can carry the keys of every type a
  search compiles (`search_lengths`' `settings`)."""
  given = copy.deepcopy(given)
  attention, settings = given["model"]["attention"], {}
  kind = attention.get("type", "full")
  for name, sub_config in SUB_CONFIGS.items():
    if name != kind and name in attention:
      defaults = dataclasses.asdict(sub_config())
      settings[name] = {f"model.attention.{name}.{key}": value for key, value in attention[name].items()
                        if value != defaults.get(key)}
  for flat, owners in FLAT_KEYS.items():  # an old flat key (attention.window) serves every type that has it
    if attention.get(flat) is not None:
      for name, key in owners.items():
        if name != kind:
          settings.setdefault(name, {}).setdefault(f"model.attention.{name}.{key}", attention[flat])
  reset_other_types(attention)
  return given, settings


_MEMORY: dict[tuple[str, int], StepMemory] = {}  # a search compiles the configured length again: once is enough


def step_memory(config: Config) -> StepMemory:
  """Compile the Trainer's train step for `config` on this process's devices (abstract inputs, nothing runs)."""
  key = (config.to_json(), jax.device_count())
  if key not in _MEMORY:
    _MEMORY[key] = _compile(config)
  return _MEMORY[key]


def _compile(config: Config) -> StepMemory:
  from longjax.train import init  # the training floor, deferred: `import longjax.plan` stays light
  from longjax.train.loop import Trainer

  # The shapes are those of the model to start from (train.init_from), read without its parameters, as the
  # Trainer adopts them; the plan then compiles from random parameters.
  if config.train.init_from:
    source, _ = init.source_config(config.train.init_from)
    config = dataclasses.replace(config, model=init.adopt_shapes(config.model, source))
  config = with_values(config, {"train.init_from": None})
  with tempfile.TemporaryDirectory() as workdir:
    trainer = Trainer(config, workdir)
    try:
      with trainer.context():
        shape = (config.train.global_batch_size, config.train.seq_len)
        batch = {key: jax.ShapeDtypeStruct(shape, dtype, sharding=trainer.batch_sharding)
                 for key, dtype in BATCH_DTYPES.items()}
        state = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(trainer.mesh)),
                 "params": trainer.abstract_params, "opt_state": trainer.abstract_opt}
        analysis = trainer.train_step.lower(state, batch).compile().memory_analysis()
    finally:
      trainer.checkpointer.close()
  held = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves((trainer.abstract_params, trainer.abstract_opt)))
  return StepMemory(state=held, arguments=analysis.argument_size_in_bytes, outputs=analysis.output_size_in_bytes,
                    aliased=analysis.alias_size_in_bytes, temporaries=analysis.temp_size_in_bytes)


def longest_fitting(memory_at: Callable[[int], StepMemory], limit: int, step: int, max_len: int) -> Search:
  """The longest multiple of `step` up to `max_len` whose step memory is at most `limit` bytes: doubling from
  `step`, then bisecting between the last fit and the first miss (memory grows with the length)."""
  tried: dict[int, StepMemory] = {}

  def fits(length: int) -> bool:
    tried[length] = memory_at(length)
    return tried[length].total <= limit

  longest, length = 0, step
  while length <= max_len and fits(length):
    longest, length = length, length * 2
  if length > max_len:  # every doubling fitted: the cap itself may still fit
    cap = max_len // step * step
    if cap == longest or fits(cap):
      return Search(cap, None, tried)
    length = cap
  low, high = longest // step, length // step  # fits at low * step (or low is 0), not at high * step
  while high - low > 1:
    middle = (low + high) // 2
    low, high = (middle, high) if fits(middle * step) else (low, middle)
  return Search(low * step, high * step, tried)


def attention_values(spec: str, settings: dict[str, dict] | None = None) -> dict:
  """'full/blockwise' or 'sliding' (the config's impl) -> config values of that attention type and impl, with that
  type's keys from `settings` ({type: {dotted key: value}}, `type_settings`)."""
  kind, _, impl = spec.partition("/")
  return {"model.attention.type": kind, **({"model.attention.impl": impl} if impl else {}),
          **(settings or {}).get(kind, {})}


def search_lengths(config: Config, attentions: list[str], remats: list[str], limit: int, step: int, max_len: int,
                   report: Callable[[str], None] = lambda line: None,
                   settings: dict[str, dict] | None = None) -> list[tuple[str, str, Search]]:
  """`longest_fitting` for every (attention 'type[/impl]', remat policy) pair; `report` hears each compile;
  `settings`: the keys of each searched type ({type: {dotted key: value}})."""
  rows = []
  for attention in attentions:
    for remat in remats:
      variant = with_values(config, {**attention_values(attention, settings), "model.remat_policy": remat})
      memory_at = functools.partial(_memory_at, variant, f"{attention} remat={remat}", report)
      rows.append((attention, remat, longest_fitting(memory_at, limit, step, max_len)))
  return rows


def _memory_at(config: Config, name: str, report: Callable[[str], None], length: int) -> StepMemory:
  memory = step_memory(with_values(config, {"train.seq_len": length}))
  report(f"{name} seq_len={length}: {size_text(memory.total)}")
  return memory


def size_text(n: int) -> str:
  """Bytes as GiB (two decimals) from 1 GiB up, else MiB (one decimal)."""
  return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
