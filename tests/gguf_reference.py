"""Writes tiny llama GGUF files as llama.cpp's converter would (the input of GGUF import tests), no downloads.

`byte_level_vocab()` trains a small byte-level BPE (tokens, merges, two control tokens) with `tokenizers`;
`write_gguf(path, model, ...)` stores a transformers LlamaForCausalLM's weights under GGUF names, q/k rows
permuted as llama.cpp permutes them, each tensor in the type `TYPES` gives it (F32, F16, Q8_0, Q4_0, Q4_1).
"""

import json

import gguf
import numpy as np
import tokenizers
from gguf import GGMLQuantizationType as Q
from sentencepiece import sentencepiece_model_pb2

CORPUS = ("The quick brown fox jumps over the lazy dog in 2024. Numbers: 12345 67 8.9; code: def f(x): return x * 2\n"
          "Caf\u00e9 na\u00efve r\u00e9sum\u00e9, \u65e5\u672c\u8a9e, emoji \U0001F600. "
          "It's what we'll do, isn't it?\n") * 20
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# GGUF type of each tensor kind (by the name's last part); every type the importer must read appears.
TYPES = {"token_embd": Q.Q8_0, "output": Q.Q8_0, "attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "attn_v": Q.Q8_0,
         "attn_output": Q.F16, "ffn_gate": Q.Q4_1, "ffn_up": Q.Q4_0, "ffn_down": Q.F16, "attn_norm": Q.F32,
         "ffn_norm": Q.F32, "output_norm": Q.F32}
_HF_TO_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def byte_level_vocab(vocab_size: int = 320) -> tuple[list[str], list[str]]:
  """(tokens by id, merges "a b") of a byte-level BPE trained on CORPUS; SPECIALS are ids 0, 1, 2."""
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
      tokenizers.pre_tokenizers.Digits(individual_digits=True),
      tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)])
  trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                           initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator([CORPUS], trainer)
  model = json.loads(tokenizer.to_str())["model"]
  tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda item: item[1])]
  merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
  return tokens, merges


def gguf_name(hf_name: str) -> str:
  if hf_name == "model.embed_tokens.weight":
    return "token_embd.weight"
  if hf_name == "model.norm.weight":
    return "output_norm.weight"
  if hf_name == "lm_head.weight":
    return "output.weight"
  _, _, layer, rest = hf_name.split(".", 3)
  return f"blk.{layer}.{_HF_TO_GGUF[rest.removesuffix('.weight')]}.weight"


def permute(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's `permute` (convert_hf_to_gguf.py): rotate-half rows -> interleaved pairs."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _sentencepiece_vocab(writer, model_proto: bytes) -> None:
  """llama.cpp's "llama" vocabulary fields of a SentencePiece model (convert_hf_to_gguf.py `_set_vocab_sentencepiece`)."""
  proto = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
  writer.add_tokenizer_model("llama")
  writer.add_tokenizer_pre("default")
  writer.add_token_list([p.piece for p in proto.pieces])
  writer.add_token_scores([p.score for p in proto.pieces])
  writer.add_token_types([p.type for p in proto.pieces])
  writer.add_bos_token_id(proto.trainer_spec.bos_id)
  writer.add_eos_token_id(proto.trainer_spec.eos_id)
  writer.add_unk_token_id(proto.trainer_spec.unk_id)
  writer.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)


def write_gguf(path, model, tokens, merges, *, architecture: str = "llama", pre: str = "smollm",
               types: dict | None = None, context_length: int = 256, tensor_dtype=None,
               sentencepiece: bytes | None = None) -> dict[str, np.ndarray]:
  """Write `model` (a transformers LlamaForCausalLM) as a GGUF; returns HF name -> the dequantized weight it holds.

  A tied model gets no output.weight; `tensor_dtype` (a numpy dtype) stores output_norm as that plain type;
  `sentencepiece` (a serialized .model) replaces the byte-level vocabulary with its pieces ("llama")."""
  config = model.config
  writer = gguf.GGUFWriter(str(path), architecture)
  writer.add_block_count(config.num_hidden_layers)
  writer.add_context_length(context_length)
  writer.add_embedding_length(config.hidden_size)
  writer.add_feed_forward_length(config.intermediate_size)
  writer.add_head_count(config.num_attention_heads)
  writer.add_head_count_kv(config.num_key_value_heads)
  writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
  writer.add_layer_norm_rms_eps(config.rms_norm_eps)
  writer.add_vocab_size(config.vocab_size)
  writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
  if sentencepiece is not None:
    _sentencepiece_vocab(writer, sentencepiece)
  else:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(False)
  dequantized = {}
  for hf_name, tensor in model.state_dict().items():
    if hf_name == "lm_head.weight" and config.tie_word_embeddings:
      continue
    w = tensor.float().numpy()
    name = gguf_name(hf_name)
    if tensor_dtype is not None and name == "output_norm.weight":
      writer.add_tensor(name, w.astype(tensor_dtype))
      continue
    kind = (types or TYPES)[name.split(".")[-2]]
    if name.endswith("attn_q.weight"):
      w = permute(w, config.num_attention_heads)
    elif name.endswith("attn_k.weight"):
      w = permute(w, config.num_key_value_heads)
    if kind in (Q.F32, Q.F16):
      stored = w.astype(np.float16 if kind == Q.F16 else np.float32)
      writer.add_tensor(name, stored)
    else:
      stored = gguf.quants.quantize(w, kind)
      writer.add_tensor(name, stored, raw_dtype=kind)
    back = gguf.quants.dequantize(stored, kind).reshape(w.shape).astype(np.float32)
    if name.endswith("attn_q.weight"):
      back = permute_back(back, config.num_attention_heads)
    elif name.endswith("attn_k.weight"):
      back = permute_back(back, config.num_key_value_heads)
    dequantized[hf_name] = back
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return dequantized


def permute_back(w: np.ndarray, heads: int) -> np.ndarray:
  """The inverse of `permute` (transformers' reverse_permute_weights), written independently of longjax's."""
  return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
