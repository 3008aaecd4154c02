"""Where the CPU engines cross: queries/s of the faiss and the JAX engine by the number of queries in one search.

  python benchmarks/search_crossover.py [--size 300000] [--counts 1,4,8,16,32,100,1000]

A few queries are one pass over the corpus, bound by memory; many are a GEMM. `scoring.CPU_JAX_MIN_QUERIES` (the
count from which "auto" takes the JAX engine on CPU) should sit where the JAX/faiss ratio crosses 1. Both engines
run through `semantic_search` on the same data, in alternating pairs; the ratio is the median of the pairs' ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.search import make_data, paired  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", type=int, default=300_000)
  parser.add_argument("--counts", default="1,4,8,16,32,100,1000")
  parser.add_argument("--pairs", type=int, default=5)
  args = parser.parse_args()
  from distilbert_jax.search.engines import CPU_JAX_MIN_QUERIES
  from distilbert_jax.search.semantic_search import semantic_search

  corpus, queries = make_data(args.size, max(map(int, args.counts.split(","))), 768)
  print(f"{args.size:,} x 768 corpus, top 10; auto takes the JAX engine from {CPU_JAX_MIN_QUERIES} queries on")
  print(f"{'queries':>8} {'faiss q/s':>10} {'jax q/s':>10} {'jax/faiss':>10}")
  for n in map(int, args.counts.split(",")):
    q = queries[:n]
    search = lambda backend, q=q: lambda: semantic_search(q, corpus, top_k=10, score_function="dot", backend=backend)
    start = time.perf_counter()
    _, faiss_s, jax_s, ratio = paired(search("faiss"), search("jax"), args.pairs)
    print(
      f"{n:>8} {n / faiss_s:10.1f} {n / jax_s:10.1f} {ratio:9.2f}x   ({time.perf_counter() - start:.0f} s)", flush=True
    )


if __name__ == "__main__":
  main()
