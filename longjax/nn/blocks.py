"""`model.block` picks the decoder block from BLOCKS.

A block is a module built as block(config, train, balanced) (`balanced`: the length axis is in context
parallelism's balanced layout) and called as (x, positions, seq_len, segment_ids, state) -> (x, state), with
static methods `init_state(config, batch, max_length, dtype)` (every layer state has `length` int32[B]),
`embedding_init(config)`, `final_norm(config, x, valid, state)` (the norm before the head, run inside the
model) and `init_final_state(config, batch)` (its cache, None when it has none).
"""

import flax.linen as nn

from longjax.nn.decoder import DecoderBlock
from longjax.nn.megalodon import MegalodonBlock

BLOCKS: dict[str, type[nn.Module]] = {"llama": DecoderBlock, "megalodon": MegalodonBlock}
