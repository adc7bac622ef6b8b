"""Matplotlib figures of evaluation results (PNG, no display needed)."""

from __future__ import annotations

import io
import math

import matplotlib
import numpy as np
from etils import epath

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib import ticker  # noqa: E402


def plot_perplexity_vs_length(curves: dict[str, list], path: str, *, trained_length: int | None = None,
                              title: str = "Perplexity against evaluation length") -> str:
  """curves: name -> [LengthResult]; one line each, log-scaled lengths, the training length marked."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, results in curves.items():
    points = [(r.length, r.perplexity) for r in results if r.tokens]
    if points:
      ax.plot(*zip(*points), marker="o", label=name)
  if trained_length:
    ax.axvline(trained_length, color="gray", linestyle="--", linewidth=1, label=f"trained length {trained_length}")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
  ax.yaxis.set_minor_formatter(ticker.ScalarFormatter())
  ax.set_xlabel("evaluation length (tokens)")
  ax.set_ylabel("perplexity (token-weighted, sliding window)")
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_losses(curves: dict[str, list[tuple[int, float]]], path: str, title: str = "Training loss") -> str:
  """curves: name -> [(step, loss)]."""
  fig, ax = plt.subplots(figsize=(7, 4))
  for name, points in curves.items():
    if points:
      ax.plot(*zip(*points), label=name)
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats/token)")
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_retrieval_heatmap(grid, path: str) -> str:
  """grid: a RetrievalGrid; accuracy by length (rows) and depth (columns), the trained length marked."""
  fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(grid.depths), 1.2 + 0.45 * len(grid.lengths)))
  image = ax.imshow(grid.accuracy, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
  for i, row in enumerate(grid.accuracy):
    for j, value in enumerate(row):
      ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
  ax.set_xticks(range(len(grid.depths)), [f"{d:.0%}" for d in grid.depths], fontsize=8)
  labels = [f"{n}{' (trained)' if n == grid.trained_length else ''}" for n in grid.lengths]
  ax.set_yticks(range(len(grid.lengths)), labels, fontsize=8)
  ax.set_xlabel("depth of the hidden line")
  ax.set_ylabel("prompt length (tokens)")
  ax.set_title(f"{grid.task}: accuracy, {grid.trials} per cell", fontsize=10)
  fig.colorbar(image, ax=ax)
  return _save(fig, path)


def plot_loss_by_position(curves: dict[str, object], path: str, *, trained_length: int | None = None) -> str:
  """curves: name -> PositionLoss; mean loss of each position bin at the bin's middle."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, curve in curves.items():
    middles = [(a + b - 1) / 2 for a, b in zip(curve.starts, curve.ends)]
    ax.plot(middles, curve.loss, marker=".", label=f"{name} ({curve.documents} documents)")
  if trained_length:
    ax.axvline(trained_length, color="gray", linestyle="--", linewidth=1, label=f"trained length {trained_length}")
  ax.set_xlabel("position in the window (tokens of context)")
  ax.set_ylabel("mean token loss (nats)")
  ax.set_title("Loss by position")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_kv_cache(sizes: list, path: str, *, title: str = "KV-cache memory") -> str:
  """sizes: [CacheSize]; total and per-device bytes against length, log-log."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  lengths = [s.length for s in sizes]
  if sizes:  # an empty line cannot be log-scaled
    ax.plot(lengths, [s.total_bytes / 2**30 for s in sizes], marker="o", label="total")
    ax.plot(lengths, [s.device_bytes / 2**30 for s in sizes], marker="x", linestyle="--", label="per device")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("tokens")
  ax.set_ylabel("GiB")
  ax.set_title(f"{title} (batch {sizes[0].batch_size}, {sizes[0].dtype})" if sizes else title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def _save(fig, path: str) -> str:
  """Lay out, write the PNG at 120 dpi to `path` (any epath: local, gs://), free the figure; returns the path."""
  fig.tight_layout()
  image = io.BytesIO()
  fig.savefig(image, format="png", dpi=120)
  plt.close(fig)
  epath.Path(path).write_bytes(image.getvalue())
  return path


def plot_ruler(results: dict[str, dict[int, float]], path: str, *, title: str = "RULER") -> str:
  """results: task -> length -> score (`ruler.evaluate_ruler`); a task x length heatmap in percent."""
  tasks = list(results)
  lengths = sorted({length for by_length in results.values() for length in by_length})
  grid = np.array([[100 * results[t].get(n, math.nan) for n in lengths] for t in tasks])
  fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 3, 0.5 * len(tasks) + 1.8))
  image = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
  for i, j in np.ndindex(grid.shape):
    if not math.isnan(grid[i, j]):
      ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8)
  ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
  ax.set_yticks(range(len(tasks)), tasks)
  ax.set_xlabel("length (tokens, prompt + generation)")
  ax.set_title(title)
  fig.colorbar(image, ax=ax, label="score (%)")
  return _save(fig, path)
