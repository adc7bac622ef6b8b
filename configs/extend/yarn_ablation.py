"""A YaRN ablation on Llama 2 7B, 4K -> 64K (configs/extend/yarn_s16.py): beta_fast x beta_slow, one table.

  python launch/sweep.py --config configs/extend/yarn_ablation.py --workdir gs://bucket/yarn_ablation \
      --launcher tpu_pod --launcher_args "--name tpu-a,tpu-b --zone us-central2-b --accelerator_type v4-32 \
      --runtime_version tpu-ubuntu2204-base --spot" -- --config.train.init_from=gs://bucket/Llama-2-7b-hf
  python launch/sweep.py --config configs/extend/yarn_ablation.py:runlocal=true --workdir /tmp/yarn_ablation
  python -m longjax.train --config configs/extend/yarn_ablation.py:runlocal=true --workdir /tmp/yarn_one

Edit `get_sweep` to change the grid. Every run evaluates perplexity once, at its last step, at the original
and the extended length, so the sweep's table (ROOT/sweep.md) compares them there; YaRN's defaults
(beta_fast 32, beta_slow 1, Peng et al. 2023 sec. 3.2) are one of the points.
"""

import yarn_s16


def get_config(arg=None):
  config = yarn_s16.get_config(arg)
  config.train.eval_every = config.train.num_steps  # once, at the end
  config.eval.tasks = ("perplexity",)
  config.eval.task_lengths = (config.model.rope.original_max_position_embeddings, config.train.seq_len)
  return config


def get_sweep(add):
  for beta_fast in (16.0, 32.0, 64.0):
    for beta_slow in (1.0, 2.0):
      add(**{"model.rope.beta_fast": beta_fast, "model.rope.beta_slow": beta_slow})
