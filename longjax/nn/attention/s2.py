"""s2: LongLoRA's shifted sparse attention in training (full at evaluation unless s2.at_eval); decodes with the
full cache, as LongLoRA infers with full attention."""

from longjax import ops
from longjax.config import S2Config
from longjax.nn.attention import full
from longjax.nn.attention.common import AttentionInputs, AttentionType, init_kv, rotated


def apply(module, cfg, rope, x: AttentionInputs, state, train):
  if state is not None or not (train or cfg.s2.at_eval):
    return full.apply(module, cfg, rope, x, state, train)
  _, q, k = rotated(rope, x)
  group_size = int(cfg.s2.group_size_ratio * x.q.shape[1])
  return ops.s2_attention(q, k, x.v, group_size=group_size, impl=cfg.impl), None


def evaluates_plain(cfg) -> bool:
  return not cfg.s2.at_eval


def length_problem(cfg, length: int) -> str | None:
  """Evaluated as it trains (s2_at_eval), s2 cuts a sequence into groups of int(group_size_ratio * length) tokens,
  which must be an even divisor of the length."""
  if not cfg.s2.at_eval:
    return None
  group = int(cfg.s2.group_size_ratio * length)
  if group < 2 or group % 2 or length % group:
    return (f"model.attention.type=s2 with s2.at_eval=True cuts it into groups of s2.group_size_ratio="
            f"{cfg.s2.group_size_ratio} x {length} = {group} tokens, which must be an even divisor of it; allowed: "
            "such lengths, or model.attention.s2.at_eval=False")
  return None


S2 = AttentionType(apply, init_kv, evaluates_plain=evaluates_plain, length_problem=length_problem, config=S2Config)
