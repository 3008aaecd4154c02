"""Peak RSS of searching a memory-mapped 1,000,000 x 768 float32 corpus (2.9 GiB on disk): it must stay under one
corpus chunk plus 512 MiB, whatever the corpus size.

  python benchmarks/search_memory.py [--rows 1000000] [--chunk 100000] [--queries 1000]

Each engine runs in a fresh process (ru_maxrss is a process's peak); the corpus file is written once in blocks.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys, time
import numpy as np
from distilbert_jax.search.semantic_search import semantic_search
corpus = np.load(sys.argv[1], mmap_mode="r")
queries = np.random.default_rng(1).normal(size=(int(sys.argv[4]), corpus.shape[1])).astype(np.float32)
start = time.perf_counter()
hits = semantic_search(queries, corpus, corpus_chunk_size=int(sys.argv[2]), top_k=10, score_function="dot",
                       backend=sys.argv[3])
# VmHWM: this process's own peak. (ru_maxrss would carry over the parent's peak through fork and exec, and the
# parent has just written the corpus file through a memory map.)
peak_kib = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
print(len(hits), time.perf_counter() - start, peak_kib)
"""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--rows", type=int, default=1_000_000)
  parser.add_argument("--dim", type=int, default=768)
  parser.add_argument("--chunk", type=int, default=100_000)
  parser.add_argument("--queries", type=int, default=1000)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
    path = Path(tmp) / "corpus.npy"
    corpus = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.rows, args.dim))
    rng = np.random.default_rng(0)
    for start in range(0, args.rows, 100_000):
      corpus[start : start + 100_000] = rng.normal(size=(min(100_000, args.rows - start), args.dim))
    corpus.flush()
    del corpus
    chunk_mib = args.chunk * args.dim * 4 / 2**20
    print(
      f"# {args.rows:,} x {args.dim} float32 memory-mapped ({path.stat().st_size / 2**30:.2f} GiB), "
      f"corpus_chunk_size {args.chunk:,} ({chunk_mib:.0f} MiB), {args.queries} queries, top 10"
    )
    for backend in ("faiss", "jax", "numpy"):
      out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(args.chunk), backend, str(args.queries)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
      )
      if out.returncode:
        sys.exit(out.stderr[-3000:])
      _, seconds, peak_kib = out.stdout.split()
      peak = int(peak_kib) / 1024
      bound = chunk_mib + 512
      print(
        f"{backend:>5}: peak RSS {peak:6.0f} MiB ({'within' if peak <= bound else 'OVER'} chunk + 512 = "
        f"{bound:.0f} MiB), {float(seconds):.1f}s"
      )


if __name__ == "__main__":
  main()
