"""oneDNN's GEMMs as XLA custom calls on CPU: `dnnl_gemm_u8s8s32` (VNNI int8, int32 accumulation) for the int8
dense layers, and `dnnl_sgemm` (float32) and `dnnl_gemm_bf16bf16f32` (bfloat16 inputs, float32 accumulation) for the
deterministic path's float dense layers.

The library comes from the `onednn-cpu-gomp` wheel (the `int8` extra). Each call is an XLA FFI handler written
with ctypes, so nothing is compiled at install: XLA hands the handler its operand and result buffers, and oneDNN
writes the product straight into XLA's result, with no copy through a host callback (that copy of every
[tokens, out] int32 product cost a quarter of int8 encoding's speed, measured by hand on 300 SciFact abstracts).
Only the leading struct fields the handler reads are declared; they are fixed in
XLA's FFI API 0.x (`xla/ffi/api/c_api.h`).

Row invariance (benchmarks/row_invariance.py, AMD EPYC Zen 4, 1 and 2 OpenMP threads): a row of `dnnl_sgemm`'s or
`dnnl_gemm_bf16bf16f32`'s row-major product has the same bits whatever the other rows and their number, at the
encoder's shapes and 2 to 1,031 rows; only a 1-row call (oneDNN's GEMV path) differs, so `dot_float` computes a
lone row as two. XLA:CPU's float32 dot changes a row's bits from 17 rows on: the deterministic path's dense layers
run on these calls, one call over all rows, instead of fixed tiles of tokens.
"""

from __future__ import annotations

import ctypes as C
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ONEDNN_LIBRARY = "libdnnl.so.3"  # what the onednn-cpu-gomp wheel installs into <prefix>/lib
_I64, _F32, _P = C.c_int64, C.c_float, C.c_void_p
MIN_ROWS = 2  # rows a call computes at least when told fewer hold tokens: a 1-row call takes another kernel
_SIGNATURES = {  # oneDNN's C API (dnnl.h), row-major
  "dnnl_gemm_u8s8s32": [C.c_char] * 3
  + [_I64] * 3
  + [_F32, _P, _I64, C.c_uint8, _P, _I64, C.c_int8]
  + [_F32, _P, _I64, _P],
  "dnnl_sgemm": [C.c_char] * 2 + [_I64] * 3 + [_F32, _P, _I64, _P, _I64, _F32, _P, _I64],
  "dnnl_gemm_bf16bf16f32": [C.c_char] * 2 + [_I64] * 3 + [_F32, _P, _I64, _P, _I64, _F32, _P, _I64],
}


@functools.cache
def onednn_function(name: str) -> tuple[Any, str | None]:
  """(oneDNN's function `name`, None), or (None, why it cannot be loaded)."""
  path = Path(sys.prefix) / "lib" / ONEDNN_LIBRARY
  if not path.is_file():
    return None, f"{path} not found (pip install onednn-cpu-gomp, the 'int8' extra)"
  try:
    function = getattr(C.CDLL(str(path)), name)
  except (OSError, AttributeError) as e:
    return None, f"{path}: {e}"
  function.argtypes = _SIGNATURES[name]
  function.restype = C.c_int
  return function, None


def onednn_gemm() -> tuple[Any, str | None]:
  """(oneDNN's dnnl_gemm_u8s8s32, None), or (None, why it cannot be loaded)."""
  return onednn_function("dnnl_gemm_u8s8s32")


_NO_OFFSET = np.zeros(1, np.int32)  # oneDNN's C offset: none


def gemm_u8s8s32(a: int, b: int, c: int, m: int, n: int, k: int) -> int:
  """c[m, n] int32 = (a[m, k] uint8 - 128) @ b[n, k].T int8, on raw pointers (oneDNN subtracts the offset 128
  itself); oneDNN's status (0: done)."""
  gemm, why = onednn_gemm()
  if gemm is None:
    raise RuntimeError(f"int8 dot 'onednn' is not available: {why}")
  if not (m and n):
    return 0
  return gemm(b"N", b"T", b"F", m, n, k, 1.0, a, k, 128, b, k, 0, 0.0, c, n, _NO_OFFSET.ctypes.data)


def _gemm_float(name: str) -> Callable[[int, int, int, int, int, int], int]:
  def gemm(a: int, b: int, c: int, m: int, n: int, k: int) -> int:
    """c[m, n] float32 = a[m, k] @ b[k, n], row-major raw pointers; oneDNN's status (0: done)."""
    function, why = onednn_function(name)
    if function is None:
      raise RuntimeError(f"dense 'onednn' is not available: {why}")
    if not (m and n):
      return 0
    return function(b"N", b"N", m, n, k, 1.0, a, k, b, n, 0.0, c, n)

  return gemm


gemm_f32 = _gemm_float("dnnl_sgemm")
gemm_bf16 = _gemm_float("dnnl_gemm_bf16bf16f32")


# -- XLA FFI (xla/ffi/api/c_api.h): the leading fields of the structs the handler reads.


class _Extension(C.Structure):
  pass


