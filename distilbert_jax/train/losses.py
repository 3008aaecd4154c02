"""Losses: MarginMSE and MultipleNegativesRanking, as sentence-transformers defines them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from distilbert_jax.model.pooling import normalize

MNRL_SCALE = 20.0  # sentence-transformers' default (temperature 0.05)


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
