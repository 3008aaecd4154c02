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

from distilbert_jax.model.invariant import frame_of, frame_sizes, isolated, over_texts, row_sum, text_spans

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


def _sums_per_text(x: Array, segment_ids: Array, num_segments: int) -> Array:
  """[B, T, D] -> [B, S, D]: each text's sum over its own frame (`invariant.over_texts`), one compiled [F, D] sum
  per frame size: the bits depend on the text alone, wherever its row puts it."""
  sizes = frame_sizes(x.shape[1])
  sum_frame = isolated(lambda tokens: tokens.sum(0))

  def text(frame, out, row, start, length, segment):
    tokens, _, _ = frame_of(x, row, start, length, frame)
    return out.at[row, segment - 1].set(sum_frame(tokens), mode="drop")

  out = jnp.zeros((x.shape[0], num_segments, x.shape[-1]), jnp.float32)
  return over_texts(text, out, text_spans(segment_ids), sizes)


def pool(
  token_embeddings: Array,
  segment_ids: Array,
  positions: Array,
  num_segments: int,
  config: PoolingConfig,
  invariant: bool = False,
) -> Array:
  """[B, T, D] token embeddings -> [B, num_segments, D * len(modes)] sentence embeddings, float32.

  `invariant` (deterministic encoding): sums taken per text in its own frame (`_sums_per_text`) and normalisation
  in a fixed order, so that they do not depend on the row; otherwise one matmul over the row."""
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
      if invariant:
        total = _sums_per_text(x, segment_ids, num_segments)
      else:
        total = jnp.einsum("bst,btd->bsd", member, x, precision=hp)  # [B, S, D]
      denom = jnp.maximum(count, 1e-9)
      outputs.append(total * (1.0 / (denom if mode == "mean" else jnp.sqrt(denom))))
  pooled = jnp.concatenate(outputs, axis=-1) if len(outputs) > 1 else outputs[0]
  return normalize(pooled, invariant) if config.normalize else pooled


def normalize(x: Array, invariant: bool = False) -> Array:
  """L2 normalisation as torch.nn.functional.normalize (eps 1e-12): x / max(|x|, 1e-12), with the norm taken as
  sqrt(max(|x|^2, 1e-24)), the same value, so that the gradient at a zero vector (an empty packed slot) is 0
  rather than NaN (jnp.linalg.norm's gradient at 0 is 0/0). A row whose squared norm overflows float32 (any
  entry past ~1.8e19) is scaled by its largest magnitude first, so every finite vector gets its direction; other
  rows take the plain formula, bit for bit. `invariant`: the squares summed in a fixed order (`invariant.row_sum`)
  and the divisions written as reciprocals, so a row's bits do not depend on the other rows (deterministic path)."""
  x = x.astype(jnp.float32)
  squares = row_sum if invariant else lambda y: jnp.sum(y, axis=-1, keepdims=True)
  # The scale is a constant to the gradient (the direction does not depend on it), and 1.0 for every row that does
  # not overflow: no branch whose gradient could be NaN, and x / 1.0 is x.
  overflow = jnp.isinf(squares(jnp.square(x)))
  scale = jax.lax.stop_gradient(jnp.where(overflow, jnp.max(jnp.abs(x), axis=-1, keepdims=True), 1.0))
  x = x * (1.0 / scale) if invariant else x / scale
  norm = jnp.sqrt(jnp.maximum(squares(jnp.square(x)), 1e-24))
  return x * (1.0 / norm) if invariant else x / norm
