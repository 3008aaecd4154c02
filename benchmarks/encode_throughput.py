"""Encoding throughput: our `encode` vs sentence-transformers' `encode` and the ONNX Runtime / OpenVINO runtimes
its `backend=` options use, each in its own process.

The first 1,000 SciFact documents at the full msmarco-distilbert-dot-v5 config (random weights), CPU, batch 32,
2 threads. Each side warms up first (torch on one batch; JAX compiles each batch shape it will use, running one
batch of each), then encodes all documents `--repeats` times (default 2), and the fastest pass counts. Prints
tokens/s, ratios against torch float32 and ONNX Runtime int8, padding efficiency (real / computed tokens), the
minimum cosine of the first 64 embeddings to torch float32's, and for int8 variants the dense layers' rate as a
fraction of the measured int8 GEMM peak (gemm-* rows: [768 tokens, 768] x [768, 3072], the FFN's shape).

  python benchmarks/encode_throughput.py [--docs 1000] [--variants jax-f32,jax-bf16,jax-int8,ort-f32,ort-int8,...]

jax-* use `encode`'s default (packing="auto"); -pack and -nopack force packing on or off; -det is
deterministic=True (batch-invariant); jax-int8 runs the platform's int8 dot (oneDNN's VNNI GEMM on CPU).
ort-f32 / ort-int8 / openvino: benchmarks/onnx_reference.py (the export sentence-transformers' backends load, int8
as its export_dynamic_quantized_onnx_model(..., "avx512_vnni")); they need `pip install onnxruntime onnx onnxscript
openvino` (benchmark extras, never dependencies of the package).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (  # noqa: E402
  msmarco_random_checkpoint,
  scifact_documents,
  sentence_transformers_tokens,
)

THREADS = 2
COMPARED = 64  # the first documents whose embeddings are compared with torch float32's
MIN_COSINE = 0.99  # below it a variant computed another model (measured: int8 0.9996, bfloat16 0.99999)


def best_of(repeats, fn):
  """Seconds of the fastest of `repeats` calls: this VM's speed drifts by +-10% between minutes."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def run_torch(docs, path, batch_size, repeats):
  import torch

  torch.set_num_threads(THREADS)
  from sentence_transformers import SentenceTransformer

  model = SentenceTransformer(str(path), device="cpu")
  tokens = sentence_transformers_tokens(model, docs)
  model.encode(docs[:batch_size], batch_size=batch_size)  # warm-up
  seconds = best_of(repeats, lambda: model.encode(docs, batch_size=batch_size))
  return {"seconds": seconds, "tokens": tokens, "embeddings": model.encode(docs[:COMPARED]).tolist()}


def run_jax(docs, path, batch_size, repeats, dtype, packing, deterministic=False):
  from distilbert_jax import SentenceTransformer

  model = SentenceTransformer.from_pretrained(path, dtype=dtype, deterministic=deterministic)
  start = time.perf_counter()
  shapes = model.warmup(docs, batch_size=batch_size, packing=packing)  # compiles each shape, one batch each
  first = time.perf_counter() - start
  seconds = best_of(repeats, lambda: model.encode(docs, batch_size=batch_size, packing=packing))
  stats = model.last_encode_stats
  return {
    "seconds": seconds,
    "warmup_seconds": first,
    "shapes": shapes,
    "tokens": stats["real_tokens"],
    "padding_efficiency": stats["real_tokens"] / stats["computed_tokens"],
    "embeddings": model.encode(docs[:COMPARED]).tolist(),
  }


def run_onnx(docs, path, batch_size, repeats, runtime, precision):
  from benchmarks import onnx_reference

  model = onnx_reference.export(path, onnx_reference.export_dir(path))[precision]
  return onnx_reference.run(runtime, model, path, docs, batch_size, repeats, THREADS, COMPARED)


GEMM = (768, 768, 3072)  # tokens x in x out: the FFN's first layer at 768 tokens a step


