"""A walk over longjax.nn.ATTENTION_TYPES: every type has a small config here, and for each one its config is
validated, its cache formula (`cached_tokens`, `state_bytes`) counts the buffers `init_state` allocates, its
decode step gives what its whole-sequence call gives, and README.md's attention table has a row for it.

Adding a type without adding it here fails `test_every_registered_type_is_walked`."""

import dataclasses
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longjax.config import SUB_CONFIGS, AttentionConfig, ConfigError, ModelConfig
from longjax.data import insert_landmarks
from longjax.nn import ATTENTION_TYPES, Llama, init_cache, init_params

LENGTH = 16  # tokens a decode test runs through; every cache below holds at least this many
LANDMARK_ID = 63

# One small valid config a type, and one of its own keys (its sub-config's; full has none: a shared one) set to a
# value its validation must refuse.
TYPES = {
    "full": (AttentionConfig(), ("kernel_block", 0)),
    "s2": (AttentionConfig.of("s2"), ("group_size_ratio", 1.5)),
    "sliding": (AttentionConfig.of("sliding", window=LENGTH, sinks=2), ("window", None)),
    "infini": (AttentionConfig.of("infini", segment_len=6), ("update", "hebbian")),
    "landmark": (AttentionConfig.of("landmark", block=3, topk=8, id=LANDMARK_ID), ("id", None)),
    "self_extend": (AttentionConfig.of("self_extend", group_size=3, window=5, kernel_block=8), ("window", None)),
    "dca": (AttentionConfig.of("dca", chunk_size=6, local_window=2, kernel_block=8), ("local_window", 6)),
    "rerope": (AttentionConfig.of("rerope", window=5, kernel_block=8), ("window", 0)),
}


def _model_config(attention: AttentionConfig) -> ModelConfig:
  return ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4, num_kv_heads=2,
                     initializer_range=0.1, max_position_embeddings=8, attention=attention)


def test_every_registered_type_is_walked():
  assert set(TYPES) == set(ATTENTION_TYPES)


@pytest.mark.parametrize("name", sorted(ATTENTION_TYPES))
def test_config_is_validated(name):
  """The entry's sub-config validates its own keys, and any other type's key set is refused."""
  attention, (key, bad) = TYPES[name]
  entry = ATTENTION_TYPES[name]
  assert entry.config is SUB_CONFIGS.get(name)
  _model_config(attention).validate()
  if entry.config is None:
    with pytest.raises(ConfigError, match=rf"^model\.attention\.{key}=.* is invalid: "):
      _model_config(dataclasses.replace(attention, **{key: bad})).validate()
  else:
    own = dataclasses.replace(attention.own, **{key: bad})
    with pytest.raises(ConfigError, match=rf"^model\.attention\.{name}\.{key}=.* is invalid: "):
      _model_config(dataclasses.replace(attention, **{name: own})).validate()
  other = next(other for other in SUB_CONFIGS if other != name and TYPES[other][0].own != SUB_CONFIGS[other]())
  foreign = dataclasses.replace(attention, **{other: TYPES[other][0].own})
  with pytest.raises(ConfigError, match=rf"^model\.attention\.{other}\.\w+=.* is invalid: a key of type {other}, "
                     rf"but model\.attention\.type={name}"):
    _model_config(foreign).validate()


@pytest.mark.parametrize("name", sorted(ATTENTION_TYPES))
def test_state_size_counts_the_allocated_buffers(name):
  """Per batch row: the K/V slots of `cached_tokens` in the cache dtype plus `state_bytes` of float32 state are the
  bytes of every floating buffer `init_state` allocates (int32 bookkeeping aside) at a length that fills it."""
  attention = TYPES[name][0]
  entry, kv_heads, head_dim, batch = ATTENTION_TYPES[name], 2, 8, 3
  length = 4 * LENGTH  # past every window, segment and chunk above, and a whole number of their blocks
  state = entry.init_state(attention, batch, length, kv_heads, head_dim, jnp.bfloat16)
  allocated = sum(leaf.nbytes for leaf in jax.tree.leaves(state) if jnp.issubdtype(leaf.dtype, jnp.floating))
  formula = (entry.cached_tokens(attention, length) * 2 * kv_heads * head_dim * 2
             + entry.state_bytes(attention, kv_heads, head_dim))
  assert allocated == batch * formula


def _tokens(name: str, attention: AttentionConfig) -> jax.Array:
  rows = np.asarray(jax.random.randint(jax.random.key(1), (2, LENGTH), 3, LANDMARK_ID))
  inserted = ATTENTION_TYPES[name].inserted_tokens(attention)
  if inserted is not None:  # the tokens packing and generation put in, as this type needs them
    rows = np.stack([insert_landmarks(row, *inserted)[:LENGTH] for row in rows])
  return jnp.asarray(rows)


@pytest.mark.parametrize("name", sorted(ATTENTION_TYPES))
def test_decode_step_equals_the_whole_sequence_call(name):
  """One token a step through the cache: the logits of the whole-sequence call."""
  attention = TYPES[name][0]
  config = _model_config(attention)
  params = init_params(config, jax.random.key(0))
  model = Llama(config)
  tokens = _tokens(name, attention)
  whole = jax.jit(model.apply)({"params": params}, tokens)
  apply = jax.jit(lambda x, cache: model.apply({"params": params}, x, cache=cache))
  cache, steps = init_cache(config, 2, LENGTH), []
  for t in range(LENGTH):
    logits, cache = apply(tokens[:, t:t + 1], cache)
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), whole, atol=1e-4, rtol=1e-4)


def readme_attention_types(text: str) -> set[str]:
  """The registry names in backticks in the first column of the table under README's `## Attention types`."""
  section = re.search(r"^## Attention types\n(.*?)(?=^## |\Z)", text, re.S | re.M)
  if section is None:
    return set()
  names = set()
  for line in section.group(1).splitlines():
    cells = line.split("|")
    if line.startswith("|") and len(cells) > 2 and not set(cells[1].strip()) <= set("-: "):
      names.update(re.findall(r"`([a-z0-9_]+)`", cells[1]))
  return names


def test_readme_parser_reads_the_first_column_of_that_table_only():
  text = ("## Attention types\n\n| type | what |\n|---|---|\n| `full` | x `ring` |\n| `a`, `b` | y |\n\n"
          "## Next\n\n| `other` | z |\n")
  assert readme_attention_types(text) == {"full", "a", "b"}


def test_every_type_has_a_row_in_the_readme_attention_table():
  readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
  assert set(ATTENTION_TYPES) <= readme_attention_types(readme)
