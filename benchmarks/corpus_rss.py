"""Peak RSS of `encode-corpus` with a tiny model: 50,000 vs 200,000 lines. Memory must not grow with the corpus.

  python benchmarks/corpus_rss.py [--lines 50000,200000]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORDS = "protein binds receptor cells mice vitamin risk cancer trial placebo dose gene expression".split()


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lines", default="50000,200000")
  args = parser.parse_args()
  from conversion.make_reference_checkpoint import make_reference_checkpoint
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    model = make_reference_checkpoint(tmp / "tiny", seed=0, n_layers=2, dim=32, n_heads=4, hidden_dim=64,
                                      max_seq_length=128)
    rng = random.Random(0)
    for n in map(int, args.lines.split(",")):
      corpus = tmp / f"corpus-{n}.tsv"
      with open(corpus, "w") as f:
        for i in range(n):
          f.write(f"doc{i}\t" + " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))) + "\n")
      # A fresh process per size: ru_maxrss of RUSAGE_CHILDREN is the largest child so far, so measure one
      # child through a wrapper that reports its own child's peak.
      code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
      start = time.perf_counter()
      out = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "distilbert_jax.cli", "encode-corpus",
                            str(corpus), "--model", str(model), "--out", str(tmp / f"out-{n}"), "--quiet",
                            "--shard-size", "10000"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
      if out.returncode:
        sys.exit(out.stderr[-3000:])
      peak_mib = int(out.stdout.strip().splitlines()[-1]) / 1024
      print(f"{n:>8,} lines: peak RSS {peak_mib:7.0f} MiB, {time.perf_counter() - start:6.1f}s", flush=True)


if __name__ == "__main__":
  main()
