"""Embedding quantization with sentence-transformers' ranges and results (int8, uint8, binary, ubinary).

int8/uint8: each dimension's [min, max] (from `ranges`, else `calibration_embeddings`, else the embeddings
themselves) is cut into 255 steps; binary/ubinary: one bit per dimension (> 0), packed 8 to a byte, binary
shifted by -128 into int8.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distilbert_jax.core.checks import positive_int
from distilbert_jax.search.engines import top_k_search
from distilbert_jax.search.rows import as_numpy, as_rows
from distilbert_jax.search.semantic_search import hits

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def check_precision(precision: str) -> str:
  if precision not in PRECISIONS:
    raise ValueError(f"Precision {precision!r} is not supported: precision {precision!r} is not one of {PRECISIONS}")
  return precision


def quantization_ranges(
  embeddings: np.ndarray, precision: str, calibration_embeddings: np.ndarray | None = None
) -> np.ndarray:
  """[2, D] per-dimension minimum and maximum."""
  if calibration_embeddings is None:
    if embeddings.ndim == 1 or embeddings.shape[0] == 1:
      raise ValueError(
        f"cannot compute {precision} quantization ranges from a single embedding: pass `ranges` or "
        "`calibration_embeddings` from a representative set of embeddings"
      )
    calibration_embeddings = embeddings
  calibration_embeddings = np.asarray(calibration_embeddings, np.float32)
  return np.vstack((calibration_embeddings.min(axis=0), calibration_embeddings.max(axis=0)))


def quantize_embeddings(
  embeddings: Any, precision: str, ranges: np.ndarray | None = None, calibration_embeddings: np.ndarray | None = None
) -> np.ndarray:
  """sentence_transformers.util.quantize_embeddings: [N, D] float -> [N, D] int8/uint8 or [N, D/8] packed bits."""

  check_precision(precision)
  if isinstance(embeddings, list) and not embeddings:
    return []  # as sentence-transformers
  embeddings = as_numpy(embeddings)
  if embeddings.dtype in (np.int8, np.uint8):
    raise ValueError("embeddings to quantize must be float, not int8 or uint8")
  embeddings = embeddings.astype(np.float32)
  if precision == "float32":
    return embeddings
  if embeddings.ndim == 2 and embeddings.shape[0] == 0:
    width = embeddings.shape[1] if precision.endswith("int8") else (embeddings.shape[1] + 7) // 8
    return np.zeros((0, width), np.uint8 if precision.startswith("u") else np.int8)
  if precision.endswith("int8"):
    if ranges is None:
      ranges = quantization_ranges(embeddings, precision, calibration_embeddings)
    ranges = np.asarray(ranges, np.float32)
    if ranges.shape != (2, embeddings.shape[-1]):
      raise ValueError(f"ranges have shape {ranges.shape}; expected (2, {embeddings.shape[-1]})")
    starts = ranges[0]
    steps = (ranges[1] - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    codes = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
    return codes.astype(np.uint8) if precision == "uint8" else (codes - 128).astype(np.int8)
  bits = np.packbits(embeddings > 0, axis=-1)
  return bits if precision == "ubinary" else (bits - 128).astype(np.int8)


def dequantize(codes: np.ndarray, precision: str, ranges: np.ndarray | None, dim: int) -> np.ndarray:
  """Codes back in the float query's coordinates, for rescoring: int8/uint8 as sentence-transformers'
  `_dequantize_embeddings`; binary/ubinary as its faiss rescoring does (the bits as 0/1)."""
  if precision in ("int8", "uint8"):
    ranges = np.asarray(ranges, np.float32)
    steps = (ranges[1] - ranges[0]) / 255
    steps = np.where(steps == 0, 1, steps)
    values = codes.astype(np.float64) + (128 if precision == "int8" else 0)
    return values * steps + ranges[0]
  bits = codes.astype(np.int16) + 128 if precision == "binary" else codes  # binary is ubinary shifted by -128
  return np.unpackbits(bits.astype(np.uint8), axis=-1)[..., :dim].astype(np.float64)


def _take_rows(corpus, rows: np.ndarray) -> np.ndarray:
  """corpus[rows] for an array, a memory map or load_embeddings' shards, reading only those rows."""
  unique, inverse = np.unique(rows, return_inverse=True)
  taken = np.asarray(corpus[unique])
  return taken[inverse.reshape(rows.shape)]


