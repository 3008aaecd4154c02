"""The host engines: exact top-k over NumPy arrays (or anything `read_rows` reads) where they lie, a corpus chunk
at a time. NumPy's BLAS (`numpy_top_k`, what `auto` picks for a few queries over an in-RAM array on CPU) and faiss'
exact scan (`faiss_top_k`, the `search` extra). Both order ties by the lower corpus id, as the JAX engine does.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from distilbert_jax.model.pooling import normalize
from distilbert_jax.search.rows import check_finite, float_chunk, read_rows

# Measured by hand on 1M x 768 rows (AMD EPYC, 2 cores; see `_host_scores`), not per CPU:
NUMPY_BLOCK_ROWS = 1024  # 3 MiB of 768-d rows: each block is read from memory once and scored from cache
NUMPY_GEMV_MAX_QUERIES = 4  # up to this many queries, one GEMV per query and block; from 8 a GEMM per block


def merge_top_k(
  values: np.ndarray, ids: np.ndarray, more_values: np.ndarray, more_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
  """The k best of two candidate sets per row: score descending, then corpus id ascending."""
  values, ids = np.concatenate([values, more_values], 1), np.concatenate([ids, more_ids], 1)
  order = np.lexsort((ids, -values), axis=-1)[:, :k]
  return np.take_along_axis(values, order, 1), np.take_along_axis(ids, order, 1)


def _unit_rows(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(normalize(jnp.asarray(x))))


def _query_rows(queries: np.ndarray, cosine: bool) -> np.ndarray:
  """Contiguous float32 queries (unit rows for cosine), as both host engines and the JAX engine score them."""
  queries = np.ascontiguousarray(queries, np.float32)
  return _unit_rows(queries) if cosine else queries


def _refuse_scores(part: np.ndarray, c0: int) -> None:
  """Non-finite scores of finite queries: name the NaN or inf row, else refuse the overflow."""
  check_finite(part, "corpus_embeddings", offset=c0)
  raise ValueError(
    f"corpus_embeddings: the scores of rows {c0}..{c0 + len(part) - 1} overflow float32 (finite rows, values too "
    "large for a dot product)"
  )


def faiss_top_k(
  queries: np.ndarray, corpus: Any, cosine: bool, k: int, corpus_chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
  import faiss

  queries = _query_rows(queries, cosine)
  best_values = np.full((len(queries), 0), -np.inf, np.float32)
  best_ids = np.zeros((len(queries), 0), np.int64)
  for c0 in range(0, int(corpus.shape[0]), corpus_chunk_size):
    part = float_chunk(corpus, c0, corpus_chunk_size)  # checked finite: faiss skips NaN scores without a word
    # faiss.knn: IndexFlatIP's exact search without copying the chunk into an index. One candidate more than
    # needed shows where a tie crosses the top-k boundary; faiss orders such ties its own way, so those queries
    # are ranked again exactly (score, then lower id), as the JAX engine ranks them.
    part = _unit_rows(part) if cosine else part
    kk = min(k + 1, len(part))
    values, idx = faiss.knn(queries, part, kk, metric=faiss.METRIC_INNER_PRODUCT)
    tied = np.flatnonzero(values[:, k - 1] == values[:, k]) if kk > k else np.zeros(0, np.int64)
    for q in tied:
      exact = np.einsum("d,cd->c", queries[q], part)[None]  # exact float32 dot products, like faiss' IP
      (values[q],), (idx[q],) = _exact_top_k(exact, kk)
    values, idx = values[:, :k], idx[:, :k]
    if not np.isfinite(values).all():  # the rows were finite, their products were not
      _refuse_scores(part, c0)
    best_values, best_ids = merge_top_k(best_values, best_ids, values, idx + c0, k)
    del part  # before the next chunk is read: never two chunks at once
  return best_values, best_ids


def _host_scores(queries: np.ndarray, part: np.ndarray) -> np.ndarray:
  """[Q, rows] scores by NumPy's BLAS, block by block. OpenBLAS' GEMM of a handful of columns runs far below the
  memory bound (1M x 768 rows: 200 ms at 4 queries, against 68 ms for one GEMV); one GEMV per query over a
  cache-resident block reads the rows once (122 ms at 4), and from 8 queries a GEMM per block is faster (by hand,
  this VM)."""
  scores = np.empty((len(queries), len(part)), np.float32)
  for r0 in range(0, len(part), NUMPY_BLOCK_ROWS):
    block = part[r0 : r0 + NUMPY_BLOCK_ROWS]
    if len(queries) <= NUMPY_GEMV_MAX_QUERIES:
      for q, query in enumerate(queries):
        np.dot(block, query, out=scores[q, r0 : r0 + len(block)])
    else:
      scores[:, r0 : r0 + len(block)] = queries @ block.T
  return scores


def numpy_top_k(
  queries: np.ndarray, corpus: Any, cosine: bool, k: int, query_chunk_size: int, corpus_chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
  """NumPy's BLAS product over each corpus chunk where it lies (any alignment), at most query_chunk_size x
  corpus_chunk_size scores at a time (sentence-transformers' bound), checked finite on the scores themselves (a
  NaN or inf row makes its every score non-finite), then the exact top k per query."""
  queries = _query_rows(queries, cosine)
  best_values = np.full((len(queries), 0), -np.inf, np.float32)
  best_ids = np.zeros((len(queries), 0), np.int64)
  for c0 in range(0, int(corpus.shape[0]), corpus_chunk_size):
    part = np.asarray(read_rows(corpus, c0, corpus_chunk_size), np.float32)
    part = _unit_rows(part) if cosine else part
    kk = min(k, len(part))
    values, ids = np.empty((len(queries), kk), np.float32), np.empty((len(queries), kk), np.int64)
    for q0 in range(0, len(queries), query_chunk_size):
      with np.errstate(over="ignore", invalid="ignore"):  # non-finite scores are refused just below
        scores = _host_scores(queries[q0 : q0 + query_chunk_size], part)
      if not np.isfinite(scores).all():
        _refuse_scores(part, c0)
      values[q0 : q0 + len(scores)], ids[q0 : q0 + len(scores)] = _exact_top_k(scores, kk)
      del scores
    best_values, best_ids = merge_top_k(best_values, best_ids, values, ids + c0, k)
    del part  # before the next chunk is read: never two chunks at once
  return best_values, best_ids


def _exact_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """[Q, k] best scores of [Q, rows] and their row ids, score descending, then lower id."""
  ids = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # some k best; ties at the k-th score cut anyhow
  values = np.take_along_axis(scores, ids, 1)
  order = np.lexsort((ids, -values), axis=1)
  ids, values = np.take_along_axis(ids, order, 1), np.take_along_axis(values, order, 1)
  # Where more rows than fit tie with the k-th score, the lowest ids among them are kept: rank those queries
  # again over every candidate at or above it.
  for q in np.flatnonzero((scores >= values[:, -1:]).sum(1) > k):
    candidates = np.flatnonzero(scores[q] >= values[q, -1])
    best = candidates[np.lexsort((candidates, -scores[q, candidates]))[:k]]
    values[q], ids[q] = scores[q, best], best
  return values, ids
