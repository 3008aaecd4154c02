"""One storage layer for every job path: a directory named by a local path or a URL (`s3://`, `gs://`, any fsspec
protocol), read, listed and published to by the same calls.

Commits are atomic by precondition: `publish(name, data, expect=...)` writes the whole object only when the name is
absent (`ABSENT`) or still holds the version read before (`Store.read_versioned`), and raises `PreconditionFailed`
otherwise, so two writers never overwrite each other's committed object. The preconditions are the stores' own:
S3 `If-None-Match: *` / `If-Match: ETAG`, GCS `ifGenerationMatch`. Local paths keep their fast path: writes go to
a temporary name, are fsynced and renamed (`core.files.write_atomic`); create-if-absent is a hard link (atomic on
POSIX, refused when the name exists) and replace-if-match runs under an exclusive `flock` of the directory.

Remote stores need the `cloud` extra (`pip install 'distilbert-jax[cloud]'`: s3fs, gcsfs, pyarrow).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import re
import uuid
from collections.abc import Iterator
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, BinaryIO

from distilbert_jax.core import object_stores
from distilbert_jax.core.files import write_atomic
from distilbert_jax.core.object_stores import PreconditionFailed, StorageError

ABSENT = "absent"  # `publish(..., expect=ABSENT)`: create only; a version string: replace only that version
URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
CLOUD_EXTRA = "pip install 'distilbert-jax[cloud]'"
_OFFSET_DIGITS = 16  # an appended part's name holds its byte offset, zero-padded so names sort by offset


def is_url(path: str | os.PathLike) -> bool:
  """True for `PROTOCOL://...` other than `file://`."""
  match = URL.match(str(path))
  return bool(match) and match.group(1).lower() != "file"


def local_path(path: str | os.PathLike) -> Path:
  return Path(str(path).removeprefix("file://"))


def url_join(base: str, name: str) -> str:
  return posixpath.join(base.rstrip("/"), name) if is_url(base) else str(local_path(base) / name)


def filesystem(url: str) -> Any:
  """The fsspec filesystem of a URL, with the cloud extra's error when its implementation is not installed."""
  try:
    import fsspec

    fs, _ = fsspec.core.url_to_fs(url)
  except ImportError as e:
    raise StorageError(
      f"{url}: reading this URL needs {e.name or 'its fsspec implementation'}; {CLOUD_EXTRA}"
    ) from None
  return fs


