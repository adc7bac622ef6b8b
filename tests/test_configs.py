"""Every config file validates; load_file runs config files in any process; the extension recipes shrink."""

import glob
import json
import os
import subprocess
import sys
import types

import pytest
from repo_configs import CONFIGS

from longjax.config import ConfigError, from_config_dict, load_file

FILES = sorted(glob.glob(os.path.join(CONFIGS, "*.py")) + glob.glob(os.path.join(CONFIGS, "extend", "*.py")))


def _docstring(path):
  with open(path) as f:
    return f.read().split('"""')[1]


@pytest.mark.parametrize("path", [p for p in FILES if not p.endswith("common.py")], ids=os.path.basename)
def test_config_file_validates_and_documents_its_command(path):
  doc = _docstring(path)
  assert "python -m longjax." in doc
  config = from_config_dict(load_file(path))
  assert config.model.num_layers > 0
  if "extend" in path and "runlocal" in doc:
    local = from_config_dict(load_file(f"{path}:runlocal=true"))
    assert local.model.hidden_size < config.model.hidden_size
    assert local.model.rope.rope_type == config.model.rope.rope_type
    assert local.model.attention.type == config.model.attention.type
    assert local.model.lora.rank == config.model.lora.rank


_FRESH_PROCESS = """
import json, sys
from longjax.config import load_file
path, modules = list(sys.path), set(sys.modules)
pi = load_file(sys.argv[1] + "/extend/pi_x4.py:runlocal=true")
tiny = load_file(sys.argv[1] + "/tiny.py:rope=yarn")
print(json.dumps({"pi": pi.to_dict(), "tiny": tiny.to_dict(), "path_unchanged": sys.path == path,
                  "left_behind": sorted({"base", "common", "tiny", "llama2_7b", "pi_x4"} & set(sys.modules))}))
"""


def test_load_file_in_a_fresh_process_from_another_directory(tmp_path):
  """A notebook's situation: neither configs/ nor the repository is the working directory or on sys.path."""
  env = {**os.environ, "PYTHONPATH": os.path.dirname(CONFIGS)}  # only the longjax package itself
  proc = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, CONFIGS], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  pi, tiny = result["pi"], result["tiny"]
  assert pi["model"]["hidden_size"] == 64  # runlocal: configs/tiny.py's model, through configs/extend/common.py
  assert pi["model"]["rope"]["rope_type"] == "linear" and pi["model"]["rope"]["factor"] == 4.0
  assert pi["model"]["rope"]["original_max_position_embeddings"] == 128 and pi["train"]["seq_len"] == 256
  assert pi["train"]["num_steps"] == 4
  assert tiny["model"]["rope"]["rope_type"] == "yarn" and tiny["model"]["rope"]["factor"] == 4.0
  assert tiny["train"]["num_steps"] == 60 and tiny["model"]["num_layers"] == 2
  assert result["path_unchanged"] and result["left_behind"] == []


def test_load_file_imports_its_own_siblings_not_modules_of_the_same_name(monkeypatch):
  unrelated = types.ModuleType("base")  # say a notebook's own `base` module, imported before
  monkeypatch.setitem(sys.modules, "base", unrelated)
  assert load_file(os.path.join(CONFIGS, "tiny.py")).model.num_layers == 2
  assert sys.modules["base"] is unrelated


@pytest.mark.parametrize("spec, message", [
    ("missing.py", "missing.py' is invalid: expected an existing path/to/config.py[:arg]"),
    ("tiny.txt", "tiny.txt' is invalid"),
    ("extend/common.py", "is invalid: it defines no get_config(arg=None)"),
    ("tiny.py:nope=1", "config argument nope='1' is invalid: expected key=value with key one of: rope,"),
    ("tiny.py:steps=x", "config argument steps='x' is invalid: expected int"),
    ("tiny.py:rope", "config argument rope"),
])
def test_bad_config_file_specs_are_one_line_config_errors(spec, message):
  full = os.path.join(CONFIGS, spec)
  with pytest.raises(ConfigError) as error:
    load_file(full)
  text = str(error.value)
  assert message in text and "\n" not in text
  assert os.path.join(CONFIGS, spec.split(":")[0]) in text  # names the file


def test_a_config_file_that_fails_to_import_is_a_config_error(tmp_path):
  (tmp_path / "broken.py").write_text("import no_such_module_xyz\n\ndef get_config(arg=None):\n  return None\n")
  (tmp_path / "returns_dict.py").write_text("def get_config(arg=None):\n  return {'a': 1}\n")
  with pytest.raises(ConfigError, match=r"broken\.py' does not load: ModuleNotFoundError: No module named"):
    load_file(str(tmp_path / "broken.py"))
  with pytest.raises(ConfigError, match=r"returns_dict\.py' is invalid: get_config returned dict"):
    load_file(str(tmp_path / "returns_dict.py"))
