"""Row invariance of the kernels the deterministic path could use (issue 38): is a row's result bit for bit the same
whatever the other rows of the call and however many there are?

GEMMs at the encoder's shapes [M, 768] x [768, 3072], [M, 3072] x [3072, 768], [M, 768] x [768, 2304], for
M in ROWS: every row of an M-row call (rows taken from offset 7 of a 1,031-row input, so a row's index in the call
differs from its index in the reference) against the same row computed in a 2-row call. Kernels: oneDNN's
`dnnl_sgemm` (float32) and `dnnl_gemm_bf16bf16f32` (bfloat16 inputs, float32 accumulation), row-major, at 1 and 2
OpenMP threads; XLA's jnp.dot (float32 at HIGHEST precision as the model computes it, and bfloat16 inputs with
preferred_element_type float32). Then XLA's row-wise float parts as plain jnp: LayerNorm mean/var, a masked softmax
over a padded key axis, a masked mean over tokens: a row's bits at several batch sizes and row widths.

  python benchmarks/row_invariance.py
"""

from __future__ import annotations

import ctypes as C
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = ((768, 3072), (3072, 768), (768, 2304))  # (K, N)
ROWS = (1, 2, 3, 16, 17, 32, 33, 100, 295, 1031)
OFFSET = 7  # the M-row calls take rows OFFSET.. of the input


