"""Attention implementations, chosen by name by the caller; the model never looks at the platform.

Every implementation computes the same thing: softmax(q k^T / sqrt(K) + segment mask) v, where a token attends only
to tokens of its own segment (`segment_ids` [B, T], 0 = padding). They differ in how:

  dense             the reference: [B, H, T, S] logits in float32; returns the weights; dropout.
  per_example       dense one example at a time (lax.map): on XLA:CPU the batched [B, H, T, S] tensor leaves the
                    caches and runs about 3x slower; returns the weights; dropout.
  xla               jax.nn.dot_product_attention(implementation="xla"), segment mask as a boolean mask.
  cudnn             jax.nn.dot_product_attention(implementation="cudnn"): cuDNN's fused (flash) kernel, GPU only,
                    float16/bfloat16.
  splash            TPU splash attention (Pallas) with segment ids, TPU only.
  splash_interpret  the same kernel run by the Pallas interpreter: any platform, slow; for tests.
  frames            batch-invariant (deterministic encoding): each text in its own frame (its tokens from its first,
                    its length rounded up to a multiple of invariant.FRAME, one compiled body per frame size), so
                    every product and sum has a shape and an order that depend on the text alone, not on its row,
                    its neighbours or the row's width. Any layout is computed correctly.

The fused ones have no attention dropout and do not return weights; asking them for either is an error, never a
silent switch to another algorithm. `DEFAULT_BY_PLATFORM` is the one place a platform picks a default (used by the
encoder and trainer, at the edge).

Axis letters: B batch, T query tokens, S key tokens, H heads, K head width.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from distilbert_jax.model.dropout import dropout
from distilbert_jax.model.invariant import frame_of, frame_sizes, isolated, over_texts, text_spans

Array = jax.Array

# Measured: per_example is ~3x dense on XLA:CPU (benchmarks/encode_throughput.py history). GPU/TPU keep dense
# until benchmarks/gpu_check.py measures the fused kernels on the device (not measured yet).
DEFAULT_BY_PLATFORM = {"cpu": "per_example", "gpu": "dense", "tpu": "dense"}
DETERMINISTIC_ATTENTION = "frames"  # the implementation whose results do not depend on the row (batch-invariant)
WITH_WEIGHTS = ("dense", "per_example")
WITH_DROPOUT = ("dense", "per_example")


def default_attention(platform: str) -> str:
  return DEFAULT_BY_PLATFORM.get(platform, "dense")


def matmul_precision(dtype) -> jax.lax.Precision:
  # TPU/GPU default to bf16/TF32 passes for float32 matmuls; parity in float32 needs the full-precision path.
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else jax.lax.Precision.DEFAULT


def segment_mask(segment_ids: Array) -> Array:
  """[B, T] -> [B, T, S] bool: same segment and not padding. Padding queries see nothing (their rows are unused)."""
  return (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)


def _weights(q: Array, k: Array, allowed: Array, dtype) -> Array:
  """[..., T, H, K] x2, [..., T, S] -> softmax weights [..., H, T, S], float32."""
  logits = jnp.einsum(
    "...thk,...shk->...hts", q, k, precision=matmul_precision(dtype), preferred_element_type=jnp.float32
  ) / math.sqrt(q.shape[-1])
  logits = jnp.where(allowed[..., None, :, :], logits, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits, axis=-1)


def _mix(weights: Array, v: Array, dtype) -> Array:
  """[..., H, T, S] x [..., S, H, K] -> [..., T, H, K] in dtype."""
  return jnp.einsum(
    "...hts,...shk->...thk",
    weights.astype(dtype),
    v,
    precision=matmul_precision(dtype),
    preferred_element_type=jnp.float32,
  ).astype(dtype)


def dense(q, k, v, segment_ids, *, dtype, dropout_rate=0.0, dropout_rng=None, return_weights=False, **_):
  weights = _weights(q, k, segment_mask(segment_ids), dtype)  # [B, H, T, S]
  return _mix(dropout(weights, dropout_rate, dropout_rng), v, dtype), weights if return_weights else None


def per_example(q, k, v, segment_ids, *, dtype, dropout_rate=0.0, dropout_rng=None, return_weights=False, **_):
  batch = q.shape[0]
  keys = jax.random.split(dropout_rng, batch) if dropout_rate else jnp.zeros((batch, 2), jnp.uint32)

  def one(args):
    q, k, v, seg, key = args
    weights = _weights(q, k, segment_mask(seg[None])[0], dtype)  # [H, T, S]
    return _mix(dropout(weights, dropout_rate, key), v, dtype), (weights if return_weights else None)

  return jax.lax.map(one, (q, k, v, segment_ids, keys))


def _frame_attention(q, k, v, valid, *, dtype):
  """One text's frame: q, k, v [F, H, K] (zeros past the text), valid [F]. -> [F, H, K] float32."""
  logits = jnp.einsum("fhk,ghk->hfg", q, k, precision=matmul_precision(dtype), preferred_element_type=jnp.float32) * (
    1.0 / math.sqrt(q.shape[-1])
  )
  logits = jnp.where(valid[None, None, :], logits, -jnp.inf)  # [H, F, G]
  p = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))  # every text has a token: the max is finite
  inverse = 1.0 / p.sum(-1)  # [H, F]; its reciprocal written out (XLA rewrites x / broadcast(s) in some programs)
  context = jnp.einsum(
    "hfg,ghk->fhk", p.astype(dtype), v, precision=matmul_precision(dtype), preferred_element_type=jnp.float32
  )
  return context * jnp.swapaxes(inverse, 0, 1)[..., None]


