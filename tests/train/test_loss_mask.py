"""The loss counts only the tokens of `loss_mask`: padded or masked positions change neither loss nor gradient."""

import jax
import jax.numpy as jnp
import numpy as np

from repo_configs import load_config
from longjax.config import from_config_dict
from longjax.nn import Llama, init_params
from longjax.train.step import cross_entropy, loss_fn

BATCH, LENGTH = 2, 16


def _masked_batch(vocab_size: int) -> dict:
  """A packed batch whose second row ends in padding, with a few more positions masked here and there."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, vocab_size, (BATCH, LENGTH + 1)).astype(np.int32)
  loss_mask = np.ones((BATCH, LENGTH), np.float32)
  loss_mask[1, 10:] = 0.0
  loss_mask[0, [0, 5]] = 0.0
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": loss_mask,
          "positions": np.tile(np.arange(LENGTH, dtype=np.int32), (BATCH, 1)),
          "segment_ids": np.ones((BATCH, LENGTH), np.int32)}


def test_loss_and_gradients_are_those_of_the_unmasked_tokens_alone():
  config = load_config("tiny.py")
  config.model.num_layers = 1
  model = Llama(from_config_dict(config).model)
  params = jax.jit(lambda rng: init_params(model.config, rng))(jax.random.key(0))
  batch = _masked_batch(model.config.vocab_size)
  keep = batch["loss_mask"] > 0
  n_kept = int(keep.sum())

  def unmasked_tokens_loss(p):
    log_probs = jax.nn.log_softmax(model.apply({"params": p}, batch["inputs"], train=True))
    token_loss = -jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0]
    return token_loss[keep].mean()

  expected, expected_grads = jax.jit(jax.value_and_grad(unmasked_tokens_loss))(params)
  value_and_grads = jax.jit(jax.value_and_grad(lambda p, batch: loss_fn(p, model, batch, True), has_aux=True))
  (loss, (total, count)), grads = value_and_grads(params, batch)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_allclose(total, expected * n_kept, rtol=1e-6)
  assert float(count) == n_kept
  for (path, grad), expected_grad in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(expected_grads)):
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-7, err_msg=jax.tree_util.keystr(path))

  # Other targets at the masked positions: the same loss and gradients, bit for bit.
  changed = dict(batch, targets=np.where(keep, batch["targets"], (batch["targets"] + 7) % model.config.vocab_size))
  (changed_loss, _), changed_grads = value_and_grads(params, changed)
  assert float(changed_loss) == float(loss)
  for grad, changed_grad in zip(jax.tree.leaves(grads), jax.tree.leaves(changed_grads)):
    np.testing.assert_array_equal(changed_grad, grad)


def test_cross_entropy_ignores_logits_and_targets_at_masked_positions():
  batch = _masked_batch(vocab_size=11)
  keep = batch["loss_mask"] > 0
  logits = jnp.asarray(np.random.default_rng(1).standard_normal((BATCH, LENGTH, 11), np.float32))
  total_of = jax.jit(jax.value_and_grad(lambda logits, targets: cross_entropy(logits, targets, batch["loss_mask"])[0]))
  total, d_logits = total_of(logits, batch["targets"])
  assert float(cross_entropy(logits, batch["targets"], batch["loss_mask"])[1]) == int(keep.sum())
  assert not np.any(d_logits[~keep]) and np.all(np.abs(d_logits[keep]).max(axis=-1) > 0)

  noise = np.random.default_rng(2).standard_normal(logits.shape, np.float32) * 10
  other_logits = jnp.where(keep[..., None], logits, logits + noise)
  other_targets = np.where(keep, batch["targets"], 0)
  other_total, other_d_logits = total_of(other_logits, other_targets)
  assert float(other_total) == float(total)
  np.testing.assert_array_equal(other_d_logits, d_logits)
