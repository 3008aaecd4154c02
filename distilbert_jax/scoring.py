"""Scores and chunked top-k search, jit-compiled and spread over devices.

`semantic_search` returns sentence-transformers' structure: per query, a list of {"corpus_id", "score"} sorted
by score. Ties are broken towards the lower corpus id. Memory is bounded by the chunk sizes: each corpus chunk
is split across the devices, each device keeps its own top-k, and one merge per chunk keeps the global top-k.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

HIGHEST = jax.lax.Precision.HIGHEST


@jax.jit
def dot_score(a: jax.Array, b: jax.Array) -> jax.Array:
  """[Na, D] x [Nb, D] -> [Na, Nb] dot products (float32, full precision)."""
  a, b = jnp.atleast_2d(a).astype(jnp.float32), jnp.atleast_2d(b).astype(jnp.float32)
  return jnp.einsum("qd,cd->qc", a, b, precision=HIGHEST)


@jax.jit
def cos_sim(a: jax.Array, b: jax.Array) -> jax.Array:
  """[Na, D] x [Nb, D] -> [Na, Nb] cosine similarities (norms clamped at 1e-12, as torch's normalize)."""
  unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  return dot_score(unit(jnp.atleast_2d(a).astype(jnp.float32)), unit(jnp.atleast_2d(b).astype(jnp.float32)))


SCORE_FUNCTIONS = {"dot": dot_score, "cos_sim": cos_sim, "cosine": cos_sim}


@functools.lru_cache(maxsize=16)
def _chunk_search_fn(mesh: Mesh, k: int, cosine: bool):
  """Per corpus chunk: local top-k on each device's shard, all-gathered, merged with the running top-k."""

  def local_top_k(queries, corpus, corpus_valid, offset):  # runs per device on its corpus shard
    if cosine:
      corpus = corpus / jnp.maximum(jnp.linalg.norm(corpus, axis=-1, keepdims=True), 1e-12)
    scores = jnp.einsum("qd,cd->qc", queries, corpus, precision=HIGHEST)  # [Q, C/devices]
    scores = jnp.where(corpus_valid[None, :], scores, -jnp.inf)
    values, idx = jax.lax.top_k(scores, min(k, corpus.shape[0]))
    ids = idx + offset + jax.lax.axis_index("data") * corpus.shape[0]
    return jax.lax.all_gather(values, "data", axis=1, tiled=True), jax.lax.all_gather(ids, "data", axis=1, tiled=True)

  sharded = jax.shard_map(local_top_k, mesh=mesh,
                          in_specs=(PartitionSpec(), PartitionSpec("data"), PartitionSpec("data"), PartitionSpec()),
                          out_specs=(PartitionSpec(), PartitionSpec()), check_vma=False)

  @jax.jit
  def step(best_values, best_ids, queries, corpus, corpus_valid, offset):
    if cosine:
      queries = queries / jnp.maximum(jnp.linalg.norm(queries, axis=-1, keepdims=True), 1e-12)
    values, ids = sharded(queries, corpus, corpus_valid, offset)
    # The running best comes first, so equal scores keep the lower corpus id (top_k prefers lower positions);
    # within a chunk, device shards are gathered in corpus order.
    values = jnp.concatenate([best_values, values], axis=1)
    ids = jnp.concatenate([best_ids, ids], axis=1)
    order = jnp.lexsort((ids, -values), axis=1)[:, :k]  # score desc, then id asc
    return jnp.take_along_axis(values, order, 1), jnp.take_along_axis(ids, order, 1)

  return step


def semantic_search(query_embeddings: Any, corpus_embeddings: Any, top_k: int = 10,
                    score_function: str = "dot", query_chunk_size: int = 100, corpus_chunk_size: int = 500_000,
                    devices: Sequence[Any] | None = None) -> list[list[dict[str, float | int]]]:
  """Top-k corpus entries per query, as sentence_transformers.util.semantic_search."""
  if score_function not in SCORE_FUNCTIONS:
    raise ValueError(f"score_function {score_function!r} is not one of {sorted(SCORE_FUNCTIONS)}")
  queries = np.atleast_2d(np.asarray(query_embeddings, np.float32))
  # A memory map or load_embeddings' shards: only shape and slicing are used, one chunk read at a time.
  corpus = corpus_embeddings if hasattr(corpus_embeddings, "shape") else np.asarray(corpus_embeddings)
  if len(corpus.shape) != 2 or corpus.shape[1] != queries.shape[1]:
    raise ValueError(f"corpus embeddings have shape {corpus.shape}; expected (N, {queries.shape[1]})")
  n_queries, n_corpus = len(queries), len(corpus)
  k = min(top_k, n_corpus)
  if n_queries == 0 or k == 0:
    return [[] for _ in range(n_queries)]
  mesh = Mesh(np.array(list(devices) if devices is not None else jax.local_devices()), ("data",))
  n_dev = mesh.devices.size
  chunk = -(-min(corpus_chunk_size, n_corpus) // n_dev) * n_dev  # one fixed corpus chunk shape
  q_chunk = min(query_chunk_size, n_queries)
  step = _chunk_search_fn(mesh, k, score_function != "dot")
  corpus_sharding = NamedSharding(mesh, PartitionSpec("data"))

  best_values = np.full((n_queries, k), -np.inf, np.float32)
  best_ids = np.zeros((n_queries, k), np.int32)
  for c0 in range(0, n_corpus, chunk):
    part = np.asarray(corpus[c0:c0 + chunk], np.float32)
    valid = np.zeros(chunk, bool)
    valid[:len(part)] = True
    part = np.pad(part, ((0, chunk - len(part)), (0, 0)))
    part, valid = jax.device_put((part, valid), corpus_sharding)
    for q0 in range(0, n_queries, q_chunk):
      q = queries[q0:q0 + q_chunk]
      pad = q_chunk - len(q)
      values, ids = step(np.pad(best_values[q0:q0 + q_chunk], ((0, pad), (0, 0)), constant_values=-np.inf),
                         np.pad(best_ids[q0:q0 + q_chunk], ((0, pad), (0, 0))), np.pad(q, ((0, pad), (0, 0))),
                         part, valid, np.int32(c0))
      best_values[q0:q0 + q_chunk] = np.asarray(values)[:len(q)]
      best_ids[q0:q0 + q_chunk] = np.asarray(ids)[:len(q)]
  return [[{"corpus_id": int(i), "score": float(s)} for s, i in zip(vs, ids)]
          for vs, ids in zip(best_values, best_ids)]