class Store:
  """A directory (`root`: a local path or a URL) whose objects are named relative to it ("manifest.json")."""

  def __init__(self, root: str | os.PathLike):
    self.url = str(root).rstrip("/") or "/"
    self.local = not is_url(self.url)
    self.fs = None if self.local else filesystem(self.url)
    self.protocol = "file" if self.local else URL.match(self.url).group(1).lower()
    self._path = local_path(self.url) if self.local else None

  def __repr__(self) -> str:
    return f"Store({self.url!r})"

  def where(self, name: str) -> str:
    """The full path or URL of `name`, as errors name it."""
    return url_join(self.url, name)

  def _key(self, name: str) -> str:
    return self.fs._strip_protocol(self.where(name))

  def path(self, name: str) -> Path | None:
    """The local file of `name` (for memory maps), or None on a remote store."""
    return self._path / name if self.local else None

  def exists(self, name: str = "") -> bool:
    if self.local:
      return (self._path / name).exists()
    with self._errors(name):
      self.fs.invalidate_cache()  # another writer's object must be seen: fsspec caches listings
      return self.fs.exists(self._key(name))

  def is_dir(self) -> bool:
    if self.local:
      return self._path.is_dir()
    with self._errors(""):
      self.fs.invalidate_cache()
      return bool(self.fs.isdir(self._key("")))

  def make_dir(self) -> None:
    """The directory, created where directories exist (locally); on an object store, its bucket must exist."""
    if self.local:
      self._path.mkdir(parents=True, exist_ok=True)
      return
    bucket = self._key("").split("/", 1)[0]
    with self._errors(""):
      self.fs.invalidate_cache()
      if not self.fs.exists(bucket):
        raise StorageError(f"{self.url}: the bucket {bucket!r} does not exist (create it first)")

  def list(self, pattern: str = "*") -> list[str]:
    """Names directly in the directory matching a glob `pattern`, sorted (every page of a long listing)."""
    import fnmatch

    if self.local:
      return sorted(p.name for p in self._path.glob(pattern)) if self._path.is_dir() else []
    with self._errors(""):
      self.fs.invalidate_cache()
      if not self.fs.exists(self._key("")):
        return []
      names = [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self._key(""), detail=False)]
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))

  def walk(self) -> list[str]:
    """Every file under the directory, named relative to it with "/" (subdirectories included), sorted."""
    if self.local:
      return sorted(str(p.relative_to(self._path)) for p in self._path.rglob("*") if p.is_file())
    with self._errors(""):
      self.fs.invalidate_cache()
      root = self._key("").rstrip("/") + "/"
      return sorted(p[len(root) :] for p in self.fs.find(root) if p.startswith(root))

  def size(self, name: str) -> int:
    if self.local:
      return (self._path / name).stat().st_size
    with self._errors(name):
      return int(self.fs.info(self._key(name))["size"])

  def read_bytes(self, name: str) -> bytes:
    if self.local:
      try:
        return (self._path / name).read_bytes()
      except OSError as e:
        raise OSError(e.errno, e.strerror, self.where(name)) from None
    with self._errors(name):
      return self.fs.cat_file(self._key(name))

  @contextlib.contextmanager
  def open(self, name: str) -> Iterator[BinaryIO]:
    """A binary stream of `name` (read in blocks: a large object is never read whole)."""
    if self.local:
      with open(self._path / name, "rb") as f:
        yield f
      return
    with self._errors(name), self.fs.open(self._key(name), "rb") as f:
      yield f

  def version(self, name: str) -> str | None:
    """The store's version of `name` (local: its content's sha256; S3: ETag; GCS: generation), None if absent."""
    if self.local:
      try:
        return _local_version(self._path / name)
      except FileNotFoundError:
        return None
    with self._errors(name):
      self.fs.invalidate_cache()
      try:
        return _remote_version(self.protocol, self.fs.info(self._key(name)))
      except FileNotFoundError:
        return None

  def read_versioned(self, name: str) -> tuple[bytes, str] | None:
    """(bytes, version) of `name`, or None when absent: the version to `publish(..., expect=version)` against.
    The version is read before the bytes, so bytes newer than it only make that publish fail (and be retried)."""
    if self.local:
      try:
        data = (self._path / name).read_bytes()
      except FileNotFoundError:
        return None
      return data, hashlib.sha256(data).hexdigest()
    version = self.version(name)
    if version is None:
      return None
    try:
      return self.read_bytes(name), version
    except FileNotFoundError:
      return None

  def append(self, name: str, data: bytes, committed: int) -> int:
    """`data` after the first `committed` bytes of `name` (a killed run's uncommitted tail goes); returns the new
    size. Locally an append and fsync. An object store has no append, and writing the object again whole would
    write bytes growing with the square of the appends: each append is its own part object instead,
    `STEM.OFFSET.SUFFIX` (`rejects.0000000000000123.jsonl`), read back in order by `read_appended`."""
    if self.local:
      path = self._path / name
      with open(path, "ab") as f:
        f.truncate(committed)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
      return committed + len(data)
    stem, suffix = posixpath.splitext(name)
    self.put(f"{stem}.{committed:0{_OFFSET_DIGITS}d}{suffix}", data)  # a killed run's part here is replaced
    return committed + len(data)

  def read_appended(self, name: str, committed: int) -> bytes:
    """The first `committed` bytes appended to `name`; an error naming it when fewer are there (a part missing
    on an object store included). Parts at or past `committed` are a killed run's tail and are ignored."""
    if self.local:
      data = self.read_bytes(name) if committed else b""
    else:
      data = b""
      for offset, part in self._parts(name):
        if offset >= committed:
          break
        if offset != len(data):
          raise StorageError(
            f"{self.where(part)}: starts at byte {offset:,}, but the parts before end at {len(data):,}"
          )
        data += self.read_bytes(part)
    if len(data) < committed:
      raise StorageError(f"{self.where(name)}: {len(data):,} bytes, but {committed:,} were committed")
    return data[:committed]

  def delete_appended(self, name: str) -> None:
    """Removes what `append` wrote to `name` (every part on an object store)."""
    self.delete(name)
    for _, part in [] if self.local else self._parts(name):
      self.delete(part)

  def _parts(self, name: str) -> list[tuple[int, str]]:
    """(offset, object) of what was appended to `name`; `name` itself, where it exists, is the part at 0 (a job
    whose rejects were written as one object, before appends were parts)."""
    stem, suffix = posixpath.splitext(name)
    names = self.list(f"{glob_escape(stem)}.{'[0-9]' * _OFFSET_DIGITS}{glob_escape(suffix)}")
    parts = sorted((int(n[len(stem) + 1 : len(stem) + 1 + _OFFSET_DIGITS]), n) for n in names)
    whole = [(0, name)] if self.exists(name) and not any(offset == 0 for offset, _ in parts) else []
    return whole + parts

  def put(self, name: str, data: bytes) -> None:
    """Writes `name` whole, replacing what it held (a reader sees the old or the new object, never half)."""
    if self.local:
      write_atomic(self._path / name, data)
      return
    with self._errors(name):
      self.fs.pipe_file(self._key(name), data)

  def publish(self, name: str, data: bytes, expect: str = ABSENT) -> str:
    """Writes `name` whole only when it is absent (`expect=ABSENT`) or still at version `expect`, and returns
    its new version; otherwise `PreconditionFailed`, and the object is as the other writer left it."""
    if self.local:
      return _local_publish(self._path / name, data, expect)
    with self._errors(name):
      return object_stores.backend(self.protocol, self.url).publish(self.fs, self._key(name), data, expect, ABSENT)

  def delete(self, name: str) -> None:
    """Removes `name` when it exists."""
    if self.local:
      (self._path / name).unlink(missing_ok=True)
      return
    with self._errors(name):
      with contextlib.suppress(FileNotFoundError):  # absent already: the wanted state
        self.fs.rm_file(self._key(name))

  @contextlib.contextmanager
  def _errors(self, name: str) -> Iterator[None]:
    """A remote failure as one error naming the URL (a missing bucket says so); preconditions pass through."""
    try:
      yield
    except (PreconditionFailed, StorageError, FileNotFoundError):
      raise
    except PermissionError as e:
      raise StorageError(f"{self.where(name)}: access denied ({e})") from e
    except OSError as e:
      if "NoSuchBucket" in str(e) or "bucket does not exist" in str(e).lower():
        bucket = self._key("").split("/", 1)[0]
        raise StorageError(f"{self.url}: the bucket {bucket!r} does not exist (create it first)") from e
      raise StorageError(f"{self.where(name)}: {e}") from e


def _remote_version(protocol: str, info: dict) -> str:
  """The store's own version of an object: S3's ETag, GCS' generation."""
  for key in ("generation", "ETag", "etag"):
    if info.get(key) not in (None, ""):
      return str(info[key])
  raise StorageError(f"{info.get('name')}: the {protocol} store gives no version (ETag or generation) to commit by")


def _local_version(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _local_publish(path: Path, data: bytes, expect: str) -> str:
  if expect == ABSENT:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    write_atomic(tmp, data)
    try:
      os.link(tmp, path)  # atomic create: fails when the name exists
    except FileExistsError:
      raise PreconditionFailed(f"{path}: exists already (another writer created it)") from None
    finally:
      tmp.unlink(missing_ok=True)
    return hashlib.sha256(data).hexdigest()
  with _directory_lock(path.parent):
    try:
      current = _local_version(path)
    except FileNotFoundError:
      current = None
    if current != expect:
      raise PreconditionFailed(f"{path}: changed by another writer since it was read")
    write_atomic(path, data)
  return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
  """An exclusive flock serialising local read-compare-replace commits in one directory (released on exit)."""
  fd = os.open(directory / ".commit.lock", os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)
