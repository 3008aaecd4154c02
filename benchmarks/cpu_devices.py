"""One CPU device per core vs one multi-threaded CPU device, each in its own process.

Encodes the first 300 SciFact documents at the full msmarco config (random weights), batch 32, after a warm-up
that compiles every shape. `--xla_force_host_platform_device_count=N` makes N CPU devices; the batch is then
sharded over them as over GPUs.

  python benchmarks/cpu_devices.py [--docs 300]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import msmarco_random_checkpoint, scifact_documents  # noqa: E402


def child(docs: int) -> dict:
  import jax

  from distilbert_jax import SentenceTransformer

  texts = scifact_documents(docs)
  model = SentenceTransformer.from_pretrained(msmarco_random_checkpoint())
  model.warmup(texts, batch_size=32)
  start = time.perf_counter()
  model.encode(texts, batch_size=32)
  seconds = time.perf_counter() - start
  return {"devices": len(jax.devices()), "tokens_per_s": model.last_encode_stats["real_tokens"] / seconds}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--docs", type=int, default=300)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(child(args.docs)))
    return
  msmarco_random_checkpoint()
  cores = os.cpu_count() or 1
  results = {}
  for name, flags in (("one device", ""), (f"{cores} devices", f"--xla_force_host_platform_device_count={cores}")):
    env = dict(os.environ, XLA_FLAGS=flags)
    out = subprocess.run(
      [sys.executable, __file__, "--child", "--docs", str(args.docs)], env=env, capture_output=True, text=True
    )
    if out.returncode:
      sys.exit(out.stderr[-3000:])
    results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{name:<12} {results[name]['tokens_per_s']:9,.0f} tokens/s", flush=True)
  one, many = (r["tokens_per_s"] for r in results.values())
  print(f"one device per core / one device: {many / one:.2f}x")


if __name__ == "__main__":
  main()
