"""The evaluation figures: what each one draws (the data, scales, labels, the marked trained length, the colour
scale and cell texts of the heatmaps), the PNG it writes (120 dpi: its size in pixels is the figure's size in
inches times 120) and that the figure is freed. The figure is read back as it is closed."""

import math
import struct

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba

from longjax.evaluate import plots
from longjax.evaluate.kv_cache import CacheSize
from longjax.evaluate.passkey import RetrievalGrid
from longjax.evaluate.loss_by_position import PositionLoss
from longjax.evaluate.perplexity import LengthResult


@pytest.fixture
def closed(monkeypatch):
  """The figures plots.py closes, in order (each still readable)."""
  figures, close = [], plt.close

  def recording_close(fig=None):
    figures.append(plt.gcf() if fig is None else fig)  # close(None) closes the current figure
    close(fig)

  monkeypatch.setattr(plt, "close", recording_close)
  return figures


def _png_size(path):
  with open(path, "rb") as f:
    head = f.read(24)
  assert head[:8] == b"\x89PNG\r\n\x1a\n"
  return struct.unpack(">II", head[16:24])


def _written(path, fig, inches):
  """The PNG at `path` is the closed figure `fig` of `inches`, at 120 dpi, laid out so that nothing is cut off."""
  assert fig.number not in plt.get_fignums()  # freed
  assert tuple(fig.get_size_inches()) == pytest.approx(inches)
  assert _png_size(path) == tuple(round(120 * x) for x in inches)
  renderer = FigureCanvasAgg(fig).get_renderer()  # (closed: its canvas was reset)
  for ax in fig.axes:  # tight_layout: every axes with its labels and ticks inside the figure
    box = ax.get_tightbbox(renderer)
    assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= fig.bbox.x1 + 1 and box.y1 <= fig.bbox.y1 + 1


def _legend(ax):
  legend = ax.get_legend()
  assert legend.get_texts()[0].get_fontsize() == 8
  return [t.get_text() for t in legend.get_texts()]


def _gridded(ax, minor=False):
  """Grid lines on at alpha 0.3, on the minor ticks too (of the log-scaled y axis) when `minor`."""
  ticks = ax.xaxis.get_major_ticks()[:1] + ax.yaxis.get_major_ticks()[:1] + (ax.yaxis.get_minor_ticks()[:1] if minor
                                                                             else [])
  return all(t.gridline.get_visible() and t.gridline.get_alpha() == 0.3 for t in ticks)


def _trained_line(ax, x):
  [line] = [line for line in ax.get_lines() if line.get_label().startswith("trained length")]
  assert list(line.get_xdata()) == [x, x] and line.get_linestyle() == "--"  # thin, gray, dashed: not a curve
  assert to_rgba(line.get_color()) == to_rgba("gray") and line.get_linewidth() == 1
  return line.get_label()


def _result(length, perplexity, tokens):
  return LengthResult(length, 8, math.log(perplexity), perplexity, tokens, 1)


def test_perplexity_against_length(tmp_path, closed):
  curves = {"yarn": [_result(128, 5.0, 10), _result(256, 6.0, 0), _result(512, 9.0, 4)],
            "empty": [_result(128, 7.0, 0)]}
  path = str(tmp_path / "p.png")
  assert plots.plot_perplexity_vs_length(curves, path, trained_length=256) == path
  [fig] = closed
  _written(path, fig, (7, 4.5))
  [ax] = fig.axes
  [curve] = [line for line in ax.get_lines() if line.get_label() == "yarn"]
  assert list(curve.get_xdata()) == [128, 512] and list(curve.get_ydata()) == [5.0, 9.0]  # no tokens: no point
  assert curve.get_marker() == "o"
  assert _legend(ax) == ["yarn", "trained length 256"] and _trained_line(ax, 256) and _gridded(ax, minor=True)
  assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2 and ax.get_yscale() == "log"
  assert isinstance(ax.yaxis.get_major_formatter(), ticker.ScalarFormatter)
  assert isinstance(ax.yaxis.get_minor_formatter(), ticker.ScalarFormatter)
  assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
      "evaluation length (tokens)", "perplexity (token-weighted, sliding window)",
      "Perplexity against evaluation length")
  plots.plot_perplexity_vs_length({"yarn": curves["yarn"]}, path, title="T")
  assert closed[1].axes[0].get_title() == "T" and _legend(closed[1].axes[0]) == ["yarn"]  # no trained length


def test_training_losses(tmp_path, closed):
  path = str(tmp_path / "l.png")
  assert plots.plot_losses({"run": [(0, 3.0), (10, 2.5)], "none": []}, path) == path
  [fig] = closed
  _written(path, fig, (7, 4))
  [ax] = fig.axes
  [line] = ax.get_lines()
  assert list(line.get_xdata()) == [0, 10] and list(line.get_ydata()) == [3.0, 2.5] and _legend(ax) == ["run"]
  assert _gridded(ax)
  assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("step", "loss (nats/token)", "Training loss")
  plots.plot_losses({"run": [(0, 1.0)]}, path, title="T")
  assert closed[1].axes[0].get_title() == "T"


def _heatmap_texts(ax):
  return [(t.get_position(), t.get_text()) for t in ax.texts]


