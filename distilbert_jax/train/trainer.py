"""Fine-tuning with msmarco-distilbert-dot-v5's recipe: MarginMSE (or MultipleNegativesRanking), optax AdamW with
gradient clipping, linear warmup then linear decay, dropout on, data-parallel over devices.

Defaults follow sentence-transformers: lr 2e-5, weight decay 0.01 (not on biases and LayerNorm, as the HF
Trainer), clipping at global norm 1.0, AdamW betas (0.9, 0.999), eps 1e-8. The schedule equals transformers'
`get_linear_schedule_with_warmup`: step s uses lr * s / warmup during warmup, then decays linearly to 0.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from distilbert_jax.checkpoint import model_dir
from distilbert_jax.core.checks import positive_int
from distilbert_jax.core.devices import data_mesh
from distilbert_jax.core.files import write_atomic
from distilbert_jax.encode.batching import bucket_for, bucket_lengths
from distilbert_jax.encode.sentence_transformer import DTYPES
from distilbert_jax.model.attention import default_attention
from distilbert_jax.model.pooling import normalize, pool
from distilbert_jax.model.tokenizer import WordPieceTokenizer
from distilbert_jax.model.transformer import Encoder
from distilbert_jax.train.lora import check_targets, init_adapters, merge, save_adapters

LOSSES = ("margin-mse", "mnrl", "embedding-mse")  # embedding-mse: distillation to a teacher's embeddings
MNRL_SCALE = 20.0  # sentence-transformers' default (temperature 0.05)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  loss: str = "margin-mse"
  steps: int = 1000
  batch_size: int = 64
  lr: float = 2e-5
  weight_decay: float = 0.01
  warmup_steps: int = 100
  max_grad_norm: float = 1.0
  adam_eps: float = 1e-8
  grad_accumulation: int = 1  # micro-batches of batch_size per optimiser update; `steps` counts updates
  dtype: str = "float32"
  dropout: bool = True
  seed: int = 0
  lora_rank: int = 0  # > 0: train low-rank adapters only (lora.py); the base weights stay bitwise unchanged
  lora_alpha: float | None = None  # adapter scale alpha / rank; default alpha = rank (scale 1)
  lora_targets: tuple[str, ...] = ("q_lin", "v_lin")

  @property
  def lora_scale(self) -> float:
    return (self.lora_alpha if self.lora_alpha is not None else self.lora_rank) / max(1, self.lora_rank)

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"loss {self.loss!r} is not one of {LOSSES}")
    for name in ("steps", "batch_size", "grad_accumulation"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
      raise ValueError(f"warmup_steps must be 0 or more, got {self.warmup_steps!r}")
    if not self.lr > 0 or not self.max_grad_norm > 0 or self.weight_decay < 0:
      raise ValueError(
        f"lr ({self.lr}) and max_grad_norm ({self.max_grad_norm}) must be > 0, weight_decay ({self.weight_decay}) >= 0"
      )
    if self.dtype not in DTYPES:
      raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
    if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
      raise ValueError(f"lora_rank must be 0 (off) or a positive integer, got {self.lora_rank!r}")
    if self.lora_rank:
      check_targets(tuple(self.lora_targets))


# ----------------------------------------------------------------------------------------------- losses


def margin_mse_loss(query: jax.Array, positive: jax.Array, negative: jax.Array, margin: jax.Array) -> jax.Array:
  """MSE between the student's dot-score margin (q.p - q.n) and the teacher's margin, as MarginMSELoss."""
  predicted = jnp.sum(query * positive, -1) - jnp.sum(query * negative, -1)  # [B]
  return jnp.mean(jnp.square(predicted - margin))


def multiple_negatives_ranking_loss(
  query: jax.Array,
  positive: jax.Array,
  negative: jax.Array | None = None,
  scale: float = MNRL_SCALE,
  negative_valid: jax.Array | None = None,
) -> jax.Array:
  """In-batch negatives: cross-entropy of scale * cos_sim(query, candidates) with the query's own positive as
  the target; candidates are all positives, then all negatives when given (sentence-transformers' default).
  `negative_valid` [B]: which rows brought a negative (rows without one add no candidate)."""
  candidates = positive if negative is None else jnp.concatenate([positive, negative], 0)  # [C, D]
  logits = scale * jnp.einsum("qd,cd->qc", normalize(query), normalize(candidates), precision=jax.lax.Precision.HIGHEST)
  if negative is not None and negative_valid is not None:
    valid = jnp.concatenate([jnp.ones(positive.shape[0], bool), negative_valid.astype(bool)])  # [C]
    logits = jnp.where(valid[None, :], logits, -jnp.inf)
  labels = jnp.arange(query.shape[0])
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


# ----------------------------------------------------------------------------------------------- optimiser


def linear_warmup_decay(lr: float, warmup_steps: int, total_steps: int):
  """transformers' get_linear_schedule_with_warmup as an optax schedule (step 0 uses lr 0)."""

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = step / max(1, warmup_steps)
    decay = jnp.maximum(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return lr * jnp.where(step < warmup_steps, warm, decay)

  return schedule


def decay_mask(params: dict) -> dict:
  """Weight decay on matrices and embeddings, not on biases and LayerNorm scales (as the HF Trainer)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key not in ("bias", "scale"), params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  opt = optax.chain(
    optax.clip_by_global_norm(cfg.max_grad_norm),
    optax.adamw(
      linear_warmup_decay(cfg.lr, cfg.warmup_steps, cfg.steps),
      b1=0.9,
      b2=0.999,
      eps=cfg.adam_eps,
      weight_decay=cfg.weight_decay,
      mask=decay_mask,
    ),
  )
  return optax.MultiSteps(opt, every_k_schedule=cfg.grad_accumulation) if cfg.grad_accumulation > 1 else opt


# ----------------------------------------------------------------------------------------------- data


@dataclasses.dataclass
class Example:
  query: str  # embedding-mse: the text
  positive: str | None = None
  negative: str | None = None
  margin: float | None = None
  target: np.ndarray | None = None  # embedding-mse: the teacher's embedding of `query`


def read_train_data(path: str | Path, loss: str) -> list[Example]:
  """JSONL: {"query", "positive"} for mnrl (optional "negative"); plus "negative" and "margin" for margin-mse."""
  path = Path(path)
  need = ("query", "positive", "negative", "margin") if loss == "margin-mse" else ("query", "positive")
  examples = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: invalid JSON: {e.msg}") from None
      missing = [k for k in need if k not in row] if isinstance(row, dict) else list(need)
      if missing:
        raise ValueError(f"{path}:{line_no}: missing {', '.join(missing)} (needed for {loss})")
      if loss == "margin-mse" and not isinstance(row["margin"], (int, float)):
        raise ValueError(f"{path}:{line_no}: margin must be a number, got {row['margin']!r}")
      for key in ("query", "positive", "negative"):
        if key in row and not isinstance(row[key], str):
          raise ValueError(f"{path}:{line_no}: {key} must be a string")
      examples.append(
        Example(row["query"], row["positive"], row.get("negative"), float(row["margin"]) if "margin" in row else None)
      )
  if not examples:
    raise ValueError(f"{path}: no training examples")
  return examples


def check_can_learn(examples: Sequence[Example], cfg: TrainConfig, path: str | Path) -> None:
  """MNRL ranks each positive against the other rows' positives (and negatives): with one row and no negative
  the only candidate is the answer, the loss is exactly 0 and nothing is learned."""
  if cfg.loss == "mnrl" and cfg.batch_size == 1 and not any(e.negative is not None for e in examples):
    raise ValueError(
      f"{path}: mnrl with batch size 1 and no negatives cannot learn (the loss is always 0): use "
      f'a larger --batch-size or add "negative" texts'
    )


def batches(examples: Sequence[Example], batch_size: int, seed: int, start_step: int = 0) -> Iterator[list[Example]]:
  """Shuffled batches, a fresh permutation per epoch from (seed, epoch): step N's batch is the same whether the
  run started at 0 or resumed at N."""
  per_epoch = max(1, len(examples) // batch_size)
  step = start_step
  while True:
    epoch, offset = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(examples))
    yield [examples[i] for i in order[offset * batch_size : (offset + 1) * batch_size]]
    step += 1


def tokenize_padded(
  tokenizer: WordPieceTokenizer, texts: Sequence[str], max_seq_length: int
) -> tuple[np.ndarray, np.ndarray]:
  """[N, L] ids and mask, L the bucket of the longest text (bounded compiles)."""
  ids = tokenizer.encode_batch(list(texts))
  width = bucket_for(max(len(t) for t in ids), bucket_lengths(max_seq_length))
  out = np.full((len(ids), width), tokenizer.pad_token_id, np.int32)
  mask = np.zeros((len(ids), width), np.int32)
  for i, t in enumerate(ids):
    out[i, : len(t)] = t
    mask[i, : len(t)] = 1
  return out, mask


# ----------------------------------------------------------------------------------------------- trainer


class Trainer:
  """Holds params, optimiser state, step and RNG; `step(batch)` is one jit-compiled, data-parallel update."""

  def __init__(
    self,
    loaded: model_dir.LoadedModel,
    cfg: TrainConfig,
    devices: Sequence[Any] | None = None,
    with_negatives: bool | None = None,
  ):
    """`with_negatives`: every batch carries a negative column (rows without one are masked out); default: a
    batch does when any of its rows has a negative (train() decides once for the file, so shapes stay fixed)."""
    self.loaded, self.cfg = loaded, cfg
    self.with_negatives = with_negatives
    self.tokenizer = WordPieceTokenizer.from_dir(loaded.tokenizer_dir, loaded.max_seq_length, loaded.do_lower_case)
    self.mesh = data_mesh(devices)
    # The platform picks the attention implementation here, at the edge (as the encoder does).
    platform = self.mesh.devices.flat[0].platform
    self.module = Encoder(
      loaded.config, dtype=DTYPES[cfg.dtype], param_dtype=jnp.float32, attention=default_attention(platform)
    )
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
    self.step_count = 0
    self.rng = jax.random.PRNGKey(cfg.seed)
    self._update = jax.jit(self._update_fn, donate_argnums=(0, 1))

  def embed(self, params, ids, mask, rng, deterministic: bool) -> jax.Array:
    tokens = self.module.apply(
      {"params": params}, ids, mask, deterministic=deterministic, rngs=None if deterministic else {"dropout": rng}
    )["token_embeddings"]
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    return pool(tokens, mask, positions, 1, self.loaded.pooling)[:, 0]  # [N, dim] float32

  def model_params(self, params, base):
    """The weights the model computes with: `params`, or base + the LoRA adapters in `params`."""
    return params if base is None else merge(base, params, self.cfg.lora_scale)

  def loss_fn(self, params, inputs: dict[str, jax.Array], rng, deterministic: bool, base=None) -> jax.Array:
    params = self.model_params(params, base)
    keys = jax.random.split(rng, 3)
    q = self.embed(params, inputs["query_ids"], inputs["query_mask"], keys[0], deterministic)
    if self.cfg.loss == "embedding-mse":
      return jnp.mean(jnp.square(q - inputs["target"]))  # MSELoss to the teacher, as sentence-transformers' recipe
    p = self.embed(params, inputs["positive_ids"], inputs["positive_mask"], keys[1], deterministic)
    n = (
      self.embed(params, inputs["negative_ids"], inputs["negative_mask"], keys[2], deterministic)
      if "negative_ids" in inputs
      else None
    )
    if self.cfg.loss == "margin-mse":
      return margin_mse_loss(q, p, n, inputs["margin"])
    return multiple_negatives_ranking_loss(q, p, n, negative_valid=inputs.get("negative_valid"))

  def _update_fn(self, params, opt_state, inputs, rng, base):
    loss, grads = jax.value_and_grad(self.loss_fn)(params, inputs, rng, not self.cfg.dropout, base)
    updates, opt_state = self.optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def prepare(self, batch: Sequence[Example]) -> dict[str, np.ndarray]:
    n_dev = self.mesh.devices.size
    if len(batch) % n_dev:
      raise ValueError(f"batch of {len(batch)} does not split over {n_dev} devices")
    inputs = {}
    with_negatives = self.with_negatives
    if with_negatives is None:
      with_negatives = self.cfg.loss == "margin-mse" or any(e.negative is not None for e in batch)
    fields = ["query", "positive"] + (["negative"] if with_negatives else [])
    if self.cfg.loss == "embedding-mse":
      fields, with_negatives = ["query"], False
      inputs["target"] = np.stack([e.target for e in batch]).astype(np.float32)
    for field in fields:
      texts = [getattr(e, field) or "" for e in batch]  # a row without a negative: a placeholder, masked below
      ids, mask = tokenize_padded(self.tokenizer, texts, self.loaded.max_seq_length)
      inputs[f"{field}_ids"], inputs[f"{field}_mask"] = ids, mask
    if with_negatives and self.cfg.loss == "mnrl":
      inputs["negative_valid"] = np.array([e.negative is not None for e in batch])
    if self.cfg.loss == "margin-mse":
      inputs["margin"] = np.array([e.margin for e in batch], np.float32)
    return inputs

  def step(self, batch: Sequence[Example]) -> float:
    # MNRL's in-batch negatives need the whole batch in each loss: XLA inserts the all-gather; params and
    # optimiser state are replicated and their gradients all-reduced.
    inputs = jax.device_put(self.prepare(batch), self.sharded)
    step_rng = jax.random.fold_in(self.rng, self.step_count)
    self.params, self.opt_state, loss = self._update(self.params, self.opt_state, inputs, step_rng, self.base)
    self.step_count += 1
    return float(loss)

  # -- checkpoints

  def save_checkpoint(self, path: str | Path) -> None:
    """params, optimiser state, step and RNG in one msgpack file, written atomically."""
    path = Path(path)
    state = {"params": self.params, "opt_state": self.opt_state, "step": self.step_count, "rng": self.rng}
    write_atomic(path, flax.serialization.to_bytes(jax.device_get(state)))

  def load_checkpoint(self, path: str | Path) -> None:
    template = {"params": self.params, "opt_state": self.opt_state, "step": 0, "rng": self.rng}
    state = flax.serialization.from_bytes(jax.device_get(template), Path(path).read_bytes())
    self.params = jax.device_put(state["params"], self.replicated)
    self.opt_state = jax.device_put(state["opt_state"], self.replicated)
    self.step_count, self.rng = int(state["step"]), jnp.asarray(state["rng"])

  def trained_model(self) -> model_dir.LoadedModel:
    """The trained model, LoRA adapters merged into their kernels."""
    params = jax.device_get(self.model_params(self.params, self.base))
    params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
    return dataclasses.replace(self.loaded, params=params, source=f"{self.loaded.source} (fine-tuned)")


def run_fingerprint(loaded: model_dir.LoadedModel, model: str, train_data: Path, cfg: TrainConfig) -> dict:
  """What a checkpoint continues: the starting weights, the data and every hyper-parameter."""
  from distilbert_jax.jobs.encode_corpus import file_sha256, params_sha256

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
  from distilbert_jax.checkpoint.hub import resolve_model_dir

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
  end (OUT/adapters too with LoRA)."""
  import time

  checkpoint_every = positive_int(checkpoint_every, "checkpoint_every")
  model = fingerprint["model"]
  trainer = Trainer(loaded, cfg, with_negatives=any(e.negative is not None for e in examples))
  checkpoint, run_file = out_dir / "checkpoint.msgpack", out_dir / "checkpoint.json"
  if checkpoint.exists() and not overwrite:
    previous = json.loads(run_file.read_text()) if run_file.exists() else {}
    changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
    if changed:
      raise ValueError(
        f"{checkpoint} belongs to another run ({', '.join(changed)} differ); use another --out, "
        f"or --overwrite to start again"
      )
    trainer.load_checkpoint(checkpoint)
  write_atomic(run_file, (json.dumps(fingerprint, indent=1) + "\n").encode())
  bar = None
  if show_progress:
    from tqdm.auto import tqdm

    bar = tqdm(
      total=cfg.steps * cfg.grad_accumulation, initial=trainer.step_count, unit="step", desc="train", dynamic_ncols=True
    )
  start, first_step, losses = time.perf_counter(), trainer.step_count, []
  data = batches(examples, cfg.batch_size, cfg.seed, trainer.step_count)
  while trainer.step_count < cfg.steps * cfg.grad_accumulation:
    losses.append(trainer.step(next(data)))
    if bar is not None:
      rate = (trainer.step_count - first_step) / max(time.perf_counter() - start, 1e-9)
      bar.set_postfix_str(f"loss {losses[-1]:.4f}, {rate:.2f} steps/s", refresh=False)
      bar.update(1)
    if trainer.step_count % checkpoint_every == 0 or trainer.step_count == cfg.steps * cfg.grad_accumulation:
      trainer.save_checkpoint(checkpoint)
  if bar is not None:
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
    "seconds_per_step": (time.perf_counter() - start) / max(1, len(losses)),
    "out": str(out_dir),
  }
