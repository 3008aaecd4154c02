"""Encoding throughput: our `encode` vs sentence-transformers' `encode`, each in its own process.

The first 1,000 SciFact documents at the full msmarco-distilbert-dot-v5 config (random weights), CPU, batch 32,
2 threads. Each side warms up first (torch on one batch; JAX compiles each batch shape it will use, running one
batch of each), then encodes all documents `--repeats` times (default 2), and the fastest pass counts. Prints
tokens/s, ratios against torch float32, and padding efficiency (real / computed tokens).

  python benchmarks/encode_throughput.py [--docs 1000] [--variants jax-f32,jax-bf16,jax-f32-pack,jax-f32-nopack]

jax-f32 and jax-bf16 are `encode`'s default (packing="auto"); -pack and -nopack force packing on or off.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (  # noqa: E402
  msmarco_random_checkpoint,
  scifact_documents,
  sentence_transformers_tokens,
)

THREADS = 2


def best_of(repeats, fn):
  """Seconds of the fastest of `repeats` calls: this VM's speed drifts by +-10% between minutes."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def run_torch(docs, path, batch_size, repeats):
  import torch

  torch.set_num_threads(THREADS)
  from sentence_transformers import SentenceTransformer

  model = SentenceTransformer(str(path), device="cpu")
  tokens = sentence_transformers_tokens(model, docs)
  model.encode(docs[:batch_size], batch_size=batch_size)  # warm-up
  return {"seconds": best_of(repeats, lambda: model.encode(docs, batch_size=batch_size)), "tokens": tokens}


def run_jax(docs, path, batch_size, repeats, dtype, packing):
  from distilbert_jax import SentenceTransformer

  model = SentenceTransformer.from_pretrained(path, dtype=dtype)
  start = time.perf_counter()
  shapes = model.warmup(docs, batch_size=batch_size, packing=packing)  # compiles each shape, one batch each
  first = time.perf_counter() - start
  seconds = best_of(repeats, lambda: model.encode(docs, batch_size=batch_size, packing=packing))
  stats = model.last_encode_stats
  return {
    "seconds": seconds,
    "warmup_seconds": first,
    "shapes": shapes,
    "tokens": stats["real_tokens"],
    "padding_efficiency": stats["real_tokens"] / stats["computed_tokens"],
  }


VARIANTS = {  # each called as (docs, checkpoint path, batch size, repeats)
  "torch-f32": run_torch,
  "jax-f32": functools.partial(run_jax, dtype="float32", packing="auto"),  # the default: packs where it pays
  "jax-f32-pack": functools.partial(run_jax, dtype="float32", packing=True),
  "jax-f32-nopack": functools.partial(run_jax, dtype="float32", packing=False),
  "jax-bf16": functools.partial(run_jax, dtype="bfloat16", packing="auto"),
  "jax-bf16-pack": functools.partial(run_jax, dtype="bfloat16", packing=True),
  "jax-bf16-nopack": functools.partial(run_jax, dtype="bfloat16", packing=False),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--docs", type=int, default=1000)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--variants", default="jax-f32,jax-bf16")
  parser.add_argument("--repeats", type=int, default=2, help="timed encodes per variant; the fastest counts")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:  # one measurement in this process
    docs = scifact_documents(args.docs)
    print(json.dumps(VARIANTS[args.child](docs, msmarco_random_checkpoint(), args.batch_size, args.repeats)))
    return
  msmarco_random_checkpoint()
  env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), TOKENIZERS_PARALLELISM="true")
  results = {}
  for variant in ["torch-f32"] + args.variants.split(","):
    out = subprocess.run(
      [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--docs",
        str(args.docs),
        "--batch-size",
        str(args.batch_size),
        "--repeats",
        str(args.repeats),
      ],
      env=env,
      capture_output=True,
      text=True,
    )
    if out.returncode:
      sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
    results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    r = results[variant]
    line = f"{variant:<16} {r['tokens'] / r['seconds']:>9,.0f} tokens/s  {r['seconds']:7.1f}s"
    if variant != "torch-f32":
      ratio = (r["tokens"] / r["seconds"]) / (results["torch-f32"]["tokens"] / results["torch-f32"]["seconds"])
      line += f"  {ratio:5.2f}x torch-f32  padding efficiency {r['padding_efficiency']:.1%}"
      line += f"  ({r['shapes']} shapes, warm-up {r['warmup_seconds']:.0f}s)"
    print(line, flush=True)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
