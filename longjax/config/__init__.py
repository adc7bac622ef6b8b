"""Typed configs: the schema (`longjax.config.schema`: frozen dataclasses, validation, ConfigError) and the loader
of config files (`longjax.config.loader`: load_file, load_sweep, parse_arg); both are importable from here."""

from longjax.config.schema import *  # noqa: F401,F403 - the public names of the schema, as before the split
from longjax.config.loader import error_line, load_file, load_sweep, parse_arg  # noqa: F401
