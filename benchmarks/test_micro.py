"""pytest-benchmark micro benchmarks (not part of the test suite): `pytest benchmarks/test_micro.py`.

One full-size forward batch (32 x 256, float32 and bfloat16) and a 10k-document semantic search.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from benchmarks.common import msmarco_random_checkpoint
from distilbert_jax import SentenceTransformer, semantic_search
from distilbert_jax.encode.batching import Batch


def _batch(rows=32, width=256):
  rng = np.random.default_rng(0)
  return Batch(
    input_ids=rng.integers(1000, 2000, (rows, width)).astype(np.int32),
    segment_ids=np.ones((rows, width), np.int32),
    positions=np.broadcast_to(np.arange(width), (rows, width)).astype(np.int32),
    text_index=np.arange(rows)[:, None],
    text_start=np.zeros((rows, 1), np.int32),
  )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_forward_32x256(benchmark, dtype):
  model = SentenceTransformer.from_pretrained(msmarco_random_checkpoint(), dtype=dtype)
  batch = _batch()
  jax.block_until_ready(model.runner.dispatch(batch, ("sentence_embedding",)))
  benchmark(lambda: jax.block_until_ready(model.runner.dispatch(batch, ("sentence_embedding",))))


def test_semantic_search_10k(benchmark):
  rng = np.random.default_rng(0)
  corpus = rng.normal(size=(10_000, 768)).astype(np.float32)
  queries = rng.normal(size=(300, 768)).astype(np.float32)
  semantic_search(queries, corpus, top_k=100)
  benchmark(lambda: semantic_search(queries, corpus, top_k=100))
