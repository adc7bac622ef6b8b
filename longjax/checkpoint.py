"""Orbax checkpoints of a training run, and `read_config(workdir)` (`longjax.load` builds on both).

A step directory `workdir/checkpoints/<step>/` holds four items:
  params     the parameter tree (float32), restorable alone onto any mesh,
  opt_state  the optax state,
  data       the training iterators' state (JSON, one per process), so a resumed run sees the same batches,
  config     the validated run config (JSON).
A model imported from Hugging Face or GGUF (python -m longjax.convert --hf_dir / --gguf) is a workdir whose only
step, 0, holds params and config: readers of parameters see no difference from a training run.
A workdir is any etils.epath path (local, gs://...): Orbax writes arrays through TensorStore, which
reads gs:// itself. Orbax writes each step to a temporary directory and renames it when complete,
so a failed or interrupted save never replaces the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from longjax import sharding
from longjax.config import Config, ConfigError, ModelConfig, error_line, from_config_dict
from longjax.nn import abstract_params

CHECKPOINTS = "checkpoints"
# Keys that earlier versions wrote to config.json and that no longer exist; the runs they made still open.
RETIRED_KEYS = (("eval", "passkey_trials"),)
_ERROR_LIMIT = 200  # characters of an error kept in a one-line warning (TensorStore's run to pages)


class _NoReadOnlyNotice(logging.Filter):
  """Orbax warns "Given directory is read only" whenever a reader opens a checkpoint read-only, as intended."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_NoReadOnlyNotice())


def workdir_path(workdir: str | os.PathLike) -> epath.Path:
  """A workdir as an epath.Path: a local path made absolute (as before), a URL (gs://bucket/run) kept as it is."""
  text = os.fspath(workdir)
  return epath.Path(text if "://" in text else os.path.abspath(text))


class CheckpointError(ConfigError):
  """A checkpoint that cannot be used; the message names the directory and what was wrong."""


def _shape_mismatch(expected, stored) -> str | None:
  """The first leaf whose stored shape differs from the expected one, as a readable line."""
  flat_expected = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
  flat_stored = dict(jax.tree_util.tree_flatten_with_path(stored)[0])
  for path, leaf in flat_expected.items():
    name = jax.tree_util.keystr(path)
    if path not in flat_stored:
      return f"parameter {name} is missing"
    if tuple(flat_stored[path].shape) != tuple(leaf.shape):
      return f"parameter {name} has shape {tuple(flat_stored[path].shape)}; this config expects {tuple(leaf.shape)}"
  extra = [jax.tree_util.keystr(p) for p in flat_stored if p not in flat_expected]
  return f"parameter {extra[0]} is not in this config's model" if extra else None


