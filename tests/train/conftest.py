"""Shared pieces of the training tests: configs/tiny.py shrunk, a small corpus, one trained workdir.

On CPU every `python -m longjax.train` pays seconds of imports and XLA compilation, so a test run
shares one corpus (two stdlib packages), one TFDS build and one 30-step workdir between the
pytest-xdist workers (built once, under a file lock), and one persistent compilation cache between
all processes. Tests that change a workdir work on a copy.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import filelock
import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from repo_configs import load_config

from longjax.config import Config, from_config_dict
from longjax.data import open_documents

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STDLIB_PACKAGES = ("json", "email")
TRAINED_STEPS = 30  # the shared workdir: checkpoints at steps 10, 20 and 30
# absl's prefix of INFO and WARNING lines (TFDS announces its builder config at WARNING); not errors.
ABSL_LOG_LINE = re.compile(r"^[IW]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


def _set(config, key: str, value) -> None:
  *parents, name = key.split(".")
  for parent in parents:
    config = getattr(config, parent)
  setattr(config, name, value)


@dataclasses.dataclass(frozen=True)
class Runner:
  """Runs training on the shared corpus, in this process or as `python -m longjax.train` subprocesses."""

  corpus: str
  data_dir: str
  jax_cache: str

  def overrides(self, extra: dict | None = None) -> dict:
    """configs/tiny.py shrunk: 64 tokens x 4 sequences a step, every step logged, a constant LR after warmup
    (num_steps then changes no compiled constant, so runs of different lengths share their executables)."""
    return {"data.text_dir": self.corpus, "data.data_dir": self.data_dir, "train.seq_len": 64,
            "train.global_batch_size": 4, "train.log_every": 1, "train.schedule": "constant",
            "train.checkpoint_every": 10, **(extra or {})}

  def config(self, extra: dict | None = None, spec: str = "tiny.py") -> Config:
    """`spec` (a config file of configs/ with its arguments, tiny.py by default) with the overrides above."""
    config = load_config(spec)
    for key, value in self.overrides(extra).items():
      _set(config, key, value)
    return from_config_dict(config)

  @property
  def env(self) -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": self.jax_cache,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
            # A size limit makes JAX lock the cache directory, which the processes share.
            "JAX_COMPILATION_CACHE_MAX_SIZE": str(2**31), "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": REPO}

  def train_command(self, workdir, extra: dict | None = None) -> list[str]:
    """`python -m longjax.train --config configs/tiny.py` with the shrunk overrides as flags."""
    return [sys.executable, "-m", "longjax.train", "--config", os.path.join(REPO, "configs", "tiny.py"),
            "--workdir", str(workdir)] + [f"--config.{key}={value}" for key, value in self.overrides(extra).items()]

  def train(self, workdir, extra: dict | None = None, *, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(self.train_command(workdir, extra), env=self.env, capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    if check:
      assert proc.returncode == 0, proc.stderr[-4000:]
    return proc

  def python(self, code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -c code args...` in a fresh process; its last stdout line is returned parsed as JSON."""
    proc = subprocess.run([sys.executable, "-c", code, *args], env={**self.env, **(env or {})},
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def read_metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def checkpoint_steps(workdir) -> list[int]:
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
  """Exit status 2 and exactly one line on stderr besides absl INFO/WARNING lines: `error: ...`, no traceback."""
  lines = [line for line in proc.stderr.splitlines() if line.strip() and not ABSL_LOG_LINE.match(line)]
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-4000:])
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-4000:]
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  return lines[0]


def _shared_root(tmp_path_factory):
  """A directory of this test run that every xdist worker sees (each worker's basetemp is a child of it)."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _once(root, name: str, build) -> str:
  """build(path) once per test run, whichever worker comes first; the others wait for it and reuse it."""
  path = root / name
  with filelock.FileLock(str(root / f"{name}.lock")):
    if not (root / f"{name}.done").exists():
      shutil.rmtree(path, ignore_errors=True)
      build(path)
      (root / f"{name}.done").touch()
  return str(path)


@pytest.fixture(scope="session")
def runner(tmp_path_factory) -> Runner:
  root = _shared_root(tmp_path_factory)
  jax_cache = str(root / "jax_cache")
  # This process too (in-process runs): a cache left uninitialised by earlier compilations starts over.
  jax.config.update("jax_compilation_cache_dir", jax_cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  jax.config.update("jax_compilation_cache_max_size", 2**31)
  compilation_cache.reset_cache()

  def copy_corpus(path):
    stdlib = sysconfig.get_paths()["stdlib"]
    for package in STDLIB_PACKAGES:
      shutil.copytree(os.path.join(stdlib, package), path / package, ignore=shutil.ignore_patterns("__pycache__"))

  corpus = _once(root, "corpus", copy_corpus)
  data_dir = str(root / "tensorflow_datasets")
  result = Runner(corpus, data_dir, jax_cache)
  # Build the TFDS dataset here, once, rather than racing in concurrent training processes.
  _once(root, "tfds_built", lambda path: (path.mkdir(), open_documents(result.config().data, "train")))
  return result


@pytest.fixture(scope="session")
def trained_workdir(runner, tmp_path_factory) -> str:
  """A workdir of 30 steps by `python -m longjax.train` (read-only: tests that change it copy it first)."""
  return _once(_shared_root(tmp_path_factory), "trained",
               lambda path: runner.train(path, {"train.num_steps": TRAINED_STEPS}))


@pytest.fixture
def trained_copy(trained_workdir, tmp_path) -> str:
  path = tmp_path / "workdir"
  shutil.copytree(trained_workdir, path)
  return str(path)
