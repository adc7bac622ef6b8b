"""Model FLOPs per training token and peak FLOP/s per chip: the numerator and denominator of MFU. The train
loop's metrics and the throughput benchmark read them; they depend on the config alone, so that the planner
(`longjax.plan`, which imports nothing of train/) can read them too."""

from longjax.config import ModelConfig

# Dense bf16 peak FLOP/s per chip (vendor datasheets), for the MFU estimate; unknown kinds report no MFU.
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12,
              "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12}


def peak_flops(device_kind: str) -> float | None:
  return next((v for k, v in PEAK_FLOPS.items() if device_kind.startswith(k)), None)


def flops_per_token(model_config: ModelConfig, num_params: int, seq_len: int) -> float:
  """Model FLOPs of training per token (MFU's numerator; remat recomputation is not counted).

  6 * N for the matmuls, where N leaves out an untied token-embedding table (a lookup, not a matmul),
  plus causal attention 6 * layers * T * heads * head_dim: the 12 * layers * T * d count of PaLM
  (Chowdhery et al. 2022, app. B) halved for causal masking, as MaxText counts since 2025.
  """
  matmul_params = num_params - (0 if model_config.tie_embeddings else model_config.vocab_size *
                                model_config.hidden_size)
  if model_config.block == "megalodon":  # attention inside chunks: q.k over z_dim, probs.v over value_dim
    mega = model_config.megalodon
    attention = 3.0 * (mega.z_dim + mega.value_dim) * min(seq_len, mega.chunk_size)  # CEMA's FFT not counted
    return 6.0 * matmul_params + model_config.num_layers * attention
  attn_width = model_config.num_heads * model_config.resolved_head_dim
  return 6.0 * matmul_params + 6.0 * model_config.num_layers * attn_width * seq_len
