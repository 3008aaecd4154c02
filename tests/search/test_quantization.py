"""Quantized embeddings and search: codes equal sentence-transformers' `quantize_embeddings`; quantized search
equals a NumPy brute force over the same codes; rescoring; the faiss and JAX engines agree; corpus jobs written
quantized or truncated and searched."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from sentence_transformers.util import quantize_embeddings as theirs

from distilbert_jax import load_embeddings
from distilbert_jax.jobs.encode_corpus import run_job
from distilbert_jax.search import quantization
from distilbert_jax.search.engines import top_k_search

PRECISIONS = ("int8", "uint8", "binary", "ubinary")
CLI = (sys.executable, "-m", "distilbert_jax.cli")


def _embeddings(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


@pytest.mark.parametrize("precision", PRECISIONS + ("float32",))
def test_codes_equal_sentence_transformers(precision):
  corpus, queries = _embeddings(500), _embeddings(20, seed=1)
  for kwargs in ({}, {"calibration_embeddings": corpus}, {"ranges": quantization.quantization_ranges(corpus, "int8")}):
    data = queries if kwargs else corpus
    ours, ref = quantization.quantize_embeddings(data, precision, **kwargs), theirs(data, precision, **kwargs)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    if precision.endswith("int8"):
      off = np.abs(ours.astype(np.int32) - ref.astype(np.int32))
      assert off.max() <= 1 and (off > 0).mean() <= 1e-3, (off.max(), (off > 0).mean())
    else:
      np.testing.assert_array_equal(ours, ref)


def _brute_force(q_codes: np.ndarray, c_codes: np.ndarray, precision: str) -> np.ndarray:
  """[Q, C] scores over the codes, as the search defines them: integer dot products, or minus Hamming."""
  if precision.endswith("int8"):
    centre = 128 if precision == "uint8" else 0  # uint8 codes are centred, so both rank alike
    return (q_codes.astype(np.int64) - centre) @ (c_codes.astype(np.int64) - centre).T
  q_bits = np.unpackbits(
    q_codes.view(np.uint8) if precision == "ubinary" else (q_codes.astype(np.int16) + 128).astype(np.uint8), axis=1
  )
  c_bits = np.unpackbits(
    c_codes.view(np.uint8) if precision == "ubinary" else (c_codes.astype(np.int16) + 128).astype(np.uint8), axis=1
  )
  return -(q_bits[:, None, :] != c_bits[None, :, :]).sum(-1)


def _assert_same_top_k(hits, scores: np.ndarray, k: int) -> None:
  """Scores equal the brute force's k best; ids agree wherever the score does not tie."""
  for row, got in zip(scores, hits):
    best = np.sort(row)[::-1][:k]
    np.testing.assert_allclose([h["score"] for h in got], best, rtol=1e-6)
    for h in got:
      assert row[h["corpus_id"]] == pytest.approx(h["score"], rel=1e-6)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("corpus_chunk_size", [1000, 97])
def test_quantized_search_equals_numpy_brute_force(precision, corpus_chunk_size):
  corpus, queries = _embeddings(700), _embeddings(13, seed=2)
  ranges = quantization.quantization_ranges(corpus, "int8")
  c_codes = quantization.quantize_embeddings(corpus, precision, ranges=ranges)
  q_codes = quantization.quantize_embeddings(queries, precision, ranges=ranges)
  hits = quantization.quantized_semantic_search(
    queries,
    c_codes,
    precision,
    top_k=9,
    rescore=False,
    ranges=ranges,
    corpus_chunk_size=corpus_chunk_size,
    query_chunk_size=5,
  )
  _assert_same_top_k(hits, _brute_force(q_codes, c_codes, precision), 9)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_rescoring_reranks_the_candidates_with_float_queries(precision):
  corpus, queries = _embeddings(400), _embeddings(7, seed=3)
  ranges = quantization.quantization_ranges(corpus, "int8")
  c_codes = quantization.quantize_embeddings(corpus, precision, ranges=ranges)
  q_codes = quantization.quantize_embeddings(queries, precision, ranges=ranges)
  hits = quantization.quantized_semantic_search(
    queries, c_codes, precision, top_k=5, rescore_multiplier=4, ranges=ranges
  )
  coarse = _brute_force(q_codes, c_codes, precision)
  restored = quantization.dequantize(c_codes, precision, ranges, corpus.shape[1])
  for q, got in enumerate(hits):
    candidates = np.lexsort((np.arange(len(corpus)), -coarse[q]))[:20]  # the 20 best codes, ties by lower id
    exact = restored[candidates] @ queries[q].astype(np.float64)
    assert [h["score"] for h in got] == pytest.approx(np.sort(exact)[::-1][:5], rel=1e-6)
    assert {h["corpus_id"] for h in got} <= set(candidates.tolist())
  float_top = np.argsort(-(queries @ corpus.T), axis=1)[:, :5]
  recall = np.mean([len({h["corpus_id"] for h in got} & set(t)) / 5 for got, t in zip(hits, float_top)])
  assert recall >= (0.8 if precision.endswith("int8") else 0.2), recall  # random: 0.05; 64 bits are coarse


