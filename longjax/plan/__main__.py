"""Will it fit? XLA's per-device memory of the train step on a mesh, and the longest seq_len under a memory size.

  python -m longjax.plan --config configs/llama2_7b.py --mesh fsdp=8 --device_memory 16GiB
  python -m longjax.plan --config configs/llama2_7b.py --mesh fsdp=4,sequence=2 --device_memory 80GiB \\
      --attention full/blockwise,full/xla,sliding --remat full,dots_with_no_batch_dims \\
      --config.train.global_batch_size=4 --config.model.attention.sliding.window=4096

Compiles (never runs) the Trainer's step on fake CPU devices, one per mesh position: first the config
as given, then, per attention type[/impl] and remat policy, lengths that double from --step and are
bisected to the longest multiple of --step that fits. The batch stays train.global_batch_size.
"""

import dataclasses
import json
import math

from absl import flags
import ml_collections

from longjax import cli, plan, sharding
from longjax.config import MESH_AXES, ConfigError, MeshConfig

_CONFIG = cli.define_config_flag("config", "A config file, e.g. configs/llama2_7b.py[:args].")
_MESH = flags.DEFINE_string("mesh", None, "Mesh axis sizes, e.g. fsdp=4,sequence=2 (unnamed axes 1; default: the "
                            "config's mesh).")
_DEVICES = flags.DEFINE_integer("devices", None, "Devices of the planned machine (default: the mesh's product).")
_MEMORY = flags.DEFINE_string("device_memory", "16GiB", "Memory of one device, e.g. 16GiB (TPU v5e), 80GiB (H100).")
_ATTENTION = flags.DEFINE_list("attention", None, "Attention type[/impl] to search, e.g. full/blockwise,full/xla,"
                               "sliding (default: the config's).")
_REMAT = flags.DEFINE_list("remat", None, "Remat policies to search (default: the config's).")
_STEP = flags.DEFINE_integer("step", 1024, "Lengths searched are multiples of this.")
_MAX_LEN = flags.DEFINE_integer("max_seq_len", 2**20, "The longest length tried.")
_JSON = flags.DEFINE_string("json", None, "Also write every figure (bytes) to this JSON file.")
_SEARCH = flags.DEFINE_bool("search", True, "Search the longest fitting seq_len (else only the config as given).")


def _mesh_config(config) -> MeshConfig:
  if _MESH.value is None:
    return config.mesh
  return MeshConfig(**plan.parse_mesh(_MESH.value))


def _memory_json(memory: plan.StepMemory) -> dict:
  return {**dataclasses.asdict(memory), "total": memory.total}


def main(argv):
  from longjax.train.init import run_config  # the training floor, deferred as plan defers the Trainer

  del argv
  limit = plan.parse_bytes(_MEMORY.value)
  # The keys of types other than the config's own are for the searched types (--attention), not for this config.
  given, settings = plan.type_settings(_CONFIG.value.to_dict())
  config = run_config(ml_collections.ConfigDict(given), explicit=cli.override_keys("config"))
  mesh = _mesh_config(config)
  mesh.validate("--mesh")
  sizes = {name: getattr(mesh, name) for name in MESH_AXES}
  if _DEVICES.value is None and -1 in sizes.values():
    raise ConfigError(f"--mesh={sizes} is invalid: an axis of -1 needs --devices to fill")
  devices = _DEVICES.value or math.prod(sizes.values())
  if _STEP.value < 1 or _MAX_LEN.value < _STEP.value:
    raise ConfigError(f"--step={_STEP.value} --max_seq_len={_MAX_LEN.value} are invalid: need 1 <= step <= max")
  sizes = dict(zip(MESH_AXES, sharding.mesh_shape(mesh, devices)))  # a product other than the devices fails here
  config = plan.with_values(config, {f"mesh.{name}": size for name, size in sizes.items()})
  shards = {"train.global_batch_size": (config.train.global_batch_size, sizes["data"] * sizes["fsdp"], "data x fsdp"),
            "train.seq_len": (config.train.seq_len, sizes["sequence"], "sequence"),
            "--step": (_STEP.value, sizes["sequence"], "sequence")}
  for key, (value, count, axes) in shards.items():
    if value % count:
      raise ConfigError(f"{key}={value} is invalid: it must split evenly over the mesh's {axes} ({count})")
  plan.use_fake_devices(devices)

  memory = plan.step_memory(config)
  attention = config.model.attention
  print(f"mesh {','.join(f'{name}={size}' for name, size in sizes.items())} ({devices} devices), batch "
        f"{config.train.global_batch_size} x seq_len {config.train.seq_len}, attention {attention.type}/"
        f"{attention.impl}, remat {config.model.remat_policy}; per device:")
  print(f"  params+optimizer {plan.size_text(memory.state)}, arguments {plan.size_text(memory.arguments)}, "
        f"temporaries {plan.size_text(memory.temporaries)}, outputs {plan.size_text(memory.outputs)} (aliased "
        f"{plan.size_text(memory.aliased)}), total {plan.size_text(memory.total)} of {plan.size_text(limit)}: "
        f"{'fits' if memory.total <= limit else 'does NOT fit'}", flush=True)
  result = {"mesh": sizes, "device_memory": limit, "global_batch_size": config.train.global_batch_size,
            "config": {"seq_len": config.train.seq_len, **_memory_json(memory)}, "search": []}
  if _SEARCH.value:
    attentions = _ATTENTION.value or [f"{attention.type}/{attention.impl}"]
    remats = _REMAT.value or [config.model.remat_policy]
    rows = plan.search_lengths(config, attentions, remats, limit, _STEP.value, _MAX_LEN.value,
                               report=lambda line: print(f"  compiled {line}", flush=True), settings=settings)
    print(f"\nLongest seq_len under {plan.size_text(limit)} a device, batch {config.train.global_batch_size} "
          f"(multiples of {_STEP.value}, at most {_MAX_LEN.value}):\n")
    print("| attention | remat | longest seq_len | its total | first that does not fit | its total |")
    print("|---|---|---:|---:|---:|---:|")
    for name, remat, search in rows:
      fit, miss = search.longest, search.first_failing
      print(f"| {name} | {remat} | {fit or 'none'} | {plan.size_text(search.tried[fit].total) if fit else '-'} | "
            f"{miss or '-'} | {plan.size_text(search.tried[miss].total) if miss else '-'} |")
      result["search"].append({"attention": name, "remat": remat, "longest": fit, "first_failing": miss,
                               "tried": {str(n): _memory_json(m) for n, m in sorted(search.tried.items())}})
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  cli.run(main, keep_buffers=False)  # one-off host arrays: glibc's default malloc
