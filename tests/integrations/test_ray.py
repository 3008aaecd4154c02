"""Ray Data on a local cluster (`ray.init(num_cpus=2)`): the documented example encodes a Parquet corpus to Parquet
embeddings with an actor pool, equal to `encode` on the same texts; the Embedder names a missing column."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distilbert_jax import SentenceTransformer

ROOT = Path(__file__).resolve().parents[2]


def test_the_ray_example_encodes_parquet_like_encode(tiny_checkpoint, tmp_path):
  n = 300
  texts = [f"passage {i}: " + "protein binds receptor " * (i % 7) for i in range(n)]
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  table = pa.table({"_id": [f"d{i}" for i in range(n)], "title": [""] * n, "text": texts})
  pq.write_table(table.slice(0, 150), corpus / "part-0.parquet")
  pq.write_table(table.slice(150), corpus / "part-1.parquet")
  out = tmp_path / "embeddings"
  command = [sys.executable, ROOT / "examples" / "ray_encode_parquet.py", corpus, out, "--model", tiny_checkpoint]
  # Two actors of half a CPU on a 2-CPU cluster: actors taking every CPU would leave none to read and write.
  command += ["--concurrency", "2", "--batch-size", "64", "--num-cpus", "2", "--actor-cpus", "0.5"]
  env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
  done = subprocess.run(list(map(str, command)), env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-4000:]
  result = pq.read_table(out).to_pydict()
  assert sorted(result["_id"]) == sorted(table.column("_id").to_pylist())  # every row once, any order
  by_id = dict(zip(result["_id"], result["embedding"]))
  expected = SentenceTransformer(tiny_checkpoint).encode(texts, batch_size=64)
  got = np.asarray([by_id[f"d{i}"] for i in range(n)], np.float32)
  np.testing.assert_allclose(got, expected, atol=1e-6)  # batches of other texts move the last bits only


def test_the_embedder_names_a_missing_column(tiny_checkpoint):
  from distilbert_jax.integrations.ray import Embedder

  embedder = Embedder(str(tiny_checkpoint), text_column="passage")
  with pytest.raises(KeyError, match=r"no column 'passage' \(columns: _id, text\)"):
    embedder({"_id": np.array(["a"]), "text": np.array(["x"])})
  out = Embedder(str(tiny_checkpoint))({"_id": np.array(["a", "b"]), "text": np.array(["one text", "another"])})
  assert out["embedding"].shape == (2, 32) and out["embedding"].dtype == np.float32
