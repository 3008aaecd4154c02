"""The trainer: one jit-compiled, data-parallel optimiser update per call, on the same forward path as encoding
(`model.forward.embed_rows`: packed rows, per-segment pooling, the attention implementation and CPU row steps
chosen at the edge), checkpoints that resume exactly, and the loop `train` and `distill` share.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from distilbert_jax.checkpoint import model_dir
from distilbert_jax.checkpoint.hub import resolve_model_dir
from distilbert_jax.checkpoint.tensors import params_sha256
from distilbert_jax.core.checks import positive_int
from distilbert_jax.core.files import file_sha256, write_atomic, write_json
from distilbert_jax.core.outdir import check_output_dir, clear_dir
from distilbert_jax.core.progress import progress_bar
from distilbert_jax.encode.batching import MAX_SEGMENTS, pack_batch
from distilbert_jax.encode.edge import choose, over_rows
from distilbert_jax.model.forward import embed_rows
from distilbert_jax.model.tokenizer import WordPieceTokenizer
from distilbert_jax.model.transformer import Encoder
from distilbert_jax.train.config import TrainConfig
from distilbert_jax.train.data import Example, batches, check_can_learn, read_train_data
from distilbert_jax.train.lora import init_adapters, merge, save_adapters
from distilbert_jax.train.losses import margin_mse_loss, multiple_negatives_ranking_loss
from distilbert_jax.train.optimizer import make_optimizer


class Trainer:
  """Holds params, optimiser state, update count and RNG; `step(batch)` is one jit-compiled, data-parallel
  forward and backward (an optimiser update every `grad_accumulation` calls).

  Every text of a batch (queries, positives, negatives) is packed into one set of rows and embedded by
  `model.forward.embed_rows`, the function `encode` runs: research changes there reach both. The platform picks
  the attention implementation and the CPU row steps here, at the edge, as the encoder does; `attention=`,
  `packing=` and `interceptor` (a Flax method interceptor, as `SentenceTransformer.intervene` takes) override.
  """

  def __init__(
    self,
    loaded: model_dir.LoadedModel,
    cfg: TrainConfig,
    devices: Sequence[Any] | None = None,
    with_negatives: bool | None = None,
    attention: str | None = None,
    packing: bool = True,
    interceptor: Any = None,
  ):
    """`with_negatives`: every batch carries a negative column (rows without one are masked out); default: a
    batch does when any of its rows has a negative (train() decides once for the file, so shapes stay fixed)."""
    self.loaded, self.cfg = loaded, cfg
    self.with_negatives = with_negatives
    self.packing, self.interceptor = bool(packing), interceptor
    self.tokenizer = WordPieceTokenizer.from_dir(loaded.tokenizer_dir, loaded.max_seq_length, loaded.do_lower_case)
    choices = choose(devices, cfg.dtype, attention, training=True)
    self.mesh, self.attention, self.step_tokens = choices.mesh, choices.attention, choices.step_tokens
    self.module = Encoder(loaded.config, dtype=choices.compute_dtype, param_dtype=jnp.float32, attention=self.attention)
    self.replicated = NamedSharding(self.mesh, PartitionSpec())
    self.sharded = NamedSharding(self.mesh, PartitionSpec("data"))
    self.optimizer = make_optimizer(cfg)
    # `params` are what the optimiser updates: every weight, or with LoRA only the adapters, the base weights
    # then passed to each step as a frozen argument (never closed over: that would embed 66M constants).
    self.base = None
    trainable = loaded.params
    if cfg.lora_rank:
      self.base = jax.device_put(jax.tree_util.tree_map(jnp.asarray, loaded.params), self.replicated)
      trainable = init_adapters(loaded.params, tuple(cfg.lora_targets), cfg.lora_rank, cfg.seed)
    self.params = jax.device_put(jax.tree_util.tree_map(jnp.asarray, trainable), self.replicated)
    self.opt_state = jax.device_put(self.optimizer.init(self.params), self.replicated)
    self.micro_steps = 0  # forward/backward passes; optimiser updates are micro_steps // grad_accumulation
    self.rng = jax.random.PRNGKey(cfg.seed)
    self._update = jax.jit(self._update_fn, donate_argnums=(0, 1))

  @property
  def step_count(self) -> int:
    """Optimiser updates done (what `steps` counts, with gradient accumulation too)."""
    return self.micro_steps // self.cfg.grad_accumulation

  def embed_rows(self, params, rows: dict[str, jax.Array], rng) -> jax.Array:
    """Packed rows [R, L] -> [R * S, dim] pooled embeddings (float32), rows sharded over the devices; `rng` None:
    deterministic (no dropout)."""

    def per_device(params, input_ids, segment_ids, positions, rng):
      if rng is not None:  # each device's own dropout draws
        rng = jax.random.fold_in(rng, jax.lax.axis_index("data"))
      out = embed_rows(
        self.module,
        self.loaded.pooling,
        params,
        input_ids,
        segment_ids,
        positions,
        num_segments=MAX_SEGMENTS if self.packing else 1,
        step_tokens=self.step_tokens,
        interceptor=self.interceptor,
        dropout_rng=rng,
        unroll_steps=True,
      )["sentence_embedding"]
      return out.reshape(-1, out.shape[-1])  # [r * S, dim]

    sharded = over_rows(per_device, self.mesh, (True, False, False, False, True))
    return sharded(params, rows["input_ids"], rows["segment_ids"], rows["positions"], rng)

  def embed_fields(self, params, inputs: dict[str, Any], rng, deterministic: bool) -> dict[str, jax.Array]:
    """{field: [B, dim]} for each field of the batch (query, positive, negative) in example order."""
    pooled = self.embed_rows(params, inputs["rows"], None if deterministic else rng)
    return {field: pooled[slots] for field, slots in inputs["slots"].items()}

  def model_params(self, params, base):
    """The weights the model computes with: `params`, or base + the LoRA adapters in `params`."""
    return params if base is None else merge(base, params, self.cfg.lora_scale)

  def loss_fn(self, params, inputs: dict[str, Any], rng, deterministic: bool, base=None) -> jax.Array:
    embedded = self.embed_fields(self.model_params(params, base), inputs, rng, deterministic)
    q = embedded["query"]
    if self.cfg.loss == "embedding-mse":
      return jnp.mean(jnp.square(q - inputs["target"]))  # MSELoss to the teacher, as sentence-transformers' recipe
    p, n = embedded["positive"], embedded.get("negative")
    if self.cfg.loss == "margin-mse":
      return margin_mse_loss(q, p, n, inputs["margin"])
    return multiple_negatives_ranking_loss(q, p, n, negative_valid=inputs.get("negative_valid"))

  def _update_fn(self, params, opt_state, inputs, rng, base):
    loss, grads = jax.value_and_grad(self.loss_fn)(params, inputs, rng, not self.cfg.dropout, base)
    updates, new_opt_state = self.optimizer.update(grads, opt_state, params)
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    # A non-finite loss or gradient leaves the weights as they were (and step() refuses to go on).
    keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
    return keep(optax.apply_updates(params, updates), params), keep(new_opt_state, opt_state), loss, finite

  def prepare(self, batch: Sequence[Example]) -> dict[str, Any]:
    """The batch's texts tokenised and packed into one set of rows (a multiple of the device count), with each
    field's slots into the pooled rows, and the loss's other inputs."""
    inputs: dict[str, Any] = {}
    with_negatives = self.with_negatives
    if with_negatives is None:
      with_negatives = self.cfg.loss == "margin-mse" or any(e.negative is not None for e in batch)
    fields = ["query", "positive"] + (["negative"] if with_negatives else [])
    if self.cfg.loss == "embedding-mse":
      fields, with_negatives = ["query"], False
      inputs["target"] = np.stack([e.target for e in batch]).astype(np.float32)
    texts = [getattr(e, field) or "" for field in fields for e in batch]  # no negative: a placeholder, masked
    packed, slots = pack_batch(
      self.tokenizer.encode_batch(texts),
      self.loaded.max_seq_length,
      self.tokenizer.pad_token_id,
      row_multiple=self.mesh.devices.size,
      packed=self.packing,
    )
    inputs["rows"] = {
      "input_ids": packed.input_ids,
      "segment_ids": packed.segment_ids,
      "positions": packed.positions,
    }
    inputs["slots"] = {field: slots[k * len(batch) : (k + 1) * len(batch)] for k, field in enumerate(fields)}
    if with_negatives and self.cfg.loss == "mnrl":
      inputs["negative_valid"] = np.array([e.negative is not None for e in batch])
    if self.cfg.loss == "margin-mse":
      inputs["margin"] = np.array([e.margin for e in batch], np.float32)
    return inputs

  def step(self, batch: Sequence[Example]) -> float:
    # MNRL's in-batch negatives need the whole batch in each loss: the pooled rows are gathered; params and
    # optimiser state are replicated and their gradients all-reduced.
    inputs = self.prepare(batch)
    rows = jax.device_put(inputs.pop("rows"), self.sharded)
    inputs = {**jax.device_put(inputs, self.replicated), "rows": rows}
    step_rng = jax.random.fold_in(self.rng, self.micro_steps)
    self.params, self.opt_state, loss, finite = self._update(self.params, self.opt_state, inputs, step_rng, self.base)
    if not bool(finite):
      raise ValueError(
        f"micro-step {self.micro_steps}: the loss ({float(loss)}) or its gradient is not finite; the weights were "
        "not updated (check the data's margins, the learning rate and the dtype)"
      )
    self.micro_steps += 1
    return float(loss)

  # -- checkpoints

  def save_checkpoint(self, path: str | Path) -> None:
    """params, optimiser state, updates, micro-steps and RNG in one msgpack file, written atomically."""
    path = Path(path)
    state = {
      "params": self.params,
      "opt_state": self.opt_state,
      "step": self.step_count,
      "micro_steps": self.micro_steps,
      "rng": self.rng,
    }
    write_atomic(path, flax.serialization.to_bytes(jax.device_get(state)))

  def load_checkpoint(self, path: str | Path) -> None:
    template = {"params": self.params, "opt_state": self.opt_state, "step": 0, "micro_steps": 0, "rng": self.rng}
    state = flax.serialization.from_bytes(jax.device_get(template), Path(path).read_bytes())
    self.params = jax.device_put(state["params"], self.replicated)
    self.opt_state = jax.device_put(state["opt_state"], self.replicated)
    self.micro_steps, self.rng = int(state["micro_steps"]), jnp.asarray(state["rng"])
    if self.step_count != int(state["step"]):
      raise ValueError(f"{path}: {state['micro_steps']} micro-steps but {state['step']} updates recorded")

  def trained_model(self) -> model_dir.LoadedModel:
    """The trained model, LoRA adapters merged into their kernels."""
    params = jax.device_get(self.model_params(self.params, self.base))
    params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
    return dataclasses.replace(self.loaded, params=params, source=f"{self.loaded.source} (fine-tuned)")


RUN_FILES = ("checkpoint.json", "checkpoint.msgpack", "jax", "sentence-transformers", "adapters")


def run_fingerprint(loaded: model_dir.LoadedModel, model: str, train_data: Path, cfg: TrainConfig) -> dict:
  """What a checkpoint continues: the starting weights, the data and every hyper-parameter."""

  return {
    "model": str(model),
    "weights_sha256": params_sha256(loaded.params),
    "train_data": str(train_data),
    "train_data_sha256": file_sha256(train_data),
    "config": json.loads(json.dumps(dataclasses.asdict(cfg))),  # as read back from checkpoint.json (tuples: lists)
  }


def train(
  model: str,
  train_data: str | Path,
  out_dir: str | Path,
  cfg: TrainConfig,
  checkpoint_every: int = 100,
  show_progress: bool = True,
  overwrite: bool = False,
) -> dict[str, Any]:
  """The `train` command: resumes from OUT/checkpoint.msgpack when it was written by the same run (model,
  weights, data, hyper-parameters; else refused unless `overwrite`); writes OUT/jax and
  OUT/sentence-transformers at the end."""

  positive_int(checkpoint_every, "checkpoint_every")  # before any data is read or model loaded
  out_dir, train_data = Path(out_dir), Path(train_data)
  out_dir.mkdir(parents=True, exist_ok=True)
  examples = read_train_data(train_data, cfg.loss)
  check_can_learn(examples, cfg, train_data)
  loaded = model_dir.load(resolve_model_dir(model))
  return run_training(
    loaded,
    examples,
    out_dir,
    cfg,
    run_fingerprint(loaded, model, train_data, cfg),
    checkpoint_every=checkpoint_every,
    show_progress=show_progress,
    overwrite=overwrite,
  )


def run_training(
  loaded: model_dir.LoadedModel,
  examples: Sequence[Example],
  out_dir: Path,
  cfg: TrainConfig,
  fingerprint: dict,
  checkpoint_every: int = 100,
  show_progress: bool = True,
  overwrite: bool = False,
) -> dict[str, Any]:
  """The loop train and distill share: resume when OUT/checkpoint.json has the same fingerprint, else refuse
  unless `overwrite`; checkpoints every `checkpoint_every` steps; OUT/jax and OUT/sentence-transformers at the
  end (OUT/adapters too with LoRA). `steps` (config, result, checkpoint) counts optimiser updates."""

  checkpoint_every = positive_int(checkpoint_every, "checkpoint_every")
  model = fingerprint["model"]
  # The output-directory policy: never the model's directory or the data's; a directory holding only this
  # run's files resumes; with overwrite the previous run's files go first (its checkpoint is never resumed).
  sources = loaded.source_dirs + ([fingerprint["train_data"]] if fingerprint.get("train_data") else [])
  check_output_dir(out_dir, sources, overwrite, own=RUN_FILES)
  if overwrite:
    clear_dir(out_dir, first=["checkpoint.json", "checkpoint.msgpack"])
  trainer = Trainer(loaded, cfg, with_negatives=any(e.negative is not None for e in examples))
  checkpoint, run_file = out_dir / "checkpoint.msgpack", out_dir / "checkpoint.json"
  if checkpoint.exists() and not run_file.exists():
    raise ValueError(f"{checkpoint} has no checkpoint.json saying which run it belongs to; use --overwrite")
  if checkpoint.exists():
    previous = json.loads(run_file.read_text())
    changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
    if changed:
      raise ValueError(
        f"{checkpoint} belongs to another run ({', '.join(changed)} differ); use another --out, "
        f"or --overwrite to start again"
      )
    trainer.load_checkpoint(checkpoint)
  write_json(run_file, fingerprint)
  bar = progress_bar(show_progress, total=cfg.steps, unit="update", desc="train", initial=trainer.step_count)
  start, first_update, losses = time.perf_counter(), trainer.step_count, []
  data = batches(examples, cfg.batch_size, cfg.seed, trainer.micro_steps)  # one batch per micro-step
  while trainer.step_count < cfg.steps:
    losses.append(trainer.step(next(data)))
    if trainer.micro_steps % cfg.grad_accumulation:
      continue  # mid-accumulation: no update yet
    rate = (trainer.step_count - first_update) / max(time.perf_counter() - start, 1e-9)
    bar.set_postfix_str(f"loss {losses[-1]:.4f}, {rate:.2f} updates/s", refresh=False)
    bar.update(1)
    if trainer.step_count % checkpoint_every == 0 or trainer.step_count == cfg.steps:
      trainer.save_checkpoint(checkpoint)
  bar.close()
  trained = trainer.trained_model()
  if cfg.lora_rank:  # the adapters on their own (small), beside the merged models
    base = {"model": str(model), "weights_sha256": fingerprint["weights_sha256"]}
    save_adapters(
      out_dir / "adapters", jax.device_get(trainer.params), cfg.lora_rank, cfg.lora_scale * cfg.lora_rank, base
    )
  model_dir.save_jax_dir(trained, out_dir / "jax")
  model_dir.export_sentence_transformers_dir(trained, out_dir / "sentence-transformers")
  return {
    "steps": trainer.step_count,
    "last_loss": losses[-1] if losses else None,
    "micro_steps": trainer.micro_steps,
    "seconds_per_step": (time.perf_counter() - start) / max(1, trainer.step_count - first_update),
    "out": str(out_dir),
  }
