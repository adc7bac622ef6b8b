"""ConfigError and the one-line checks every config section uses (`longjax.config.schema`, `.attention`)."""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
  """A user-caused error: the message is one line naming the key or file, the value and what is allowed."""


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
  if not ok:
    raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def _positive(key: str, value: Any) -> None:
  _require(isinstance(value, (int, float)) and value > 0, key, value, "must be > 0")


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
  _require(value in allowed, key, value, f"allowed: {', '.join(allowed)}")


def _check_keys(section: str, given: dict, cls: type) -> None:
  """Reject keys that the typed config does not have (configs built in code, or JSON from disk)."""
  names = {f.name for f in dataclasses.fields(cls)}
  for key in given:
    _require(key in names, f"{section}.{key}", given[key], f"unknown key; known: {', '.join(sorted(names))}")
