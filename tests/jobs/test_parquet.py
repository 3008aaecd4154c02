"""Parquet corpora: a directory or glob of files read as one stream, bad rows named by file, row group and row
(stop) or recorded as rejects (skip), a missing column or a damaged file named, and the same shards whether the
records came from JSONL or Parquet; Arrow tables through the Python API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distilbert_jax import load_embeddings
from distilbert_jax.jobs.encode_corpus import run_job
from distilbert_jax.jobs.identity import JobError


def _table(n: int, start: int = 0) -> pa.Table:
  ids = [f"d{i}" for i in range(start, start + n)]
  return pa.table(
    {"_id": ids, "title": [""] * n, "text": [f"protein {i} binds receptor" for i in range(start, start + n)]}
  )


def test_a_parquet_directory_gives_the_shards_of_the_same_jsonl(tiny_checkpoint, tmp_path):
  parts = tmp_path / "parts"
  parts.mkdir()
  pq.write_table(_table(70), parts / "part-0.parquet", row_group_size=30)
  pq.write_table(_table(50, start=70), parts / "part-1.parquet", row_group_size=30)
  jsonl = tmp_path / "c.jsonl"
  jsonl.write_text("".join(json.dumps(r) + "\n" for r in pa.concat_tables([_table(70), _table(50, 70)]).to_pylist()))
  for name, source in (("dir", parts), ("glob", f"{parts}/part-*.parquet"), ("jsonl", jsonl)):
    run_job(source, str(tiny_checkpoint), tmp_path / name, shard_size=40, show_progress=False)
  ids, dir_embeddings = load_embeddings(tmp_path / "dir")
  for other in ("glob", "jsonl"):
    other_ids, embeddings = load_embeddings(tmp_path / other)
    assert other_ids == ids == [f"d{i}" for i in range(120)]
    np.testing.assert_array_equal(np.asarray(embeddings), np.asarray(dir_embeddings))


def test_bad_parquet_rows_are_named_by_file_row_group_and_row(tiny_checkpoint, tmp_path):
  table = _table(60).to_pydict()
  table["text"][45] = None  # row group 1 (of 30 rows), row 15
  table["text"][50] = "   "
  path = tmp_path / "c.parquet"
  pq.write_table(pa.table(table), path, row_group_size=30)
  with pytest.raises(JobError, match=r"c\.parquet \(row group 1, row 15\): missing text in column 'text'"):
    run_job(path, str(tiny_checkpoint), tmp_path / "stop", shard_size=20, show_progress=False)
  assert len(load_embeddings_partial(tmp_path / "stop")) == 2  # the shards before the bad row stay committed
  run_job(path, str(tiny_checkpoint), tmp_path / "skip", shard_size=20, on_error="skip", show_progress=False)
  rejects = [json.loads(line) for line in (tmp_path / "skip" / "rejects.jsonl").read_text().splitlines()]
  assert [(r["row_group"], r["row"], r["line"]) for r in rejects] == [(1, 15, 46), (1, 20, 51)]
  assert len(load_embeddings(tmp_path / "skip")[0]) == 58


def load_embeddings_partial(out) -> list:
  return json.loads((out / "manifest.json").read_text())["shards"]


def test_a_missing_column_or_a_damaged_file_is_named(tiny_checkpoint, tmp_path):
  path = tmp_path / "c.parquet"
  pq.write_table(_table(10).rename_columns(["_id", "title", "body"]), path)
  with pytest.raises(
    ValueError, match=r"c\.parquet: no text column 'text' \(columns: _id, title, body; see --text-field\)"
  ):
    run_job(path, str(tiny_checkpoint), tmp_path / "a", show_progress=False)
  run_job(path, str(tiny_checkpoint), tmp_path / "b", fields={"text_field": "body"}, show_progress=False)
  assert len(load_embeddings(tmp_path / "b")[0]) == 10
  damaged = tmp_path / "damaged.parquet"
  damaged.write_bytes(path.read_bytes()[:-20])
  with pytest.raises(JobError, match=r"damaged\.parquet:1: not a readable Parquet file"):
    run_job(damaged, str(tiny_checkpoint), tmp_path / "c", show_progress=False)
  with pytest.raises(JobError, match="a directory without .parquet files"):
    run_job(tmp_path / "b", str(tiny_checkpoint), tmp_path / "d", show_progress=False)


def test_an_arrow_table_is_a_corpus_of_the_python_api(tiny_checkpoint, tmp_path):
  table = _table(45)
  path = tmp_path / "c.parquet"
  pq.write_table(table, path)
  run_job(table, str(tiny_checkpoint), tmp_path / "table", shard_size=20, show_progress=False)
  run_job(path, str(tiny_checkpoint), tmp_path / "file", shard_size=20, show_progress=False)
  ids, embeddings = load_embeddings(tmp_path / "table")
  file_ids, file_embeddings = load_embeddings(tmp_path / "file")
  assert ids == file_ids
  np.testing.assert_array_equal(np.asarray(embeddings), np.asarray(file_embeddings))
  run_job(table, str(tiny_checkpoint), tmp_path / "table", shard_size=20, show_progress=False)  # a re-run: same job
  with pytest.raises(JobError, match="differ from what shard 0 .* was encoded from"):  # another table: another input
    run_job(_table(45, start=1), str(tiny_checkpoint), tmp_path / "table", shard_size=20, show_progress=False)
  with pytest.raises(ValueError, match=r"the Arrow table: no text column 'body'"):
    run_job(table, str(tiny_checkpoint), tmp_path / "x", fields={"text_field": "body"}, show_progress=False)


def test_search_of_a_job_with_no_rows_says_the_corpus_is_empty(tiny_checkpoint, tmp_path):
  table = _table(3).to_pydict()
  table["text"] = [None, None, None]
  path = tmp_path / "empty.parquet"
  pq.write_table(pa.table(table), path)
  run_job(path, str(tiny_checkpoint), tmp_path / "out", on_error="skip", show_progress=False)
  root = Path(__file__).resolve().parents[2]
  done = subprocess.run(
    [sys.executable, "-m", "distilbert_jax.cli", "search", "--embeddings", str(tmp_path / "out"), "--query", "x"],
    capture_output=True,
    text=True,
    env={**os.environ, "PYTHONPATH": str(root)},
  )
  assert done.returncode != 0 and "the corpus is empty (the job encoded no record)" in done.stderr, done.stderr