class Checkpointer:
  """Saves and restores training state under `workdir/checkpoints`, keeping the last `max_to_keep` steps."""

  def __init__(self, workdir: str | os.PathLike, *, max_to_keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    """`read_only` for readers of another run's workdir (a notebook, `train.init_from`): they must neither
    create directories nor clean up temporary ones, which may be a save of that run still in flight."""
    self.directory = str(workdir_path(workdir) / CHECKPOINTS)
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None, save_interval_steps=0,
                                             enable_async_checkpointing=False)
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                             cleanup_tmp_directories=True)
    handlers = {"params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, params, opt_state, data_state: dict, config: Config, *, force: bool = False) -> bool:
    args = ocp.args.Composite(params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
                              data=ocp.args.JsonSave(data_state), config=ocp.args.JsonSave(config.to_dict()))
    return self.manager.save(step, args=args, force=force)

  def save_params(self, step: int, params, config: Config) -> None:
    """Parameters and config only, no optimizer or data state: an imported model, which every reader
    (`restore_params`: `longjax.load`, `train.init_from`) reads as it reads a training run's step."""
    args = ocp.args.Composite(params=ocp.args.StandardSave(params), config=ocp.args.JsonSave(config.to_dict()))
    self.manager.save(step, args=args, force=True)
    self.manager.wait_until_finished()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    # The manager cleans up temporary directories in a background thread started by its constructor, which
    # only `save` waits for; a process that ends before any save (a user error) would have it fail at exit.
    cleanup = getattr(self.manager, "_cleanup_tmp_directory_future", None)
    if cleanup is not None:
      cleanup.result()
    self.manager.close()

  def _check_shapes(self, step: int, abstract_params) -> None:
    stored = self.manager.item_metadata(step)["params"]
    if not jax.tree.leaves(stored):  # a damaged step, not a different model: let the caller fall back
      raise ValueError(f"{self.directory}/{step}/params has no readable metadata")
    problem = _shape_mismatch(abstract_params, stored)
    if problem:
      raise CheckpointError(f"{self.directory}/{step}: {problem} (use another workdir, or the model of that run)")

  def _first_restorable(self, step: int | None, restore_one, *, set_aside: bool = False):
    """restore_one(step) of `step`, or of the newest step that restores (warning about the ones that don't).

    With `set_aside`, newer steps that failed are renamed so that training can save those steps again.
    """
    steps = [step] if step is not None else self.all_steps()[::-1]
    if not steps:
      raise CheckpointError(f"{self.directory}: no checkpoint; allowed: a workdir that python -m longjax.train "
                            "or python -m longjax.convert --hf_dir or --gguf wrote")
    if steps[0] not in self.all_steps():
      raise CheckpointError(f"{self.directory}: no checkpoint at step {step}; present: {self.all_steps()}")
    last_error: Exception | None = None
    failed = []
    for candidate in steps:
      try:
        result = restore_one(candidate)
      except CheckpointError:
        raise
      except Exception as e:  # noqa: BLE001 - a step that fails to read falls back to the previous one
        last_error = e
        failed.append(candidate)
        logging.warning("checkpoint %s/%d does not restore (%s); trying the previous one", self.directory,
                        candidate, error_line(e, _ERROR_LIMIT))
        continue
      if set_aside and failed:
        self._set_aside(failed)
      return result
    raise CheckpointError(f"{self.directory}: no step restores; the last error was "
                          f"{error_line(last_error, _ERROR_LIMIT)}")

  def _set_aside(self, steps: list[int]) -> None:
    """Rename step directories that do not restore to `<step>.unrestorable` (kept for inspection, ignored by
    Orbax): otherwise the resumed run would fail when it reaches one of those steps and saves it again."""
    if jax.process_index() == 0:
      for step in steps:
        path = epath.Path(self.directory) / str(step)
        target, copy = path.with_name(f"{step}.unrestorable"), 1
        while target.exists():
          target, copy = path.with_name(f"{step}.unrestorable{copy}"), copy + 1
        path.rename(target)
        logging.warning("moved the unrestorable checkpoint %s to %s", path, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("longjax.checkpoint.set_aside")
    self.manager.reload()

  def restore(self, abstract_params, abstract_opt_state, step: int | None = None) -> tuple[int, Any, Any, dict]:
    """(step, params, opt_state, data_state) of `step` or of the newest step that restores.

    Abstract trees carry the target shardings (a different mesh reshards). A newest step that fails
    to restore (corrupted, half-deleted) is skipped with a warning and the one before it is used; the
    skipped step directories are renamed `<step>.unrestorable`, so that the resumed run can save them anew.
    """

    def restore_one(candidate):
      self._check_shapes(candidate, abstract_params)
      if not {"opt_state", "data"} & set(self.manager.item_metadata(candidate)):  # written by save_params
        raise CheckpointError(f"{self.directory}/{candidate}: holds parameters only (an imported model), which do not "
                              "resume; allowed: train.init_from with a new workdir")
      restored = self.manager.restore(candidate, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params), opt_state=ocp.args.StandardRestore(abstract_opt_state),
          data=ocp.args.JsonRestore()))
      return candidate, restored["params"], restored["opt_state"], restored["data"]

    return self._first_restorable(step, restore_one, set_aside=step is None)

  def restore_params(self, abstract_params=None, step: int | None = None):
    """(step, params) only: what a notebook or `train.init_from` needs; the newest restorable step by default."""

    def restore_one(candidate):
      if abstract_params is not None:
        self._check_shapes(candidate, abstract_params)
      restored = self.manager.restore(candidate, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params)))
      return candidate, restored["params"]

    return self._first_restorable(step, restore_one)


def read_config(workdir: str | os.PathLike) -> Config:
  """The validated config a run wrote to `workdir/config.json` (any epath: local, gs://)."""
  path = workdir_path(workdir) / "config.json"
  if not path.is_file():
    raise CheckpointError(f"{path}: file not found; allowed: a workdir that python -m longjax.train or "
                          "python -m longjax.convert --hf_dir or --gguf wrote")
  given = json.loads(path.read_text())
  for section, key in RETIRED_KEYS:
    given.get(section, {}).pop(key, None)
  return _tokenizer_in_workdir(from_config_dict(given), workdir)


def _tokenizer_in_workdir(config: Config, workdir: str) -> Config:
  """A relative data.tokenizer_path names a file in the workdir when one is there (an import copies the model's
  tokenizer in, so the workdir can move); otherwise it stays as the run was given it (relative to where it ran)."""
  path = config.data.tokenizer_path
  if not path or os.path.isabs(path) or "://" in path or not (workdir_path(workdir) / path).exists():
    return config
  inside = workdir_path(workdir) / path
  resolved = str(inside) if "://" in str(inside) else os.path.abspath(inside)  # local: normalized, as before
  return dataclasses.replace(config, data=dataclasses.replace(config.data, tokenizer_path=resolved))


def host_params(params):
  """Device arrays -> numpy (for export)."""
  return jax.tree.map(np.asarray, params)


def restore_model_params(workdir: str | os.PathLike, model_config: ModelConfig, step: int | None = None, *,
                         mesh: jax.sharding.Mesh | None = None, dtype: Any = None) -> tuple[int, dict]:
  """(step, params) of `step` (newest restorable by default) of the run in `workdir`.

  Without `mesh`, onto this process's first device; with one, each parameter cut over `mesh` by its logical axes
  (`sharding.tree_shardings`, as training cuts it), each device reading only its own block. `dtype` (e.g.
  "bfloat16") casts the floating parameters as they are read, block by block. In a multi-process run every
  process calls it with the same global mesh."""
  abstract, logical = abstract_params(model_config)
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, abstract)
  else:
    shardings = sharding.tree_shardings(mesh, logical, abstract)

  def target(x, where):
    cast = dtype is not None and np.issubdtype(x.dtype, np.floating)
    return jax.ShapeDtypeStruct(x.shape, np.dtype(dtype) if cast else x.dtype, sharding=where)

  abstract = jax.tree.map(target, abstract, shardings)
  checkpointer = Checkpointer(workdir, read_only=True)
  try:
    return checkpointer.restore_params(abstract, step)
  finally:
    checkpointer.close()