@pytest.mark.parametrize("kind", ["dot", "cosine"])
def test_faiss_and_jax_engines_agree(kind):
  corpus, queries = _embeddings(3000, 48), _embeddings(31, 48, seed=4)
  a_values, a_ids = top_k_search(queries, corpus, kind, 10, corpus_chunk_size=700, backend="faiss")
  b_values, b_ids = top_k_search(queries, corpus, kind, 10, query_chunk_size=8, corpus_chunk_size=700, backend="jax")
  np.testing.assert_allclose(a_values, b_values, rtol=1e-5, atol=1e-5)
  assert (a_ids == b_ids).mean() >= 0.999  # float rounding may swap near-ties only


def test_bad_precision_and_mismatched_codes_are_refused():
  with pytest.raises(ValueError, match="precision 'int4' is not one of"):
    quantization.quantize_embeddings(_embeddings(5), "int4")
  with pytest.raises(ValueError, match="corpus_embeddings have dtype float32, not the codes of corpus_precision"):
    quantization.quantized_semantic_search(_embeddings(2), _embeddings(5), "int8")
  with pytest.raises(ValueError, match="cannot compute int8 quantization ranges from a single embedding"):
    quantization.quantize_embeddings(_embeddings(1), "int8")


@pytest.mark.parametrize("precision", ["int8", "binary"])
def test_corpus_job_written_quantized_and_searched(tiny_checkpoint, tmp_path, precision):
  texts = [f"document {i} about {'cells mice vitamin protein'.split()[i % 4]} number {i * 7}" for i in range(120)]
  (tmp_path / "corpus.txt").write_text("\n".join(texts) + "\n")
  out = tmp_path / precision
  run_job(
    tmp_path / "corpus.txt",
    str(tiny_checkpoint),
    out,
    shard_size=50,
    show_progress=False,
    precision=precision,
    calibration_size=80,
  )
  ids, codes = load_embeddings(out)
  manifest = json.loads((out / "manifest.json").read_text())
  assert codes.precision == precision and codes.dtype == np.int8 and len(ids) == 120
  from distilbert_jax import SentenceTransformer

  model = SentenceTransformer(tiny_checkpoint)
  floats = model.encode(texts)
  ranges = quantization.quantization_ranges(floats[:80], precision) if precision == "int8" else None
  assert (ranges is None) == (manifest.get("ranges") is None)
  if ranges is not None:
    np.testing.assert_allclose(codes.ranges, ranges, rtol=1e-6)
  expected = quantization.quantize_embeddings(floats, precision, ranges=ranges)
  off = np.abs(np.asarray(codes).astype(np.int32) - expected.astype(np.int32))
  assert off.max() <= 1 and (off > 0).mean() <= 1e-3
  cli = subprocess.run(
    [
      *CLI,
      "search",
      "--embeddings",
      str(out),
      "--query",
      texts[3],
      "--top-k",
      "3",
    ],
    capture_output=True,
    text=True,
  )
  assert cli.returncode == 0, cli.stderr[-2000:]
  ranked = [line.split()[2] for line in cli.stdout.splitlines() if line.strip()[:2] in ("1.", "2.", "3.")]
  want = quantization.quantized_semantic_search(
    model.encode([texts[3]]), np.asarray(codes), precision, top_k=3, ranges=codes.ranges
  )[0]
  assert ranked == [f"[{ids[h['corpus_id']]}]" for h in want]


def test_corpus_job_truncated_and_searched(tiny_checkpoint, tmp_path):
  texts = [f"passage {i} on topic {i % 5}" for i in range(40)]
  (tmp_path / "c.txt").write_text("\n".join(texts) + "\n")
  run_job(tmp_path / "c.txt", str(tiny_checkpoint), tmp_path / "out", show_progress=False, truncate_dim=16)
  ids, embeddings = load_embeddings(tmp_path / "out")
  assert embeddings.shape == (40, 16)
  from distilbert_jax import SentenceTransformer

  np.testing.assert_allclose(
    np.asarray(embeddings), SentenceTransformer(tiny_checkpoint).encode(texts)[:, :16], atol=1e-6
  )  # a dot-product model: truncated, not renormalised
  cli = subprocess.run(
    [
      *CLI,
      "search",
      "--embeddings",
      str(tmp_path / "out"),
      "--query",
      texts[0],
      "--truncate-dim",
      "32",
    ],
    capture_output=True,
    text=True,
  )
  assert cli.returncode != 0 and "stored with truncate_dim 16, not 32" in cli.stderr


def test_quantized_corpus_of_unnormalised_cosine_model_refuses_cosine(tmp_path):
  from conversion.reference_checkpoint import make_reference_checkpoint

  model = make_reference_checkpoint(
    tmp_path / "cos",
    seed=2,
    n_layers=1,
    dim=32,
    n_heads=4,
    hidden_dim=64,
    max_seq_length=64,
    similarity_fn_name="cosine",
  )
  (tmp_path / "c.txt").write_text("".join(f"text number {i}\n" for i in range(30)))
  run_job(tmp_path / "c.txt", str(model), tmp_path / "out", show_progress=False, precision="int8", calibration_size=20)
  cli = subprocess.run(
    [*CLI, "search", "--embeddings", str(tmp_path / "out"), "--query", "text"], capture_output=True, text=True
  )
  assert cli.returncode != 0 and "cosine cannot be honoured" in cli.stderr, cli.stderr[-2000:]
