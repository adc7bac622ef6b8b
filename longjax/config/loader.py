"""The loader of config files: `load_file("configs/x.py:arg")` runs a file's `get_config(arg)` in any process,
`load_sweep` its `get_sweep(add)`, `parse_arg` its argument string. Any failure is a ConfigError of one line."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from typing import Any, Iterator

import ml_collections
from ml_collections import config_dict

from longjax.config.attention import FLAT_KEY_TYPES
from longjax.config.checks import ConfigError, _require


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parse a config file's argument string `key=value,key=value` against typed defaults.

  `configs/llama2_7b.py:rope=yarn,factor=16` calls get_config("rope=yarn,factor=16");
  each value is converted to its default's type; unknown keys are a ConfigError.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    key = key.strip()
    _require(bool(sep) and key in defaults, f"config argument {key}", value,
             f"expected key=value with key one of: {', '.join(defaults)}")
    default = defaults[key]
    try:
      if isinstance(default, bool):
        _require(value.lower() in ("true", "false", "1", "0"), f"config argument {key}", value, "a boolean")
        parsed[key] = value.lower() in ("true", "1")
      else:
        parsed[key] = type(default)(value) if default is not None else value
    except ValueError:
      raise ConfigError(f"config argument {key}={value!r} is invalid: expected {type(default).__name__}") from None
  return parsed


def _config_directories(path: str) -> list[str]:
  """The directory of a config file and those above it, up to the configs root (the one holding base.py)."""
  directory = os.path.dirname(path)
  chain = [directory]
  while not os.path.isfile(os.path.join(directory, "base.py")):
    parent = os.path.dirname(directory)
    if parent == directory:
      return chain[:1]  # no configs root above: only the file's own siblings are importable
    directory = parent
    chain.append(directory)
  return chain


@contextlib.contextmanager
def _importable(directories: list[str]) -> Iterator[None]:
  """Let `import base` / `from common import extend` find the config modules of `directories`, for a while.

  The config modules are imported afresh (an unrelated `base` or `common` already imported is set aside,
  then put back), and sys.path and sys.modules are left as they were.
  """
  names = {entry.name[:-3] for directory in directories for entry in os.scandir(directory)
           if entry.name.endswith(".py") and entry.is_file()}
  set_aside = {name: sys.modules.pop(name) for name in names if name in sys.modules}
  saved_path = list(sys.path)
  sys.path[:0] = directories
  try:
    yield
  finally:
    sys.path[:] = saved_path
    for name in names:
      sys.modules.pop(name, None)
    sys.modules.update(set_aside)


def error_line(error: BaseException, limit: int | None = None) -> str:
  """`TypeName: first line of the message` (cut to `limit` characters, with "..."), for one-line reports."""
  message = str(error).strip()
  line = message.splitlines()[0] if message else ""
  if limit is not None and len(line) > limit:
    line = line[:limit] + "..."
  return f"{type(error).__name__}: {line}" if line else type(error).__name__


@contextlib.contextmanager
def _config_module(spec: str) -> Iterator[tuple[Any, str | None]]:
  """(module, argument or None) of `path/to/config.py[:arg]`; its sibling config modules import while inside."""
  path, has_arg, arg = spec.partition(":")
  if not path.endswith(".py") or not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} is invalid: expected an existing path/to/config.py[:arg]")
  path = os.path.abspath(path)
  name = os.path.basename(path)[:-3]
  with _importable(_config_directories(path)):
    try:
      module_spec = importlib.util.spec_from_file_location(name, path)
      module = importlib.util.module_from_spec(module_spec)
      sys.modules[name] = module  # as an import would: a sibling importing this file gets this module
      module_spec.loader.exec_module(module)
    except Exception as e:  # a config file is user code: report what broke, in one line
      raise ConfigError(f"config file {spec!r} does not load: {error_line(e)}") from e
    yield module, (arg if has_arg else None)


def load_file(spec: str) -> ml_collections.ConfigDict:
  """The ConfigDict of `path/to/config.py` or `path/to/config.py:arg`: the file's `get_config(arg)` (big_vision style).

  Works from any working directory: a config file may import the config files beside it and above it up to
  configs/ (configs/extend/pi_x4.py imports `common` and, through it, `tiny` and `base`). Any failure is a
  ConfigError of one line naming the file.
  """
  with _config_module(spec) as (module, arg):
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
      raise ConfigError(f"config file {spec!r} is invalid: it defines no get_config(arg=None)")
    try:
      config = get_config(arg) if arg is not None else get_config()
    except ConfigError as e:
      raise ConfigError(f"config file {spec!r}: {e}") from None
    except Exception as e:
      raise ConfigError(f"config file {spec!r}: get_config failed: {error_line(e)}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"config file {spec!r} is invalid: get_config returned {type(config).__name__}, "
                      "not a ConfigDict")
  _add_flat_attention_keys(config)
  return config


def _add_flat_attention_keys(config: ml_collections.ConfigDict) -> None:
  """Give `model.attention` each flat key of earlier versions it lacks, unset, so an old override
  (`--config.model.attention.window=4096`) still finds its key; the schema maps it (`attention.from_flat_keys`)."""
  model = config.get("model")
  attention = model.get("attention") if isinstance(model, config_dict.ConfigDict) else None
  if not isinstance(attention, config_dict.ConfigDict):
    return
  with attention.unlocked():
    for key, value_type in FLAT_KEY_TYPES.items():
      if key not in attention:
        attention[key] = config_dict.placeholder(value_type)


def load_sweep(spec: str) -> list[dict[str, Any]]:
  """The runs of a config file's `get_sweep(add)` (big_vision style): each `add(**{"train.learning_rate": 1e-3,
  ...})` call is one run, a dict of dotted config keys to values that override the file's get_config."""
  runs: list[dict[str, Any]] = []
  with _config_module(spec) as (module, _):
    get_sweep = getattr(module, "get_sweep", None)
    if not callable(get_sweep):
      raise ConfigError(f"config file {spec!r} is invalid for a sweep: it defines no get_sweep(add)")
    try:
      get_sweep(lambda **overrides: runs.append(overrides))
    except ConfigError as e:
      raise ConfigError(f"config file {spec!r}: {e}") from None
    except Exception as e:
      raise ConfigError(f"config file {spec!r}: get_sweep failed: {error_line(e)}") from e
  if not runs:
    raise ConfigError(f"config file {spec!r} is invalid for a sweep: get_sweep called add() for no run")
  return runs
