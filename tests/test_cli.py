"""cli: malloc keeps XLA CPU's per-call buffers instead of mapping them afresh each call; a misspelled override key
is one line."""

import os
import subprocess
import sys
import textwrap

import pytest

from longjax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A program with a 16 MiB intermediate and 32 MiB operands, run 6 times; prints minor page faults per call.
PROGRAM = textwrap.dedent("""
    import resource, sys
    from longjax import cli
    applied = cli.keep_host_buffers()
    import jax, jax.numpy as jnp
    x = jnp.ones((2048, 4096)) * 0.5
    step = jax.jit(lambda w: jnp.sum((jnp.tanh(x * w) @ x.T) @ x)).lower(x).compile()
    faults = []
    for _ in range(6):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      step(x).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(applied, *faults)
""")


def _faults(**environ):
  result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO, **environ})
  assert result.returncode == 0, result.stderr[-2000:]
  applied, *faults = result.stdout.split()
  return applied == "True", [int(f) for f in faults]


def test_buffers_are_reused_across_calls_instead_of_faulted_in_again():
  applied, faults = _faults()
  assert applied
  assert sum(faults[1:]) < 2000, faults  # after the first call: the same pages again
  applied, faults = _faults(LONGJAX_KEEP_HOST_BUFFERS="0")  # glibc's default: a fresh mapping every call
  assert not applied
  assert min(faults[1:]) > 4000, faults


def test_skipped_where_an_accelerator_is_named_or_when_turned_off(monkeypatch):
  assert not cli.keep_host_buffers({"LONGJAX_KEEP_HOST_BUFFERS": "0"})
  assert not cli.keep_host_buffers({"JAX_PLATFORMS": "cuda"})
  assert not cli.keep_host_buffers({"JAX_PLATFORMS": "cpu,tpu"})
  for device, pattern in (("/dev/nvidia0", "nvidia"), ("/dev/kfd", "kfd"), ("/dev/accel0", "accel"),
                          ("/dev/vfio/0", "vfio")):  # NVIDIA, AMD, TPU v4/v5 hosts
    monkeypatch.setattr(cli.glob, "glob", lambda p, device=device, pattern=pattern: [device] if pattern in p else [])
    assert not cli.keep_host_buffers({}), device


def test_an_unknown_override_key_is_one_line_with_the_suggestion():
  """A misspelled --config.KEY: the locked ConfigDict's error, raw or as absl's override wraps it."""
  import ml_collections

  config = ml_collections.ConfigDict({"model": {"rope": {"factor": 2.0}}})
  config.lock()
  with pytest.raises((AttributeError, KeyError)) as info:
    config.model.rope.factr = 3.0
  wrapped = AttributeError(KeyError("'factr'\nDid you mean \"factor\" instead of \"factr\"?"))
  argv = ["main", "--config=tiny.py", "--config.model.rope.factr=3"]
  for error in (info.value, wrapped):
    assert cli.unknown_key_line(error, argv) == (
        "--config.model.rope.factr: unknown config key 'factr'; did you mean 'factor'?; every key is listed, with a "
        "comment, in configs/base.py")
  assert cli.unknown_key_line(KeyError("'nope'"), ["main"]) == (
      "--config...nope: unknown config key 'nope'; every key is listed, with a comment, in configs/base.py")
