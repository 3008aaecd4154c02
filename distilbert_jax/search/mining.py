"""Paraphrase mining and community detection, as sentence-transformers' `util`."""

from __future__ import annotations

import heapq
from typing import Any

import jax.numpy as jnp
import numpy as np

from distilbert_jax.core.checks import positive_int
from distilbert_jax.model.pooling import normalize
from distilbert_jax.search.rows import as_rows
from distilbert_jax.search.semantic_search import semantic_search
from distilbert_jax.search.similarity import _dot, cos_sim


def paraphrase_mining(
  model: Any,
  sentences: list[str],
  show_progress_bar: bool = False,
  batch_size: int = 32,
  query_chunk_size: int = 5000,
  corpus_chunk_size: int = 100000,
  max_pairs: int = 500000,
  top_k: int = 100,
  score_function: Any = cos_sim,
  truncate_dim: int | None = None,
  prompt_name: str | None = None,
  prompt: str | None = None,
) -> list[list[float | int]]:
  """[score, i, j] (i < j) of the most similar sentence pairs, as sentence-transformers' paraphrase_mining."""
  embeddings = model.encode(
    sentences,
    show_progress_bar=show_progress_bar,
    batch_size=batch_size,
    truncate_dim=truncate_dim,
    prompt_name=prompt_name,
    prompt=prompt,
  )
  return paraphrase_mining_embeddings(embeddings, query_chunk_size, corpus_chunk_size, max_pairs, top_k, score_function)


def paraphrase_mining_embeddings(
  embeddings: Any,
  query_chunk_size: int = 5000,
  corpus_chunk_size: int = 100000,
  max_pairs: int = 500000,
  top_k: int = 100,
  score_function: Any = cos_sim,
) -> list[list[float | int]]:
  """Each embedding's top_k neighbours (itself excluded), deduplicated into pairs, the max_pairs best kept."""
  top_k = positive_int(top_k, "top_k")
  max_pairs = positive_int(max_pairs, "max_pairs")
  rows = as_rows(embeddings, "embeddings")
  if len(rows) < 2:  # no pair to mine (sentence-transformers returns [] too)
    return []
  hits = semantic_search(rows, rows, query_chunk_size, corpus_chunk_size, min(top_k + 1, len(rows)), score_function)
  pairs: list[tuple[float, int, int]] = []
  queued: set[tuple[int, int]] = set()
  min_score = float("-inf")
  for i, query_hits in enumerate(hits):
    for hit in [h for h in query_hits if h["corpus_id"] != i][:top_k]:
      score, j = hit["score"], hit["corpus_id"]
      if score <= min_score:
        continue
      pair = (i, j) if i < j else (j, i)
      if pair in queued:
        continue
      queued.add(pair)
      if len(pairs) < max_pairs:
        heapq.heappush(pairs, (score, *pair))
      else:
        evicted = heapq.heappushpop(pairs, (score, *pair))
        queued.discard(evicted[1:])
        min_score = evicted[0]
  return sorted(([score, i, j] for score, i, j in pairs), key=lambda x: x[0], reverse=True)


def community_detection(
  embeddings: Any,
  threshold: float = 0.75,
  min_community_size: int = 10,
  batch_size: int = 1024,
  show_progress_bar: bool = False,
) -> list[list[int]]:
  """Communities whose members have cosine >= threshold to a central point (listed first), largest first,
  non-overlapping, each at least min_community_size: sentence-transformers' algorithm."""
  min_community_size = positive_int(min_community_size, "min_community_size")
  batch_size = positive_int(batch_size, "batch_size")
  if len(embeddings) == 0:
    return []
  rows = np.asarray(normalize(jnp.asarray(as_rows(embeddings, "embeddings"))))
  n = len(rows)
  if n < min_community_size:
    return []
  extracted = []
  for start in range(0, n, batch_size):
    scores = np.asarray(_dot(rows[start : start + batch_size], rows))  # [b, N]
    order = np.argsort(-scores, axis=1, kind="stable")
    for r in range(len(scores)):
      ranked = scores[r, order[r]]
      if ranked[min_community_size - 1] >= threshold:
        extracted.append((start + r, order[r][ranked >= threshold]))
  extracted.sort(key=lambda x: len(x[1]), reverse=True)
  communities, used = [], np.zeros(n, bool)
  for center, members in extracted:
    if used[center]:
      continue
    members = members[~used[members]]
    if len(members) >= min_community_size:
      community = [int(center)] + [int(m) for m in members if m != center]
      communities.append(community)
      used[community] = True
  return sorted(communities, key=len, reverse=True)
