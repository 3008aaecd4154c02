"""Similarity functions and chunked top-k search, as sentence-transformers' `util`, jit-compiled and spread over
devices.

Every function takes NumPy arrays, JAX arrays, torch tensors and nested lists (1-D inputs are one row). A score
matrix comes back as a `jax.Array`, or as a `torch.Tensor` when an input was one (so code written for
sentence-transformers keeps working on what it gets back). Non-finite embeddings are an error, never a score.

`semantic_search` returns sentence-transformers' structure: per query, a list of {"corpus_id", "score"} sorted by
score. Ties are broken towards the lower corpus id. Memory is bounded by the chunk sizes: each corpus chunk is
split across the devices, each device keeps its own top-k, and one merge per chunk keeps the global top-k.
"""

from __future__ import annotations

import functools
import heapq
import logging
import mmap
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from distilbert_jax.core.checks import positive_int
from distilbert_jax.core.devices import data_mesh
from distilbert_jax.model.pooling import normalize

HIGHEST = jax.lax.Precision.HIGHEST
logger = logging.getLogger(__name__)


def _is_torch(x: Any) -> bool:
  return type(x).__module__.split(".")[0] == "torch"


def as_numpy(x: Any, what: str = "embeddings") -> np.ndarray:
  """NumPy, JAX, torch (any device, bfloat16 too) or nested lists -> a NumPy array (float32 if floating)."""
  if _is_torch(x):
    x = x.detach().cpu()
    x = (x.float() if x.is_floating_point() else x).numpy()
  elif isinstance(x, (list, tuple)) and x and not isinstance(x[0], (int, float, list, tuple, np.number)):
    x = np.stack([as_numpy(row, what) for row in x])  # a list of tensors or arrays, one per row
  try:
    array = np.asarray(x)
  except ValueError as e:
    raise ValueError(f"{what}: not a rectangular array ({e})") from None
  if array.dtype == object or array.dtype.kind not in "fiub":
    raise TypeError(f"{what}: expected numbers, got dtype {array.dtype}")
  return array.astype(np.float32) if array.dtype.kind == "f" or array.dtype.kind == "b" else array


def _rows(x: Any, what: str) -> np.ndarray:
  """[N, D] float32 rows, checked finite (a NaN would otherwise rank anywhere without a word)."""
  array = as_numpy(x, what).astype(np.float32)
  if array.ndim == 1:
    array = array[None]
  if array.ndim != 2:
    raise ValueError(f"{what}: expected [N, D] or [D], got shape {array.shape}")
  check_finite(array, what)
  return array


def check_finite(array: np.ndarray, what: str, offset: int = 0) -> None:
  """Raises naming the first row that holds NaN or inf. One pass of row sums per chunk (a NaN or inf anywhere in a
  row makes its sum non-finite; a sum that overflows means the scores would too), no array-sized mask: this runs
  on every corpus chunk, and at 1M x 768 a float64 sum cost 7% of a search. The sums come from einsum's own
  single-threaded loop, not a BLAS matrix-vector product: that is as fast (the pass is bound by memory), while
  BLAS wakes NumPy's OpenBLAS threads, which then spin beside faiss' threads (a 20k-row faiss search took 2x)."""
  array = np.asarray(array)
  rows = array.reshape(-1, array.shape[-1]) if array.ndim else array.reshape(1, 1)
  sums = np.einsum("ij->i", rows) if rows.dtype.kind == "f" else None
  if sums is None or np.isfinite(sums).all():
    return
  bad = ~np.isfinite(sums)
  row = int(np.argmax(bad))
  raise ValueError(f"{what}: row {offset + row} holds NaN or inf, or overflows float32 ({int(bad.sum())} rows in all)")


def _like(result: jax.Array, *inputs: Any):
  if any(_is_torch(x) for x in inputs):
    import torch

    return torch.from_numpy(np.array(result))
  return result


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


def _pairwise(a: Any, b: Any, fn: Callable) -> Any:
  x, y = _rows(a, "embeddings_a"), _rows(b, "embeddings_b")
  if x.shape != y.shape:
    raise ValueError(f"pairwise scores need equal shapes, got {x.shape} and {y.shape}")
  return _like(fn(jnp.asarray(x), jnp.asarray(y)), a, b)


