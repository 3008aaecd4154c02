"""Similarity functions as sentence-transformers' `util`, jit-compiled once at module level.

Every function takes NumPy arrays, JAX arrays, torch tensors and nested lists (1-D inputs are one row). A score
matrix comes back as a `jax.Array`, or as a `torch.Tensor` when an input was one (so code written for
sentence-transformers keeps working on what it gets back). Non-finite embeddings are an error, never a score.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distilbert_jax.model.pooling import normalize
from distilbert_jax.search.rows import as_numpy, as_rows, is_torch, like_inputs

HIGHEST = jax.lax.Precision.HIGHEST


@jax.jit
def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.einsum("qd,cd->qc", a, b, precision=HIGHEST)  # [Q, C]


@jax.jit
def _cos(a: jax.Array, b: jax.Array) -> jax.Array:
  return _dot(normalize(a), normalize(b))


@jax.jit
def _euclidean(a: jax.Array, b: jax.Array) -> jax.Array:
  return -jnp.sqrt(jnp.maximum(jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, -1), 0.0))


@jax.jit
def _manhattan(a: jax.Array, b: jax.Array) -> jax.Array:
  return -jnp.sum(jnp.abs(a[:, None, :] - b[None, :, :]), -1)


# Compiled once here (a lambda jitted inside each call would be traced again on every call).
_pairwise_dot = jax.jit(lambda x, y: jnp.sum(x * y, -1))
_pairwise_cos = jax.jit(lambda x, y: jnp.sum(normalize(x) * normalize(y), -1))
_pairwise_euclidean = jax.jit(lambda x, y: -jnp.sqrt(jnp.maximum(jnp.sum((x - y) ** 2, -1), 0.0)))
_pairwise_manhattan = jax.jit(lambda x, y: -jnp.sum(jnp.abs(x - y), -1))


def _pairwise(a: Any, b: Any, fn: Callable) -> Any:
  x, y = as_rows(a, "embeddings_a"), as_rows(b, "embeddings_b")
  if x.shape != y.shape:
    raise ValueError(f"pairwise scores need equal shapes, got {x.shape} and {y.shape}")
  return like_inputs(fn(jnp.asarray(x), jnp.asarray(y)), a, b)


def normalize_embeddings(embeddings: Any):
  """Rows scaled to unit L2 norm (the package's one normalisation, `model.pooling.normalize`), the input's shape
  kept: a torch.Tensor for a torch input (dense or sparse, as sentence-transformers), else a jax.Array."""
  array = as_numpy(embeddings, "embeddings").astype(np.float32)
  result = like_inputs(normalize(jnp.asarray(array)), embeddings)
  if is_torch(embeddings):
    result = result.to(embeddings.dtype) if embeddings.is_floating_point() else result
    if str(embeddings.layout) != "torch.strided":
      result = result.to_sparse()
  return result


def dot_score(a: Any, b: Any):
  """[Na, D] x [Nb, D] -> [Na, Nb] dot products (float32, full precision)."""
  return like_inputs(_dot(as_rows(a, "embeddings_a"), as_rows(b, "embeddings_b")), a, b)


def cos_sim(a: Any, b: Any):
  """[Na, D] x [Nb, D] -> [Na, Nb] cosine similarities (norms clamped at 1e-12, as torch's normalize)."""
  return like_inputs(_cos(as_rows(a, "embeddings_a"), as_rows(b, "embeddings_b")), a, b)


def euclidean_sim(a: Any, b: Any):
  """[Na, Nb] negative Euclidean distances."""
  return like_inputs(_euclidean(as_rows(a, "embeddings_a"), as_rows(b, "embeddings_b")), a, b)


def manhattan_sim(a: Any, b: Any):
  """[Na, Nb] negative Manhattan distances."""
  return like_inputs(_manhattan(as_rows(a, "embeddings_a"), as_rows(b, "embeddings_b")), a, b)


def pairwise_dot_score(a: Any, b: Any):
  return _pairwise(a, b, _pairwise_dot)


def pairwise_cos_sim(a: Any, b: Any):
  return _pairwise(a, b, _pairwise_cos)


def pairwise_euclidean_sim(a: Any, b: Any):
  return _pairwise(a, b, _pairwise_euclidean)


def pairwise_manhattan_sim(a: Any, b: Any):
  return _pairwise(a, b, _pairwise_manhattan)


# sentence-transformers' similarity_fn_name values -> (matrix, pairwise) functions.
SIMILARITY_FUNCTIONS: dict[str, tuple[Callable, Callable]] = {
  "cosine": (cos_sim, pairwise_cos_sim),
  "dot": (dot_score, pairwise_dot_score),
  "euclidean": (euclidean_sim, pairwise_euclidean_sim),
  "manhattan": (manhattan_sim, pairwise_manhattan_sim),
}
