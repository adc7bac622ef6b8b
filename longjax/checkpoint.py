"""Orbax checkpoints of a training run, and `load(workdir)` for notebooks.

A step directory `workdir/checkpoints/<step>/` holds four items:
  params     the parameter tree (float32), restorable alone onto any mesh,
  opt_state  the optax state,
  data       the training iterator's state (JSON), so a resumed run sees the same batches,
  config     the validated run config (JSON).
Orbax writes each step to a temporary directory and renames it when complete,
so a failed or interrupted save never replaces the last good checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from longjax.config import Config, ConfigError, from_config_dict

CHECKPOINTS = "checkpoints"


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

  def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
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

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def _check_shapes(self, step: int, abstract_params) -> None:
    stored = self.manager.item_metadata(step)["params"]
    problem = _shape_mismatch(abstract_params, stored)
    if problem:
      raise CheckpointError(f"{self.directory}/{step}: {problem} (use another workdir, or the model of that run)")

  def _first_restorable(self, step: int | None, restore_one):
    """restore_one(step) of `step`, or of the newest step that restores (warning about the ones that don't)."""
    steps = [step] if step is not None else self.all_steps()[::-1]
    if not steps or steps[0] not in self.all_steps():
      raise CheckpointError(f"{self.directory}: no checkpoint at step {step}; present: {self.all_steps()}")
    last_error: Exception | None = None
    for candidate in steps:
      try:
        return restore_one(candidate)
      except CheckpointError:
        raise
      except Exception as e:  # noqa: BLE001 - a step that fails to read falls back to the previous one
        last_error = e
        logging.warning("checkpoint %s/%d does not restore (%s: %s); trying the previous one", self.directory,
                        candidate, type(e).__name__, _first_line(e))
    raise CheckpointError(f"{self.directory}: no step restores; the last error was "
                          f"{type(last_error).__name__}: {_first_line(last_error)}")

  def restore(self, abstract_params, abstract_opt_state, step: int | None = None) -> tuple[int, Any, Any, dict]:
    """(step, params, opt_state, data_state) of `step` or of the newest step that restores.

    Abstract trees carry the target shardings (a different mesh reshards). A newest step that fails
    to restore (corrupted, half-deleted) is skipped with a warning and the one before it is used.
    """

    def restore_one(candidate):
      self._check_shapes(candidate, abstract_params)
      restored = self.manager.restore(candidate, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params), opt_state=ocp.args.StandardRestore(abstract_opt_state),
          data=ocp.args.JsonRestore()))
      return candidate, restored["params"], restored["opt_state"], restored["data"]

    return self._first_restorable(step, restore_one)

  def restore_params(self, abstract_params=None, step: int | None = None):
    """(step, params) only: what a notebook or `train.init_from` needs; the newest restorable step by default."""

    def restore_one(candidate):
      if abstract_params is not None:
        self._check_shapes(candidate, abstract_params)
      restored = self.manager.restore(candidate, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract_params)))
      return candidate, restored["params"]

    return self._first_restorable(step, restore_one)


def _first_line(error: Exception | None) -> str:
  return str(error).splitlines()[0] if error is not None and str(error) else ""


def read_config(workdir: str) -> Config:
  """The validated config a run wrote to `workdir/config.json`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: file not found; allowed: a workdir written by python -m longjax.train")
  with open(path) as f:
    return from_config_dict(json.load(f))


def host_params(params):
  """Device arrays -> numpy (for export)."""
  return jax.tree.map(np.asarray, params)
