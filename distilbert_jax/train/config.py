"""`TrainConfig`: msmarco-distilbert-dot-v5's recipe as defaults, every field checked at construction.

Defaults follow sentence-transformers: lr 2e-5, weight decay 0.01 (not on biases and LayerNorm, as the HF
Trainer), clipping at global norm 1.0, AdamW betas (0.9, 0.999), eps 1e-8, batch 64, linear warmup then decay.
"""

from __future__ import annotations

import dataclasses
import math

from distilbert_jax.encode.edge import DTYPES
from distilbert_jax.train.lora import check_targets

LOSSES = ("margin-mse", "mnrl", "embedding-mse")  # embedding-mse: distillation to a teacher's embeddings


TRAIN_LOSSES = ("margin-mse", "mnrl")  # what `train` takes (distill picks its own from the data)


TRAIN_DTYPES = ("float32", "bfloat16")


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
    for name in ("lr", "max_grad_norm", "weight_decay", "adam_eps") + (("lora_alpha",) if self.lora_alpha else ()):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not self.lr > 0 or not self.max_grad_norm > 0 or self.weight_decay < 0 or not self.adam_eps > 0:
      raise ValueError(
        f"lr ({self.lr}) and max_grad_norm ({self.max_grad_norm}) must be > 0, weight_decay ({self.weight_decay}) >= 0"
      )
    if self.dtype not in DTYPES:
      raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
    if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
      raise ValueError(f"lora_rank must be 0 (off) or a positive integer, got {self.lora_rank!r}")
    if self.lora_rank:
      check_targets(tuple(self.lora_targets))