def dot_score(a: Any, b: Any):
  """[Na, D] x [Nb, D] -> [Na, Nb] dot products (float32, full precision)."""
  return _like(_dot(_rows(a, "embeddings_a"), _rows(b, "embeddings_b")), a, b)


def cos_sim(a: Any, b: Any):
  """[Na, D] x [Nb, D] -> [Na, Nb] cosine similarities (norms clamped at 1e-12, as torch's normalize)."""
  return _like(_cos(_rows(a, "embeddings_a"), _rows(b, "embeddings_b")), a, b)


def euclidean_sim(a: Any, b: Any):
  """[Na, Nb] negative Euclidean distances."""
  return _like(_euclidean(_rows(a, "embeddings_a"), _rows(b, "embeddings_b")), a, b)


def manhattan_sim(a: Any, b: Any):
  """[Na, Nb] negative Manhattan distances."""
  return _like(_manhattan(_rows(a, "embeddings_a"), _rows(b, "embeddings_b")), a, b)


def pairwise_dot_score(a: Any, b: Any):
  return _pairwise(a, b, jax.jit(lambda x, y: jnp.sum(x * y, -1)))


def pairwise_cos_sim(a: Any, b: Any):
  return _pairwise(a, b, jax.jit(lambda x, y: jnp.sum(normalize(x) * normalize(y), -1)))


def pairwise_euclidean_sim(a: Any, b: Any):
  return _pairwise(a, b, jax.jit(lambda x, y: -jnp.sqrt(jnp.sum((x - y) ** 2, -1))))


def pairwise_manhattan_sim(a: Any, b: Any):
  return _pairwise(a, b, jax.jit(lambda x, y: -jnp.sum(jnp.abs(x - y), -1)))


# sentence-transformers' similarity_fn_name values -> (matrix, pairwise) functions.
SIMILARITY_FUNCTIONS: dict[str, tuple[Callable, Callable]] = {
  "cosine": (cos_sim, pairwise_cos_sim),
  "dot": (dot_score, pairwise_dot_score),
  "euclidean": (euclidean_sim, pairwise_euclidean_sim),
  "manhattan": (manhattan_sim, pairwise_manhattan_sim),
}
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


SCORE_KINDS = ("dot", "cosine", "int", "hamming")


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


