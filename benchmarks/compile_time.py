"""Compile time and throughput of the Python layer loop against nn.scan, by depth and dtype (msmarco width:
hidden 768, 12 heads, FFN 3072; random weights), each configuration in a fresh process with no compile cache.

  python benchmarks/compile_time.py [--docs 48] [--layers 6,24] [--dtypes float32,bfloat16]

Compile: `warmup(execute=False)` over every batch shape `encode` uses for the first N SciFact abstracts, into an
empty persistent cache of the child's own. Throughput: real tokens/s of one `encode` pass over those abstracts,
after a first pass that loads the compiled executables from that cache. Writes benchmarks/results/compile_time.json
and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, sys, tempfile, time
import jax, numpy as np
from benchmarks.common import scifact_documents
from conversion.reference_checkpoint import reference_tokenizer_dir
from distilbert_jax import SentenceTransformer
from distilbert_jax.model.config import EncoderConfig
from distilbert_jax.model.transformer import Encoder
from distilbert_jax.checkpoint.model_dir import LoadedModel
from distilbert_jax.model.pooling import PoolingConfig
layers, scan, dtype, n = int(sys.argv[1]), sys.argv[2] == "scan", sys.argv[3], int(sys.argv[4])
cfg = EncoderConfig(num_layers=layers)
params = jax.tree_util.tree_map(np.asarray, Encoder(cfg).init_params(jax.random.PRNGKey(0)))
loaded = LoadedModel(cfg, params, PoolingConfig(), 256, True, reference_tokenizer_dir(), "random")
model = SentenceTransformer(loaded, dtype=dtype, scan_layers=scan, compilation_cache=tempfile.mkdtemp())
docs = scifact_documents(n)
t0 = time.perf_counter()
shapes = model.warmup(docs, batch_size=32, execute=False)
compile_s = time.perf_counter() - t0
model.encode(docs, batch_size=32)  # loads the compiled executables from the cache
t0 = time.perf_counter()
model.encode(docs, batch_size=32)
rate = model.last_encode_stats["real_tokens"] / (time.perf_counter() - t0)
print(json.dumps({"compile_s": compile_s, "shapes": shapes, "tokens_per_s": rate, "attention": model.attention}))
"""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--docs", type=int, default=48)
  parser.add_argument("--layers", default="6,24")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compile_time.json"))
  args = parser.parse_args()
  import jax

  rows = []
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  for layers in (int(x) for x in args.layers.split(",")):
    for dtype in args.dtypes.split(","):
      for mode in ("loop", "scan"):
        out = subprocess.run(
          [sys.executable, "-c", CHILD, str(layers), mode, dtype, str(args.docs)],
          capture_output=True,
          text=True,
          env=env,
        )
        if out.returncode:
          sys.exit(f"{layers} layers {mode} {dtype} failed:\n{out.stderr[-3000:]}")
        row = {"layers": layers, "mode": mode, "dtype": dtype, **json.loads(out.stdout.strip().splitlines()[-1])}
        rows.append(row)
        print(
          f"{layers:>3} layers {mode:<4} {dtype:<8} compile {row['compile_s']:6.1f} s ({row['shapes']} shapes)  "
          f"{row['tokens_per_s']:8.0f} tokens/s",
          flush=True,
        )
  device = jax.devices()[0].device_kind
  result = {"device": device, "docs": args.docs, "rows": rows}
  Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
  print(f"\ndevice: {device}; scan/loop ratios (compile time, tokens/s):")
  for layers in sorted({r["layers"] for r in rows}):
    for dtype in args.dtypes.split(","):
      loop, scan = (
        next(r for r in rows if (r["layers"], r["dtype"], r["mode"]) == (layers, dtype, m)) for m in ("loop", "scan")
      )
      print(
        f"  {layers:>3} layers {dtype:<8} compile {scan['compile_s'] / loop['compile_s']:.2f}x  "
        f"throughput {scan['tokens_per_s'] / loop['tokens_per_s']:.2f}x"
      )
  print(json.dumps(result))


if __name__ == "__main__":
  main()
