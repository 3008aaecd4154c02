"""oneDNN's int8 GEMM (`dnnl_gemm_u8s8s32`: VNNI, int32 accumulation) as an XLA custom call on CPU.

The library comes from the `onednn-cpu-gomp` wheel (the `int8` extra). The call is an XLA FFI handler written
with ctypes, so nothing is compiled at install: XLA hands the handler its operand and result buffers, and oneDNN
writes the product straight into XLA's result, with no copy through a host callback (that copy of every
[tokens, out] int32 product cost a quarter of int8 encoding's speed, measured by hand on 300 SciFact abstracts).
Only the leading struct fields the handler reads are declared; they are fixed in
XLA's FFI API 0.x (`xla/ffi/api/c_api.h`).
"""

from __future__ import annotations

import ctypes as C
import functools
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ONEDNN_LIBRARY = "libdnnl.so.3"  # what the onednn-cpu-gomp wheel installs into <prefix>/lib


@functools.cache
def onednn_gemm() -> tuple[Any, str | None]:
  """(oneDNN's dnnl_gemm_u8s8s32, None), or (None, why it cannot be loaded)."""
  path = Path(sys.prefix) / "lib" / ONEDNN_LIBRARY
  if not path.is_file():
    return None, f"{path} not found (pip install onednn-cpu-gomp, the 'int8' extra)"
  try:
    gemm = C.CDLL(str(path)).dnnl_gemm_u8s8s32
  except (OSError, AttributeError) as e:
    return None, f"{path}: {e}"
  i64 = C.c_int64
  gemm.argtypes = [C.c_char] * 3 + [i64] * 3 + [C.c_float, C.c_void_p, i64, C.c_uint8]
  gemm.argtypes += [C.c_void_p, i64, C.c_int8, C.c_float, C.c_void_p, i64, C.c_void_p]
  gemm.restype = C.c_int
  return gemm, None


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


def _handler(frame_pointer) -> int | None:
  """args: a [M, K] uint8 (int8 + 128), b [N, K] int8; result: c [M, N] int32. Every failure becomes an XLA error
  (an exception escaping a ctypes callback would be printed and the call reported as done)."""
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
    (m, k), n = (a.dims[0], a.dims[1]), b.dims[0]
    status = gemm_u8s8s32(a.data, b.data, c.data, m, n, k)
    if status != 0:
      return _error(frame, f"oneDNN dnnl_gemm_u8s8s32 failed (status {status}) on [{m}, {k}] x [{n}, {k}]")
    return None
  except BaseException as e:  # noqa: BLE001 -- raised in the caller through XLA, never swallowed
    return _error(frame, f"int8 dot 'onednn': {type(e).__name__}: {e}")


_HANDLER = C.CFUNCTYPE(C.c_void_p, C.POINTER(_CallFrame))(_handler)  # kept alive: XLA holds its address
TARGET = "distilbert_jax_onednn_gemm_u8s8s32"


@functools.cache
def _register() -> None:
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(_HANDLER), platform="cpu")


def dot_u8s8s32(shifted: jax.Array, kernel: jax.Array) -> jax.Array:
  """[M, K] uint8 (int8 + 128), [N, K] int8 -> [M, N] int32 = (shifted - 128) @ kernel.T, exactly, by oneDNN
  inside the XLA computation (CPU)."""
  _register()
  out = jax.ShapeDtypeStruct((shifted.shape[0], kernel.shape[0]), jnp.int32)
  return jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")(shifted, kernel)
