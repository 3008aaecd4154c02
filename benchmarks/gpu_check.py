"""Accelerator check (run through gpu_check.sh): our encode vs sentence-transformers on the same accelerator.

The full msmarco-distilbert-dot-v5 config (random weights) on the first N SciFact documents (synthetic 256-token
texts when SciFact is not found). Every variant runs in its own process:
  torch-*        sentence-transformers' `encode`: float32, and its best half-precision configurations (bfloat16 and
                 float16 with SDPA attention, the default of transformers 5; flash-attention 2 when installed)
  jax-*-ATTN     ours per dtype (float32, bfloat16, int8) and attention implementation (dense, xla, cudnn;
                 splash on TPU)
  jax-bfloat16-dense is run twice with one fresh compile-cache directory: cold, then warm.
  jax-*-frames   deterministic=True (batch-invariant): also re-encodes the documents reversed, in batches of 7,
                 packing off, and reports whether every embedding is bit-identical to the first pass.
Prints tokens/s over real tokens, ratios against torch float32 and against sentence-transformers' best, MFU over
real tokens and over computed (padded) tokens, the fraction of end-to-end wall time the device is busy (the same
batches run back to back from device memory, over the end-to-end time), warm-up seconds, and parity per dtype
(max abs diff, min cosine). The fastest attention implementation per dtype is what `attention.DEFAULT_BY_PLATFORM`
should name for the platform.
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


def run_torch(docs, path, batch_size, variant, out_file):
  import torch
  from sentence_transformers import SentenceTransformer

  _, dtype, attention = (variant.split("-") + ["sdpa"])[:3]
  device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a smoke run of this script off the accelerator
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
  model_kwargs = {
    "torch_dtype": torch_dtype,
    "attn_implementation": {"sdpa": "sdpa", "fa2": "flash_attention_2"}[attention],
  }
  model = SentenceTransformer(str(path), device=device, model_kwargs=model_kwargs)
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


def run_jax(docs, path, batch_size, variant, out_file):
  import jax

  from distilbert_jax import SentenceTransformer

  _, dtype, attention = variant.split("-")[:3]
  model = SentenceTransformer.from_pretrained(path, dtype=dtype, attention=attention, compilation_cache=True)
  start = time.perf_counter()
  shapes = model.warmup(docs, batch_size=batch_size)
  warmup = time.perf_counter() - start
  start = time.perf_counter()
  emb = model.encode(docs, batch_size=batch_size)
  seconds = time.perf_counter() - start
  stats = dict(model.last_encode_stats)
  np.save(out_file, emb)
  bit_identical = None
  if attention == "frames":  # the deterministic path: the same bits in another batch composition
    again = model.encode(docs[::-1], batch_size=7, packing=False)[::-1]
    bit_identical = bool(np.array_equal(again, emb))
  # Device-only time: the same batches, already in device memory, run back to back.
  placed = []
  for s in range(0, len(docs), 8192):
    for batch in model.runner.plan(model.tokenizer.encode_batch(docs[s : s + 8192]), batch_size, "auto"):
      arrays = jax.device_put((batch.input_ids, batch.segment_ids, batch.positions), model.runner.batch_sharding)
      placed.append((arrays, batch.text_index.shape[1]))
  jax.block_until_ready([a for a, _ in placed])
  start = time.perf_counter()
  outs = [
    model.runner.forward(model.params, *a, num_segments=n, outputs=("sentence_embedding",), interceptor=None)
    for a, n in placed
  ]
  jax.block_until_ready(outs)
  device_seconds = time.perf_counter() - start
  kind = jax.devices()[0].device_kind
  mean_row = stats["computed_tokens"] / max(1, stats["rows"])
  per_token = flops_per_token(model.config, mean_row)
  useful = stats["real_tokens"] / seconds * per_token  # FLOPs the texts need (attention at the row length)
  computed = stats["computed_tokens"] / seconds * per_token
  peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k.lower() in kind.lower()), None)
  peak_total = peak * 1e12 * len(model.devices) if peak else None
  return {
    "seconds": seconds,
    "tokens": stats["real_tokens"],
    "computed_tokens": stats["computed_tokens"],
    "shapes": shapes,
    "warmup_seconds": warmup,
    "compilation_cache": model.compilation_cache,
    "device_seconds": device_seconds,
    "busy_fraction": device_seconds / seconds,
    "tflops_real": useful / 1e12,
    "mfu_real": useful / peak_total if peak_total else None,
    "mfu_computed": computed / peak_total if peak_total else None,
    "attention": model.attention,
    "bit_identical_across_compositions": bit_identical,
    "device": f"{len(model.devices)} x {kind} ({jax.default_backend()}), jax {jax.__version__}",
  }


def default_variants() -> list[str]:
  variants = ["torch-float32-sdpa", "torch-bfloat16-sdpa", "torch-float16-sdpa"]
  try:
    import flash_attn  # noqa: F401

    variants += ["torch-bfloat16-fa2"]
  except ImportError:
    pass
  variants += [
    "jax-float32-dense",
    "jax-bfloat16-dense",
    "jax-bfloat16-dense",
    "jax-bfloat16-xla",
    "jax-bfloat16-cudnn",
    "jax-int8-dense",  # XLA's int8 dot on the device's integer units (parity against torch float32)
    "jax-float32-frames",  # deterministic=True: cost, and bits across batch compositions on the device
    "jax-bfloat16-frames",
  ]
  return variants


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--docs", type=int, default=1000, help="first N SciFact documents (all variants fit ~8 min)")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--variants", help="comma-separated, e.g. torch-float32-sdpa,jax-bfloat16-xla (default: all)")
  parser.add_argument("--out", help="also write the results as JSON here")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--out-file", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    docs = documents(args.docs)
    run = run_torch if args.child.startswith("torch") else run_jax
    print(json.dumps(run(docs, msmarco_random_checkpoint(), args.batch_size, args.child, args.out_file)))
    return
  msmarco_random_checkpoint()
  variants = args.variants.split(",") if args.variants else default_variants()
  results, embeddings = {}, {}
  with tempfile.TemporaryDirectory() as tmp:
    env = {**os.environ, "DISTILBERT_JAX_COMPILATION_CACHE": str(Path(tmp) / "jax-cache")}  # cold at first use
    for variant in variants:
      name = variant if variant not in results else f"{variant} (warm cache)"
      out_file = Path(tmp) / f"{len(results)}.npy"
      cmd = [sys.executable, __file__, "--child", variant, "--batch-size", str(args.batch_size)]
      cmd += ["--out-file", str(out_file), "--docs", str(args.docs)]
      proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
      if proc.returncode:
        print(f"{name} failed:\n{proc.stderr[-3000:]}", flush=True)
        continue
      r = results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
      embeddings[name] = np.load(out_file)
      rate = r["tokens"] / r["seconds"]
      line = f"{name:<30} {rate:>11,.0f} tokens/s  {r['seconds']:6.2f}s"
      if "torch-float32-sdpa" in results and name != "torch-float32-sdpa":
        base = results["torch-float32-sdpa"]
        line += f"  {rate / (base['tokens'] / base['seconds']):5.2f}x torch-float32"
      if name.startswith("jax"):
        pct = lambda x: f"{x:.1%}" if x is not None else "n/a"
        line += (
          f"  MFU real {pct(r['mfu_real'])} computed {pct(r['mfu_computed'])}  busy {r['busy_fraction']:.0%}"
          f"  padding efficiency {r['tokens'] / r['computed_tokens']:.1%}  {r['shapes']} shapes,"
          f" warm-up {r['warmup_seconds']:.1f}s"
        )
        if r.get("bit_identical_across_compositions") is not None:
          line += f"  bit-identical across batch compositions: {r['bit_identical_across_compositions']}"
      print(f"{line}   [{r['device']}]", flush=True)
  torch_best = max(
    (k for k in results if k.startswith("torch")),
    key=lambda k: results[k]["tokens"] / results[k]["seconds"],
    default=None,
  )
  jax_best = max(
    (k for k in results if k.startswith("jax")),
    key=lambda k: results[k]["tokens"] / results[k]["seconds"],
    default=None,
  )
  if torch_best and jax_best:
    ratio = (results[jax_best]["tokens"] / results[jax_best]["seconds"]) / (
      results[torch_best]["tokens"] / results[torch_best]["seconds"]
    )
    print(f"best ours {jax_best} vs sentence-transformers' best {torch_best}: {ratio:.2f}x", flush=True)
  for dtype in ("float32", "bfloat16"):
    ours = [k for k in results if k.startswith(f"jax-{dtype}")]
    if ours:
      fastest = max(ours, key=lambda k: results[k]["tokens"] / results[k]["seconds"])
      print(f"fastest attention for {dtype}: {results[fastest]['attention']} ({fastest})", flush=True)
  for ours in [k for k in embeddings if k.startswith("jax")]:
    dtype = ours.split("-")[1]
    for ref in dict.fromkeys((f"torch-{dtype}-sdpa", "torch-float32-sdpa")):
      if ref in embeddings:
        x, y = embeddings[ours], embeddings[ref]
        cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
        print(
          f"parity {ours:<30} vs {ref:<20} max abs diff {np.abs(x - y).max():.3g} (max |x| {np.abs(y).max():.3g})"
          f"  min cosine {cos.min():.6f}",
          flush=True,
        )
  print(json.dumps(results))
  if args.out:
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
  main()
