"""The training loop: `train_and_evaluate(config, workdir)`.

Builds the mesh, shards parameters by their logical axes, initialises (random,
Hugging Face or longjax checkpoint) or resumes, then runs the jitted step with
donated state, logging, evaluation, checkpointing and preemption handling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time

log = logging.getLogger(__name__)

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from longjax import checkpoint, sharding
from longjax.config import Config, ConfigError
from longjax.data import get_tokenizer, make_batches
from longjax.data.prefetch import Prefetch
from longjax.flops import flops_per_token, peak_flops
from longjax.nn import Llama, abstract_params, init_params
from longjax.nn.attention import inserted_tokens
from longjax.train import data_state as data_state_lib
from longjax.train import init as init_lib
from longjax.train.metrics import MetricWriter
from longjax.train.optimizer import learning_rate_schedule, make_optimizer, parameter_labels
from longjax.train.step import make_eval_step, make_train_step


class TrainingError(ConfigError):
  """Training cannot go on (e.g. a non-finite loss); the message names the step and what was kept."""


class _Preemption:
  """Turns SIGTERM/SIGINT into a flag the loop checks after each step (save, then exit cleanly)."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. called from a notebook worker): no handler
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    log.warning("signal %d: saving a checkpoint after this step, then stopping", signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _any_process(flag: bool) -> bool:
  """Whether `flag` is set in any process (a collective: every process calls it at the same step).

  A signal reaches hosts at different steps; stopping where the first signalled host's flag is seen by all
  makes every host save the same step and leave the loop together, instead of one waiting in a collective
  that the others never enter. One all-gather of an int32 a step (measured in tests/train/test_multihost.py).
  """
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _write_config(config: Config, workdir: str) -> None:
  if jax.process_index() == 0:
    (checkpoint.workdir_path(workdir) / "config.json").write_text(config.to_json())


class Trainer:
  """Everything a run holds: the config, mesh, model, optimizer, compiled steps and checkpointer."""

  def __init__(self, config: Config, workdir: str):
    self.workdir = str(checkpoint.workdir_path(workdir))  # local paths absolute; gs://bucket/run as it is
    checkpoint.workdir_path(self.workdir).mkdir(parents=True, exist_ok=True)
    self.source_params = None
    if config.train.init_from:
      source_model, self.source_params = init_lib.load_source(config.train.init_from)
      config = dataclasses.replace(config, model=init_lib.adopt_shapes(config.model, source_model))
      config.validate()
    self.config = config
    train = config.train
    self.mesh = sharding.make_mesh(config.mesh)
    self.model = Llama(config.model)
    abstract, logical = abstract_params(config.model)
    self.param_shardings = sharding.tree_shardings(self.mesh, logical, abstract)
    self.labels = parameter_labels(abstract, config.model.lora)
    self.optimizer = make_optimizer(train, abstract, config.model.lora)
    abstract_opt = jax.eval_shape(self.optimizer.init, abstract)
    replicated = sharding.replicated(self.mesh)
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731 - frozen leaves hold no state
    self.opt_shardings = optax.tree_map_params(
        self.optimizer, lambda value, s: value if masked(value) else s, abstract_opt, self.param_shardings,
        transform_non_params=lambda _: replicated, is_leaf=masked)
    self.abstract_params = _abstract(abstract, self.param_shardings)
    self.abstract_opt = _abstract(abstract_opt, self.opt_shardings)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self.batch_shape = (train.global_batch_size, train.seq_len)
    self.batch_rows = sharding.addressable_rows(self.batch_sharding, self.batch_shape)
    self.num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract))
    state_shardings = {"step": replicated, "params": self.param_shardings, "opt_state": self.opt_shardings}
    self.train_step = jax.jit(
        make_train_step(self.model, self.optimizer, self.labels, train.grad_accum_steps),
        in_shardings=(state_shardings, self.batch_sharding), out_shardings=(state_shardings, replicated),
        donate_argnums=(0,))
    self.eval_step = jax.jit(make_eval_step(self.model), in_shardings=(self.param_shardings, self.batch_sharding),
                             out_shardings=replicated)
    self.checkpointer = checkpoint.Checkpointer(self.workdir, max_to_keep=train.max_to_keep,
                                                async_save=train.async_checkpointing)

  @contextlib.contextmanager
  def context(self):
    """Mesh and logical-rule context under which the model's sharding constraints resolve."""
    with sharding.use_mesh(self.mesh):
      yield

  def initial_state(self) -> dict:
    """A fresh train state: step 0, the initial parameters and their optimizer state, sharded (under context())."""
    params = self.initial_params()
    opt_state = jax.jit(self.optimizer.init, out_shardings=self.opt_shardings)(params)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": opt_state}

  def initial_params(self):
    params = init_params(self.config.model, jax.random.key(self.config.seed), out_shardings=self.param_shardings)
    if self.source_params is None:
      return params
    return init_lib.merge_into(params, self.source_params, self.config.model.scan_layers,
                               self.config.model.num_layers,
                               place=lambda value, like: jax.device_put(np.asarray(value, like.dtype), like.sharding))

  def train_batches(self):
    return self.batches(self.config.data.train_split)

  def batches(self, split: str):
    """This process's rows (those its devices hold) of the global batches of `split`: GlobalBatches."""
    cfg = self.config
    return make_batches(cfg.data, split=split, seq_len=cfg.train.seq_len, global_batch_size=cfg.train.global_batch_size,
                        seed=cfg.seed, rows=self.batch_rows, landmarks=inserted_tokens(cfg.model))

  def global_batch(self, batch: dict, rows: list[int]) -> dict:
    """This process's rows `rows` of a global batch -> one global array per key, each device given its block."""
    return {key: sharding.global_array(self.batch_sharding, self.batch_shape, rows, value)
            for key, value in batch.items()}

  def evaluate(self, params) -> dict:
    """Token-weighted loss and perplexity over the first `eval_batches` batches of the eval split."""
    cfg = self.config
    batches = self.batches(cfg.data.eval_split)
    loss_sum = tokens = 0.0
    for _ in range(cfg.train.eval_batches):
      out = jax.device_get(self.eval_step(params, self.global_batch(next(batches), batches.rows)))
      loss_sum, tokens = loss_sum + float(out["loss_sum"]), tokens + float(out["tokens"])
    loss = loss_sum / max(tokens, 1.0)
    metrics = {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}
    if cfg.eval.tasks:  # passkey, needle, RULER, ... on the parameters being trained (every process runs them)
      from longjax.evaluate.tasks import evaluate_during_training  # the evaluation floor; deferred like the mains

      metrics.update(evaluate_during_training(cfg, params, get_tokenizer(cfg.data)))
    return metrics


