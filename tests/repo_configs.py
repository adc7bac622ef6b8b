"""The repository's config files, loaded as a user loads them (longjax.config.load_file), from any cwd."""

import os

import ml_collections

from longjax.config import load_file

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`load_config("tiny.py:rope=yarn")` is load_file("<repo>/configs/tiny.py:rope=yarn")."""
  return load_file(os.path.join(CONFIGS, spec))
