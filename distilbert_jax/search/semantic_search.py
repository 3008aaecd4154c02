"""`semantic_search` with sentence-transformers' signature, defaults and result structure: per query, a list of
{"corpus_id", "score"} sorted by score, ties towards the lower corpus id. Memory is bounded by the chunk sizes.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from distilbert_jax.core.checks import positive_int
from distilbert_jax.search.engines import top_k_search
from distilbert_jax.search.rows import as_numpy, as_rows, check_finite, is_torch
from distilbert_jax.search.similarity import cos_sim

# Names (ours, and what the CLI and older code pass) of the two scores the sharded search computes itself.
_FAST_SCORES = {"cosine": "cosine", "cos_sim": "cosine", "dot": "dot", "dot_score": "dot"}


def _fast_score(score_function: Any) -> str | None:
  """'cosine' or 'dot' when the sharded search can compute `score_function` itself, else None (any other
  callable is called on chunks). sentence-transformers' own cos_sim and dot_score are recognised by name."""
  if isinstance(score_function, str):
    if score_function not in _FAST_SCORES:
      raise ValueError(f"score_function {score_function!r} is not one of {sorted(_FAST_SCORES)} or a callable")
    return _FAST_SCORES[score_function]
  if not callable(score_function):
    raise TypeError(f"score_function must be a callable or a name, not {type(score_function).__name__}")
  module = getattr(score_function, "__module__", "") or ""
  name = getattr(score_function, "__name__", "")
  if module.split(".")[0] in ("distilbert_jax", "sentence_transformers") and name in (
    "cos_sim",
    "pytorch_cos_sim",
    "dot_score",
  ):
    return "dot" if name == "dot_score" else "cosine"
  return None


def semantic_search(
  query_embeddings: Any,
  corpus_embeddings: Any,
  query_chunk_size: int = 100,
  corpus_chunk_size: int = 500_000,
  top_k: int = 10,
  score_function: Any = cos_sim,
  devices: Sequence[Any] | None = None,
  backend: str = "auto",
  recall_target: float | None = None,
) -> list[list[dict[str, float | int]]]:
  """Top-k corpus entries per query: sentence_transformers.util.semantic_search's signature and defaults.

  `score_function`: cos_sim (default, as theirs), dot_score (ours or theirs, or the names "cosine"/"dot"),
  computed by `backend`; any other callable is called on (query chunk, corpus chunk) as theirs is.
  `backend`: "jax" (sharded over `devices`; on CPU the corpus is scored in cache-sized blocks), "faiss" (exact
  IndexFlatIP on the host), "numpy" (NumPy's BLAS product on the host), or "auto": on CPU, numpy over an in-RAM
  array for up to `search.host.NUMPY_GEMV_MAX_QUERIES` queries, or fewer than `engines.CPU_JAX_MIN_QUERIES` where the
  JAX engine would copy the array (one memory-bound pass, where that copy costs more than the scoring), else jax.
  The engines are tested to give the same results.
  `recall_target`: on TPU, jax.lax.approx_max_k with that expected recall; exact top-k elsewhere.
  The corpus may be anything with `shape` and row slicing (a memory map, `load_embeddings`' shards): one
  chunk is read at a time.
  """
  query_chunk_size = positive_int(query_chunk_size, "query_chunk_size")
  corpus_chunk_size = positive_int(corpus_chunk_size, "corpus_chunk_size")
  top_k = positive_int(top_k, "top_k")
  precision = getattr(corpus_embeddings, "precision", "float32")
  if precision != "float32":
    raise ValueError(
      f"corpus_embeddings hold {precision} codes (a quantized encode-corpus directory): search them with "
      "distilbert_jax.search.quantization.quantized_semantic_search, which quantizes the queries the same way"
    )
  fast = _fast_score(score_function)
  queries = as_rows(query_embeddings, "query_embeddings")
  if hasattr(corpus_embeddings, "shape") and not is_torch(corpus_embeddings):
    corpus = corpus_embeddings  # sliced chunk by chunk below
  else:
    corpus = as_numpy(corpus_embeddings, "corpus_embeddings")
  if len(corpus.shape) != 2 or corpus.shape[1] != queries.shape[1]:
    raise ValueError(
      f"corpus embeddings have shape {tuple(corpus.shape)}; expected (N, {queries.shape[1]}) to match the queries"
    )
  if fast is None:
    if len(queries) == 0 or corpus.shape[0] == 0:
      return [[] for _ in range(len(queries))]
    k = min(top_k, int(corpus.shape[0]))
    values, ids = _search_with_callable(
      queries, corpus, query_chunk_size, corpus_chunk_size, k, score_function, query_embeddings
    )
  else:
    values, ids = top_k_search(
      queries, corpus, fast, top_k, query_chunk_size, corpus_chunk_size, devices, backend, recall_target
    )
  return hits(values, ids)


def hits(values: np.ndarray, ids: np.ndarray) -> list[list[dict[str, float | int]]]:
  """sentence-transformers' result structure from [Q, k] scores and corpus ids."""
  values, ids = np.asarray(values, np.float32).tolist(), np.asarray(ids).tolist()  # 30x faster than per item
  return [[{"corpus_id": i, "score": s} for s, i in zip(vs, row)] for vs, row in zip(values, ids)]


def _search_with_callable(
  queries: np.ndarray,
  corpus: Any,
  query_chunk_size: int,
  corpus_chunk_size: int,
  k: int,
  score_function: Callable,
  original_queries: Any,
) -> tuple[np.ndarray, np.ndarray]:
  """Any score function, called on chunks of the caller's array type (torch chunks for a torch caller)."""
  to_callers = (lambda a: __import__("torch").from_numpy(a)) if is_torch(original_queries) else (lambda a: a)
  n_queries, n_corpus = len(queries), int(corpus.shape[0])
  best = [[] for _ in range(n_queries)]  # min-heaps of (score, -id)
  for c0 in range(0, n_corpus, corpus_chunk_size):
    part = np.asarray(corpus[c0 : c0 + corpus_chunk_size], np.float32)
    check_finite(part, "corpus_embeddings", offset=c0)
    for q0 in range(0, n_queries, query_chunk_size):
      scores = as_numpy(
        score_function(to_callers(queries[q0 : q0 + query_chunk_size]), to_callers(part)), "score_function's result"
      ).astype(np.float32)
      expected = (min(query_chunk_size, n_queries - q0), len(part))
      if scores.shape != expected:
        raise ValueError(f"score_function returned shape {scores.shape}; expected {expected}")
      check_finite(scores, "score_function's result", offset=q0)
      top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
      for r, row in enumerate(top):
        heap = best[q0 + r]
        for j in row:
          item = (float(scores[r, j]), -(c0 + int(j)))
          if len(heap) < k:
            heapq.heappush(heap, item)
          elif item > heap[0]:
            heapq.heapreplace(heap, item)
  values = np.full((n_queries, k), -np.inf, np.float32)
  ids = np.zeros((n_queries, k), np.int64)
  for q, heap in enumerate(best):
    for rank, (score, neg_id) in enumerate(sorted(heap, reverse=True)):
      values[q, rank], ids[q, rank] = score, -neg_id
  return values, ids
