"""Every longjax config key with its default; other configs import this and override.

  python -m longjax.train --config configs/base.py --workdir /tmp/longjax_base

The defaults describe a small LLaMA trained on the embedded default corpus (the
Python standard library's source tree, byte-level tokens). `config.py` validates
this tree and turns it into frozen typed configs; the ConfigDict is locked, so a
misspelled key on the command line is an error, not a silent no-op.
"""

import ml_collections
from ml_collections import config_dict


def rope_config(rope_type: str = "default", rope_theta: float = 10000.0) -> ml_collections.ConfigDict:
  """Rope keys, named as Hugging Face's `rope_parameters` (docs/positional.md)."""
  rope = ml_collections.ConfigDict()
  rope.rope_type = rope_type  # default | linear | ntk | dynamic | yarn | dynamic_yarn | llama3 | longrope
  rope.rope_theta = rope_theta  # base b of inv_freq_i = b^(-2i/d)
  rope.factor = config_dict.placeholder(float)  # s: context extension factor (linear, dynamic, yarn, llama3, longrope)
  rope.original_max_position_embeddings = config_dict.placeholder(int)  # L: pre-trained context length
  rope.alpha = config_dict.placeholder(float)  # ntk: base b * alpha^(d/(d-2))
  rope.beta_fast = config_dict.placeholder(float)  # yarn: fast boundary of the ramp, default 32
  rope.beta_slow = config_dict.placeholder(float)  # yarn: slow boundary of the ramp, default 1
  rope.mscale = config_dict.placeholder(float)  # yarn (DeepSeek form): used with mscale_all_dim
  rope.mscale_all_dim = config_dict.placeholder(float)
  rope.attention_factor = config_dict.placeholder(float)  # yarn/longrope: explicit scale of cos and sin
  rope.truncate = config_dict.placeholder(bool)  # yarn: floor/ceil the correction range (default True)
  rope.low_freq_factor = config_dict.placeholder(float)  # llama3, default 1
  rope.high_freq_factor = config_dict.placeholder(float)  # llama3, default 4
  rope.short_factor = config_dict.placeholder(tuple)  # longrope: d/2 rescale factors used while n <= L
  rope.long_factor = config_dict.placeholder(tuple)  # longrope: d/2 rescale factors used when n > L
  rope.partial_rotary_factor = 1.0  # rotate only the first int(head_dim * this) channels
  return rope


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0

  # ---- model: a LLaMA decoder (longjax/nn/) ----
  model = config.model = ml_collections.ConfigDict()
  model.block = "llama"  # the decoder block (longjax.nn.BLOCKS): llama | megalodon
  model.vocab_size = 259  # 256 bytes + pad/bos/eos for the byte tokenizer
  model.hidden_size = 256
  model.intermediate_size = 688  # SwiGLU width
  model.num_layers = 4
  model.num_heads = 4
  model.num_kv_heads = 4  # < num_heads gives grouped-query attention
  model.head_dim = config_dict.placeholder(int)  # None: hidden_size // num_heads
  model.max_position_embeddings = 1024  # the length the model is trained for (informational; HF config key)
  model.rms_norm_eps = 1e-5
  model.tie_embeddings = False  # LM head shares the token embedding matrix
  model.initializer_range = 0.02  # std of normal init, as transformers' LlamaConfig
  model.dtype = "float32"  # compute dtype: float32 | bfloat16 | float16 (bfloat16 on accelerators)
  model.param_dtype = "float32"  # parameters stay float32
  model.scan_layers = False  # nn.scan over layers: one compiled block, fast compile for deep models
  model.remat_policy = "none"  # none | full | dots | dots_with_no_batch_dims | save_attention_out
  # > 0: train/eval loss fused with the LM head, this many positions of float32 logits [B, chunk, vocab] at a
  # time (its backward recomputes them), instead of [B, T, vocab] at once; 0: the plain loss. Long contexts.
  model.loss_chunk = 0
  model.rope = rope_config()

  # What every attention type reads; each type's own keys are in its section below (longjax/config/attention.py).
  # Keys of a type other than `type` must stay at their defaults. The flat keys of earlier versions
  # (attention.window, attention.landmark_id, ...) still work: they go to the picked type's section.
  attention = model.attention = ml_collections.ConfigDict()
  attention.type = "full"  # full | s2 | sliding | infini | landmark | self_extend | dca | rerope
  attention.impl = "auto"  # auto | xla | cudnn | pallas | blockwise | naive
  attention.kernel_block = 512  # tile of the blockwise and KV-cache kernels: query and key block length
  # Context parallelism when the mesh's sequence axis is > 1 (ops/context_parallel.py): none (XLA gathers K/V
  # implicitly) | all_gather (gather K/V, local queries) | ring (K/V blocks passed around the ring).
  attention.context_parallel = "none"
  attention.load_balance = True  # with context_parallel: each shard holds a chunk from the front and one from the back
  attention.cross_documents = True  # False: packed documents do not attend to each other (full, sliding, landmark)
  # log-n scaling, any type and rope: queries scaled by max(1, log(position + 1) / log(logn_length)); 0 is off
  attention.logn_length = 0
  s2 = attention.s2 = ml_collections.ConfigDict()  # LongLoRA's shifted sparse attention
  s2.group_size_ratio = 0.25  # group size = ratio * sequence length
  s2.at_eval = False  # evaluate as it trains; False: full attention at evaluation, as LongLoRA
  sliding = attention.sliding = ml_collections.ConfigDict()  # a window of keys plus sinks (StreamingLLM)
  sliding.window = config_dict.placeholder(int)  # keys j with i - window < j <= i; needed by type=sliding
  sliding.sinks = 0  # also keep the first `sinks` keys
  infini = attention.infini = ml_collections.ConfigDict()  # Infini-attention
  infini.segment_len = 256  # tokens per segment
  infini.update = "linear"  # linear | delta
  landmark = attention.landmark = ml_collections.ConfigDict()  # landmark attention
  landmark.block = 63  # ordinary tokens a block; packing and generate add a landmark after each
  landmark.topk = 4  # blocks each head retrieves at inference (the paper's k = 4)
  landmark.id = config_dict.placeholder(int)  # the reserved landmark token id: never made by the tokenizer, < vocab
  self_extend = attention.self_extend = ml_collections.ConfigDict()  # Self-Extend, training-free
  self_extend.group_size = 8  # beyond the window: query i // G + window - window // G, key j // G
  self_extend.window = config_dict.placeholder(int)  # neighbours i - j < window keep their positions; needed
  dca = attention.dca = ml_collections.ConfigDict()  # Dual Chunk Attention, training-free
  dca.chunk_size = 0  # c <= pre-trained length, needed; chunks of c - local_window tokens
  dca.local_window = 0  # the successive-chunk window w (chunk length c - w)
  rerope = attention.rerope = ml_collections.ConfigDict()  # ReRoPE, training-free
  rerope.window = config_dict.placeholder(int)  # neighbours i - j < window keep positions, farther sit at window

  mega = model.megalodon = ml_collections.ConfigDict()  # block=megalodon only (longjax/nn/megalodon.py)
  mega.z_dim = 256  # shared query/key projection width, split over model.num_heads
  mega.value_dim = 512  # value and gate width
  mega.ema_dim = 16  # N: complex EMA dimensions per channel
  mega.chunk_size = 2048  # attention runs causally inside chunks; CEMA carries information across them
  mega.norm_groups = 32  # timestep-norm channel groups
  mega.swiglu = True  # FFN: SwiGLU (mega7.3B) or SiLU
  mega.norm_eps = 1e-5
  mega.cema_method = "fft"  # fft (causal FFT convolution) | scan (lax.associative_scan)

  lora = model.lora = ml_collections.ConfigDict()
  lora.rank = 0  # 0 disables LoRA
  lora.alpha = 16.0  # scale alpha / rank (LongLoRA: r=8, alpha=16)
  lora.targets = ("q", "k", "v", "o")  # any of q k v o gate up down
  lora.train_embeddings = True  # LongLoRA's "LoRA+": embeddings and norms stay trainable
  lora.train_norms = True

  # ---- data (longjax/data/) ----
  data = config.data = ml_collections.ConfigDict()
  data.source = "textdir"  # textdir (a TFDS dataset built from a directory of text files) | tfds
  data.text_dir = ""  # textdir: "" means the running Python's standard library source tree
  data.text_glob = "**/*.py"  # textdir: files of the directory that become documents
  data.validation_fraction = 0.05  # textdir: share of documents, by path hash, in the validation split
  data.tfds_name = ""  # tfds: a registered dataset name, e.g. "pg19"
  data.tfds_text_key = "text"  # tfds: the feature holding the document text
  data.data_dir = ""  # where TFDS datasets are built/read; "" means ~/tensorflow_datasets
  data.train_split = "train"
  data.eval_split = "validation"
  data.tokenizer = "byte"  # byte | sentencepiece (Llama 1/2 tokenizer.model) | hf (a Hugging Face tokenizer.json)
  # sentencepiece: the .model file; hf: tokenizer.json or its directory (bos/eos/pad from tokenizer_config.json)
  data.tokenizer_path = ""
  data.add_bos = True
  data.add_eos = True
  data.shuffle = True  # shuffle documents each epoch (deterministic from config.seed)
  # Packed rows pass through a buffer of this many rows (shared out among the global batch's row streams), emitted
  # in a seeded random order, so that consecutive rows of a stream mix documents; 0 disables. Memory: at most
  # 4 * shuffle_buffer * (seq_len + 1) int32 per process (lower it at 128K).
  data.shuffle_buffer = 256
  # Synthetic retrieval documents replace real training documents with this probability (landmark attention
  # and Infini-attention fine-tune on passkey retrieval); 0 disables. The eval split stays real text.
  data.retrieval_rate = 0.0
  # passkey (landmark-attention template) | kv_recall (key=value pairs, then queries) | passkey+kv_recall (either,
  # even odds, a document)
  data.retrieval_task = "passkey"
  data.retrieval_digits = 5  # passkey: digits of the key
  data.retrieval_pairs = 8  # kv_recall: two-letter keys with two-digit values, an episode
  data.retrieval_queries = 4  # kv_recall: keys asked back, an episode (episodes repeat to fill the document)
  # A retrieval document starts a row (padding the rest of the row before it) and owns it, so that its key is never
  # in another row than its question; False packs it into the stream like any document.
  data.retrieval_rows = False
  # Loss on a retrieval document's targets: "all" of them, or only its "answer" tokens (the passkey, the recalled
  # values), since the template and filler are learned early and otherwise swamp the one answer a row holds.
  data.retrieval_loss = "all"
  # Each answer token's loss weight (loss_mask; the loss is token-weighted): a row of text has hundreds of targets,
  # a passkey row a few answers, so mixed with text at weight 1 the answers barely move the model.
  data.retrieval_answer_weight = 1.0
  # PoSE (Zhu et al. 2023): train rows get positions up to this target length, in pose_chunks chunks with
  # uniformly sampled skips between them (train split only); 0 disables. Must exceed train.seq_len.
  data.pose_target_length = 0
  data.pose_chunks = 2  # PoSE: chunks a row (the paper's N; its code uses 2)

  # ---- training (longjax/train/) ----
  train = config.train = ml_collections.ConfigDict()
  train.seq_len = 256
  train.global_batch_size = 8  # sequences per optimizer step, over all processes
  train.grad_accum_steps = 1  # micro-batches per step
  train.num_steps = 100
  train.learning_rate = 1e-3
  train.schedule = "cosine"  # cosine | linear | constant (after warmup)
  train.warmup_steps = 10
  train.end_learning_rate_ratio = 0.1  # final LR as a fraction of the peak
  train.weight_decay = 0.1  # not applied to norms, biases or gates
  train.b1 = 0.9
  train.b2 = 0.95
  train.eps = 1e-8
  train.grad_clip = 1.0  # global-norm clip; 0 disables
  # infini-attention gates: own LR, no decay (huggingface.co/blog/infini-attention: at the model's LR they stay
  # near 0.5)
  train.gate_learning_rate = 1e-2
  train.init_from = ""  # "" random | an HF LLaMA directory | a longjax workdir
  train.log_every = 10
  train.eval_every = 0  # 0: no evaluation during training
  train.eval_batches = 4
  train.checkpoint_every = 50
  train.max_to_keep = 3
  train.async_checkpointing = True

  # ---- device mesh (longjax/sharding.py) ----
  mesh = config.mesh = ml_collections.ConfigDict()
  mesh.data = -1  # -1 fills the devices left over by the other axes
  mesh.fsdp = 1
  mesh.tensor = 1
  mesh.sequence = 1

  # ---- evaluation (longjax/evaluate/) ----
  evaluation = config.eval = ml_collections.ConfigDict()
  evaluation.lengths = (128, 256, 512, 1024)  # perplexity-vs-length points
  evaluation.stride = 256  # sliding-window stride of the perplexity protocol
  evaluation.max_documents = 16  # the longest documents of the eval split
  evaluation.max_document_tokens = 8192  # documents are cut to this many tokens (bounds evaluation time)
  evaluation.tasks = ()  # also run these every train.eval_every steps: config.EVAL_TASKS (passkey, ruler, ...)
  evaluation.task_lengths = ()  # their lengths in tokens; () is the trained length x 1, 2, 4, 8
  evaluation.task_trials = 2  # prompts per (length, depth) cell of passkey / needle, samples per RULER task

  # ---- multi-process runs (longjax/cli.py: initialize_distributed) ----
  # Each key left at its default is taken from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
  # (launch/local.py and launch/k8s.py set them; JOB_COMPLETION_INDEX of an indexed Kubernetes Job gives the
  # process id), else from the cluster itself: jax.distributed.initialize() detects TPU pods and SLURM.
  distributed = config.distributed = ml_collections.ConfigDict()
  distributed.initialize = "auto"  # auto: when the environment names a multi-process run | always | never
  distributed.coordinator_address = ""  # host:port of process 0; "" for the environment's
  distributed.num_processes = 0  # 0 for the environment's
  distributed.process_id = -1  # -1 for the environment's (set it per process: --config.distributed.process_id=3)
  distributed.initialization_timeout = 300  # seconds to wait for every process to join

  config.lock()
  return config