def run_gemm(docs, path, batch_size, repeats, kind):
  """{"ops_per_second"}: the best of 20 calls of one [768, 768] x [768, 3072] product."""
  m, k, n = GEMM
  rng = np.random.default_rng(0)
  if kind == "ort-int8":  # ONNX Runtime's MatMulInteger (uint8 x int8, VNNI where the CPU has it)
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
      [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
      "gemm",
      [
        helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k]),
        helper.make_tensor_value_info("b", TensorProto.INT8, [k, n]),
      ],
      [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])],
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a, b = rng.integers(0, 255, (m, k), dtype=np.uint8), rng.integers(-127, 128, (k, n), dtype=np.int8)
    call = lambda: session.run(None, {"a": a, "b": b})
  elif kind.startswith("onednn-"):  # what our dense layers run on CPU: oneDNN's GEMMs (model/onednn.py)
    from distilbert_jax.model import onednn

    if kind == "onednn-int8":  # u8 x s8 [out, in], int32 accumulation
      a = rng.integers(1, 256, (m, k), dtype=np.uint8)
      b = rng.integers(-127, 128, (n, k), dtype=np.int8)
      c, gemm = np.empty((m, n), np.int32), onednn.gemm_u8s8s32
    else:  # sgemm, or bfloat16 inputs with float32 accumulation: the deterministic path's float dense layers
      import ml_dtypes

      dtype, gemm = {
        "onednn-f32": (np.float32, onednn.gemm_f32),
        "onednn-bf16": (ml_dtypes.bfloat16, onednn.gemm_bf16),
      }[kind]
      a, b = rng.normal(size=(m, k)).astype(dtype), rng.normal(size=(k, n)).astype(dtype)
      c = np.empty((m, n), np.float32)
    call = lambda: gemm(a.ctypes.data, b.ctypes.data, c.ctypes.data, m, n, k)
  else:
    import jax
    import jax.numpy as jnp

    if kind == "xla-int8":  # what our int8 dense layers run: int8 x int8 [out, in], int32 accumulation
      a = jnp.asarray(rng.integers(-127, 128, (m, k)), jnp.int8)
      b = jnp.asarray(rng.integers(-127, 128, (n, k)), jnp.int8)
      dims = (((1,), (1,)), ((), ()))
      fn = jax.jit(lambda a, b: jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.int32))
    else:
      dtype = {"xla-bf16": jnp.bfloat16, "xla-f32": jnp.float32}[kind]
      a, b = jnp.asarray(rng.normal(size=(m, k)), dtype), jnp.asarray(rng.normal(size=(k, n)), dtype)
      fn = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    call = lambda: fn(a, b).block_until_ready()
  call()
  seconds = best_of(20, call)
  return {"ops_per_second": 2 * m * k * n / seconds}


VARIANTS = {  # each called as (docs, checkpoint path, batch size, repeats)
  "torch-f32": run_torch,
  "jax-f32": functools.partial(run_jax, dtype="float32", packing="auto"),  # the default: packs where it pays
  "jax-f32-pack": functools.partial(run_jax, dtype="float32", packing=True),
  "jax-f32-nopack": functools.partial(run_jax, dtype="float32", packing=False),
  "jax-bf16": functools.partial(run_jax, dtype="bfloat16", packing="auto"),
  "jax-bf16-pack": functools.partial(run_jax, dtype="bfloat16", packing=True),
  "jax-bf16-nopack": functools.partial(run_jax, dtype="bfloat16", packing=False),
  "jax-int8": functools.partial(run_jax, dtype="int8", packing="auto"),
  # deterministic=True: batch-invariant embeddings (attention in each text's own frame, texts on tile starts)
  "jax-f32-det": functools.partial(run_jax, dtype="float32", packing="auto", deterministic=True),
  "jax-bf16-det": functools.partial(run_jax, dtype="bfloat16", packing="auto", deterministic=True),
  "ort-f32": functools.partial(run_onnx, runtime="onnxruntime", precision="f32"),
  "ort-int8": functools.partial(run_onnx, runtime="onnxruntime", precision="int8"),
  "openvino": functools.partial(run_onnx, runtime="openvino", precision="f32"),  # its CPU default precision
}
GEMM_KINDS = ("xla-f32", "xla-bf16", "xla-int8", "onednn-f32", "onednn-bf16", "onednn-int8", "ort-int8")
GEMMS = {f"gemm-{kind}": functools.partial(run_gemm, kind=kind) for kind in GEMM_KINDS}
VARIANTS.update(GEMMS)


