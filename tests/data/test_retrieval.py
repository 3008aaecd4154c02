"""End to end on SciFact (BEIR, test queries) with the real all-MiniLM-L6-v2 weights: our pipeline vs
sentence-transformers' (same model, same documents, dot product). CI uses the first 300 documents plus every
judged one; benchmarks/ runs the whole collection."""

from __future__ import annotations

import numpy as np
import pytest
import sentence_transformers
import torch
from sentence_transformers import util

from distilbert_jax import SentenceTransformer, semantic_search
from distilbert_jax.data import beir as retrieval


@pytest.mark.slow
def test_scifact_ndcg_and_top10_match_sentence_transformers(minilm, scifact):
  data = retrieval.load_beir(scifact, split="test", max_docs=300)
  assert len(data.query_ids) == 300

  ours = SentenceTransformer.from_pretrained(minilm)
  results = semantic_search(
    ours.encode(data.query_texts), ours.encode(data.corpus_texts), top_k=100, score_function="dot"
  )
  metrics = retrieval.evaluate(retrieval.search_results_to_run(results, data.query_ids, data.corpus_ids), data.qrels)

  torch.set_num_threads(2)
  st = sentence_transformers.SentenceTransformer(str(minilm), device="cpu")
  st_results = util.semantic_search(
    st.encode(data.query_texts, convert_to_tensor=True),
    st.encode(data.corpus_texts, convert_to_tensor=True),
    top_k=100,
    score_function=util.dot_score,
  )
  st_metrics = retrieval.evaluate(
    retrieval.search_results_to_run(st_results, data.query_ids, data.corpus_ids), data.qrels
  )
  print(f"\nSciFact subset ({len(data.corpus_ids)} docs): ours {metrics}, sentence-transformers {st_metrics}")
  assert abs(metrics["nDCG@10"] - st_metrics["nDCG@10"]) <= 1e-4
  same_top10 = np.mean(
    [[h["corpus_id"] for h in a[:10]] == [h["corpus_id"] for h in b[:10]] for a, b in zip(results, st_results)]
  )
  assert same_top10 >= 0.99, same_top10
  assert metrics["nDCG@10"] > 0.5  # a real model on real data, not noise


def test_beir_loading_and_bad_lines_name_file_and_line(tmp_path):
  (tmp_path / "qrels").mkdir()
  (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\n")
  (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "what binds"}\n{"_id": "q2", "text": "unjudged"}\n')
  (tmp_path / "corpus.jsonl").write_text(
    '{"_id": "d1", "title": "T", "text": "one"}\n{"_id": "d2", "title": "", "text": "two"}\n'
  )
  data = retrieval.load_beir(tmp_path)
  assert data.corpus_texts == ["T one", "two"] and data.query_ids == ["q1"]
  run = {"q1": {"d1": 2.0, "d2": 1.0}}
  metrics = retrieval.evaluate(run, data.qrels)
  assert metrics["MRR@10"] == pytest.approx(0.5) and metrics["Recall@100"] == 1.0
  assert metrics["nDCG@10"] == pytest.approx(1 / np.log2(3))
  (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "one"}\n{not json}\n')
  with pytest.raises(ValueError, match=r"corpus\.jsonl:2: invalid JSON"):
    retrieval.load_beir(tmp_path)
