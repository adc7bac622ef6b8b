"""Every config file validates; the extension recipes' runlocal variants train."""

import glob
import importlib.util
import os
import sys

import pytest

from longjax.config import from_config_dict

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")
FILES = sorted(glob.glob(os.path.join(CONFIGS, "*.py")) + glob.glob(os.path.join(CONFIGS, "extend", "*.py")))


def _module(path):
  sys.path.insert(0, os.path.dirname(path))
  try:
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  finally:
    sys.path.pop(0)


@pytest.mark.parametrize("path", [p for p in FILES if not p.endswith("common.py")], ids=os.path.basename)
def test_config_file_validates_and_documents_its_command(path):
  module = _module(path)
  assert "python -m longjax." in module.__doc__
  config = from_config_dict(module.get_config())
  assert config.model.num_layers > 0
  if "extend" in path and "runlocal" in module.__doc__:
    local = from_config_dict(module.get_config("runlocal=true"))
    assert local.model.hidden_size < config.model.hidden_size
    assert local.model.rope.rope_type == config.model.rope.rope_type
    assert local.model.attention.type == config.model.attention.type
    assert local.model.lora.rank == config.model.lora.rank
