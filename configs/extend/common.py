"""What every extension recipe shares: the model to extend, and the `runlocal` shrink switch."""

import llama2_7b
import tiny


def model_config(runlocal: bool):
  """Llama 2 7B on a pod or cluster; with runlocal, the tiny model on the embedded corpus (tests, laptops)."""
  if runlocal:
    config = tiny.get_config()
    config.train.num_steps = 4
    config.train.log_every = 1
    config.train.checkpoint_every = 4
    return config
  return llama2_7b.get_config()


def extend(config, factor: float, runlocal: bool):
  """Fine-tune at `factor` times the pre-trained context (the pre-trained length is that of the config)."""
  original = config.model.max_position_embeddings
  config.model.rope.original_max_position_embeddings = original
  config.model.max_position_embeddings = int(original * factor)
  config.train.seq_len = int(original * factor) if not runlocal else 2 * original
  if runlocal:
    config.train.global_batch_size = 2
  return config


__all__ = ["extend", "model_config"]