def quantized_semantic_search(
  query_embeddings,
  corpus_embeddings,
  corpus_precision: str = "float32",
  top_k: int = 10,
  rescore: bool = True,
  rescore_multiplier: int = 4,
  calibration_embeddings: np.ndarray | None = None,
  ranges: np.ndarray | None = None,
  query_chunk_size: int = 100,
  corpus_chunk_size: int = 500_000,
  devices=None,
  recall_target: float | None = None,
) -> list[list[dict[str, float | int]]]:
  """Search a corpus stored quantized, with the meanings of sentence-transformers' semantic_search_faiss.

  The corpus comes already quantized to `corpus_precision`; float queries are quantized with the same `ranges`
  (int8/uint8: from `ranges`, else `calibration_embeddings`, else the queries themselves, as theirs), candidates
  are found by integer dot products (int8/uint8) or Hamming distance (binary/ubinary, xor and popcount in JAX),
  and with `rescore` the top_k * rescore_multiplier candidates are rescored with the float queries against the
  dequantized codes. float32 corpora are searched by dot product. Scores are dot products (after rescoring), or
  integer dot products / minus Hamming distances without it.
  """
  check_precision(corpus_precision)
  top_k = positive_int(top_k, "top_k")
  rescore_multiplier = positive_int(rescore_multiplier, "rescore_multiplier")
  corpus = corpus_embeddings
  expected = {"float32": "f", "int8": "i", "uint8": "u", "binary": "i", "ubinary": "u"}[corpus_precision]
  if np.dtype(corpus.dtype).kind != expected or (corpus_precision != "float32" and corpus.dtype.itemsize != 1):
    raise ValueError(
      f"corpus_embeddings have dtype {corpus.dtype}, not the codes of corpus_precision {corpus_precision!r}"
    )
  query_is_float = np.asarray(query_embeddings).dtype.kind == "f"
  if corpus_precision == "float32":
    values, ids = top_k_search(
      as_rows(query_embeddings, "query_embeddings"),
      corpus,
      "dot",
      top_k,
      query_chunk_size,
      corpus_chunk_size,
      devices,
      recall_target=recall_target,
    )
    return hits(values, ids)
  floats = as_rows(query_embeddings, "query_embeddings") if query_is_float else None
  if floats is not None:
    if corpus_precision in ("int8", "uint8") and ranges is None:
      ranges = quantization_ranges(floats, corpus_precision, calibration_embeddings)
    codes = quantize_embeddings(floats, corpus_precision, ranges=ranges)
  else:
    codes = np.atleast_2d(np.asarray(query_embeddings))
    rescore = False  # nothing to rescore with, as theirs (which warns)
  dim = floats.shape[1] if floats is not None else codes.shape[1] * (8 if corpus_precision.endswith("binary") else 1)
  if codes.shape[1] != corpus.shape[1]:
    raise ValueError(f"query codes have width {codes.shape[1]}; the corpus has {corpus.shape[1]}")
  kind = "int" if corpus_precision.endswith("int8") else "hamming"
  # binary codes are packed bits - 128, i.e. the top bit flipped in both operands: xor, hence Hamming, is unchanged.
  k = top_k * rescore_multiplier if rescore else top_k
  values, ids = top_k_search(
    codes, corpus, kind, k, query_chunk_size, corpus_chunk_size, devices, recall_target=recall_target
  )
  if rescore and ids.shape[1]:
    candidates = dequantize(_take_rows(corpus, ids), corpus_precision, ranges, dim)  # [Q, k, D]
    scores = np.einsum("qd,qkd->qk", floats.astype(np.float64), candidates)
    order = np.lexsort((ids, -scores), axis=-1)[:, :top_k]
    values = np.take_along_axis(scores, order, 1).astype(np.float32)
    ids = np.take_along_axis(ids, order, 1)
  return hits(values[:, :top_k], ids[:, :top_k])
