"""optax AdamW with gradient clipping and transformers' linear warmup-then-decay schedule: step s uses
lr * s / warmup during warmup, then decays linearly to 0 (`get_linear_schedule_with_warmup`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from distilbert_jax.train.config import TrainConfig


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
