"""The model: token embedding, `model.num_layers` blocks picked from BLOCKS by `model.block` (llama: Touvron et
al. 2023's pre-norm GQA attention and SwiGLU; megalodon), scanned or not, remat by policy, the block's final norm
and a tied or untied head; with a cache, each layer's state threaded through (`init_cache`)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from longjax import ops
from longjax.config import ModelConfig
from longjax.nn.blocks import BLOCKS
from longjax.nn.layers import normal_init

# Names of jax.checkpoint policies selectable by `model.remat_policy`; `none` disables remat.
REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attention_out": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


def init_cache(config: ModelConfig, batch_size: int, max_length: int, dtype=None) -> dict:
  """{"layers": per-layer states}: stacked along a leading `layers` axis when layers are scanned, else a list."""
  dtype = jnp.dtype(config.dtype if dtype is None else dtype)
  block = BLOCKS[config.block]
  final = block.init_final_state(config, batch_size)
  cache = {} if final is None else {"final_norm": final}
  if config.scan_layers:
    state = block.init_state(config, batch_size, max_length, dtype)
    cache["layers"] = jax.tree.map(lambda x: jnp.broadcast_to(x, (config.num_layers,) + x.shape), state)
  else:  # one state per layer, each its own buffers (a donated cache may not hold one buffer twice)
    cache["layers"] = [block.init_state(config, batch_size, max_length, dtype) for _ in range(config.num_layers)]
  return cache


def cache_lengths(cache: dict) -> jax.Array:
  """int32[B]: how many tokens each row of the cache holds."""
  layers = cache["layers"]
  return layers[0].length if isinstance(layers, list) else layers.length[0]


class Llama(nn.Module):
  """tokens int32[B, T] -> float32 logits [B, T, vocab]; with a cache, (logits, cache).

  positions int32[B, T] default to 0..T-1, or with a cache to each row's next positions.
  `seq_len`, the current total length that dynamic positional methods read, defaults to
  max(positions) + 1 (as transformers does), with a cache to each row's length after this call;
  pass it when the buffer is padded beyond the true length. In a cached call `segment_ids` mark
  real tokens (non-zero) and padding (0), which is neither cached nor counted; `logits_at` int32[B]
  asks for the logits of one position per row only (float32 [B, vocab]), as prefill needs.
  `hidden_only` returns the final-norm output [B, T, E] in the compute dtype instead of the logits, for a
  loss fused with the LM head (`lm_head_kernel`, `longjax.ops.chunked_cross_entropy`). `balanced`: the batch's
  length axis is in context parallelism's balanced layout (`longjax.train.step.balance_batch`; positions given),
  which context-parallel attention must know; the logits come out in that layout too.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens, positions=None, segment_ids=None, *, seq_len=None, train: bool = False, cache=None,
               logits_at=None, hidden_only: bool = False, balanced: bool = False):
    cfg = self.config
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    length = tokens.shape[1]
    if cache is None:
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), tokens.shape)
      if seq_len is None:
        seq_len = jnp.max(positions) + 1
    else:
      filled = cache_lengths(cache)
      if positions is None:
        positions = filled[:, None] + jnp.arange(length, dtype=jnp.int32)
      if seq_len is None:
        valid = jnp.ones(tokens.shape, bool) if segment_ids is None else segment_ids != 0
        seq_len = jnp.maximum(jnp.max(jnp.where(valid, positions, -1), axis=1) + 1, filled)
    positions = jnp.asarray(positions, jnp.int32)
    seq_len = jnp.asarray(seq_len, jnp.int32)
    block = BLOCKS[cfg.block]
    embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
                     embedding_init=block.embedding_init(cfg), name="embed_tokens")
    # Look up in the table gathered over its embed shards (FSDP's all-gather of one weight): a lookup into an
    # embed-sharded table yields embed-sharded rows, which XLA cannot reshard to batch x length shards (it
    # replicates the whole [B, T, E] activation first).
    table = nn.with_logical_constraint(embed.embedding, ("vocab", None))
    x = jnp.take(table, tokens, axis=0).astype(dtype)

    if cfg.remat_policy != "none":
      block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    states = None if cache is None else cache["layers"]
    if cfg.scan_layers:
      stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0), length=cfg.num_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, states = stack(cfg, train, balanced, name="layers")(x, positions, seq_len, segment_ids, states)
    else:
      new_states = []
      for i in range(cfg.num_layers):
        x, state = block(cfg, train, balanced, name=f"layers_{i}")(x, positions, seq_len, segment_ids,
                                                                   None if states is None else states[i])
        new_states.append(state)
      states = new_states

    valid = None if segment_ids is None else segment_ids != 0
    x, final_state = block.final_norm(cfg, x, valid, None if cache is None else cache.get("final_norm"))
    if logits_at is not None:
      x = jnp.take_along_axis(x, jnp.asarray(logits_at, jnp.int32)[:, None, None], axis=1)
    if hidden_only:
      if cache is not None:
        raise ValueError("Llama: hidden_only is for whole-sequence calls (no cache)")
      return x
    if cfg.tie_embeddings:
      logits = embed.attend(x)
    else:
      kernel = self.param("lm_head", normal_init(cfg.initializer_range, ("embed", "vocab")),
                          (cfg.hidden_size, cfg.vocab_size), param_dtype)
      logits = ops.dense(x, kernel.astype(dtype))
    logits = nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))
    if logits_at is not None:
      logits = logits[:, 0]
    if cache is None:
      return logits
    return logits, {"layers": states, **({} if final_state is None else {"final_norm": final_state})}


def lm_head_kernel(config: ModelConfig, params) -> jax.Array:
  """The LM head as a [hidden, vocab] matrix: `lm_head`, or the transposed token embedding when tied."""
  if config.tie_embeddings:
    return params["embed_tokens"]["embedding"].T
  return params["lm_head"]


def init_params(config: ModelConfig, rng: jax.Array, seq_len: int = 8, *, out_shardings=None):
  """Unboxed float parameters of `Llama(config)` (use `abstract_params` for shapes without allocating), placed by
  `out_shardings` (a tree of shardings, as `longjax.sharding` gives for a mesh) when given."""
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  placed = {} if out_shardings is None else {"out_shardings": out_shardings}
  # Compiled: op-by-op initialisation of even a tiny model costs seconds of dispatch.
  return jax.jit(lambda key: nn.meta.unbox(Llama(config).init(key, tokens)["params"]), **placed)(rng)


def abstract_params(config: ModelConfig, seq_len: int = 8):
  """(ShapeDtypeStruct tree, logical axis names tree) of the parameters, without allocating them."""
  tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
  boxed = jax.eval_shape(lambda rng: Llama(config).init(rng, tokens)["params"], jax.random.key(0))
  return nn.meta.unbox(boxed), nn.get_partition_spec(boxed)
