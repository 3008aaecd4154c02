"""Writing files so that a reader never sees half of one, and two writers never share a temporary name."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from pathlib import Path

import numpy as np


def write_atomic(path: str | Path, data: bytes) -> Path:
  """Writes under a name unique to this writer, fsyncs, renames over `path`, fsyncs the directory. A failure
  (disk full, ...) raises naming `path`, and removes the temporary file; whatever `path` held stays."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    tmp.unlink(missing_ok=True)
    raise OSError(e.errno, e.strerror or str(e), str(path)) from None  # the error names the file
  directory = os.open(path.parent, os.O_RDONLY)
  try:
    os.fsync(directory)
  finally:
    os.close(directory)
  return path


def write_json(path: str | Path, value) -> Path:
  import json

  return write_atomic(path, (json.dumps(value, indent=2) + "\n").encode())


def npy_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


def npy_path(path: str | Path) -> Path:
  """The name np.save would write: `.npy` appended unless present, so what is reported is what is written."""
  path = Path(path)
  return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")


def file_sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()