def test_retrieval_heatmap(tmp_path, closed):
  grid = RetrievalGrid("passkey", [64, 128], [0.0, 0.5, 1.0], [[0.5, 0.5, 0.25], [0.5, 0.75, 0.5]], 4,
                       [63, 127], trained_length=64)
  path = str(tmp_path / "h.png")
  assert plots.plot_retrieval_heatmap(grid, path) == path
  [fig] = closed
  _written(path, fig, (1.2 + 0.7 * 3, 1.2 + 0.45 * 2))
  ax, colorbar = fig.axes
  [image] = ax.get_images()
  np.testing.assert_array_equal(image.get_array(), grid.accuracy)
  assert image.get_clim() == (0.0, 1.0) and image.get_cmap().name == "RdYlGn" and ax.get_aspect() == "auto"
  assert _heatmap_texts(ax) == [((j, i), f"{grid.accuracy[i][j]:.2f}") for i in range(2) for j in range(3)]
  assert {(t.get_ha(), t.get_va(), t.get_fontsize()) for t in ax.texts} == {("center", "center", 7)}
  assert [t.get_text() for t in ax.get_xticklabels()] == ["0%", "50%", "100%"]
  assert [t.get_text() for t in ax.get_yticklabels()] == ["64 (trained)", "128"]
  assert {t.get_fontsize() for t in ax.get_xticklabels() + ax.get_yticklabels()} == {8}
  assert ax.title.get_fontsize() == 10 and image.colorbar.ax is colorbar
  assert list(ax.get_xticks()) == [0, 1, 2] and list(ax.get_yticks()) == [0, 1]
  assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
      "depth of the hidden line", "prompt length (tokens)", "passkey: accuracy, 4 per cell")
  assert colorbar.get_ylim() == (0.0, 1.0)


def test_loss_by_position(tmp_path, closed):
  curves = {"rope": PositionLoss(8, [0, 2, 5], [2, 5, 8], [3.0, 2.0, 1.5], 6),
            "yarn": PositionLoss(8, [0, 4], [4, 8], [2.5, 2.0], 3)}
  path = str(tmp_path / "b.png")
  assert plots.plot_loss_by_position(curves, path, trained_length=4) == path
  [fig] = closed
  _written(path, fig, (7, 4.5))
  [ax] = fig.axes
  rope, yarn = ax.get_lines()[:2]
  assert list(rope.get_xdata()) == [0.5, 3.0, 6.0] and list(rope.get_ydata()) == [3.0, 2.0, 1.5]
  assert list(yarn.get_xdata()) == [1.5, 5.5] and list(yarn.get_ydata()) == [2.5, 2.0]
  assert rope.get_marker() == yarn.get_marker() == "."
  assert _legend(ax) == ["rope (6 documents)", "yarn (3 documents)", "trained length 4"] and _trained_line(ax, 4)
  assert _gridded(ax)
  assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
      "position in the window (tokens of context)", "mean token loss (nats)", "Loss by position")
  plots.plot_loss_by_position(curves, path)
  assert len(closed[1].axes[0].get_lines()) == 2  # no trained length: no line for it


@pytest.mark.filterwarnings("ignore:No artists with labels")  # the empty figure has no legend entries
def test_kv_cache(tmp_path, closed):
  sizes = [CacheSize(n, 2, "bfloat16", n, n * 2**20, 0, n * 2**24, n * 2**22) for n in (1024, 4096)]
  path = str(tmp_path / "k.png")
  assert plots.plot_kv_cache(sizes, path) == path
  [fig] = closed
  _written(path, fig, (7, 4.5))
  [ax] = fig.axes
  total, device = ax.get_lines()
  assert list(total.get_xdata()) == [1024, 4096] and list(total.get_ydata()) == [16.0, 64.0]
  assert list(device.get_xdata()) == [1024, 4096] and list(device.get_ydata()) == [4.0, 16.0]
  assert device.get_linestyle() == "--" and total.get_linestyle() == "-"
  assert (total.get_marker(), device.get_marker()) == ("o", "x")
  assert _legend(ax) == ["total", "per device"] and _gridded(ax, minor=True)
  assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2 and ax.get_yscale() == "log"
  assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("tokens", "GiB",
                                                                "KV-cache memory (batch 2, bfloat16)")
  plots.plot_kv_cache([], path, title="T")
  assert closed[1].axes[0].get_title() == "T"  # no sizes: the title alone
  plots.plot_kv_cache(sizes[1:], path)
  assert closed[2].axes[0].get_title() == "KV-cache memory (batch 2, bfloat16)"  # one length


def test_ruler_heatmap(tmp_path, closed):
  results = {"niah_single_1": {4096: 0.75, 1024: 0.5}, "vt": {2048: 0.25}}  # not 0-100: the scale is fixed
  path = str(tmp_path / "r.png")
  assert plots.plot_ruler(results, path) == path
  [fig] = closed
  _written(path, fig, (1.2 * 3 + 3, 0.5 * 2 + 1.8))
  ax, colorbar = fig.axes
  [image] = ax.get_images()
  np.testing.assert_array_equal(image.get_array(), [[50.0, np.nan, 75.0], [np.nan, 25.0, np.nan]])
  assert image.get_clim() == (0, 100) and image.get_cmap().name == "RdYlGn" and ax.get_aspect() == "auto"
  assert _heatmap_texts(ax) == [((0, 0), "50"), ((2, 0), "75"), ((1, 1), "25")]  # none in the empty cells
  assert {(t.get_ha(), t.get_va(), t.get_fontsize()) for t in ax.texts} == {("center", "center", 8)}
  assert [t.get_text() for t in ax.get_xticklabels()] == ["1024", "2048", "4096"]
  assert [t.get_text() for t in ax.get_yticklabels()] == ["niah_single_1", "vt"]
  assert list(ax.get_xticks()) == [0, 1, 2] and list(ax.get_yticks()) == [0, 1]
  assert (ax.get_xlabel(), ax.get_title(), colorbar.get_ylabel()) == ("length (tokens, prompt + generation)", "RULER",
                                                                      "score (%)")
  assert colorbar.get_ylim() == (0.0, 100.0) and image.colorbar.ax is colorbar
  plots.plot_ruler(results, path, title="T")
  assert closed[1].axes[0].get_title() == "T"