def frames(q, k, v, segment_ids, *, dtype, **_):
  """Each text in its own frame (invariant.over_texts): its bits depend on the text alone. Padding tokens get 0."""
  sizes = frame_sizes(q.shape[1])  # up to the row's width: the frames a text of this row can need
  attend_one = isolated(functools.partial(_frame_attention, dtype=dtype))

  def text(frame, out, row, start, length, _segment):
    (q_t, valid, write), (k_t, _, _), (v_t, _, _) = (frame_of(x, row, start, length, frame) for x in (q, k, v))
    return out.at[row, write].set(attend_one(q_t, k_t, v_t, valid).astype(dtype).astype(jnp.float32), mode="drop")

  # The results gather in float32, cast once at the end (the same values): XLA:CPU scatters into a bfloat16 array by
  # converting all of it to float32 and back, and did so for every text (17% of bfloat16 encoding, profiled).
  out = over_texts(text, jnp.zeros(q.shape, jnp.float32), text_spans(segment_ids), sizes)
  return out.astype(dtype), None


def _dot_product_attention(implementation, q, k, v, segment_ids, *, dtype, dropout_rate=0.0, **_):
  mask = segment_mask(segment_ids)[:, None]  # [B, 1, T, S]
  if jnp.dtype(dtype) == jnp.float32:  # jax.nn.dot_product_attention takes no precision argument
    with jax.default_matmul_precision("highest"):
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
  else:
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
  return out.astype(dtype), None


SPLASH_TILE = 128  # the kernel's lane width: sequence tiles must be multiples of it


def _splash(interpret: bool, q, k, v, segment_ids, *, dtype, **_):
  from jax.experimental.pallas.ops.tpu import splash_attention as sa

  batch, length, heads, width = q.shape
  # Pad the sequence to whole tiles with padding tokens (segment 0), which no real token attends to; cut after.
  padded = -(-length // SPLASH_TILE) * SPLASH_TILE
  pad = lambda x: jnp.pad(x, [(0, 0), (0, padded - length)] + [(0, 0)] * (x.ndim - 2))
  tile = next(b for b in (512, 256, 128) if padded % b == 0)
  blocks = sa.BlockSizes(
    block_q=tile, block_kv=tile, block_kv_compute=tile, block_q_dkv=tile, block_kv_dkv=tile,
    block_kv_dkv_compute=tile, block_q_dq=tile, block_kv_dq=tile,
  )  # fmt: skip
  kernel = sa.make_splash_mha(
    sa.MultiHeadMask([sa.FullMask((padded, padded))] * heads),
    head_shards=1,
    q_seq_shards=1,
    block_sizes=blocks,
    interpret=interpret,
  )
  to_heads = lambda x: jnp.swapaxes(x, 1, 2)  # [B, T, H, K] <-> [B, H, T, K], the kernel's layout
  scale = np.asarray(1.0 / math.sqrt(width), q.dtype)
  # Splash gives padding (segment 0) a segment of its own; those rows are never read.
  out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=sa.SegmentIds(q=s, kv=s)))(
    to_heads(pad(q * scale)), to_heads(pad(k)), to_heads(pad(v)), pad(segment_ids.astype(jnp.int32))
  )
  return to_heads(out)[:, :length].astype(dtype), None


IMPLEMENTATIONS: dict[str, Callable] = {
  "dense": dense,
  "per_example": per_example,
  "xla": functools.partial(_dot_product_attention, "xla"),
  "cudnn": functools.partial(_dot_product_attention, "cudnn"),
  "splash": functools.partial(_splash, False),
  "splash_interpret": functools.partial(_splash, True),
  "frames": frames,
}


def check_attention(name: str) -> str:
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"attention {name!r} is not one of {tuple(IMPLEMENTATIONS)}")
  return name


def attend(
  name: str,
  q: Array,
  k: Array,
  v: Array,
  segment_ids: Array,
  *,
  dtype,
  dropout_rate: float = 0.0,
  dropout_rng: Array | None = None,
  return_weights: bool = False,
) -> tuple[Array, Array | None]:
  """q, k, v [B, T, H, K] -> context [B, T, H, K] in dtype, and the weights [B, H, T, S] (float32) on request."""
  if dropout_rate and name not in WITH_DROPOUT:
    raise ValueError(
      f"attention {name!r} has no attention dropout: train with attention='dense' or 'per_example', or set the "
      f"config's attention_dropout to 0 (it is {dropout_rate})"
    )
  if return_weights and name not in WITH_WEIGHTS:
    raise ValueError(f"attention {name!r} does not return attention weights; load with attention='dense'")
  return IMPLEMENTATIONS[check_attention(name)](
    q, k, v, segment_ids, dtype=dtype, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
    return_weights=return_weights,
  )  # fmt: skip