@functools.lru_cache(maxsize=32)
def _chunk_search_fn(mesh: jax.sharding.Mesh, k: int, kind: str, recall_target: float | None, block: int):
  """Per corpus chunk: local top-k on each device's shard, all-gathered, merged with the running top-k.
  Each shard is scanned `block` rows at a time (scores of one block [Q, block], its top-k merged into the shard's
  running top-k), so the scores never leave the cache on CPU; block = the whole shard is one step.
  `recall_target` (TPU only, decided by the caller): jax.lax.approx_max_k instead of the exact top_k."""

  def block_top_k(scores, k_local):
    if recall_target is None:
      return jax.lax.top_k(scores, k_local)
    return jax.lax.approx_max_k(scores, k_local, recall_target=recall_target)

  def local_top_k(queries, corpus, corpus_valid, offset):  # runs per device on its corpus shard
    rows = corpus.shape[0]
    k_local = min(k, block)

    def scan_block(best, xs):
      part, valid, start = xs  # [block, D], [block], the block's first row
      scores = jnp.where(valid[None, :], chunk_scores(kind, queries, part), -jnp.inf)  # [Q, block]
      values, idx = block_top_k(scores, k_local)
      # The running best comes first: top_k prefers lower positions, so equal scores keep the lower corpus id.
      values, where = jax.lax.top_k(jnp.concatenate([best[0], values], 1), best[0].shape[1])
      ids = jnp.take_along_axis(jnp.concatenate([best[1], idx + start], 1), where, 1)
      return (values, ids), None

    k_shard = min(k, rows)
    n_queries = queries.shape[0]
    init = (jnp.full((n_queries, k_shard), -jnp.inf, jnp.float32), jnp.zeros((n_queries, k_shard), jnp.int32))
    blocks = (
      corpus.reshape(rows // block, block, corpus.shape[1]),
      corpus_valid.reshape(rows // block, block),
      jnp.arange(0, rows, block, dtype=jnp.int32),
    )
    (values, idx), _ = jax.lax.scan(scan_block, init, blocks)
    ids = idx + offset + jax.lax.axis_index("data") * rows
    return jax.lax.all_gather(values, "data", axis=1, tiled=True), jax.lax.all_gather(ids, "data", axis=1, tiled=True)

  sharded = jax.shard_map(
    local_top_k,
    mesh=mesh,
    in_specs=(PartitionSpec(), PartitionSpec("data"), PartitionSpec("data"), PartitionSpec()),
    out_specs=(PartitionSpec(), PartitionSpec()),
    check_vma=False,
  )

  @jax.jit
  def step(best_values, best_ids, queries, corpus, corpus_valid, offset):
    values, ids = sharded(queries, corpus, corpus_valid, offset)
    # Candidates stand in corpus order of their sources: the running best (earlier chunks), then each device's
    # shard, each list with equal scores by id. top_k prefers lower positions, so ties keep the lower corpus id.
    values, order = jax.lax.top_k(jnp.concatenate([best_values, values], axis=1), k)
    return values, jnp.take_along_axis(jnp.concatenate([best_ids, ids], axis=1), order, 1)

  return step


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
  IndexFlatIP on the host), or "auto": faiss for fewer than 16 queries on CPU devices when faiss-cpu is installed
  (one memory-bound pass, where faiss' scan is faster), else jax. Both engines are tested to agree.
  `recall_target`: on TPU, jax.lax.approx_max_k with that expected recall; exact top-k elsewhere.
  The corpus may be anything with `shape` and row slicing (a memory map, `load_embeddings`' shards): one
  chunk is read at a time.
  """
  query_chunk_size = positive_int(query_chunk_size, "query_chunk_size")
  corpus_chunk_size = positive_int(corpus_chunk_size, "corpus_chunk_size")
  top_k = positive_int(top_k, "top_k")
  fast = _fast_score(score_function)
  queries = _rows(query_embeddings, "query_embeddings")
  if hasattr(corpus_embeddings, "shape") and not _is_torch(corpus_embeddings):
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


_warned_no_faiss = False


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
  global _warned_no_faiss
  if kind not in SCORE_KINDS:
    raise ValueError(f"score kind {kind!r} is not one of {SCORE_KINDS}")
  if backend not in ("auto", "jax", "faiss"):
    raise ValueError(f"backend {backend!r} is not one of ('auto', 'jax', 'faiss')")
  if recall_target is not None and not 0 < recall_target <= 1:
    raise ValueError(f"recall_target must be in (0, 1], got {recall_target}")
  n_queries, n_corpus = len(queries), int(corpus.shape[0])
  k = min(top_k, n_corpus)
  if n_queries == 0 or k == 0:
    return np.zeros((n_queries, 0), np.float32), np.zeros((n_queries, 0), np.int64)
  devices = list(devices) if devices is not None else jax.local_devices()
  on_cpu = all(d.platform == "cpu" for d in devices)
  if backend == "auto" and kind in ("dot", "cosine") and on_cpu and n_queries < CPU_JAX_MIN_QUERIES:
    # A handful of queries is one pass over the corpus, bound by memory: faiss' scan is faster there; from
    # CPU_JAX_MIN_QUERIES on, the blocked JAX engine is (benchmarks/search_crossover.py; README "Search").
    try:
      import faiss  # noqa: F401

      backend = "faiss"
    except ImportError:
      if not _warned_no_faiss:
        logger.warning(
          f"faiss-cpu is not installed: searches of fewer than {CPU_JAX_MIN_QUERIES} queries run on the JAX path, "
          "up to 3x slower on CPU than faiss' scan (pip install 'distilbert-jax[search]')"
        )
        _warned_no_faiss = True
  if backend == "faiss":
    if kind not in ("dot", "cosine"):
      raise ValueError(f"the faiss backend computes dot and cosine scores, not {kind!r}")
    return _faiss_top_k(queries, corpus, kind == "cosine", k, corpus_chunk_size)
  if on_cpu:
    # Scores in cache-sized blocks: a [Q, 8192] block of scores stays in cache between the GEMM and its top-k.
    # The scores of one step are then [Q, 8192], not [Q, corpus chunk], so a step takes as many queries as keep
    # sentence-transformers' bound (query_chunk_size x corpus_chunk_size scores): one pass over the corpus
    # chunk serves them all (at 100 queries a step the same search ran at half the speed).
    # The corpus goes in chunks of CPU_CHUNK_BLOCKS blocks: a chunk that must be copied (the corpus' last rows, an
    # unaligned array, a memory map) reuses one staging buffer of that size.
    block = min(CPU_SCORE_BLOCK, corpus_chunk_size)
    step_queries = max(query_chunk_size, query_chunk_size * corpus_chunk_size // block)
    chunk = min(corpus_chunk_size, block * CPU_CHUNK_BLOCKS)
    return _sharded_top_k(queries, corpus, kind, k, step_queries, chunk, devices, None, block)
  tpu = all(d.platform == "tpu" for d in devices)
  return _sharded_top_k(
    queries, corpus, kind, k, query_chunk_size, corpus_chunk_size, devices, recall_target if tpu else None
  )


CPU_JAX_MIN_QUERIES = 16  # "auto" on CPU: fewer go to faiss (search_crossover.py: JAX 0.74x at 8, 1.11x at 16)
CPU_SCORE_BLOCK = 8192  # corpus rows per scoring block on CPU (on this VM 4,096 was slower, 16,384 no faster)
CPU_CHUNK_BLOCKS = 8  # blocks per corpus chunk on CPU: 65,536 rows, 192 MiB at 768-d float32


def merge_top_k(
  values: np.ndarray, ids: np.ndarray, more_values: np.ndarray, more_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
  """The k best of two candidate sets per row: score descending, then corpus id ascending."""
  values, ids = np.concatenate([values, more_values], 1), np.concatenate([ids, more_ids], 1)
  order = np.lexsort((ids, -values), axis=-1)[:, :k]
  return np.take_along_axis(values, order, 1), np.take_along_axis(ids, order, 1)


READ_BLOCK_BYTES = 16 << 20  # memory-mapped rows are copied this much at a time, each block's pages then released
HOST_ALIGNMENT = 64  # XLA:CPU computes on a host array without copying it when its data is aligned to this


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
  """np.empty, with the data aligned to HOST_ALIGNMENT bytes (NumPy aligns to 16)."""
  dtype = np.dtype(dtype)
  raw = np.empty(int(np.prod(shape)) * dtype.itemsize + HOST_ALIGNMENT, np.uint8)
  skip = -raw.ctypes.data % HOST_ALIGNMENT
  return raw[skip : skip + int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)


def read_rows(corpus: Any, start: int, size: int) -> np.ndarray:
  """Rows [start, start + size): a view of an in-memory array, or a copy of memory-mapped ones made a block at a
  time, each block's pages released once copied, so scanning a corpus larger than memory keeps the process at
  about one chunk (mapped file pages would otherwise stay in its resident set until the kernel needs them)."""
  pieces = list(_mapped_pieces(corpus, start, start + size))
  rows = min(start + size, int(corpus.shape[0])) - start
  if not pieces or sum(hi - lo for _, lo, hi, _ in pieces) != rows:  # in memory (or partly): plain slicing
    return np.asarray(corpus[start : start + size])
  out = aligned_empty((sum(hi - lo for _, lo, hi, _ in pieces), corpus.shape[1]), pieces[0][0].dtype)
  for array, lo, hi, at in pieces:
    row_bytes = array.strides[0]
    step = max(1, READ_BLOCK_BYTES // row_bytes)
    base = array.offset % mmap.ALLOCATIONGRANULARITY  # where the array starts inside its mmap object
    for r in range(lo, hi, step):
      end = min(r + step, hi)
      out[at + r - lo : at + end - lo] = array[r:end]
      first = base + r * row_bytes
      page = first - first % mmap.PAGESIZE
      array._mmap.madvise(mmap.MADV_DONTNEED, page, base + end * row_bytes - page)
  return out


def _mapped_pieces(corpus: Any, start: int, stop: int):
  """(memmap, first row, end row, row in the output) of each memory-mapped array that rows [start, stop) come
  from: the corpus itself, or the shards of load_embeddings' EmbeddingShards."""
  if isinstance(corpus, np.memmap) and getattr(corpus, "_mmap", None) is not None:
    yield corpus, start, min(stop, len(corpus)), 0
  for array, offset in zip(getattr(corpus, "arrays", []), getattr(corpus, "offsets", [])):
    lo, hi = max(start - int(offset), 0), min(stop - int(offset), len(array))
    if lo < hi and isinstance(array, np.memmap) and getattr(array, "_mmap", None) is not None:
      yield array, lo, hi, int(offset) + lo - start


def _float_chunk(corpus: Any, start: int, size: int) -> np.ndarray:
  part = np.ascontiguousarray(read_rows(corpus, start, size), np.float32)
  check_finite(part, "corpus_embeddings", offset=start)
  return part


def _faiss_top_k(
  queries: np.ndarray, corpus: Any, cosine: bool, k: int, corpus_chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
  import faiss

  unit = lambda x: np.ascontiguousarray(np.asarray(normalize(jnp.asarray(x))))
  queries = unit(queries) if cosine else np.ascontiguousarray(queries)
  best_values = np.full((len(queries), 0), -np.inf, np.float32)
  best_ids = np.zeros((len(queries), 0), np.int64)
  for c0 in range(0, int(corpus.shape[0]), corpus_chunk_size):
    part = _float_chunk(corpus, c0, corpus_chunk_size)
    # faiss.knn: IndexFlatIP's exact search without copying the chunk into an index.
    values, idx = faiss.knn(
      queries, unit(part) if cosine else part, min(k, len(part)), metric=faiss.METRIC_INNER_PRODUCT
    )
    best_values, best_ids = merge_top_k(best_values, best_ids, values, idx + c0, k)
  return best_values, best_ids


@functools.lru_cache(maxsize=8)
def _put_rows_fn(sharding: NamedSharding):
  """buffer[at : at + len(rows)] = rows, in place: the buffer is donated, the result keeps its sharding."""

  def put(buffer, rows, at):
    room = buffer.shape[0] - rows.shape[0]  # a block that would run past the end is written earlier and clipped
    start = jnp.minimum(at, room)
    shift = at - start
    rows = jnp.roll(rows, shift, axis=0)
    current = jax.lax.dynamic_slice_in_dim(buffer, start, rows.shape[0], 0)
    keep = (jnp.arange(rows.shape[0]) < shift)[:, None]
    return jax.lax.dynamic_update_slice_in_dim(buffer, jnp.where(keep, current, rows), start, 0)

  return jax.jit(put, donate_argnums=0, out_shardings=sharding)


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
) -> tuple[np.ndarray, np.ndarray]:
  """`block_rows`: each device scans its shard this many rows at a time (None: the whole shard in one step)."""
  mesh = data_mesh(devices)
  n_dev = mesh.devices.size
  n_queries, n_corpus = len(queries), int(corpus.shape[0])
  shard = -(-min(corpus_chunk_size, n_corpus) // n_dev)  # rows per device of one fixed corpus chunk shape
  block = shard if block_rows is None else min(block_rows, shard)
  chunk = -(-shard // block) * block * n_dev  # whole blocks per device; rows past the corpus are masked
  q_chunk = min(query_chunk_size, query_bucket(n_queries))
  step = _chunk_search_fn(mesh, k, kind, recall_target, block)
  best_values = np.full((n_queries, k), -np.inf, np.float32)
  best_ids = np.zeros((n_queries, k), np.int32)
  dtype = np.float32 if kind in ("dot", "cosine") else np.dtype(corpus.dtype)
  read = lambda start, size: (
    _float_chunk(corpus, start, size) if dtype == np.float32 else read_rows(corpus, start, size)
  )
  on_host = n_dev == 1 and mesh.devices.flat[0].platform == "cpu"
  chunks = _host_chunks if on_host else _device_chunks
  for part, valid, offset in chunks(read, n_corpus, corpus.shape[1], dtype, chunk, block, mesh):
    for q0 in range(0, n_queries, q_chunk):
      q = queries[q0 : q0 + q_chunk]
      pad = q_chunk - len(q)
      values, ids = step(
        np.pad(best_values[q0 : q0 + q_chunk], ((0, pad), (0, 0)), constant_values=-np.inf),
        np.pad(best_ids[q0 : q0 + q_chunk], ((0, pad), (0, 0))),
        np.pad(q, ((0, pad), (0, 0))),
        part,
        valid,
        np.int32(offset),
      )
      # Reading the results back also means this part's buffers are free for the next one.
      best_values[q0 : q0 + q_chunk] = np.asarray(values)[: len(q)]
      best_ids[q0 : q0 + q_chunk] = np.asarray(ids)[: len(q)]
  return best_values, best_ids


def query_bucket(n: int) -> int:
  """n rounded up to 4, 5, 6 or 7 times a power of two (at least 8): the query rows of a compiled search step.
  A step's shape is its query count, and a CPU step takes thousands of queries, so searches of 500, 501 and 502
  queries would each compile (0.3-0.5 s); buckets share one compilation for at most 25% padded rows."""
  if n <= 8:
    return 8
  shift = n.bit_length() - 3
  return -(-n >> shift) << shift  # ceil(n / 2**shift), one of 4..8, times 2**shift


def _device_chunks(read: Callable, n_corpus: int, dim: int, dtype, chunk: int, block: int, mesh):
  """(device chunk, valid mask, first row) per `chunk` rows. The device chunk is filled a read block at a time, in
  place (donated): never a host copy of the whole chunk next to the device one. Rows past the corpus end keep
  older values; the mask hides them."""
  n_dev = mesh.devices.size
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  part = jax.device_put(np.zeros((chunk, dim), dtype), sharding)
  put_rows = _put_rows_fn(sharding)
  read_block = min(chunk, max(n_dev, READ_BLOCK_BYTES // (dim * np.dtype(dtype).itemsize) // n_dev * n_dev))
  for c0 in range(0, n_corpus, chunk):
    rows = min(chunk, n_corpus - c0)
    for b0 in range(0, rows, read_block):
      size = min(read_block, rows - b0)
      rows_read = read(c0 + b0, size)
      if size < read_block:  # the chunk's last block, padded to the one compiled block shape
        rows_read = np.pad(rows_read, ((0, read_block - size), (0, 0)))
      part = put_rows(part, rows_read, np.int32(b0))
    yield part, jax.device_put(np.arange(chunk) < rows, sharding), c0


def _host_chunks(read: Callable, n_corpus: int, dim: int, dtype, chunk: int, block: int, mesh):
  """The same for one CPU device, which computes on host memory: XLA takes a 64-byte-aligned host array without a
  copy, so a chunk is the corpus' own rows where they are aligned (else one reused aligned staging copy). The
  corpus' last rows go a block at a time, so at most one block is padding (two compiled shapes)."""
  device = mesh.devices.flat[0]
  staging = {}  # size -> one aligned buffer, reused (fresh large allocations cost page faults of scoring's order)
  for c0 in range(0, n_corpus, chunk):
    sizes = [chunk] if n_corpus - c0 >= chunk else [block] * -(-(n_corpus - c0) // block)
    for p0, size in zip(np.cumsum([c0] + sizes[:-1]), sizes):
      rows = min(size, n_corpus - int(p0))
      part = read(int(p0), rows)
      if rows < size or part.ctypes.data % HOST_ALIGNMENT or not part.flags.c_contiguous:
        if size not in staging:
          staging[size] = aligned_empty((size, dim), dtype)
        buffer = staging[size]
        buffer[:rows], buffer[rows:] = part, 0
        part = buffer
      yield jax.device_put(part, device), jax.device_put(np.arange(size) < rows, device), int(p0)


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
  to_callers = (lambda a: __import__("torch").from_numpy(a)) if _is_torch(original_queries) else (lambda a: a)
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
  rows = _rows(embeddings, "embeddings")
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
  rows = np.asarray(normalize(jnp.asarray(_rows(embeddings, "embeddings"))))
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
