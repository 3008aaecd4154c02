"""Peak RSS of `encode-corpus` with a tiny model: 50,000, 200,000 and 1,000,000 lines, 1,000 lines around one
line of 10 MB, and a Parquet corpus of 1,000,000 rows (row groups of 100,000) written as Parquet shards. Memory
must not grow with the corpus or with a line (bound: 512 MiB).

  python benchmarks/corpus_rss.py [--lines 50000,200000,1000000] [--long-line-mb 10] [--parquet-rows 1000000]
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
  parser.add_argument("--lines", default="50000,200000,1000000")
  parser.add_argument("--long-line-mb", type=float, default=10.0, help="one case: 1,000 lines and one this long")
  parser.add_argument("--parquet-rows", type=int, default=1_000_000, help="one case: a Parquet corpus (0: none)")
  args = parser.parse_args()
  from conversion.reference_checkpoint import make_reference_checkpoint

  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    model = make_reference_checkpoint(
      tmp / "tiny", seed=0, n_layers=2, dim=32, n_heads=4, hidden_dim=64, max_seq_length=128
    )
    rng = random.Random(0)
    cases = [(f"{int(n):>9,} lines", int(n), 0, "npy") for n in args.lines.split(",") if n]
    if args.long_line_mb:
      cases.append((f"{args.long_line_mb:g} MB line", 1000, int(args.long_line_mb * 2**20), "npy"))
    if args.parquet_rows:
      cases.append((f"{args.parquet_rows:>9,} Parquet rows", args.parquet_rows, 0, "parquet"))
    for label, n, long_chars, fmt in cases:
      corpus = _write_corpus(tmp, rng, n, long_chars, fmt)
      # A fresh process per size: ru_maxrss of RUSAGE_CHILDREN is the largest child so far, so measure one
      # child through a wrapper that reports its own child's peak.
      code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
      )
      start = time.perf_counter()
      out = subprocess.run(
        [
          sys.executable,
          "-c",
          code,
          sys.executable,
          "-m",
          "distilbert_jax.cli",
          "encode-corpus",
          str(corpus),
          "--model",
          str(model),
          "--out",
          str(tmp / f"out-{n}-{long_chars}-{fmt}"),
          "--quiet",
          "--shard-size",
          "10000",
          "--format",
          fmt,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
      )
      if out.returncode:
        sys.exit(out.stderr[-3000:])
      peak_mib = int(out.stdout.strip().splitlines()[-1]) / 1024
      verdict = "within" if peak_mib < 512 else "OVER"
      print(
        f"{label}: peak RSS {peak_mib:7.0f} MiB ({verdict} the 512 MiB bound), {time.perf_counter() - start:6.1f}s",
        flush=True,
      )


def _write_corpus(tmp: Path, rng: random.Random, n: int, long_chars: int, fmt: str) -> Path:
  text = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
  if fmt == "parquet":  # written a row group at a time, so the benchmark itself stays small
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = tmp / f"corpus-{n}.parquet"
    schema = pa.schema([("_id", pa.string()), ("text", pa.string())])
    with pq.ParquetWriter(corpus, schema) as writer:
      for start in range(0, n, 100_000):
        rows = range(start, min(n, start + 100_000))
        writer.write_table(pa.table({"_id": [f"doc{i}" for i in rows], "text": [text() for _ in rows]}, schema))
    return corpus
  corpus = tmp / f"corpus-{n}-{long_chars}.tsv"
  with open(corpus, "w") as f:
    for i in range(n):
      f.write(f"doc{i}\t{text()}\n")
      if long_chars and i == n // 2:
        words = " ".join(rng.choice(WORDS) for _ in range(long_chars // 6))
        f.write(f"long\t{words[:long_chars]}\n")
  return corpus


if __name__ == "__main__":
  main()
