"""Exact (and on TPU approximate) top-k over a corpus: the engine choice at the edge (`top_k_search`), then the
blocked JAX engine (a scan over score blocks per device shard, merged per chunk; few queries score a part in one
step; the parts come from `chunks`). The host engines, NumPy's BLAS and faiss' exact scan, are in `host`.

Ties are broken towards the lower corpus id by every engine.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from distilbert_jax.core.devices import data_mesh, platform_of
from distilbert_jax.core.shapes import count_bucket
from distilbert_jax.model.pooling import normalize
from distilbert_jax.search import host
from distilbert_jax.search.chunks import device_chunks, host_chunks
from distilbert_jax.search.rows import check_finite, host_array_in_place, mapped_in_place, read_rows

HIGHEST = jax.lax.Precision.HIGHEST


SCORE_KINDS = ("dot", "cosine", "int", "hamming")
BACKENDS = ("auto", "jax", "faiss", "numpy")
# The engines' tuning, each measured by `benchmarks/search.py` (log `benchmarks/results/search.txt`) on one CPU kind
# (AMD EPYC, 2 cores), not per CPU:
SMALL_QUERY_ROWS = 16  # query rows of a step up to which scores are computed corpus-major (measured at 1-16)
TOP_K_GROUP = 64  # columns per group of grouped_top_k (32-128 measured alike; 64 in the middle)
CPU_JAX_MIN_QUERIES = 16  # "auto" on CPU: fewer, over an array the JAX engine must copy, go to NumPy
CPU_ONE_STEP_MAX_QUERIES = 128  # up to this many queries a CPU chunk is one step, not a scan of blocks
CPU_SCORE_BLOCK = 8192  # corpus rows per scoring block on CPU (4,096 slower, 16,384 no faster)
CPU_CHUNK_BLOCKS = 8  # blocks per corpus chunk on CPU: 65,536 rows, 192 MiB at 768-d float32
# Query rows of one CPU step at most: 10,000 queries over 200,000 x 768 ran 534-540 q/s in steps of 1,024 against
# 503 in steps of 5,120, whose [Q, 8192] score blocks (168 MB) leave the cache (AMD EPYC, 2 cores, by hand).
CPU_MAX_STEP_QUERIES = 1024


def chunk_scores(kind: str, queries: jax.Array, corpus: jax.Array) -> jax.Array:
  """[Q, C] scores, higher is better: float dot or cosine; integer dot products of int8/uint8 codes (exact, int32
  accumulation, uint8 centred); minus the Hamming distance of packed bits."""
  if kind == "cosine":
    return jnp.einsum("qd,cd->qc", normalize(queries), normalize(corpus), precision=HIGHEST)
  if kind == "dot":
    return jnp.einsum("qd,cd->qc", queries, corpus, precision=HIGHEST)
  if kind == "int":
    # uint8 codes are centred first (code - 128, exactly int8's codes): uncentred unsigned products would rank
    # by each row's offset from zero rather than by direction.
    centre = lambda c: c if c.dtype == jnp.int8 else (c.astype(jnp.int16) - 128).astype(jnp.int8)
    dots = jnp.einsum("qd,cd->qc", centre(queries), centre(corpus), preferred_element_type=jnp.int32)
    return dots.astype(jnp.float32)
  # Hamming distance |q xor c| = |q| + |c| - 2 |q and c|: the bits unpacked, the common ones counted by an int8
  # GEMM (7.6x faster on this CPU than a fused xor/popcount over [Q, C, bytes]). int8 binary codes are the packed bits
  # with the top bit flipped in both operands, which leaves every distance unchanged.
  bits = lambda c: jnp.unpackbits(jax.lax.bitcast_convert_type(c, jnp.uint8), axis=-1).astype(jnp.int8)  # [N, 8B]
  q_bits, c_bits = bits(queries), bits(corpus)
  common = jnp.einsum("qd,cd->qc", q_bits, c_bits, preferred_element_type=jnp.int32)
  ones = lambda b: jnp.sum(b, axis=-1, dtype=jnp.int32)
  return -(ones(q_bits)[:, None] + ones(c_bits)[None, :] - 2 * common).astype(jnp.float32)


def group_candidates(scores: jax.Array, n_valid: jax.Array, k: int, group: int) -> tuple[jax.Array, jax.Array]:
  """The candidates of the exact top k of each row of `scores` [Q, B] among its first `n_valid` columns: values and
  columns [Q, k * group] in column order (invalid ones -inf); B a multiple of `group`.

  XLA:CPU's top_k over a whole [Q, 8192] block cost about a third of the block's GEMM. The k best of a row lie in
  the k groups (of `group` columns) whose maxima rank first: a group ranked below k others has k larger elements
  ahead of each of its own. So only the group maxima [Q, B / group] and k * group candidates are ranked. Groups are
  taken in column order, so ties among candidates still go to the lower column. The validity mask touches the
  small arrays only (masking all of [Q, B] cost a full pass over the scores). A NaN score may be lost by the
  maxima (XLA:CPU's YNNPACK reduction does not propagate it): the caller checks the scores finite."""
  n_queries, width = scores.shape
  n_groups = width // group
  grouped = scores.reshape(n_queries, n_groups, group)
  maxima = jnp.max(grouped, axis=-1)  # [Q, G]
  # The one group that is partly valid gets the maximum of its valid columns; groups past it none.
  partial = n_valid // group
  part = jax.lax.dynamic_slice_in_dim(scores, jnp.minimum(partial, n_groups - 1) * group, group, 1)  # [Q, group]
  part_max = jnp.max(jnp.where(jnp.arange(group) < n_valid - partial * group, part, -jnp.inf), axis=1)
  ids = jnp.arange(n_groups)
  maxima = jnp.where(ids < partial, maxima, jnp.where(ids == partial, part_max[:, None], -jnp.inf))
  _, best_groups = jax.lax.top_k(maxima, k)
  best_groups = jnp.sort(best_groups, axis=1)  # [Q, k], column order
  values = jnp.take_along_axis(grouped, best_groups[:, :, None], 1).reshape(n_queries, k * group)
  columns = (best_groups[:, :, None] * group + jnp.arange(group)).reshape(n_queries, k * group)
  return jnp.where(columns < n_valid, values, -jnp.inf), columns


def grouped_top_k(scores: jax.Array, n_valid: jax.Array, k: int, group: int) -> tuple[jax.Array, jax.Array]:
  """Exact top k of each row of `scores` [Q, B] among its first `n_valid` columns, ties to the lower column, as
  jax.lax.top_k; B a multiple of `group` (`group_candidates`, then one top_k over them)."""
  values, columns = group_candidates(scores, n_valid, k, group)
  values, where = jax.lax.top_k(values, k)
  return values, jnp.take_along_axis(columns, where, 1)


def _block_candidates(scores, valid, k_local: int, recall_target: float | None, block: int, group: int):
  """Candidates for the top k_local of one block's scores [Q, block] among its valid rows (a prefix of the block):
  (values, block rows). The grouped path's candidates are k_local groups, the others' the top k_local itself."""
  if recall_target is None and not block % group and k_local * group * 4 <= block:
    return group_candidates(scores, jnp.sum(valid, dtype=jnp.int32), k_local, group)
  masked = jnp.where(valid[None, :], scores, -jnp.inf)
  if recall_target is not None:
    return jax.lax.approx_max_k(masked, k_local, recall_target=recall_target)
  return jax.lax.top_k(masked, k_local)  # too few groups to gain: the plain top-k


def _shard_top_k(queries, corpus, corpus_valid, offset, *, k, kind, recall_target, block, group):
  """One device's top-k over its corpus shard, `block` rows at a time, all-gathered over the devices:
  (values [Q, k * devices], corpus ids, whether every score was finite)."""
  rows, k_local = corpus.shape[0], min(k, block)

  def scan_block(carry, xs):
    best_values, best_ids, finite = carry
    part, valid, start = xs  # [block, D], [block], the block's first row
    if queries.shape[0] <= SMALL_QUERY_ROWS:
      # A few queries: the scores computed corpus-major ([block, Q], then transposed) stream the block once;
      # query-major, XLA:CPU's kernel ran the same product at half the memory bandwidth.
      scores = chunk_scores(kind, part, queries).T
    else:
      scores = chunk_scores(kind, queries, part)  # [Q, block]
    # The corpus' own finite check: a NaN or inf in a row makes every score with it non-finite (rows past the
    # corpus are zeros or earlier rows), so this replaces a separate pass over the corpus.
    finite = finite & jnp.all(jnp.isfinite(scores))
    values, idx = _block_candidates(scores, valid, k_local, recall_target, block, group)
    # One top_k merges the candidates into the running best, which comes first: top_k prefers lower positions, so
    # equal scores keep the lower corpus id (the candidates stand in column order).
    values, where = jax.lax.top_k(jnp.concatenate([best_values, values], 1), best_values.shape[1])
    ids = jnp.take_along_axis(jnp.concatenate([best_ids, idx + start], 1), where, 1)
    return (values, ids, finite), None

  k_shard, n_queries = min(k, rows), queries.shape[0]
  init = (
    jnp.full((n_queries, k_shard), -jnp.inf, jnp.float32),
    jnp.zeros((n_queries, k_shard), jnp.int32),
    jnp.bool_(True),
  )
  blocks = (
    corpus.reshape(rows // block, block, corpus.shape[1]),
    corpus_valid.reshape(rows // block, block),
    jnp.arange(0, rows, block, dtype=jnp.int32),
  )
  (values, idx, finite), _ = jax.lax.scan(scan_block, init, blocks)
  ids = idx + offset + jax.lax.axis_index("data") * rows
  finite = jax.lax.pmin(finite.astype(jnp.int32), "data") > 0
  gather = lambda x: jax.lax.all_gather(x, "data", axis=1, tiled=True)
  return gather(values), gather(ids), finite


@functools.lru_cache(maxsize=32)
def _chunk_search_fn(mesh: jax.sharding.Mesh, k: int, kind: str, recall_target: float | None, block: int, group: int):
  """Per corpus chunk: local top-k on each device's shard (`_shard_top_k`), all-gathered, merged with the running
  top-k. Each shard is scanned `block` rows at a time (scores of one block [Q, block], its top-k merged into the
  shard's running top-k), so the scores never leave the cache on CPU; block = the whole shard is one step.
  `recall_target` (TPU only, decided by the caller): jax.lax.approx_max_k instead of the exact top_k."""
  local = functools.partial(_shard_top_k, k=k, kind=kind, recall_target=recall_target, block=block, group=group)
  sharded = jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(PartitionSpec(), PartitionSpec("data"), PartitionSpec("data"), PartitionSpec()),
    out_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec()),
    check_vma=False,  # the collectives here are explicit (pmin, all_gather); their outputs are replicated by them
  )

  @jax.jit
  def step(best_values, best_ids, queries, corpus, corpus_valid, offset):
    """-> the merged top-k (values, ids) and whether every score of this chunk was finite."""
    values, ids, finite = sharded(queries, corpus, corpus_valid, offset)
    # Candidates stand in corpus order of their sources: the running best (earlier chunks), then each device's
    # shard, each list with equal scores by id. top_k prefers lower positions, so ties keep the lower corpus id.
    values, order = jax.lax.top_k(jnp.concatenate([best_values, values], axis=1), k)
    return values, jnp.take_along_axis(jnp.concatenate([best_ids, ids], axis=1), order, 1), finite

  return step


def top_k_search(
  queries: np.ndarray,
  corpus: Any,
  kind: str,
  top_k: int,
  query_chunk_size: int = 100,
  corpus_chunk_size: int = 500_000,
  devices: Sequence[Any] | None = None,
  backend: str = "auto",
  recall_target: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """[Q, k] best scores and corpus ids, score descending then id ascending, for a score `kind` (SCORE_KINDS):
  the engine choice lives here, at the edge; `chunk_scores` computes."""
  if kind not in SCORE_KINDS:
    raise ValueError(f"score kind {kind!r} is not one of {SCORE_KINDS}")
  if backend not in BACKENDS:
    raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
  if recall_target is not None and not 0 < recall_target <= 1:
    raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
  n_queries, n_corpus = len(queries), int(corpus.shape[0])
  k = min(top_k, n_corpus)
  if n_queries == 0 or k == 0:
    return np.zeros((n_queries, 0), np.float32), np.zeros((n_queries, 0), np.int64)
  if kind in ("dot", "cosine"):
    check_finite(queries, "query_embeddings")  # the corpus is checked by the engines as they read it
  devices = list(devices) if devices is not None else jax.local_devices()
  platform = platform_of(devices)  # the edge: the platform becomes the engine and its block sizes here
  on_cpu = platform == "cpu"
  # An in-RAM NumPy array the JAX engine would have to copy (unaligned, or split over several devices).
  in_ram = isinstance(corpus, np.ndarray) and not isinstance(corpus, np.memmap)
  copied = in_ram and (len(devices) > 1 or not host_array_in_place(corpus))
  few = n_queries <= host.NUMPY_GEMV_MAX_QUERIES or (n_queries < CPU_JAX_MIN_QUERIES and copied)
  if backend == "auto" and kind in ("dot", "cosine") and on_cpu and in_ram and few:
    # A handful of queries is one memory-bound pass: the JAX engine's copy costs more than the scoring, and NumPy's
    # BLAS reads the array where it lies (faiss would too, but needs a separate pass for the finite check). Up to
    # NUMPY_GEMV_MAX_QUERIES its GEMVs outrun XLA's dot even on an array XLA reads in place; beyond, an aligned
    # array or a read-only memory map goes to the JAX engine, faster there at every count (benchmarks/search.py).
    backend = "numpy"
  if backend in ("faiss", "numpy"):
    if kind not in ("dot", "cosine"):
      raise ValueError(f"the {backend} backend computes dot and cosine scores, not {kind!r}")
    if backend == "faiss":
      return host.faiss_top_k(queries, corpus, kind == "cosine", k, corpus_chunk_size)
    return host.numpy_top_k(queries, corpus, kind == "cosine", k, query_chunk_size, corpus_chunk_size)
  if on_cpu:
    # Scores in cache-sized blocks: a [Q, 8192] block of scores stays in cache between the GEMM and its top-k.
    # The scores of one step are then [Q, 8192], not [Q, corpus chunk], so a step takes as many queries as keep
    # sentence-transformers' bound (query_chunk_size x corpus_chunk_size scores): one pass over the corpus
    # chunk serves them all (at 100 queries a step the same search ran at half the speed), up to
    # CPU_MAX_STEP_QUERIES: more rows a step and the score blocks leave the cache.
    # The corpus goes in chunks of CPU_CHUNK_BLOCKS blocks: a chunk that must be copied (the corpus' last rows, an
    # unaligned array, a memory map) reuses one staging buffer of that size.
    # Up to CPU_ONE_STEP_MAX_QUERIES queries the search is bound by memory, and a trip of XLA:CPU's loop over the
    # blocks copied its block out of the chunk: a chunk is then scored in one step (1M rows, 1 / 8 / 100 queries:
    # 97 / 200 / ~165 ms in one step against 134 / 268 / 180 ms in blocks; at 1,000 queries the blocks win).
    block = min(CPU_SCORE_BLOCK, corpus_chunk_size)
    step_queries = min(CPU_MAX_STEP_QUERIES, max(query_chunk_size, query_chunk_size * corpus_chunk_size // block))
    chunk = min(corpus_chunk_size, block * CPU_CHUNK_BLOCKS)
    one_step = n_queries <= CPU_ONE_STEP_MAX_QUERIES
    return _sharded_top_k(
      queries, corpus, kind, k, step_queries, chunk, devices, None, block, on_host=len(devices) == 1, one_step=one_step
    )
  tpu = platform == "tpu"
  return _sharded_top_k(
    queries, corpus, kind, k, query_chunk_size, corpus_chunk_size, devices, recall_target if tpu else None
  )


def _sharded_top_k(
  queries: np.ndarray,
  corpus: Any,
  kind: str,
  k: int,
  query_chunk_size: int,
  corpus_chunk_size: int,
  devices: Sequence[Any],
  recall_target: float | None,
  block_rows: int | None = None,
  on_host: bool = False,
  one_step: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
  """`block_rows`: each device scans its shard this many rows at a time (None: the whole shard in one step).
  `one_step`: every part is scored in one step whatever its size (`block_rows` then only sizes the host path's
  last pieces). `on_host`: the one device computes on host memory (one CPU device), so chunks are host arrays
  used in place."""
  mesh = data_mesh(devices)
  n_dev = mesh.devices.size
  n_queries, n_corpus = len(queries), int(corpus.shape[0])
  shard = -(-min(corpus_chunk_size, n_corpus) // n_dev)  # rows per device of one fixed corpus chunk shape
  block = shard if block_rows is None else min(block_rows, shard)
  chunk = -(-shard // block) * block * n_dev  # whole blocks per device; rows past the corpus are masked
  # Queries in equal steps: 10,000 queries in steps of at most 6,103 are two of 5,120, not 6,103 and a padded
  # 3,897 (22% of the work was padding).
  n_steps = -(-n_queries // query_chunk_size)
  q_chunk = min(query_chunk_size, query_bucket(-(-n_queries // n_steps)))
  step_for = lambda rows: _chunk_search_fn(
    mesh, k, kind, recall_target, rows // n_dev if one_step else block, TOP_K_GROUP
  )  # a part's compiled step (cached): its own size in one step, or a scan of blocks
  best_values = np.full((n_queries, k), -np.inf, np.float32)
  best_ids = np.zeros((n_queries, k), np.int32)
  float_scores = kind in ("dot", "cosine")
  dtype = np.float32 if float_scores else np.dtype(corpus.dtype)
  # Float rows are read as they are: the step's own finite flag is the corpus check (queries come checked).
  read = lambda start, size: np.asarray(read_rows(corpus, start, size), dtype)
  if on_host:  # a read-only memory map XLA can read where it lies is scored in place, its pages released after
    view = (lambda start, stop: corpus[start:stop]) if mapped_in_place(corpus) else None
    chunks = host_chunks(read, n_corpus, corpus.shape[1], dtype, chunk, block, mesh, view)
  else:
    chunks = device_chunks(read, n_corpus, corpus.shape[1], dtype, chunk, block, mesh)
  for part, valid, offset, rows in chunks:
    step = step_for(part.shape[0])
    for q0 in range(0, n_queries, q_chunk):
      q = queries[q0 : q0 + q_chunk]
      pad = q_chunk - len(q)
      values, ids, finite = step(
        np.pad(best_values[q0 : q0 + q_chunk], ((0, pad), (0, 0)), constant_values=-np.inf),
        np.pad(best_ids[q0 : q0 + q_chunk], ((0, pad), (0, 0))),
        np.pad(q, ((0, pad), (0, 0))),
        part,
        valid,
        np.int32(offset),
      )
      if float_scores and not bool(finite):
        # Name the row (the exact check, on this chunk only); finite rows whose scores overflow are refused too.
        check_finite(read(offset, rows), "corpus_embeddings", offset=offset)
        raise ValueError(
          f"corpus_embeddings: the scores of rows {offset}..{offset + rows - 1} overflow float32 (finite rows, "
          "values too large for a dot product)"
        )
      # Reading the results back also means this part's buffers are free for the next one.
      best_values[q0 : q0 + q_chunk] = np.asarray(values)[: len(q)]
      best_ids[q0 : q0 + q_chunk] = np.asarray(ids)[: len(q)]
    del part, valid  # before the next chunk is read: never two chunks at once
  return best_values, best_ids


def query_bucket(n: int) -> int:
  """The query rows of a compiled search step: a step's shape is its query count, and a CPU step takes thousands
  of queries, so searches of 500, 501 and 502 queries would each compile (0.3-0.5 s); buckets share one."""
  return count_bucket(n)