def dense_ops_per_token(path) -> float:
  """Multiply-adds x 2 of the blocks' dense layers per token (attention's own products excluded)."""
  cfg = json.loads((path / "config.json").read_text())
  d = cfg.get("dim", cfg.get("hidden_size"))
  f = cfg.get("hidden_dim", cfg.get("intermediate_size"))
  layers = cfg.get("n_layers", cfg.get("num_hidden_layers"))
  return 2 * layers * (4 * d * d + 2 * d * f)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--docs", type=int, default=1000)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument(
    "--variants", default="jax-f32,jax-bf16,jax-int8,jax-f32-det,jax-bf16-det,ort-f32,ort-int8,openvino"
  )
  parser.add_argument("--repeats", type=int, default=2, help="timed encodes per variant; the fastest counts")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:  # one measurement in this process
    docs = scifact_documents(args.docs)
    print(json.dumps(VARIANTS[args.child](docs, msmarco_random_checkpoint(), args.batch_size, args.repeats)))
    return
  path = msmarco_random_checkpoint()
  env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), TOKENIZERS_PARALLELISM="true")
  results = {}
  for variant in ["torch-f32", *args.variants.split(","), *GEMMS]:
    command = [sys.executable, __file__, "--child", variant, "--docs", str(args.docs)]
    command += ["--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode:
      sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
    results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {variant} done", flush=True)
  peak_int8 = max(results[g]["ops_per_second"] for g in ("gemm-xla-int8", "gemm-onednn-int8", "gemm-ort-int8"))
  for g in GEMMS:
    print(f"{g:<16} {results[g]['ops_per_second'] / 1e9:9,.0f} GOP/s")
  rate = {v: r["tokens"] / r["seconds"] for v, r in results.items() if "tokens" in r}
  reference = np.asarray(results["torch-f32"]["embeddings"], np.float32)
  for variant, tokens_per_s in rate.items():
    line = f"{variant:<16} {tokens_per_s:>9,.0f} tokens/s  {results[variant]['seconds']:7.1f}s"
    if variant != "torch-f32":
      e = np.asarray(results[variant]["embeddings"], np.float32)
      cos = (e * reference).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(reference, axis=1))
      results[variant]["min_cos_to_torch"] = float(cos.min())
      if cos.min() < MIN_COSINE:  # another model (a stale export, a wrong checkpoint), not a speed to compare
        sys.exit(f"{variant}: embeddings of the first {COMPARED} documents reach cosine {cos.min():.4f} to torch's")
      line += f"  {tokens_per_s / rate['torch-f32']:5.2f}x torch-f32"
      if "ort-int8" in rate:
        line += f"  {tokens_per_s / rate['ort-int8']:5.2f}x ort-int8"
      line += f"  min cos to torch-f32 {cos.min():.5f}"
      if variant.endswith("int8"):
        results[variant]["int8_peak_fraction"] = tokens_per_s * dense_ops_per_token(path) / peak_int8
        line += f"  dense layers at {results[variant]['int8_peak_fraction']:.0%} of the int8 GEMM peak"
    r = results[variant]
    if "padding_efficiency" in r:
      line += f"  padding efficiency {r['padding_efficiency']:.1%}"
      line += f"  ({r['shapes']} shapes, warm-up {r['warmup_seconds']:.0f}s)"
    print(line, flush=True)
  print(json.dumps({v: {k: x for k, x in r.items() if k != "embeddings"} for v, r in results.items()}))


if __name__ == "__main__":
  main()
