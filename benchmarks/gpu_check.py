"""Accelerator check (run through gpu_check.sh): 1 device vs all, bfloat16 vs float32, MFU.

Uses the full msmarco-distilbert-dot-v5 config (random weights) on the first 2,000 SciFact documents, or on
synthetic 256-token texts when SciFact is not beside the repository.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import SCIFACT, msmarco_random_checkpoint, scifact_documents  # noqa: E402
from distilbert_jax import SentenceEncoder  # noqa: E402

# Dense peak TFLOP/s per device for bfloat16 matmuls (vendor figures, no sparsity).
PEAK_BF16_TFLOPS = {"H100": 989, "H200": 989, "A100": 312, "L4": 121, "A10": 125, "V100": 125,
                    "TPU v4": 275, "TPU v5 lite": 197, "TPU v5e": 197, "TPU v5p": 459, "TPU v6 lite": 918}


def flops_per_token(cfg, mean_row_length: float) -> float:
  d, f = cfg.hidden_size, cfg.intermediate_size
  per_layer = 2 * (4 * d * d + 2 * d * f) + 4 * mean_row_length * d  # projections + QK^T and AV
  return cfg.num_layers * per_layer


def measure(model: SentenceEncoder, texts, batch_size):
  model.warmup(texts, batch_size=batch_size)
  start = time.perf_counter()
  out = model.encode(texts, batch_size=batch_size)
  seconds = time.perf_counter() - start
  stats = model.last_encode_stats
  return out, seconds, stats


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--docs", type=int, default=2000)
  parser.add_argument("--batch-size", type=int, default=128)
  args = parser.parse_args()
  devices = jax.devices()
  kind = devices[0].device_kind
  print(f"devices: {len(devices)} x {kind} ({jax.default_backend()}), jax {jax.__version__}")
  if SCIFACT.exists():
    texts = scifact_documents(args.docs)
  else:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(["protein", "cell", "risk", "trial", "gene"], 250)) for _ in range(args.docs)]
  path = msmarco_random_checkpoint()
  results = {}
  for dtype in ("float32", "bfloat16"):
    for label, devs in (("1 device", devices[:1]), (f"{len(devices)} devices", devices)):
      model = SentenceEncoder.from_pretrained(path, dtype=dtype, devices=devs)
      out, seconds, stats = measure(model, texts, args.batch_size)
      tokens_s = stats["real_tokens"] / seconds
      computed_s = stats["computed_tokens"] / seconds
      mean_row = stats["computed_tokens"] / max(1, stats["batches"] * args.batch_size)
      achieved = computed_s * flops_per_token(model.config, mean_row)  # forward pass only
      peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k.lower() in kind.lower()), None)
      mfu = f"{achieved / (peak * 1e12 * len(devs)):.1%}" if peak else "n/a (unknown peak)"
      print(f"{dtype:<9} {label:<11} {tokens_s:12,.0f} tokens/s  {achieved / 1e12:7.1f} TFLOP/s  MFU {mfu}  "
            f"padding efficiency {stats['real_tokens'] / stats['computed_tokens']:.1%}")
      results[(dtype, label)] = out
  f32 = results[("float32", "1 device")]
  for key, out in results.items():
    cos = (out * f32).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(f32, axis=1))
    print(f"parity {key[0]:<9} {key[1]:<11} vs float32 1 device: max abs diff {np.abs(out - f32).max():.3g}, "
          f"min cosine {cos.min():.6f}")


if __name__ == "__main__":
  main()
