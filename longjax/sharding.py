"""Device mesh from config, logical-axis rules, and the shardings of parameter and batch trees.

This is the only module (with configs) that names mesh axes. Model code names
logical axes (`batch`, `length`, `embed`, `heads`, `kv_heads`, `head_dim`,
`mlp`, `vocab`, `layers`, `lora`); RULES maps them onto the mesh axes `data`,
`fsdp`, `tensor` and `sequence`. Where two logical axes of one array want the
same mesh axis, the rule listed first wins and the other tries its next rule or is replicated
(flax's rule).

Parameters and optimizer state are cut over `fsdp` and `sequence` together (their `embed` axis), as
MaxText's rules put `embed` on its fsdp and context axes: a device of fsdp=4 x sequence=2 then holds
the same parameter bytes as one of fsdp=8. Activations `[batch, length, embed]` are not cut twice:
`batch` takes `fsdp` and `length` takes `sequence` first, so their `embed` stays whole.
"""

import contextlib
import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from longjax.config import MESH_AXES, ConfigError, MeshConfig

RULES = (
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),
    ("embed", ("fsdp", "sequence")),
    ("embed", "fsdp"),  # where `length` took `sequence` and nothing took `fsdp`
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("lora", None),
)


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None):
  """The mesh and RULES under which the model's logical sharding constraints resolve (None: no mesh, as on one
  device)."""
  if mesh is None:
    yield
    return
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    yield


def mesh_shape(mesh: MeshConfig, num_devices: int) -> tuple[int, ...]:
  """Sizes of (data, fsdp, tensor, sequence), with a -1 axis filling the devices left over."""
  sizes = [getattr(mesh, name) for name in MESH_AXES]
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % fixed:
      raise ConfigError(f"mesh={dict(zip(MESH_AXES, sizes))} is invalid: the fixed axes ({fixed}) must divide "
                        f"the {num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"mesh={dict(zip(MESH_AXES, sizes))} is invalid: its product {math.prod(sizes)} must equal "
                      f"the {num_devices} devices (use -1 on one axis to fill)")
  return tuple(sizes)


def make_mesh(mesh: MeshConfig, devices=None) -> Mesh:
  """A Mesh over all (or the given) devices with Auto axis types, so logical rules drive the sharding."""
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if devices is None:  # jax.make_mesh orders devices for the physical topology (TPU torus, NVLink)
    return jax.make_mesh(mesh_shape(mesh, jax.device_count()), MESH_AXES, axis_types=axis_types)
  shape = mesh_shape(mesh, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def _mesh_size(mesh: Mesh, axes) -> int:
  """How many shards the mesh axes `axes` (None, one name or a tuple of names) cut a dimension into."""
  if axes is None:
    return 1
  return math.prod(mesh.shape[name] for name in ((axes,) if isinstance(axes, str) else axes))


def _cut(mesh: Mesh, axes, size: int | None):
  """The mesh axes of one dimension, without size-1 axes; with its `size`, the longest leading part of `axes`
  that cuts it evenly (None: it stays whole)."""
  names = [name for name in ((axes,) if isinstance(axes, str) else axes or ()) if mesh.shape[name] > 1]
  while names and size is not None and size % _mesh_size(mesh, tuple(names)):
    names.pop()
  return None if not names else names[0] if len(names) == 1 else tuple(names)


def logical_sharding(mesh: Mesh, logical_axes: PartitionSpec | tuple, shape: tuple[int, ...] | None = None
                     ) -> NamedSharding:
  """NamedSharding of logical axis names, naming only the mesh axes of size > 1 that cut each dimension; with
  `shape`, a dimension is cut only by the leading mesh axes that split it evenly, or stays whole.

  Arguments of a jitted function must split evenly: a 259-token byte vocabulary over tensor=2 is replicated.
  """
  spec = nn.logical_to_mesh_axes(tuple(logical_axes), RULES)
  sizes = (None,) * len(spec) if shape is None else shape
  return NamedSharding(mesh, PartitionSpec(*(_cut(mesh, axes, size) for axes, size in zip(spec, sizes))))


def tree_shardings(mesh: Mesh, logical_tree, abstract_tree=None):
  """A tree of PartitionSpecs of logical names (nn.get_partition_spec) -> NamedShardings on `mesh`.

  `abstract_tree` (arrays or ShapeDtypeStructs of the same structure) leaves unevenly divisible dimensions whole.
  """
  is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
  if abstract_tree is None:
    return jax.tree.map(lambda spec: logical_sharding(mesh, spec), logical_tree, is_leaf=is_spec)
  return jax.tree.map(lambda spec, x: logical_sharding(mesh, spec, x.shape), logical_tree, abstract_tree,
                      is_leaf=is_spec)


def sequence_axis() -> str | None:
  """The mesh axis that logical `length` maps to under RULES, when the current mesh cuts it; else None.

  Model code asks this rather than naming a mesh axis (context-parallel attention runs over it).
  """
  mesh = jax.sharding.get_abstract_mesh()
  axes = nn.logical_to_mesh_axes(("length",), RULES)[0]
  if isinstance(axes, tuple):
    if len(axes) != 1:
      raise ValueError(f"sharding.RULES maps `length` to {axes}; context parallelism runs over one mesh axis")
    axes = axes[0]
  if mesh.empty or axes is None or axes not in mesh.axis_names or mesh.shape[axes] == 1:
    return None
  return axes


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of int32[batch, length] inputs."""
  return logical_sharding(mesh, ("batch", "length"))


def addressable_rows(sharding: NamedSharding, shape: tuple[int, ...]) -> list[int]:
  """The rows (indices along dimension 0) of a global array of `shape` that this process's devices hold."""
  rows: set[int] = set()
  for index in sharding.addressable_devices_indices_map(shape).values():
    rows.update(range(shape[0])[index[0]])
  return sorted(rows)


def global_array(sharding: NamedSharding, shape: tuple[int, ...], rows: list[int], local: np.ndarray) -> jax.Array:
  """The global array of `shape` from this process's rows `rows` of it (`local[i]` is row `rows[i]`).

  Each local device gets exactly the block its index under `sharding` names, whichever mesh axes span
  processes: a process whose devices hold only some columns of a row (`length` over `sequence` across hosts)
  still passes whole rows, and a row held by devices of several processes is passed by each of them.
  """
  place = {row: i for i, row in enumerate(rows)}

  def block(index):
    wanted = range(shape[0])[index[0]]
    first = place[wanted[0]] if len(wanted) else 0
    if [place[r] for r in wanted] == list(range(first, first + len(wanted))):  # contiguous: a view, no copy
      picked = local[first:first + len(wanted)]
    else:
      picked = local[[place[r] for r in wanted]]
    return picked[(slice(None), *index[1:])]

  return jax.make_array_from_callback(shape, sharding, block)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def fetchable(x):
  """`x` itself where this process can read all of it (one process, or replicated), else its global value
  gathered to every process as numpy (a collective: every process calls it, as they called what made `x`).

  Evaluation and generation over a mesh that spans processes return arrays cut over other hosts' devices
  (logits, per-row losses, sampled tokens); each host needs the whole value to report it.
  """
  if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
    return x
  return multihost_utils.process_allgather(x, tiled=True)