_Extension._fields_ = [("struct_size", C.c_size_t), ("type", C.c_int), ("next", C.POINTER(_Extension))]
_METADATA_EXTENSION = 1  # XLA_FFI_Extension_Metadata: XLA asks the handler which API version it speaks
_EXECUTE = 3  # XLA_FFI_ExecutionStage_EXECUTE
_INTERNAL = 13  # XLA_FFI_Error_Code_INTERNAL
_API_VERSION = (0, 1)  # the FFI API whose fields are declared here (XLA accepts handlers of older minor versions)


class _ApiVersion(C.Structure):
  _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p), ("major", C.c_int), ("minor", C.c_int)]


class _Metadata(C.Structure):
  _fields_ = [("struct_size", C.c_size_t), ("api_version", _ApiVersion), ("traits", C.c_uint32)]


class _MetadataExtension(C.Structure):
  _fields_ = [("extension_base", _Extension), ("metadata", C.POINTER(_Metadata))]


class _Buffer(C.Structure):
  _fields_ = [
    ("struct_size", C.c_size_t),
    ("extension_start", C.c_void_p),
    ("dtype", C.c_int),
    ("data", C.c_void_p),
    ("rank", C.c_int64),
    ("dims", C.POINTER(C.c_int64)),
  ]


class _Buffers(C.Structure):  # XLA_FFI_Args and XLA_FFI_Rets
  _fields_ = [
    ("struct_size", C.c_size_t),
    ("extension_start", C.c_void_p),
    ("size", C.c_int64),
    ("types", C.c_void_p),
    ("buffers", C.POINTER(C.c_void_p)),
  ]


class _ErrorArgs(C.Structure):
  _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.c_void_p), ("message", C.c_char_p), ("code", C.c_int)]


class _Api(C.Structure):
  _fields_ = [
    ("struct_size", C.c_size_t),
    ("extension_start", C.c_void_p),
    ("api_version", _ApiVersion),
    ("internal_api", C.c_void_p),
    ("error_create", C.CFUNCTYPE(C.c_void_p, C.POINTER(_ErrorArgs))),
  ]


class _CallFrame(C.Structure):
  _fields_ = [
    ("struct_size", C.c_size_t),
    ("extension_start", C.POINTER(_Extension)),
    ("api", C.POINTER(_Api)),
    ("ctx", C.c_void_p),
    ("stage", C.c_int),
    ("args", _Buffers),
    ("rets", _Buffers),
  ]


def _error(frame: _CallFrame, message: str) -> int:
  """An XLA FFI error: XLA raises it in the caller (XlaRuntimeError) with this message."""
  args = _ErrorArgs(C.sizeof(_ErrorArgs), None, message.encode(), _INTERNAL)
  return frame.api.contents.error_create(C.byref(args))


def _make_handler(name: str, label: str, gemm: Callable[[int, int, int, int, int, int], int], b_is_nk: bool):
  """An FFI handler for c [M, N] = a [M, K] x b ([N, K] when `b_is_nk`, else [K, N]) by `gemm` on raw pointers.
  A third operand, an int32 scalar, is the rows of `a` that hold tokens (the rest are trailing padding): only
  those are multiplied (at least MIN_ROWS, the row-invariant paths), the others of c are zeros.
  Every failure becomes an XLA error (an exception escaping a ctypes callback would be printed and the call reported
  as done)."""

  def handler(frame_pointer) -> int | None:
    frame = frame_pointer.contents
    try:
      extension = frame.extension_start
      if extension and extension.contents.type == _METADATA_EXTENSION:
        metadata = C.cast(extension, C.POINTER(_MetadataExtension)).contents.metadata.contents
        metadata.api_version = _ApiVersion(C.sizeof(_ApiVersion), None, *_API_VERSION)
        metadata.traits = 0
        return None
      if frame.stage != _EXECUTE:
        return None
      buffer = lambda buffers, i: C.cast(buffers.buffers[i], C.POINTER(_Buffer)).contents
      a, b, c = buffer(frame.args, 0), buffer(frame.args, 1), buffer(frame.rets, 0)
      (m, k), n = (a.dims[0], a.dims[1]), b.dims[0 if b_is_nk else 1]
      if frame.args.size > 2:
        used = min(m, max(MIN_ROWS, C.cast(buffer(frame.args, 2).data, C.POINTER(C.c_int32))[0]))
        C.memset(c.data + used * n * 4, 0, (m - used) * n * 4)  # c is 4-byte (int32 or float32)
        m = used
      status = gemm(a.data, b.data, c.data, m, n, k)
      if status != 0:
        return _error(frame, f"oneDNN {name} failed (status {status}) on [{m}, {k}] x [{b.dims[0]}, {b.dims[1]}]")
      return None
    except BaseException as e:  # noqa: BLE001 -- raised in the caller through XLA, never swallowed
      return _error(frame, f"{label}: {type(e).__name__}: {e}")

  return handler


