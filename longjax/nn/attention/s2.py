"""s2: LongLoRA's shifted sparse attention in training (full at evaluation unless s2_at_eval); decodes with the
full cache, as LongLoRA infers with full attention."""

from longjax import ops
from longjax.nn.attention import full
from longjax.nn.attention.common import AttentionInputs, AttentionType, init_kv, rotated


def apply(module, cfg, rope, x: AttentionInputs, state, train):
  if state is not None or not (train or cfg.s2_at_eval):
    return full.apply(module, cfg, rope, x, state, train)
  _, q, k = rotated(rope, x)
  group_size = int(cfg.group_size_ratio * x.q.shape[1])
  return ops.s2_attention(q, k, x.v, group_size=group_size, impl=cfg.impl), None


def evaluates_plain(cfg) -> bool:
  return not cfg.s2_at_eval


S2 = AttentionType(apply, init_kv, evaluates_plain=evaluates_plain)
