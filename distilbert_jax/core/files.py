"""Writing files so that a reader never sees half of one, and two writers never share a temporary name."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any

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


def json_bytes(value) -> bytes:
  """A JSON document as every file of ours is written: indented, one trailing newline, UTF-8."""
  import json

  return (json.dumps(value, indent=2) + "\n").encode()


def write_json(path: str | Path, value) -> Path:
  """`json_bytes(value)` written atomically to a local path (object stores: `Store.put`/`publish` the bytes)."""
  return write_atomic(path, json_bytes(value))


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


# Bounds on what a model directory's files may hold: a file past them is refused before it is read.
MAX_JSON_BYTES = 16 << 20
MAX_TOKENIZER_BYTES = 256 << 20


def model_root(directory: str | Path) -> Path:
  """The folder a model directory's files may link into: the directory itself, or for a Hugging Face cache
  snapshot (.../models--ORG--NAME/snapshots/REV, whose files link to ../../blobs) the repository's cache folder."""
  directory = Path(directory).absolute()
  if directory.parent.name == "snapshots" and directory.parent.parent.name.startswith("models--"):
    return directory.parent.parent
  return directory


def checked_file(path: str | Path, root: str | Path, max_bytes: int) -> Path | None:
  """`path` (resolved) when it is a regular file inside `root`, at most `max_bytes`; None when it does not exist.
  Refuses, naming the file: a symlink (or `..`) that leads outside `root`, anything not a regular file (a
  directory, FIFO, device such as /dev/zero), and a file over the bound: no read of a model directory can run
  past the directory or the memory."""
  path = Path(path)
  if not os.path.lexists(path):
    return None
  real, real_root = path.resolve(), Path(root).resolve()
  if real != real_root and real_root not in real.parents:
    raise ValueError(f"{path}: leads to {real}, outside the model directory {root}; copy the file in instead")
  try:
    info = os.stat(real)
  except OSError as e:
    raise OSError(e.errno, e.strerror, str(path)) from None
  if not stat.S_ISREG(info.st_mode):
    raise ValueError(f"{path}: not a regular file")
  if info.st_size > max_bytes:
    raise ValueError(f"{path}: {info.st_size:,} bytes, more than the {max_bytes:,} such a file may hold")
  return real


def read_checked(path: str | Path, root: str | Path, max_bytes: int) -> bytes | None:
  """The bytes of `checked_file(path, root, max_bytes)`, or None when it does not exist."""
  real = checked_file(path, root, max_bytes)
  return None if real is None else real.read_bytes()


def read_json_checked(path: str | Path, root: str | Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
  """A model directory's JSON file (see `checked_file`), or None when absent; errors name the file and line."""
  data = read_checked(path, root, max_bytes)
  if data is None:
    return None
  try:
    return json.loads(data.decode("utf-8-sig"))
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 (byte {e.start})") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