_HANDLER_TYPE = C.CFUNCTYPE(C.c_void_p, C.POINTER(_CallFrame))
# Kept alive here: XLA holds their addresses. Target name -> handler.
_HANDLERS = {
  "distilbert_jax_onednn_gemm_u8s8s32": _HANDLER_TYPE(
    _make_handler("dnnl_gemm_u8s8s32", "int8 dot 'onednn'", gemm_u8s8s32, True)
  ),
  "distilbert_jax_onednn_sgemm": _HANDLER_TYPE(_make_handler("dnnl_sgemm", "dense 'onednn'", gemm_f32, False)),
  "distilbert_jax_onednn_gemm_bf16bf16f32": _HANDLER_TYPE(
    _make_handler("dnnl_gemm_bf16bf16f32", "dense 'onednn'", gemm_bf16, False)
  ),
}
TARGET = "distilbert_jax_onednn_gemm_u8s8s32"


@functools.cache
def _register(target: str) -> None:
  jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(_HANDLERS[target]), platform="cpu")


def _call(target: str, out_dtype, a: jax.Array, b: jax.Array, n: int, rows: jax.Array | None) -> jax.Array:
  _register(target)
  out = jax.ShapeDtypeStruct((a.shape[0], n), out_dtype)
  operands = (a, b) if rows is None else (a, b, jnp.asarray(rows, jnp.int32))
  return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*operands)


def dot_u8s8s32(shifted: jax.Array, kernel: jax.Array, rows: jax.Array | None = None) -> jax.Array:
  """[M, K] uint8 (int8 + 128), [N, K] int8 -> [M, N] int32 = (shifted - 128) @ kernel.T, exactly, by oneDNN
  inside the XLA computation (CPU). `rows` (int32 scalar): only the first rows hold tokens; the rest of the
  product is zeros (none: every row)."""
  return _call(TARGET, jnp.int32, shifted, kernel, kernel.shape[0], rows)


FLOAT_TARGETS = {"float32": "distilbert_jax_onednn_sgemm", "bfloat16": "distilbert_jax_onednn_gemm_bf16bf16f32"}
FLOAT_FUNCTIONS = {"float32": "dnnl_sgemm", "bfloat16": "dnnl_gemm_bf16bf16f32"}


def dot_float(x: jax.Array, kernel: jax.Array, rows: jax.Array | None = None) -> jax.Array:
  """[M, K] x [K, N] (both float32, or both bfloat16) -> [M, N] float32 by oneDNN's row-major GEMM inside the XLA
  computation (CPU). A row's bits do not depend on the other rows (module docstring): a lone row is computed as two
  (oneDNN's 1-row path gives other bits). `rows` (int32 scalar): only the first rows hold tokens, the rest of the
  product is zeros (at least MIN_ROWS are computed; none: every row)."""
  name = jnp.dtype(x.dtype).name
  if name not in FLOAT_TARGETS or kernel.dtype != x.dtype:
    raise ValueError(f"dense 'onednn' takes float32 or bfloat16 operands of one dtype, got {x.dtype}, {kernel.dtype}")
  count = x.shape[0]
  if count == 1:
    x = jnp.concatenate([x, x])
  used = None if rows is None else jnp.minimum(rows, count)
  return _call(FLOAT_TARGETS[name], jnp.float32, x, kernel, kernel.shape[1], used)[:count]


_PROBE_SHAPES = ((768, 3072), (3072, 768), (768, 2304))  # the encoder's dense layers: [K, N]
_PROBE_ROWS = 130  # rows of the whole call; its first 32 are compared with 2-row calls, rows 7..39 with one call


@functools.cache
def row_invariant(dtype: str) -> tuple[bool, str | None]:
  """(True, None) when oneDNN's float GEMM for `dtype` gives a row the same bits in a 130-row call, a 33-row
  call at another offset and 2-row calls, at the encoder's shapes, on this CPU; else (False, why). Checked once
  per process (well under a second): kernels are chosen per instruction set, so one CPU's measurement is not
  another's."""
  function, why = onednn_function(FLOAT_FUNCTIONS[dtype])
  if function is None:
    return False, why
  import ml_dtypes

  storage = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
  gemm = gemm_f32 if dtype == "float32" else gemm_bf16
  rng = np.random.default_rng(0)

  def product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, c = np.ascontiguousarray(a), np.zeros((a.shape[0], b.shape[1]), np.float32)
    status = gemm(a.ctypes.data, b.ctypes.data, c.ctypes.data, a.shape[0], b.shape[1], a.shape[1])
    if status:
      raise RuntimeError(f"oneDNN {FLOAT_FUNCTIONS[dtype]} failed (status {status})")
    return c

  for k, n in _PROBE_SHAPES:
    a = rng.standard_normal((_PROBE_ROWS, k)).astype(storage)
    b = np.ascontiguousarray(rng.standard_normal((k, n)).astype(storage))
    whole = product(a, b)
    pairs = np.concatenate([product(a[i : i + 2], b) for i in range(0, 32, 2)])
    shifted = product(a[7:40], b)
    if not (np.array_equal(whole[:32], pairs) and np.array_equal(whole[7:40], shifted)):
      return False, f"a row's bits depend on the other rows at [{k}, {n}] on this CPU"
  return True, None
