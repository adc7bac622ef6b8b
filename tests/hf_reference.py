"""Builds random tiny Hugging Face LLaMA models (the reference for logits parity tests)."""

import torch
import transformers


def tiny_hf_llama(path, *, seed=0, vocab_size=97, hidden_size=64, intermediate_size=160, num_layers=2,
                  num_heads=4, num_kv_heads=4, tie=False, rope_parameters=None, max_position_embeddings=256,
                  dtype=torch.float32, **extra):
  """Save a seeded random LlamaForCausalLM to `path` and return it (eval mode, float32)."""
  torch.manual_seed(seed)
  rope = {"rope_type": "default", "rope_theta": 10000.0}
  rope.update(rope_parameters or {})
  config = transformers.LlamaConfig(
      vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
      num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
      tie_word_embeddings=tie, rope_parameters=rope, max_position_embeddings=max_position_embeddings,
      rms_norm_eps=1e-5, **extra)
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():  # norms start at 1: perturb them so a missed norm weight shows in the logits
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  model = model.to(dtype)
  model.save_pretrained(path)
  return model


def hf_logits(model, tokens, position_ids=None):
  with torch.no_grad():
    kwargs = {} if position_ids is None else {"position_ids": torch.as_tensor(position_ids)}
    return model(torch.as_tensor(tokens, dtype=torch.long), **kwargs).logits.float().numpy()
