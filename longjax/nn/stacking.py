"""The two layouts of the decoder layers in a parameter tree.

Unscanned (`model.scan_layers=False`): one subtree per layer, `layers_0`, `layers_1`, ...
Scanned (`model.scan_layers=True`): one subtree `layers` whose leaves are stacked on a leading
`layers` axis, [num_layers, *shape]. Everything outside the layers is the same in both.
"""

import jax
import numpy as np


def scan_params(params: dict, num_layers: int) -> dict:
  """Unscanned tree (layers_0, layers_1, ...) -> scanned tree (`layers`, leaves [num_layers, *shape])."""
  out = {k: v for k, v in params.items() if not k.startswith("layers_")}
  layers = [params[f"layers_{i}"] for i in range(num_layers)]
  out["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
  return out


def unscan_params(params: dict, num_layers: int) -> dict:
  """Scanned tree (`layers`, leaves [num_layers, *shape]) -> unscanned tree (layers_0, layers_1, ...)."""
  out = {k: v for k, v in params.items() if k != "layers"}
  for i in range(num_layers):
    out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
  return out
