"""semantic_search against sentence-transformers' on random embeddings: ties, top_k > corpus, odd chunk sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sentence_transformers import util

from distilbert_jax import cos_sim, dot_score, semantic_search


def _theirs(q, c, **kw):
  score = util.dot_score if kw.pop("score_function") == "dot" else util.cos_sim
  return util.semantic_search(torch.from_numpy(q), torch.from_numpy(c), score_function=score, **kw)


def _assert_same(ours, theirs):
  assert len(ours) == len(theirs)
  for qi, (a, b) in enumerate(zip(ours, theirs)):
    assert [h["corpus_id"] for h in a] == [h["corpus_id"] for h in b], f"query {qi}"
    np.testing.assert_allclose([h["score"] for h in a], [h["score"] for h in b], atol=1e-5, rtol=1e-5)


def _exact_ranking(queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """[Q, k] exact scores and ids of integer-valued embeddings: score descending, then lower id (int64, no rounding)."""
  scores = queries.astype(np.int64) @ rows.astype(np.int64).T
  ids = np.lexsort((np.broadcast_to(np.arange(len(rows)), scores.shape), -scores), axis=1)[:, :k]
  return np.take_along_axis(scores, ids, 1), ids


@pytest.mark.parametrize("backend", ["faiss", "jax", "numpy"])
@pytest.mark.parametrize("score_function", ["dot", "cos_sim"])
@pytest.mark.parametrize(
  "top_k,query_chunk_size,corpus_chunk_size", [(10, 100, 500_000), (5, 7, 13), (3, 1, 1), (250, 3, 17), (40, 64, 50)]
)
def test_equals_sentence_transformers(score_function, top_k, query_chunk_size, corpus_chunk_size, backend):
  rng = np.random.default_rng(top_k)
  q = rng.normal(size=(37, 24)).astype(np.float32)
  c = rng.normal(size=(203, 24)).astype(np.float32)
  kw = dict(
    top_k=top_k, score_function=score_function, query_chunk_size=query_chunk_size, corpus_chunk_size=corpus_chunk_size
  )
  ours = semantic_search(q, c, backend=backend, **kw)
  _assert_same(ours, _theirs(q, c, **kw))
  assert all(len(hits) == min(top_k, len(c)) for hits in ours)


@pytest.mark.parametrize("backend", ["faiss", "jax", "numpy"])
def test_ties_are_kept_and_ordered_by_corpus_id(backend):
  rng = np.random.default_rng(0)
  base = rng.normal(size=(20, 8)).astype(np.float32)
  corpus = np.concatenate([base, base[:5], base[:5]])  # three copies of 5 documents: exact ties
  queries = base[:4]
  for chunk in (7, 1000):
    ours = semantic_search(
      queries, corpus, top_k=9, query_chunk_size=3, corpus_chunk_size=chunk, score_function="dot", backend=backend
    )
    theirs = _theirs(queries, corpus, top_k=9, score_function="dot", query_chunk_size=3, corpus_chunk_size=chunk)
    for a, b in zip(ours, theirs):
      # The same (score, id) set; ties inside the top-k in a documented order: lower corpus id first.
      assert sorted((round(h["score"], 4), h["corpus_id"]) for h in a) == sorted(
        (round(h["score"], 4), h["corpus_id"]) for h in b
      )
      keys = [(-h["score"], h["corpus_id"]) for h in a]
      assert keys == sorted(keys)


def test_scores_and_edge_cases():
  a = np.array([[1.0, 0.0], [3.0, 4.0]], np.float32)
  np.testing.assert_allclose(dot_score(a, a), a @ a.T)
  np.testing.assert_allclose(cos_sim(a, a), [[1.0, 0.6], [0.6, 1.0]], atol=1e-6)
  assert semantic_search(a[0], a, top_k=5, score_function=dot_score)[0][0] == {
    "corpus_id": 1,
    "score": 3.0,
  }  # 1-D query
  with pytest.raises(ValueError, match=r"corpus embeddings have shape \(2, 3\)"):
    semantic_search(a, np.zeros((2, 3), np.float32))


def _layout(rows, layout, tmp_path, mode="r"):
  """`rows` copied into a 64-byte aligned array, a 4-byte-off one, or a memory map (np.load, `mode`)."""
  from distilbert_jax.search.rows import aligned_empty

  if layout == "aligned":
    corpus = aligned_empty(rows.shape, np.float32)
  elif layout == "unaligned":
    raw = np.empty(rows.size + 16, np.float32)
    start = 1 if raw.ctypes.data % 64 == 0 else 0  # 4 bytes off a 64-byte boundary
    corpus = raw[start : start + rows.size].reshape(rows.shape)
    assert corpus.ctypes.data % 64
  else:
    np.save(tmp_path / "c.npy", rows)
    return np.load(tmp_path / "c.npy", mmap_mode=mode)
  corpus[:] = rows
  return corpus


@pytest.mark.parametrize("one_step", [True, False])
@pytest.mark.parametrize("block", [64, None])
@pytest.mark.parametrize("layout", ["aligned", "unaligned", "memmap"])
def test_cpu_blocked_engine_is_exact_with_ties_on_every_memory_layout(layout, block, one_step, tmp_path, monkeypatch):
  """Integer-valued embeddings: every score is exact in float32 and many tie, so the expected top-k (score
  descending, then corpus id ascending) is known to the letter. Small blocks make full chunks, tails of 4-, 2-
  and 1-block pieces and a padded last block; the corpus is used in place (aligned, and the read-only map),
  staged (unaligned); each part is scored in one step (few queries) or as a scan of blocks (many)."""
  from distilbert_jax.search import engines as scoring

  if block is not None:
    monkeypatch.setattr(scoring, "CPU_SCORE_BLOCK", block)
  monkeypatch.setattr(scoring, "CPU_ONE_STEP_MAX_QUERIES", 10_000 if one_step else 0)
  rng = np.random.default_rng(1)
  rows = rng.integers(-3, 4, size=(2000, 16)).astype(np.float32)
  queries = rng.integers(-3, 4, size=(40, 16)).astype(np.float32)
  corpus = _layout(rows, layout, tmp_path)
  # Lengths whose tails (past whole 512-row chunks of 64-row blocks) are 7, 5 and 8 blocks: pieces of 4, 2, 1.
  for n in (2000, 1536 + 64 * 6 + 5, 1536 + 64 * 4 + 64):
    want_values, want = _exact_ranking(queries, rows[:n], 7)
    for query_chunk_size, corpus_chunk_size in [(5, 300), (100, 500_000), (1, 1000)]:
      values, ids = scoring.top_k_search(
        queries, corpus[:n], "dot", 7, query_chunk_size, corpus_chunk_size, backend="jax"
      )
      np.testing.assert_array_equal(ids, want, err_msg=f"{n=} {query_chunk_size=} {corpus_chunk_size=}")
      np.testing.assert_array_equal(values, want_values)


@pytest.mark.parametrize("layout", ["aligned", "unaligned", "memmap"])
def test_auto_engine_choice_never_changes_a_result(layout, tmp_path, monkeypatch):
  """`auto` picks NumPy's BLAS only for a few queries over an in-RAM array (up to NUMPY_GEMV_MAX_QUERIES, or up to
  CPU_JAX_MIN_QUERIES where the JAX engine would copy it); whatever it picks, the top-k equals every engine's and
  the exact integer ranking, ties by corpus id included."""
  from distilbert_jax.search import engines, host

  picked = []
  numpy_top_k = host.numpy_top_k
  monkeypatch.setattr(host, "numpy_top_k", lambda *a, **kw: picked.append(1) or numpy_top_k(*a, **kw))
  rng = np.random.default_rng(3)
  rows = rng.integers(-2, 3, size=(1500, 16)).astype(np.float32)
  corpus = _layout(rows, layout, tmp_path, mode="r+")
  few = host.NUMPY_GEMV_MAX_QUERIES
  for n in (1, few, few + 1, engines.CPU_JAX_MIN_QUERIES - 1, engines.CPU_JAX_MIN_QUERIES, 30):
    queries = rng.integers(-2, 3, size=(n, 16)).astype(np.float32)
    want_values, want = _exact_ranking(queries, rows, 9)
    picked.clear()
    backends = ("auto", "jax", "faiss", "numpy")
    results = {b: engines.top_k_search(queries, corpus, "dot", 9, 7, 400, backend=b) for b in backends}
    auto_ran_numpy = len(picked) == 2  # the explicit numpy run is one
    in_ram_few = layout != "memmap" and (n <= few or (n < engines.CPU_JAX_MIN_QUERIES and layout == "unaligned"))
    assert auto_ran_numpy == in_ram_few, (n, layout)
    for backend, (values, ids) in results.items():
      np.testing.assert_array_equal(ids, want, err_msg=f"{backend=} {n=}")
      np.testing.assert_array_equal(values, want_values)


def test_the_numpy_engine_keeps_the_score_bound_and_the_exact_ranking(monkeypatch):
  """At most query_chunk_size x corpus_chunk_size scores at a time (sentence-transformers' bound), in blocks of
  rows scored by GEMVs (a query chunk of up to NUMPY_GEMV_MAX_QUERIES) or a GEMM, and the exact integer ranking
  with ties by corpus id."""
  from distilbert_jax.search import engines, host

  monkeypatch.setattr(host, "NUMPY_BLOCK_ROWS", 64)
  shapes = []
  host_scores = host._host_scores
  monkeypatch.setattr(host, "_host_scores", lambda q, p: shapes.append((len(q), len(p))) or host_scores(q, p))
  rng = np.random.default_rng(11)
  rows = rng.integers(-2, 3, size=(700, 8)).astype(np.float32)
  queries = rng.integers(-2, 3, size=(43, 8)).astype(np.float32)  # query chunks of 10 and a last one of 3
  want_values, want = _exact_ranking(queries, rows, 6)
  values, ids = engines.top_k_search(queries, rows, "dot", 6, 10, 300, backend="numpy")
  np.testing.assert_array_equal(ids, want)
  np.testing.assert_array_equal(values, want_values)
  assert max(q * p for q, p in shapes) <= 10 * 300 and sum(q * p for q, p in shapes) == 43 * 700
  assert {q for q, _ in shapes} == {10, 3}


def test_a_read_only_map_is_scored_in_place_and_its_pages_released(tmp_path, monkeypatch):
  """A read-only .npy map is scored where it lies (no copy through `read_mapped`), each part's pages released
  once it is scored (the whole corpus in the end), with the exact ranking; a copy-on-write map is copied."""
  from distilbert_jax.search import chunks, engines, rows

  monkeypatch.setattr(engines, "CPU_SCORE_BLOCK", 64)
  released = []
  monkeypatch.setattr(chunks, "release_pages", lambda view: released.append(view.shape[0]))
  copied = []
  read_mapped = rows.read_mapped
  monkeypatch.setattr(rows, "read_mapped", lambda *a: copied.append(a[1:]) or read_mapped(*a))
  rng = np.random.default_rng(5)
  data = rng.integers(-3, 4, size=(1300, 16)).astype(np.float32)
  queries = rng.integers(-3, 4, size=(3, 16)).astype(np.float32)
  _, want = _exact_ranking(queries, data, 6)
  mapped = _layout(data, "memmap", tmp_path)
  _, ids = engines.top_k_search(queries, mapped, "dot", 6, backend="jax")
  np.testing.assert_array_equal(ids, want)
  assert copied == [] and sum(released) == len(data) and len(released) == 4  # 512 + 512 + tail pieces 256, 20
  released.clear()
  _, ids = engines.top_k_search(queries, _layout(data, "memmap", tmp_path, mode="c"), "dot", 6, backend="jax")
  np.testing.assert_array_equal(ids, want)
  assert copied and released == []


@pytest.mark.parametrize("layout", ["aligned", "unaligned", "memmap"])
@pytest.mark.parametrize("n_queries", [1, 40, 200])
@pytest.mark.parametrize("block, group, chunk_rows", [(64, 64, "512..1023"), (128, 4, "0..1023")])
def test_non_finite_or_overflowing_corpus_rows_are_named_by_every_engine(
  layout, n_queries, block, group, chunk_rows, tmp_path, monkeypatch
):
  """The JAX engine checks the corpus inside its scan, on the scores, whether the block's top-k is plain or grouped
  (groups of 4 here; the group maxima may drop a NaN): a NaN or inf past the first chunk, in the tail blocks, is
  named by row, and finite rows whose dot products overflow float32 are refused, not ranked."""
  from distilbert_jax.search import engines

  monkeypatch.setattr(engines, "CPU_SCORE_BLOCK", block)  # chunks of 8 blocks, then a tail of blocks
  monkeypatch.setattr(engines, "TOP_K_GROUP", group)
  rng = np.random.default_rng(4)
  queries = rng.normal(size=(n_queries, 16)).astype(np.float32)
  for row, value in [(1337, np.nan), (700, np.inf), (5, -np.inf)]:
    rows = rng.normal(size=(1400, 16)).astype(np.float32)
    rows[row, 3] = value
    corpus = _layout(rows, layout, tmp_path)
    for backend in ("auto", "jax", "faiss", "numpy"):
      with pytest.raises(ValueError, match=f"corpus_embeddings: row {row} holds NaN or inf"):
        engines.top_k_search(queries, corpus, "dot", 5, backend=backend)
  rows = rng.normal(size=(1400, 16)).astype(np.float32)
  rows[900] = 1.5e37  # finite, its sum too (2.4e38), but not its dot products with these queries
  corpus = _layout(rows, layout, tmp_path)
  with pytest.raises(ValueError, match=rf"corpus_embeddings: the scores of rows {chunk_rows} overflow float32"):
    engines.top_k_search(np.abs(queries) + 2, corpus, "dot", 5, backend="jax")
  for backend in ("auto", "faiss", "numpy"):
    with pytest.raises(ValueError, match=r"corpus_embeddings: the scores of rows \d+\.\.\d+ overflow float32"):
      engines.top_k_search(np.abs(queries) + 2, corpus, "dot", 5, backend=backend)


def test_searches_of_similar_query_counts_share_one_compiled_step():
  """A CPU step takes thousands of queries, so its shape would follow every query count: 490..511 queries must
  not compile eight times, and the padded query rows change no result."""
  import jax

  from distilbert_jax.core.devices import data_mesh
  from distilbert_jax.search import engines as scoring

  rng = np.random.default_rng(2)
  corpus = rng.integers(-3, 4, size=(3000, 16)).astype(np.float32)
  queries = rng.integers(-3, 4, size=(520, 16)).astype(np.float32)
  for n in range(490, 512, 3):
    _, ids = scoring.top_k_search(queries[:n], corpus, "dot", 5, backend="jax")
    np.testing.assert_array_equal(ids, _exact_ranking(queries[:n], corpus, 5)[1])
  step = scoring._chunk_search_fn(data_mesh(jax.local_devices()), 5, "dot", None, len(corpus), scoring.TOP_K_GROUP)
  assert step._cache_size() == 1, step._cache_size()


@settings(max_examples=60, deadline=None)
@given(
  n_queries=st.integers(1, 6),
  n_groups=st.integers(4, 24),
  group=st.sampled_from([1, 2, 4, 8]),
  k=st.integers(1, 6),
  n_valid_fraction=st.floats(0, 1),
  levels=st.integers(1, 5),
  seed=st.integers(0, 2**16),
)
def test_grouped_top_k_equals_top_k_with_ties_and_a_valid_prefix(
  n_queries, n_groups, group, k, n_valid_fraction, levels, seed
):
  """Few distinct score levels make ties everywhere; the valid prefix ends anywhere, inside a group too. The
  expected order is the exact one: score descending, then the lower column."""
  import jax.numpy as jnp

  from distilbert_jax.search.engines import grouped_top_k

  k = min(k, n_groups)
  width = n_groups * group
  n_valid = round(n_valid_fraction * width)
  scores = np.random.default_rng(seed).integers(0, levels, size=(n_queries, width)).astype(np.float32)
  values, ids = grouped_top_k(jnp.asarray(scores), jnp.int32(n_valid), k, group)
  masked = np.where(np.arange(width) < n_valid, scores, -np.inf)
  want = np.lexsort((np.broadcast_to(np.arange(width), masked.shape), -masked), axis=1)[:, :k]
  np.testing.assert_array_equal(np.asarray(values), np.take_along_axis(masked, want, 1))
  valid = np.take_along_axis(masked, want, 1) > -np.inf  # the ids of -inf fillers are not ranked
  np.testing.assert_array_equal(np.asarray(ids)[valid], want[valid])


def test_cpu_engine_with_grouped_block_top_k_is_exact(monkeypatch):
  """The engine path that takes grouped_top_k (small groups and blocks here, so that it runs at test sizes): full
  blocks, a partly valid last block and tied scores give the exact top-k, as the plain top-k path does."""
  from distilbert_jax.search import engines as scoring

  monkeypatch.setattr(scoring, "CPU_SCORE_BLOCK", 256)
  monkeypatch.setattr(scoring, "TOP_K_GROUP", 8)
  traced = []
  grouped = scoring.group_candidates
  monkeypatch.setattr(scoring, "group_candidates", lambda *a: traced.append(a[2:]) or grouped(*a))
  rng = np.random.default_rng(3)
  corpus = rng.integers(-2, 3, size=(2100, 16)).astype(np.float32)
  queries = rng.integers(-2, 3, size=(30, 16)).astype(np.float32)
  want_values, want = _exact_ranking(queries, corpus, 7)
  values, ids = scoring.top_k_search(queries, corpus, "dot", 7, backend="jax")
  assert traced and all(args == (7, 8) for args in traced), traced  # the grouped path ran (k 7, groups of 8)
  np.testing.assert_array_equal(ids, want)
  np.testing.assert_array_equal(values, want_values)
