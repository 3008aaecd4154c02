"""Warm-up of a fresh process with a cold and with a warm persistent compilation cache: the full msmarco config
(random weights), compiling (not running) every batch shape `encode` uses for the first N SciFact abstracts.

  python benchmarks/compile_cache.py [--docs 1000] [--dtype float32]

Each run is a fresh process with the same cache directory (new for this invocation): run 1 compiles and fills
it, runs 2 and 3 load from it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from benchmarks.common import msmarco_random_checkpoint, scifact_documents
from distilbert_jax import SentenceTransformer
docs = scifact_documents(int(sys.argv[1]))
model = SentenceTransformer(msmarco_random_checkpoint(), dtype=sys.argv[2], compilation_cache=True)
t1 = time.perf_counter()
shapes = model.warmup(docs, batch_size=32, execute=False)
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "warmup_s": t2 - t1, "shapes": shapes, "cache": model.compilation_cache}))
"""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--docs", type=int, default=1000)
  parser.add_argument("--dtype", default="float32")
  args = parser.parse_args()
  from benchmarks.common import msmarco_random_checkpoint

  msmarco_random_checkpoint()  # built once, outside the timed processes
  with tempfile.TemporaryDirectory() as cache:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DISTILBERT_JAX_COMPILATION_CACHE": cache}
    runs = []
    for run in range(3):
      out = subprocess.run(
        [sys.executable, "-c", CHILD, str(args.docs), args.dtype], capture_output=True, text=True, env=env
      )
      if out.returncode:
        sys.exit(out.stderr[-3000:])
      runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
      state = "cold" if run == 0 else "warm"
      print(
        f"run {run + 1} ({state} cache): warm-up {runs[-1]['warmup_s']:6.1f}s for {runs[-1]['shapes']} shapes "
        f"(model load {runs[-1]['load_s']:.1f}s)",
        flush=True,
      )
    print(
      f"warm / cold warm-up: {runs[1]['warmup_s'] / runs[0]['warmup_s']:.2f}, "
      f"{runs[2]['warmup_s'] / runs[0]['warmup_s']:.2f} ({args.dtype}, {args.docs} SciFact documents)"
    )


if __name__ == "__main__":
  main()
