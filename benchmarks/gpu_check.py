"""Accelerator check (run through gpu_check.sh): our encode vs sentence-transformers on the same accelerator.

The full msmarco-distilbert-dot-v5 config (random weights) on the SciFact documents (all 5,183 by default; synthetic
256-token texts when SciFact is not found). Each side runs in its own process: sentence-transformers' `encode` in
float32 and bfloat16, then ours in float32 (full-precision matmuls) and bfloat16. Prints tokens/s, ratios against
torch float32, MFU, padding efficiency, and parity: ours vs torch per dtype (max abs diff, min cosine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (  # noqa: E402
  SCIFACT,
  msmarco_random_checkpoint,
  scifact_documents,
  sentence_transformers_tokens,
)

# Dense peak TFLOP/s per device for bfloat16 matmuls (vendor figures, no sparsity).
PEAK_BF16_TFLOPS = {
  "H100": 989,
  "H200": 989,
  "A100": 312,
  "L4": 121,
  "A10": 125,
  "V100": 125,
  "TPU v4": 275,
  "TPU v5 lite": 197,
  "TPU v5e": 197,
  "TPU v5p": 459,
  "TPU v6 lite": 918,
}


def flops_per_token(cfg, mean_row_length: float) -> float:
  d, f = cfg.hidden_size, cfg.intermediate_size
  per_layer = 2 * (4 * d * d + 2 * d * f) + 4 * mean_row_length * d  # projections + QK^T and AV
  return cfg.num_layers * per_layer


def documents(n: int) -> list[str]:
  if SCIFACT.exists():
    return scifact_documents(n)
  rng = np.random.default_rng(0)
  return [" ".join(rng.choice(["protein", "cell", "risk", "trial", "gene"], 250)) for _ in range(n)]


def run_torch(docs, path, batch_size, dtype, out_file):
  import torch
  from sentence_transformers import SentenceTransformer

  device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a smoke run of this script off the accelerator
  model = SentenceTransformer(str(path), device=device)
  model.to({"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype])
  tokens = sentence_transformers_tokens(model, docs)
  model.encode(docs[: batch_size * 4], batch_size=batch_size)  # warm-up (cuBLAS handles, kernels)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  sync()
  start = time.perf_counter()
  emb = model.encode(docs, batch_size=batch_size, convert_to_numpy=False, convert_to_tensor=True)
  sync()
  seconds = time.perf_counter() - start
  np.save(out_file, emb.float().cpu().numpy())
  return {"seconds": seconds, "tokens": tokens, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu"}


def run_jax(docs, path, batch_size, dtype, out_file):
  import jax

  from distilbert_jax import SentenceTransformer

  model = SentenceTransformer.from_pretrained(path, dtype=dtype)
  start = time.perf_counter()
  shapes = model.warmup(docs, batch_size=batch_size)
  warmup = time.perf_counter() - start
  start = time.perf_counter()
  emb = model.encode(docs, batch_size=batch_size)
  seconds = time.perf_counter() - start
  stats = model.last_encode_stats
  np.save(out_file, emb)
  kind = jax.devices()[0].device_kind
  mean_row = stats["computed_tokens"] / max(1, stats["rows"])
  achieved = stats["computed_tokens"] / seconds * flops_per_token(model.config, mean_row)
  peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k.lower() in kind.lower()), None)
  return {
    "seconds": seconds,
    "tokens": stats["real_tokens"],
    "computed_tokens": stats["computed_tokens"],
    "shapes": shapes,
    "warmup_seconds": warmup,
    "tflops": achieved / 1e12,
    "mfu_bf16_peak": achieved / (peak * 1e12 * len(model.devices)) if peak else None,
    "device": f"{len(model.devices)} x {kind} ({jax.default_backend()}), jax {jax.__version__}",
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--docs", type=int, default=None, help="first N SciFact documents (default: all)")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--out-file", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    side, dtype = args.child.split("-")
    docs = documents(args.docs or 5183)
    run = run_torch if side == "torch" else run_jax
    print(json.dumps(run(docs, msmarco_random_checkpoint(), args.batch_size, dtype, args.out_file)))
    return
  msmarco_random_checkpoint()
  results, embeddings = {}, {}
  with tempfile.TemporaryDirectory() as tmp:
    for variant in ("torch-float32", "torch-bfloat16", "jax-float32", "jax-bfloat16"):
      out_file = Path(tmp) / f"{variant}.npy"
      cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--batch-size",
        str(args.batch_size),
        "--out-file",
        str(out_file),
      ] + (["--docs", str(args.docs)] if args.docs else [])
      proc = subprocess.run(cmd, capture_output=True, text=True)
      if proc.returncode:
        print(f"{variant} failed:\n{proc.stderr[-4000:]}", flush=True)
        continue
      r = results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
      embeddings[variant] = np.load(out_file)
      line = f"{variant:<15} {r['tokens'] / r['seconds']:>10,.0f} tokens/s  {r['seconds']:6.2f}s"
      if "torch-float32" in results and variant != "torch-float32":
        base = results["torch-float32"]
        line += f"  {(r['tokens'] / r['seconds']) / (base['tokens'] / base['seconds']):5.2f}x torch-float32"
      if variant.startswith("jax"):
        mfu = f"{r['mfu_bf16_peak']:.1%}" if r["mfu_bf16_peak"] is not None else "n/a"
        line += (
          f"  {r['tflops']:.1f} TFLOP/s (MFU vs bf16 peak {mfu})  padding efficiency "
          f"{r['tokens'] / r['computed_tokens']:.1%}  {r['shapes']} shapes, warm-up {r['warmup_seconds']:.0f}s"
        )
      print(f"{line}   [{r['device']}]", flush=True)
  for ours, ref in (
    ("jax-float32", "torch-float32"),
    ("jax-bfloat16", "torch-bfloat16"),
    ("jax-bfloat16", "torch-float32"),
    ("torch-bfloat16", "torch-float32"),
  ):
    if ours in embeddings and ref in embeddings:
      x, y = embeddings[ours], embeddings[ref]
      cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
      print(
        f"parity {ours:<14} vs {ref:<14} max abs diff {np.abs(x - y).max():.3g} (max |x| {np.abs(y).max():.3g})"
        f"  min cosine {cos.min():.6f}",
        flush=True,
      )
  print(json.dumps(results))


if __name__ == "__main__":
  main()
