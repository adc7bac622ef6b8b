"""The KV-compression comparison's loss-by-position reader (`longjax.real_model.kv_compression.chunked_losses`):
text read in chunks into a full cache gives each token the loss of one whole-sequence forward, a policy whose
budget holds the whole text gives the same, and a budget smaller than the text changes only the later chunks.
The module imports beside another main (`longjax.demo`, which defines --workdir too) without a flag clash."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import longjax.demo  # noqa: F401  (defines absl flags at import, as the mains do)
from longjax.config import ConfigError
from longjax.inference import kv_policies
from longjax.real_model import kv_compression
from test_decode import model_and_params, tokens_for

LENGTH, CHUNK = 40, 16  # next-token losses of 41 tokens, read in chunks of 16, 16 and 8


def _whole_sequence_losses(model, params, tokens: np.ndarray) -> np.ndarray:
  logits = model.apply({"params": params}, jnp.asarray(tokens[None, :-1]))
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))[0]
  return -np.take_along_axis(logp, tokens[1:, None], axis=-1)[:, 0]


@pytest.mark.parametrize("policy", ["h2o", "streaming"])
def test_chunked_losses_equal_one_forward_and_a_tight_budget_changes_the_later_chunks(policy):
  model, params = model_and_params(layers=2)
  tokens = np.asarray(tokens_for(1, LENGTH + 1)[0])
  want = _whole_sequence_losses(model, params, tokens)
  full = kv_compression.chunked_losses(model, params, tokens, kv_policies.make_policy("full"), chunk=CHUNK)
  assert full.shape == (LENGTH,)
  np.testing.assert_allclose(full, want, atol=2e-5)
  roomy = kv_compression.chunked_losses(model, params, tokens, kv_policies.make_policy(policy, LENGTH, LENGTH),
                                        chunk=CHUNK)
  np.testing.assert_allclose(roomy, want, atol=2e-5)
  tight = kv_compression.chunked_losses(model, params, tokens, kv_policies.make_policy(policy, 20, LENGTH),
                                        chunk=CHUNK)
  np.testing.assert_allclose(tight[:CHUNK], want[:CHUNK], atol=2e-5)  # the first chunk sees only itself
  assert np.abs(tight[CHUNK:] - want[CHUNK:]).max() > 1e-3  # later chunks see 20 kept tokens, not all before


def test_importing_defines_no_flags_and_bad_values_are_one_line():
  from absl import flags  # pylint: disable=import-outside-toplevel
  assert "loss_length" not in flags.FLAGS and "report_only" not in flags.FLAGS
  assert kv_compression._ints("fractions", ["4", "8"], kv_compression.FRACTIONS) == (4, 8)
  with pytest.raises(ConfigError, match=r"^--fractions=3 is invalid: allowed one or more of 2, 4, 8$"):
    kv_compression._ints("fractions", ["3"], kv_compression.FRACTIONS)
  with pytest.raises(ConfigError, match=r"^--lengths=4k is invalid: allowed positive whole numbers$"):
    kv_compression._ints("lengths", ["4k"])
  with pytest.raises(ConfigError, match=r"^--tasks=loss,mmlu is invalid: allowed one or more of loss, passkey, ruler$"):
    kv_compression._names("tasks", ["loss", "mmlu"], kv_compression.TASK_ORDER)


def test_report_adds_whole_prompt_columns_once_measured(tmp_path):
  """Retrieval under the chunked prefill and under the whole-prompt prefill are separate columns; the whole ones
  appear only when a cell exists, a policy that evicts nothing shows `=` there (same either way), a missing
  evicting cell says `not run`, never a value."""
  from longjax.config import Config, ModelConfig  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  workdir, cells = tmp_path / "model", tmp_path / "cells"
  workdir.mkdir()
  (workdir / "config.json").write_text(Config(model=ModelConfig(max_position_embeddings=1024)).to_json())

  def put(label, key, value):
    folder = cells / label.replace(" ", "_").replace("/", "-")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{key}.json").write_text(json.dumps({**value, "seconds": 1.0}))

  def passkey(right):
    return {"accuracy": [[float(right)]], "trials": 1}

  put("full", "passkey_1024", passkey(1))
  put("snapkv 1/4", "passkey_1024", passkey(0))
  put("snapkv 1/4", "passkey_1024_whole", passkey(1))
  text = kv_compression.write_report(str(workdir), str(cells), str(tmp_path), (1024,), 1024, 256)
  header = next(line for line in text.splitlines() if line.startswith("| method |"))
  assert header.endswith("| passkey 1K | ruler 1K | passkey 1K whole |")  # no ruler-whole cell: no column
  rows = {}
  for line in text.splitlines():  # the first table's rows (the table of seconds repeats the labels)
    if line.startswith("| "):
      rows.setdefault(line.split(" | ")[0][2:], line)
  assert rows["snapkv 1/4"].endswith("| 0/1 | not run | 1/1 |")
  assert rows["full"].endswith("| 1/1 | not run | = |")
  assert rows["h2o 1/4"].endswith("| not run | not run | not run |")
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["snapkv 1/4"]["passkey_1024_whole"] == 1.0 and "passkey_1024_whole" not in results["full"]
  summary = (tmp_path / "summary.md").read_text()  # the table and plot the real-model report includes
  assert rows["snapkv 1/4"] in summary.splitlines() and "](kv_compression.png)" in summary
  assert "Seconds per column" in text and "Seconds per column" not in summary


def test_more_prompts_a_column_are_summed_and_named_by_depth_or_seed(tmp_path):
  """Extra passkey depths (`_d<percent>`) and RULER seeds (`_s<seed>`) join their column as right/prompts; a
  whole-prompt cell of another depth stays out of the chunked column; bad --depths / --ruler_seeds: one line."""
  from longjax.config import Config, ModelConfig  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  assert [kv_compression.prompt_key("passkey", 4096, p, d) for p, d in [("chunk", 0.5), ("whole", 0.1),
                                                                         ("chunk", 0.05), ("whole", None),
                                                                         ("chunk", 0.9)]] == \
      ["passkey_4096", "passkey_4096_whole_d10", "passkey_4096_d05", "passkey_4096_whole", "passkey_4096_d90"]
  assert [kv_compression.prompt_key("ruler", 8192, p, s) for p, s in [("chunk", 0), ("whole", 2)]] == \
      ["ruler_8192", "ruler_8192_whole_s2"]
  workdir, cells = tmp_path / "model", tmp_path / "cells"
  workdir.mkdir()
  (workdir / "config.json").write_text(Config(model=ModelConfig(max_position_embeddings=1024)).to_json())
  for key, value in [("passkey_1024", {"accuracy": [[1.0]], "trials": 1}),
                     ("passkey_1024_d10", {"accuracy": [[0.0]], "trials": 1}),
                     ("passkey_1024_d90", {"accuracy": [[1.0]], "trials": 1}),
                     ("passkey_1024_whole_d10", {"accuracy": [[1.0]], "trials": 1}),
                     ("ruler_1024_s1", {"accuracy": 0.0, "samples": 1}),
                     ("ruler_1024_s2", {"accuracy": 1.0, "samples": 1}),
                     ("passkey_1024_whole", {"accuracy": [[0.5]], "trials": 2}),  # two keys in one cell
                     ("ruler_1024_whole", {"accuracy": 0.5, "samples": 2})]:
    folder = cells / "h2o_1-2"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{key}.json").write_text(json.dumps({**value, "seconds": 2.0}))
  text = kv_compression.write_report(str(workdir), str(cells), str(tmp_path), (1024,), 1024, 256)
  row = next(line for line in text.splitlines() if line.startswith("| h2o 1/2 |"))
  # passkey 1K, ruler 1K (no seed-0 cell: the others), passkey 1K whole (2 keys + 1), ruler 1K whole (2 samples)
  assert row.endswith("| 2/3 | 1/2 | 2/3 | 1/2 |")
  results = json.loads((tmp_path / "results.json").read_text())["h2o 1/2"]
  assert list(results["passkey_1024_each"].items()) == [("passkey_1024", 1.0), ("passkey_1024_d10", 0.0),
                                                        ("passkey_1024_d90", 1.0)]  # the first prompt first
  assert results["passkey_1024_whole_each"] == {"passkey_1024_whole": 1.0, "passkey_1024_whole_d10": 1.0}
  assert results["passkey_1024_prompts"] == 3 and results["passkey_1024_seconds"] == 6.0
  assert results["ruler_1024"] == 0.5
  for bad in (["1.5"], ["0.123"], ["x"], []):
    with pytest.raises(ConfigError, match="--depths=.* is invalid: allowed fractions from 0 to 1"):
      kv_compression._depths(bad)
  assert kv_compression._depths(["0", "0.1", "0.9", "1"]) == (0.0, 0.1, 0.9, 1.0)
  with pytest.raises(ConfigError, match=r"^--depths=0.1,1.5 is invalid"):
    kv_compression._depths(["0.1", "1.5"])
  assert kv_compression._seeds(["0", "2"]) == (0, 2)
  with pytest.raises(ConfigError, match="^--ruler_seeds=1,-1 is invalid: allowed whole numbers from 0$"):
    kv_compression._seeds(["1", "-1"])
