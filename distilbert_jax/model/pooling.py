"""Pooling token embeddings into sentence embeddings, as sentence-transformers' `Pooling` and `Normalize`.

Pooling works per segment so that packed rows (several texts in one row) and plain padded rows share one code
path: segment s (1-based) of row b becomes output [b, s-1]. A plain batch is the case of one segment per row.
Everything here runs in float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from distilbert_jax.model.tiles import map_isolated, over_tiles

Array = jax.Array

# sentence-transformers' legacy boolean keys, in the order it concatenates the outputs.
_LEGACY_KEYS = {
  "pooling_mode_cls_token": "cls",
  "pooling_mode_max_tokens": "max",
  "pooling_mode_mean_tokens": "mean",
  "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
  "pooling_mode_weightedmean_tokens": "weightedmean",
  "pooling_mode_lasttoken": "lasttoken",
}
SUPPORTED_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")


@dataclasses.dataclass(frozen=True)
class PoolingConfig:
  modes: tuple[str, ...] = ("mean",)
  normalize: bool = False

  def __post_init__(self):
    unsupported = [m for m in self.modes if m not in SUPPORTED_MODES]
    if unsupported or not self.modes:
      raise ValueError(f"pooling modes {unsupported or '()'} are not supported; supported: {SUPPORTED_MODES}")

  @classmethod
  def from_sentence_transformers_config(
    cls, pooling: dict[str, Any], normalize: bool, source: str = "1_Pooling/config.json"
  ) -> PoolingConfig:
    if "pooling_mode" in pooling:
      mode = pooling["pooling_mode"]
      modes = (mode,) if isinstance(mode, str) else tuple(mode)
    else:
      modes = tuple(name for key, name in _LEGACY_KEYS.items() if pooling.get(key))
    if not pooling.get("include_prompt", True):
      raise ValueError(f"{source}: include_prompt=false is not supported")
    try:
      return cls(modes=modes, normalize=normalize)
    except ValueError as e:
      raise ValueError(f"{source}: {e}") from None

  def to_sentence_transformers_config(self, dim: int) -> dict[str, Any]:
    out: dict[str, Any] = {"word_embedding_dimension": dim}
    out.update({key: name in self.modes for key, name in _LEGACY_KEYS.items()})
    out["include_prompt"] = True
    return out

  def output_dim(self, hidden_size: int) -> int:
    return hidden_size * len(self.modes)


def _sums_in_blocks(x: Array, segment_ids: Array, num_segments: int, block: int) -> Array:
  """[B, T, D] -> [B, S, D]: each segment's sum, taken a block of `block` tokens at a time and then block after
  block in order. Every text must start at a multiple of `block` (so a block holds at most one text): a text's sum
  then has the same bits wherever its row puts it, however wide the row is and however many texts it holds."""
  batch, length, dim = x.shape
  blocks = -(-length // block)
  pad = blocks * block - length
  x = jnp.pad(jnp.where(segment_ids[..., None] > 0, x, 0.0), [(0, 0), (0, pad), (0, 0)])
  # One compiled [block, D] sum per block (lax.map): its order cannot depend on how many blocks there are.
  block_sums = map_isolated(lambda b: b.sum(0), x.reshape(batch * blocks, block, dim))
  block_sums = block_sums.reshape(batch, blocks, dim)
  owner = jnp.pad(segment_ids, [(0, 0), (0, pad)]).reshape(batch, blocks, block).max(-1)  # [B, N]
  seg = jnp.arange(1, num_segments + 1)
  total = jnp.zeros((batch, num_segments, dim), jnp.float32)
  for n in range(blocks):  # a chain of adds: XLA does not reorder it, and other texts' blocks add exact zeros
    total = total + jnp.where((owner[:, n, None] == seg)[..., None], block_sums[:, None, n], 0.0)
  return total


def pool(
  token_embeddings: Array,
  segment_ids: Array,
  positions: Array,
  num_segments: int,
  config: PoolingConfig,
  block: int | None = None,
) -> Array:
  """[B, T, D] token embeddings -> [B, num_segments, D * len(modes)] sentence embeddings, float32.

  `block`: texts start at multiples of it (deterministic encoding), and sums are taken in blocks of it so that
  they do not depend on the row (`_sums_in_blocks`); None: one matmul over the row."""
  x = token_embeddings.astype(jnp.float32)  # [B, T, D]
  seg = jnp.arange(1, num_segments + 1)
  member = (segment_ids[:, None, :] == seg[None, :, None]).astype(jnp.float32)  # [B, S, T]
  count = member.sum(-1)[..., None]  # [B, S, 1]
  hp = jax.lax.Precision.HIGHEST
  outputs = []
  for mode in config.modes:
    if mode == "cls":
      first = member * (positions[:, None, :] == 0)  # [B, S, T]: the segment's first token
      outputs.append(jnp.einsum("bst,btd->bsd", first, x, precision=hp))
    elif mode == "max":
      batch, length, dim = x.shape
      # segment_max over flattened rows avoids a [B, S, T, D] intermediate; padding goes to a dropped bucket.
      flat_ids = jnp.where(
        segment_ids > 0, jnp.arange(batch)[:, None] * num_segments + segment_ids - 1, batch * num_segments
      ).reshape(-1)
      best = jax.ops.segment_max(x.reshape(-1, dim), flat_ids, num_segments=batch * num_segments + 1)
      outputs.append(best[:-1].reshape(batch, num_segments, dim))
    else:
      if block:
        total = _sums_in_blocks(x, segment_ids, num_segments, block)
      else:
        total = jnp.einsum("bst,btd->bsd", member, x, precision=hp)  # [B, S, D]
      denom = jnp.maximum(count, 1e-9)
      outputs.append(total / (denom if mode == "mean" else jnp.sqrt(denom)))
  pooled = jnp.concatenate(outputs, axis=-1) if len(outputs) > 1 else outputs[0]
  if config.normalize:  # on the deterministic path in fixed tiles of embeddings, as the per-token layers
    pooled = over_tiles(normalize, pooled, block) if block else normalize(pooled)
  return pooled


def normalize(x: Array) -> Array:
  """L2 normalisation as torch.nn.functional.normalize (eps 1e-12): x / max(|x|, 1e-12), with the norm taken as
  sqrt(max(|x|^2, 1e-24)), the same value, so that the gradient at a zero vector (an empty packed slot) is 0
  rather than NaN (jnp.linalg.norm's gradient at 0 is 0/0). A row whose squared norm overflows float32 (any
  entry past ~1.8e19) is scaled by its largest magnitude first, so every finite vector gets its direction; other
  rows take the plain formula, bit for bit."""
  x = x.astype(jnp.float32)
  # The scale is a constant to the gradient (the direction does not depend on it), and 1.0 for every row that does
  # not overflow: no branch whose gradient could be NaN, and x / 1.0 is x.
  overflow = jnp.isinf(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  scale = jax.lax.stop_gradient(jnp.where(overflow, jnp.max(jnp.abs(x), axis=-1, keepdims=True), 1.0))
  x = x / scale
  return x / jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), 1e-24))