def train_and_evaluate(config: Config, workdir: str) -> dict:
  """Train (or resume) in `workdir` until `train.num_steps`; returns the last metrics."""
  trainer = Trainer(config, workdir)
  try:
    return _train(trainer)
  finally:  # also on a user error before the loop: Orbax's background threads must end before the interpreter
    trainer.checkpointer.close()


def _train(trainer: Trainer) -> dict:
  config, train = trainer.config, trainer.config.train
  reader = trainer.train_batches()
  schedule = learning_rate_schedule(train)
  flops = flops_per_token(config.model, trainer.num_params, train.seq_len)
  peak = peak_flops(jax.devices()[0].device_kind)
  with trainer.context():
    if trainer.checkpointer.latest_step() is None:
      step, saved_step, state = 0, None, trainer.initial_state()
    else:
      step, params, opt_state, data_state = trainer.checkpointer.restore(trainer.abstract_params, trainer.abstract_opt)
      saved_step = step
      state = {"step": jnp.asarray(step, jnp.int32), "params": params, "opt_state": opt_state}
      reader.set_state(data_state)
      log.info("resumed from %s at step %d", trainer.checkpointer.directory, step)
    # Only now: a rerun whose model does not fit the workdir's checkpoints must not overwrite its config.json.
    _write_config(config, trainer.workdir)
    writer = MetricWriter(trainer.workdir, total_steps=train.num_steps, initial_step=step,
                          enabled=jax.process_index() == 0)
    last: dict = {}
    first_step, window_start, window_tokens = step, time.perf_counter(), 0.0
    window_loss_sum = window_loss_tokens = 0.0  # the logged loss is the token-weighted mean since the last log
    batches = Prefetch(reader, lambda batch: trainer.global_batch(batch, reader.rows))
    try:
      with _Preemption() as preemption:
        while step < train.num_steps:
          state, metrics = trainer.train_step(state, next(batches))
          step += 1
          metrics = jax.device_get(metrics)
          loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
          # A finite loss with a non-finite gradient already made the new parameters NaN: never save those.
          if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            kept = "no checkpoint was saved yet" if saved_step is None else (
                f"the last good checkpoint (step {saved_step}) is kept in {trainer.checkpointer.directory}")
            raise TrainingError(f"train: loss is {loss} (gradient norm {grad_norm}) at step {step}; stopped without "
                                f"saving, {kept}")
          window_tokens += float(metrics["tokens"])
          window_loss_sum += loss * float(metrics["tokens"])
          window_loss_tokens += float(metrics["tokens"])
          if step == first_step + 1:  # the first step of a process includes compilation: not a throughput figure
            window_start, window_tokens = time.perf_counter(), 0.0
          writer.advance()
          if step % train.log_every == 0 or step == train.num_steps:
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_tokens / max(elapsed, 1e-9) if window_tokens else None  # None: compile step only
            last = {"loss": window_loss_sum / max(window_loss_tokens, 1.0), "step_loss": loss, "learning_rate": float(schedule(step - 1)), "grad_norm": grad_norm,
                    "tokens_per_s": tokens_per_s,
                    "mfu": flops * tokens_per_s / (peak * jax.device_count()) if peak and tokens_per_s else None}
            if train.eval_every and (step % train.eval_every == 0 or step == train.num_steps):
              last.update(trainer.evaluate(state["params"]))
            writer.write(step, last)
            window_start, window_tokens = time.perf_counter(), 0.0
            window_loss_sum = window_loss_tokens = 0.0
          stop = _any_process(preemption.requested)
          if step % train.checkpoint_every == 0 or step == train.num_steps or stop:
            data_state = data_state_lib.gather(batches.get_state())
            trainer.checkpointer.save(step, state["params"], state["opt_state"], data_state, config,
                                      force=True)
            saved_step = step
          if stop:
            log.warning("preempted: saved step %d in %s", step, trainer.checkpointer.directory)
            break
    finally:
      batches.close()
      writer.close()
  return {"step": step, **last}
