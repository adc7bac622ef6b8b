"""Run outputs: `workdir/metrics.jsonl`, TensorBoard event files (tensorboardX, no TensorFlow), a progress bar.

The workdir is any etils.epath path. Object stores (gs://) have no append: there metrics.jsonl is rewritten
whole at each write (a run's log lines are few), starting from what a resumed run's file already holds.
"""

import json
import os
import sys

from etils import epath
from tqdm import tqdm


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch: tensorboardX tries `import torch` only to accept
  torch tensors (longjax logs floats), which costs seconds of every run's start-up when torch is installed."""
  hide_torch = "torch" not in sys.modules
  if hide_torch:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX handles
  try:
    from tensorboardX import SummaryWriter
  finally:
    if hide_torch:
      del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """Writes one JSON object per line and the same scalars to TensorBoard; only process 0 writes."""

  def __init__(self, workdir: str, *, total_steps: int, initial_step: int, enabled: bool = True):
    self.enabled = enabled
    workdir = os.fspath(workdir)
    self._path = epath.Path(workdir) / "metrics.jsonl"
    self._remote = "://" in workdir
    self._lines: list[str] = []
    self._jsonl = None
    if enabled and self._remote:
      self._lines = self._path.read_text().splitlines(keepends=True) if self._path.exists() else []
    elif enabled:
      self._jsonl = open(self._path, "a")
    self._tb = _summary_writer_class()(f"{workdir.rstrip('/')}/tensorboard") if enabled else None
    show = enabled and sys.stdout.isatty()
    self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True) if show else None

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    record = {"step": step, **{k: (None if v is None else float(v)) for k, v in scalars.items()}}
    line = json.dumps(record) + "\n"
    if self._remote:
      self._lines.append(line)
      self._path.write_text("".join(self._lines))
    else:
      self._jsonl.write(line)
      self._jsonl.flush()
    for key, value in scalars.items():
      if value is not None:
        self._tb.add_scalar(key, float(value), step)
    self._tb.flush()
    if self._bar is None:
      shown = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step" and v is not None)
      print(f"step {step}: {shown}", flush=True)
    else:
      self._bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}")

  def advance(self, steps: int = 1) -> None:
    if self._bar is not None:
      self._bar.update(steps)

  def close(self) -> None:
    if self.enabled:
      if self._jsonl is not None:
        self._jsonl.close()
      self._tb.close()
      if self._bar is not None:
        self._bar.close()
