"""Matplotlib figures of evaluation results (PNG, no display needed)."""

from __future__ import annotations

import matplotlib

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
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


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
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