def cpu_model() -> str:
  out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
  name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
  flags = next((line.split(":", 1)[1].split() for line in out.splitlines() if line.startswith("Flags")), [])
  wanted = [f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma"))]
  return f"{name}, {os.cpu_count()} cores; flags: {' '.join(wanted)}"


def onednn():
  lib = C.CDLL(os.path.join(sys.prefix, "lib", "libdnnl.so.3"))
  i64, f32 = C.c_int64, C.c_float
  args = [C.c_char, C.c_char, i64, i64, i64, f32, C.c_void_p, i64, C.c_void_p, i64, f32, C.c_void_p, i64]
  lib.dnnl_sgemm.argtypes = args
  lib.dnnl_gemm_bf16bf16f32.argtypes = args
  gomp = C.CDLL("libgomp.so.1")  # the OpenMP runtime libdnnl (gomp build) runs on: its thread count per call
  return lib, gomp


def onednn_product(lib, name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  m, k = a.shape
  n = b.shape[1]
  c = np.empty((m, n), np.float32)
  status = getattr(lib, name)(b"N", b"N", m, n, k, 1.0, a.ctypes.data, k, b.ctypes.data, n, 0.0, c.ctypes.data, n)
  assert status == 0, status
  return c


def differing_rows(product, x: np.ndarray, reference: np.ndarray, m: int) -> int:
  """Rows of an m-row call (from OFFSET) whose bits differ from their 2-row reference."""
  y = product(x[OFFSET : OFFSET + m])
  return int((y != reference[OFFSET : OFFSET + m]).any(-1).sum())


def two_row_reference(product, x: np.ndarray) -> np.ndarray:
  n = x.shape[0]
  out = [product(x[i : i + 2]) for i in range(0, n - 1, 2)]
  if n % 2:
    out.append(product(x[n - 2 : n])[1:])
  return np.concatenate(out)


def _xla_dots():
  import jax
  import jax.numpy as jnp

  f32 = jax.jit(lambda a, b: jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST))  # as the model's float32 dense
  bf16 = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  return f32, bf16


def gemm_table() -> list[tuple[str, str, list[int]]]:
  import ml_dtypes

  global XLA_F32, XLA_BF16
  XLA_F32, XLA_BF16 = _xla_dots()
  rng = np.random.default_rng(0)
  lib, gomp = onednn()
  total = max(ROWS) + OFFSET
  rows = []
  for k, n in SHAPES:
    x32 = rng.standard_normal((total, k), np.float32)
    w32 = (rng.standard_normal((k, n), np.float32) * 0.03).astype(np.float32)
    x16, w16 = x32.astype(ml_dtypes.bfloat16), w32.astype(ml_dtypes.bfloat16)
    shape = f"[M,{k}]x[{k},{n}]"
    kernels = []
    for threads in (1, 2):
      for name, x, w in (("dnnl_sgemm", x32, w32), ("dnnl_gemm_bf16bf16f32", x16, w16)):
        kernels.append((f"{name} {threads}t", threads, lambda a, name=name, w=w: onednn_product(lib, name, a, w), x))
    kernels.append(("xla f32", 0, lambda a, w=w32: np.asarray(XLA_F32(a, w)), x32))
    kernels.append(("xla bf16->f32", 0, lambda a, w=w16: np.asarray(XLA_BF16(a, w)), x16))
    references = {}
    for name, threads, product, x in kernels:
      if threads:
        gomp.omp_set_num_threads(threads)
      reference = two_row_reference(product, x)
      references[name] = reference
      rows.append((shape, name, [differing_rows(product, x, reference, m) for m in ROWS]))
      print(f"{shape:<18} {name:<26}", " ".join(f"{d:>5}" for d in rows[-1][2]), flush=True)
    for base in ("dnnl_sgemm", "dnnl_gemm_bf16bf16f32"):  # 1 vs 2 threads: the same bits?
      same = np.array_equal(references[f"{base} 1t"], references[f"{base} 2t"])
      print(f"{shape:<18} {base}: 1 thread == 2 threads (2-row calls, all rows): {same}", flush=True)
  return rows


def rowwise_table() -> None:
  """Row-wise float parts as plain jnp reductions along the last axis (and pooling along tokens)."""
  import jax
  import jax.numpy as jnp

  rng = np.random.default_rng(1)
  d = 768

  def layer_norm(x):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-12)

  def softmax(logits, n):  # [M, S], the first n keys real
    allowed = jnp.arange(logits.shape[-1]) < n
    return jax.nn.softmax(jnp.where(allowed, logits, jnp.finfo(jnp.float32).min), axis=-1)

  def mean_pool(x, n):  # [B, T, D], the first n tokens real
    mask = (jnp.arange(x.shape[1]) < n)[None, :, None]
    return jnp.where(mask, x, 0.0).sum(1) / n

  ln = jax.jit(layer_norm)
  x = rng.standard_normal((1031 + OFFSET, d), np.float32) * 3 + 1
  ref = two_row_reference(lambda a: np.asarray(ln(a)), x)
  diffs = [differing_rows(lambda a: np.asarray(ln(a)), x, ref, m) for m in ROWS]
  print(f"{'LayerNorm [M,768]':<45}", " ".join(f"{v:>5}" for v in diffs))
  # Softmax: 40 real keys of rows padded to S keys (multiples of 32 as the deterministic rows), M rows.
  sm = jax.jit(softmax, static_argnums=1)
  logits = rng.standard_normal((1031 + OFFSET, 512), np.float32) * 4
  want = two_row_reference(lambda a: np.asarray(sm(a, 40))[:, :40], logits[:, :64])
  for width in (64, 96, 128, 512):
    diffs = []
    for m in ROWS:
      got = np.asarray(sm(logits[OFFSET : OFFSET + m, :width], 40))[:, :40]
      diffs.append(int((got != want[OFFSET : OFFSET + m]).any(-1).sum()))
    print(f"{f'softmax 40 real keys of S={width} vs S=64':<45}", " ".join(f"{v:>5}" for v in diffs))
  # Mean pooling: 45 real tokens of rows T wide, B rows; reference: each row alone at T=64.
  mp = jax.jit(mean_pool, static_argnums=1)
  tokens = rng.standard_normal((64, 512, d), np.float32)
  alone = np.concatenate([np.asarray(mp(tokens[i : i + 1, :64], 45)) for i in range(64)])
  for width in (64, 96, 128, 512):
    diffs = [int((np.asarray(mp(tokens[:b, :width], 45)) != alone[:b]).any(-1).sum()) for b in (1, 2, 3, 16, 17, 64)]
    print(f"{f'mean pool 45 tokens of T={width}, B=1,2,3,16,17,64':<45}", " ".join(f"{v:>5}" for v in diffs))


def main():
  print("CPU:", cpu_model())
  import jax

  print("jax", jax.__version__, "| rows of an M-row call that differ from the same row in a 2-row call")
  print(f"{'shape':<18} {'kernel':<26}", " ".join(f"M={m:<3}" for m in ROWS))
  gemm_table()
  print("\nXLA row-wise float parts (same columns: M rows; pooling: batch sizes as named)")
  rowwise_table()


if __name__ == "__main__":
  main()
